"""Fitting: a fax document over the provider's limit made small enough, and still legible.

In: the fax PDF that ``formats.build`` made, what went into it (names and page counts), and the
document settings (``fit``, ``max_fax_bytes``, ``max_page_pixels``), with the deadline of the
examination. Out: a :class:`Fitted` (the new PDF and, in words for the receipt, what was done), or
one of :class:`TooBig` (the smallest size reached, with how many pages would fit), :class:`Overdue`
(the time bound passed), ``formats.Unfit("limits")`` (a page too large to render) for the caller to
turn into a reply.

The steps, in order, stopping at the first result under the limit (``fit = "always"`` starts at 2):

1. The PDF without loss (pikepdf): streams recompressed, unused objects dropped, object streams.
2. Every page rendered as a fax page at fine resolution (``render``: 1728 pixels wide, 204x196 dpi,
   1-bit, CCITT Group 4). Given up as soon as the pages so far are over the limit.
3. The same at standard resolution (204x98 dpi), every page, so a refusal can say what fits.

Never lossy JBIG2 or JPEG of the text: Group 4 is lossless, so no character can become another.
The deadline is checked between pages. Blocking and CPU-bound: runs in the document worker
processes (PDFium on this thread, thresholding and G4 on a helper thread, one page behind).
"""

from __future__ import annotations

import io
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pikepdf
from PIL import Image

from gateway.documents import render
from gateway.documents.formats import Unfit, image_streams
from gateway.settings import DocumentSettings


@dataclass(frozen=True)
class Fitted:
    document: bytes
    how: str  # lossless, fine, standard
    words: str  # for a person: "converted to black and white, fine resolution, 10 pages"


class TooBig(Exception):
    """Even at standard resolution the fax is over the limit."""

    def __init__(self, size: int, pages: int, most: int) -> None:
        super().__init__(f"{pages} pages are {size} bytes at standard resolution")
        self.size = size  # the smallest size reached, in bytes
        self.pages = pages
        self.most = most  # pages per mail that would fit (the largest ones taken), 0 if not even one


class Overdue(Exception):
    """The conversion was still running at the deadline."""

    def __init__(self, seconds: float, pages: int) -> None:
        super().__init__(f"converting {pages} pages took longer than {seconds:g} s")
        self.seconds = seconds
        self.pages = pages


@dataclass(frozen=True)
class Part:
    """One document of the fax, for naming a page in a refusal."""

    name: str
    pages: int


def needed(size: int, settings: DocumentSettings) -> bool:
    """Whether a fax document of ``size`` bytes goes through fitting."""
    return settings.fit == "always" or (settings.fit == "over-limit" and size > settings.max_fax_bytes)


def fit(pdf: bytes, parts: list[Part], settings: DocumentSettings, deadline: float) -> Fitted:
    """``pdf`` under ``settings.max_fax_bytes`` (see the module docstring), or an exception that says why not."""
    limit = settings.max_fax_bytes
    kept = _check_images(pdf, parts, settings.max_image_pixels)
    # Lossless rewriting leaves JPEG, JPEG 2000, JBIG2 and G4 images as they are: when those alone are over
    # the limit (a scan), it cannot succeed, and it would only hold a second copy of the scan in memory.
    if settings.fit != "always" and kept <= limit:
        smaller = lossless(pdf)
        if len(smaller) <= limit:
            return Fitted(smaller, "lossless", "compressed without loss")
        del smaller  # as large as the scan: not kept while the pages render
    with render.opened(pdf) as doc:
        _check_pixels(doc, parts, settings.max_page_pixels)
        timer = _Timer(deadline, settings.convert_timeout_seconds, len(doc))
        fine = _render_all(doc, render.FINE, timer, stop_above=limit)
        if fine is not None and len(fine) <= limit:
            return Fitted(fine, "fine", f"converted to black and white, fine resolution, {_pages(len(doc))}")
        standard, sizes = _render_standard(doc, timer)
    if len(standard) <= limit:
        return Fitted(standard, "standard", f"converted to black and white, standard resolution, {_pages(len(sizes))}")
    raise TooBig(len(standard), len(sizes), _most(sizes, limit))


def lossless(pdf: bytes) -> bytes:
    """The same PDF, rewritten by pikepdf: Flate everywhere it is lossless, unused objects dropped."""
    with pikepdf.open(io.BytesIO(pdf)) as doc:
        doc.remove_unreferenced_resources()
        out = io.BytesIO()
        doc.save(out, compress_streams=True, recompress_flate=True,
                 object_stream_mode=pikepdf.ObjectStreamMode.generate)  # fmt: skip
        return out.getvalue()


