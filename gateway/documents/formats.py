"""The fax document: type candidates by content, check them, merge them into one PDF.

In: decoded candidate bytes. Out: the libmagic type of each; for faxable kinds
(PDF, TIFF, JPEG, PNG, GIF) a page count once the file is proven readable
(pikepdf opens the PDF, Pillow decodes every image frame); and the single PDF
the provider downloads. A problem is raised as :class:`Unfit` with the policy
reason (``encrypted``, ``corrupt``, ``limits``); the caller turns it into a
reply. All of it is blocking (libmagic, pikepdf, Pillow): run it off the event
loop.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import img2pdf
import magic
import pikepdf
from PIL import Image

# libmagic MIME type -> the kind of document it is (the names used in settings and receipts).
KINDS = {
    "application/pdf": "pdf",
    "image/tiff": "tiff",
    "image/jpeg": "jpeg",
    "image/png": "png",
    "image/gif": "gif",
}
TNEF = "application/vnd.ms-tnef"
# The kinds whose Document.data is an image (every other kind's is a PDF, converted or not).
IMAGE_KINDS = frozenset({"tiff", "jpeg", "png", "gif"})
# How a refusal names common types (the MIME type is always given too).
FRIENDLY = {
    "application/msword": "Word document",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "Word document",
    "application/vnd.ms-excel": "Excel workbook",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "Excel workbook",
    "application/vnd.ms-powerpoint": "PowerPoint presentation",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "PowerPoint presentation",
    "application/vnd.oasis.opendocument.text": "OpenDocument text",
    "application/vnd.oasis.opendocument.spreadsheet": "OpenDocument spreadsheet",
    "text/rtf": "RTF document",
    "application/encrypted": "password-protected file",
    "application/zip": "ZIP archive",
    "application/gzip": "gzip archive",
    "application/x-rar": "RAR archive",
    "application/x-7z-compressed": "7-Zip archive",
    "application/x-dosexec": "Windows program",
    "application/x-executable": "program",
    "application/x-sharedlib": "program",
    "application/postscript": "PostScript",
    "text/plain": "plain text",
    "text/html": "HTML page",
    "image/bmp": "BMP image",
    "image/x-ms-bmp": "BMP image",
    "image/heic": "HEIC photo",
    "image/webp": "WebP image",
    "image/svg+xml": "SVG drawing",
    "application/octet-stream": "unknown binary data",
}
# Page sizes in PDF points (1/72 inch).
PAGE_SIZES = {"A4": (595.28, 841.89), "Letter": (612.0, 792.0)}
# Deepest nesting of form XObjects searched for images when bounding what PDFium would decode.
MAX_FORM_DEPTH = 8
# The DER encoding of the enveloped-data OID 1.2.840.113549.1.7.3 (RFC 5652).
ENVELOPED_DATA_OID = bytes.fromhex("06092a864886f70d010703")


class Unfit(Exception):
    """A candidate that cannot be faxed; ``reason`` is the policy reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Document:
    name: str
    kind: str  # pdf, tiff, jpeg, png, gif; or a converted kind (docx, ..., text), whose data is then a PDF
    data: bytes
    pages: int


_local = threading.local()


def sniff(data: bytes) -> str:
    """The libmagic MIME type of ``data`` (one handle per thread: libmagic handles are not thread-safe)."""
    handle = getattr(_local, "magic", None)
    if handle is None:
        handle = _local.magic = magic.Magic(mime=True)
    return str(handle.from_buffer(data))


def describe(mime: str) -> str:
    friendly = FRIENDLY.get(mime)
    return f"{friendly} ({mime})" if friendly else mime


def is_enveloped(declared: str, smime_type: str, data: bytes) -> bool:
    """S/MIME encrypted mail (RFC 8551): enveloped-data by parameter or, without it, by OID."""
    if declared not in ("application/pkcs7-mime", "application/x-pkcs7-mime"):
        return False
    if smime_type:
        return smime_type == "enveloped-data"
    return ENVELOPED_DATA_OID in data[:64]


def pdf_pages(data: bytes, count_images: Callable[[list[tuple[int, int]], str], None] | None = None) -> int:
    """The page count of a PDF that opens without a password.

    ``count_images(sizes, what)`` is given the (width, height) of the images each page draws
    (headers only: nothing is decoded), so the caller can bound pixels before anything renders them.
    """
    try:
        with pikepdf.open(io.BytesIO(data)) as pdf:
            pages = len(pdf.pages)
            if count_images is not None:
                for index, page in enumerate(pdf.pages):
                    count_images(list(images(page.obj, 0, set())), f"page {index + 1} holds an image")
    except (Unfit, MemoryError):
        raise
    except pikepdf.PasswordError:
        raise Unfit("encrypted", "it needs a password to open") from None
    except Exception as exc:  # pikepdf raises many types on damaged files
        raise Unfit("corrupt", f"damaged PDF: {type(exc).__name__}") from None
    if pages < 1:
        raise Unfit("corrupt", "the PDF has no pages")
    return pages