class _Timer:
    def __init__(self, deadline: float, seconds: float, pages: int) -> None:
        self.deadline, self.seconds, self.pages = deadline, seconds, pages

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise Overdue(self.seconds, self.pages)


def _render_all(doc: render.Pages, res: render.Resolution, timer: _Timer, stop_above: int | None) -> bytes | None:
    """Every page at ``res``, wrapped; None once the pages so far are over ``stop_above`` bytes."""
    pages = _render(doc, res, timer, stop_above)
    return None if pages is None else render.wrap(pages)


def _render_standard(doc: render.Pages, timer: _Timer) -> tuple[bytes, list[int]]:
    pages = _render(doc, render.STANDARD, timer, None)
    assert pages is not None
    return render.wrap(pages), [len(p[0]) for p in pages]


def _render(
    doc: render.Pages, res: render.Resolution, timer: _Timer, stop_above: int | None
) -> list[tuple[bytes, tuple[float, float]]] | None:
    """Each page as (G4 TIFF, page size in points): PDFium renders page i+1 while page i is thresholded."""
    done: list[tuple[bytes, tuple[float, float]]] = []
    total = render.overhead(len(doc))
    with ThreadPoolExecutor(1, thread_name_prefix="fax-page") as helper:
        pending: Future[bytes] | None = None
        for index in range(len(doc) + 1):
            timer.check()
            grey = doc.grey(index, res) if index < len(doc) else None
            if pending is not None:
                page = pending.result()
                total += len(page)
                shape = doc.shape_of(index - 1, res)
                done.append((page, (shape.width_pt, shape.height_pt)))
                if stop_above is not None and total > stop_above:
                    return None
            pending = None if grey is None else helper.submit(_encode, grey, doc.shape_of(index, res), res)
    return done


def _encode(grey: Image.Image, shape: render.Shape, res: render.Resolution) -> bytes:
    dpi = (shape.columns / (shape.width_pt / 72), shape.rows / (shape.height_pt / 72))
    return render.g4_tiff(render.binarise(grey, res.y_dpi / res.x_dpi), dpi)


def _most(sizes: list[int], limit: int) -> int:
    """How many pages fit under ``limit`` whichever they are (the largest ones counted)."""
    total, most = 0, 0
    for size in sorted(sizes, reverse=True):
        total += size
        if total + render.overhead(most + 1) > limit:
            break
        most += 1
    return most


def _pages(n: int) -> str:
    return f"{n} page{'s' if n != 1 else ''}"


def _where(index: int, parts: list[Part]) -> str:
    """Page ``index`` of the fax, said as the page of the document it comes from."""
    first = 0
    for part in parts:
        if index < first + part.pages:
            return f"page {index - first + 1} of {part.name}"
        first += part.pages
    return f"page {index + 1}"  # pragma: no cover - the parts cover every page


def _check_pixels(doc: render.Pages, parts: list[Part], bound: int) -> None:
    """Refuse, before rendering anything, a page whose fax rendering would exceed ``bound`` pixels."""
    for index in range(len(doc)):
        s = doc.shape_of(index, render.FINE)
        if s.pixels > bound:
            raise Unfit("limits", f"{_where(index, parts)} would be {s.columns}x{s.rows} pixels as a fax page, "
                                  f"over documents.max_page_pixels ({bound})")  # fmt: skip


# Image encodings a lossless rewrite keeps byte for byte (it only recompresses Flate).
_KEPT_AS_IS = frozenset({"/DCTDecode", "/JPXDecode", "/JBIG2Decode", "/CCITTFaxDecode"})


def _check_images(pdf: bytes, parts: list[Part], bound: int) -> int:
    """Refuse a page holding an image larger than PDFium should decode (headers only, nothing decoded).

    Returns the bytes of the pages' images that a lossless rewrite keeps as they are.
    """
    kept = 0
    with pikepdf.open(io.BytesIO(pdf)) as doc:
        seen: set[tuple[int, int]] = set()
        for index, page in enumerate(doc.pages):
            for image in image_streams(page.obj, 0, seen):
                width, height = int(image.get("/Width", 0)), int(image.get("/Height", 0))
                if width * height > bound:
                    raise Unfit("limits", f"{_where(index, parts)} holds an image of {width}x{height} pixels, "
                                          f"over documents.max_image_pixels ({bound})")  # fmt: skip
                filters = image.get("/Filter")
                names = [str(f) for f in filters] if isinstance(filters, pikepdf.Array) else [str(filters)]
                length = image.get("/Length")
                if names and names[-1] in _KEPT_AS_IS and isinstance(length, int):
                    kept += length
    return kept