def images(holder: pikepdf.Object, depth: int, seen: set[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """(width, height) of each image a page or form draws from its resources, forms followed."""
    for image in image_streams(holder, depth, seen):
        yield int(image.get("/Width", 0)), int(image.get("/Height", 0))


def image_streams(holder: pikepdf.Object, depth: int, seen: set[tuple[int, int]]) -> Iterator[pikepdf.Stream]:
    """Each image a page or form draws from its resources, forms followed, each once (``seen``)."""
    resources = holder.get("/Resources")
    xobjects = resources.get("/XObject") if isinstance(resources, pikepdf.Dictionary) else None
    if not isinstance(xobjects, pikepdf.Dictionary):
        return
    for _, xobject in xobjects.items():
        if not isinstance(xobject, pikepdf.Stream):
            continue
        key = xobject.objgen
        if key in seen:
            continue
        seen.add(key)
        subtype = xobject.get("/Subtype")
        if subtype == "/Image":
            yield xobject
        elif subtype == "/Form" and depth < MAX_FORM_DEPTH:
            yield from image_streams(xobject, depth + 1, seen)


def image_frames(
    data: bytes, min_pixels: int, max_frames: int, count_images: Callable[[list[tuple[int, int]], str], None]
) -> int:
    """The frame count of an image Pillow decodes in full; 0 for a tracking pixel.

    A tracking pixel is smaller than ``min_pixels`` in both directions (read
    from the header, before decoding). The frame count is bounded, and each
    frame's size is given to ``count_images(sizes, what)`` (which raises
    ``Unfit("limits")`` past a bound), before anything is decoded.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width < min_pixels and height < min_pixels:
                return 0
            frames = int(getattr(im, "n_frames", 1))
            if frames > max_frames:
                raise Unfit("limits", f"an image of more than {max_frames} frames")
            sizes = []
            for i in range(frames):
                im.seek(i)
                sizes.append(im.size)
            count_images(sizes, "an image")
            for i in range(frames):
                im.seek(i)
                im.load()
            return frames
    except (Unfit, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Unfit("limits", "an image has too many pixels (documents.max_image_pixels)") from None
    except Exception as exc:  # Pillow raises many types on damaged files
        raise Unfit("corrupt", f"damaged image: {type(exc).__name__}") from None


def build(documents: list[Document], page_size: str) -> bytes:
    """One PDF of every document in order.

    A lone PDF is returned byte for byte, unless junk precedes its ``%PDF-``
    header (an application that printed a warning into its output): readers
    tolerate that, but the provider gets a clean copy written by pikepdf.
    """
    if len(documents) == 1 and documents[0].kind not in IMAGE_KINDS and documents[0].data.startswith(b"%PDF-"):
        return documents[0].data
    layout = img2pdf.get_layout_fun(pagesize=PAGE_SIZES[page_size], fit=img2pdf.FitMode.shrink)
    sources: list[pikepdf.Pdf] = []
    try:
        with pikepdf.new() as out:
            for doc in documents:
                data = _image_pdf(doc, layout) if doc.kind in IMAGE_KINDS else doc.data
                source = pikepdf.open(io.BytesIO(data))
                sources.append(source)
                out.pages.extend(source.pages)
            buffer = io.BytesIO()
            out.save(buffer)
            return buffer.getvalue()
    finally:
        for source in sources:
            source.close()


def _image_pdf(doc: Document, layout: Callable[..., Any]) -> bytes:
    """Pages of an image at its own resolution, shrunk only if larger than the page.

    JPEG and TIFF go in unchanged where img2pdf can embed them (no loss); other
    images and modes img2pdf refuses are flattened onto white first. A TIFF
    gives one page per frame; an animated GIF or PNG gives its first frame.
    """
    if doc.kind in ("jpeg", "tiff"):
        try:
            return bytes(img2pdf.convert(doc.data, layout_fun=layout, rotation=img2pdf.Rotation.ifvalid))
        except Exception:  # img2pdf refuses some colour spaces and modes: flatten instead
            pass
    frames: list[bytes] = []
    with Image.open(io.BytesIO(doc.data)) as im:
        for i in range(doc.pages if doc.kind == "tiff" else 1):
            im.seek(i)
            frames.append(_flatten(im))
    return bytes(img2pdf.convert(frames, layout_fun=layout, rotation=img2pdf.Rotation.ifvalid))


def _flatten(im: Image.Image) -> bytes:
    """One frame as a PNG without transparency, keeping its resolution."""
    frame = im.convert("RGBA") if im.mode in ("P", "PA", "LA", "RGBA", "La", "RGBa") else im
    if frame.mode == "RGBA":
        white = Image.new("RGB", frame.size, (255, 255, 255))
        white.paste(frame, mask=frame.getchannel("A"))
        frame = white
    elif frame.mode not in ("1", "L", "RGB"):
        frame = frame.convert("RGB")
    buffer = io.BytesIO()
    dpi = im.info.get("dpi")
    if dpi:
        frame.save(buffer, "PNG", dpi=dpi)
    else:
        frame.save(buffer, "PNG")
    return buffer.getvalue()
