"""Fax pages: each page of a PDF rendered as a fax machine prints it, 1-bit, CCITT Group 4.

In: a PDF (the fax document that ``formats.build`` made, images already placed on pages) and a
fax resolution. Out: per page, a 1728-pixel-wide black-and-white TIFF compressed with CCITT
Group 4 (lossless: no character can be swapped for another, unlike lossy JBIG2), and the PDF that
wraps such pages without re-encoding them (img2pdf embeds the G4 data as it is).

How a page is made:

1. PDFium (pypdfium2) renders it in grey, 1728 pixels across the page's short side (a landscape
   page is turned upright) at the resolution's aspect: fine 204x196 dpi, standard 204x98 dpi.
   Images are scaled with PDFium's area-averaging ("halftone") stretch, so sensor noise averages out.
2. The paper is estimated (the brightest of each ~5 mm neighbourhood, smoothed) and the page
   divided by it: tinted paper, uneven lighting and show-through become white.
3. That normalised page is thresholded at Otsu's level (clamped to a range suited to text on paper),
   and what is dark in absolute terms stays black (a large solid area is not taken for paper).
   No halftone dithering: it would turn tinted paper into dot patterns that print grey and compress
   5-10 times worse.

PDFium is not thread-safe: every use goes through :func:`opened`, which holds a lock. Blocking and
CPU-bound: run in the document worker processes.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import img2pdf
import numpy as np
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image, ImageFilter

from gateway.documents.formats import Unfit

# Pixels across a fax line (ITU-T T.4: 215 mm at 8 pixels per mm).
WIDTH = 1728
# The normalised grey level (0-255, paper = 255) below which a pixel is ink: Otsu's choice, clamped.
THRESHOLD_RANGE = (130, 205)
# Darker than this in absolute terms is ink wherever it is (a logo, a filled box).
SOLID_INK = 80
# Rows thresholded at a time (a band of a fine page is about 1/9 of it).
BAND_ROWS = 256

_lock = threading.Lock()


@dataclass(frozen=True)
class Resolution:
    name: str  # fine, standard (the words receipts use)
    x_dpi: int
    y_dpi: int


FINE = Resolution("fine", 204, 196)
STANDARD = Resolution("standard", 204, 98)


@dataclass(frozen=True)
class Shape:
    """How one page becomes a fax page: its pixels and the turn that puts it upright."""

    columns: int
    rows: int
    rotation: int  # quarter turns clockwise (PDFium's rotate argument)
    width_pt: float  # the page as rendered (upright), in points
    height_pt: float

    @property
    def pixels(self) -> int:
        return self.columns * self.rows


def shape(width_pt: float, height_pt: float, res: Resolution) -> Shape:
    """The fax page of a page of ``width_pt`` x ``height_pt`` points (its /Rotate already applied)."""
    rotation = 1 if width_pt > height_pt else 0
    if rotation:
        width_pt, height_pt = height_pt, width_pt
    x_dpi = WIDTH / (width_pt / 72)
    rows = max(1, round(height_pt / 72 * x_dpi * res.y_dpi / res.x_dpi))
    return Shape(WIDTH, rows, rotation, width_pt, height_pt)


class Pages:
    """An open PDF whose pages are rendered one at a time (inside :func:`opened`)."""

    def __init__(self, document: pdfium.PdfDocument) -> None:
        self._document = document

    def __len__(self) -> int:
        return len(self._document)

    def shape_of(self, index: int, res: Resolution) -> Shape:
        page = self._document[index]
        try:
            width, height = page.get_size()
        finally:
            page.close()
        return shape(width, height, res)

    def grey(self, index: int, res: Resolution) -> Image.Image:
        """Page ``index`` in grey ("L"), upright, at ``res``."""
        page = self._document[index]
        try:
            width, height = page.get_size()
            s = shape(width, height, res)
            bitmap = pdfium.PdfBitmap.new_native(s.columns, s.rows, pdfium_c.FPDFBitmap_Gray)
            bitmap.fill_rect((255, 255, 255, 255), 0, 0, s.columns, s.rows)
            flags = pdfium_c.FPDF_RENDER_FORCEHALFTONE | pdfium_c.FPDF_ANNOT | pdfium_c.FPDF_PRINTING
            pdfium_c.FPDF_RenderPageBitmap(bitmap, page, 0, 0, s.columns, s.rows, s.rotation, flags)
            image: Image.Image = bitmap.to_pil().copy()
            bitmap.close()
            return image
        finally:
            page.close()


@contextmanager
def opened(pdf: bytes) -> Iterator[Pages]:
    """The pages of ``pdf``, rendered under the PDFium lock (``Unfit("corrupt")`` if PDFium cannot open it)."""
    with _lock:
        try:
            document = pdfium.PdfDocument(pdf)
        except pdfium.PdfiumError as exc:
            raise Unfit("corrupt", f"the PDF cannot be rendered: {exc}") from None
        try:
            yield Pages(document)
        finally:
            document.close()


def binarise(page: Image.Image, aspect: float = 1.0) -> Image.Image:
    """A grey scan ("L") in black and white ("1"): paper normalised away, then a threshold for text.

    ``aspect`` is the vertical resolution over the horizontal one (0.48 at standard resolution).
    """
    grey = np.asarray(page, dtype=np.uint8)
    paper = _paper(page, aspect)
    # Otsu's level is read on every 4th pixel of every 4th row: the histogram is the same, 16 times cheaper.
    sample = grey[::4, ::4].astype(np.uint16) * 255 // np.maximum(paper[::4, ::4], 1)
    level = _threshold(np.minimum(sample, 255))
    # Ink: darker than ``level``/255 of its paper (grey * 255 < level * paper, in integers), or solid.
    # Worked out a band of rows at a time: the 16-bit products of a whole page would be 4 times its size.
    white = np.empty(grey.shape, dtype=bool)
    for top in range(0, grey.shape[0], BAND_ROWS):
        band, under = grey[top : top + BAND_ROWS], paper[top : top + BAND_ROWS]
        ink = band.astype(np.uint16) * 255 < under.astype(np.uint16) * level
        ink |= band < SOLID_INK
        np.logical_not(ink, out=white[top : top + BAND_ROWS])
    return Image.fromarray(white)  # True (white) and False (black): mode "1"


def _paper(page: Image.Image, aspect: float) -> np.ndarray:
    """The brightness of the paper under each pixel: the brightest of each ~5 mm square, smoothed."""
    small = np.asarray(page.reduce((8, max(1, round(8 * aspect)))), dtype=np.uint8)
    brightest = _max5(_max5(small, 0), 1)
    smooth = Image.fromarray(brightest).filter(ImageFilter.GaussianBlur(2))
    return np.asarray(smooth.resize(page.size, Image.Resampling.BILINEAR), dtype=np.uint8)


def _max5(a: np.ndarray, axis: int) -> np.ndarray:
    """The largest of each run of 5 along ``axis`` (a 5-wide maximum filter, edges repeated)."""
    pad = [(0, 0), (0, 0)]
    pad[axis] = (2, 2)
    padded = np.pad(a, pad, mode="edge")
    n = a.shape[axis]
    out = padded.take(range(0, n), axis=axis)
    for k in range(1, 5):
        out = np.maximum(out, padded.take(range(k, k + n), axis=axis))
    return out


def _threshold(normalised: np.ndarray) -> int:
    """Otsu's threshold of the normalised page, clamped to :data:`THRESHOLD_RANGE`."""
    hist = np.bincount(normalised.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    levels = np.arange(256, dtype=np.float64)
    weight = np.cumsum(hist) / total
    mean = np.cumsum(hist * levels) / total
    between = (mean[-1] * weight - mean) ** 2 / np.maximum(weight * (1 - weight), 1e-12)
    low, high = THRESHOLD_RANGE
    return int(min(max(int(np.argmax(between)) + 1, low), high))


def g4_tiff(page: Image.Image, dpi: tuple[float, float]) -> bytes:
    """A "1" image as a single-strip TIFF compressed with CCITT Group 4 (libtiff, through Pillow).

    One strip for the whole page: img2pdf then embeds the G4 data as it is (several strips it re-encodes).
    """
    out = io.BytesIO()
    page.save(out, "TIFF", compression="group4", dpi=dpi, strip_size=2**30)
    return out.getvalue()


def wrap(pages: list[tuple[bytes, tuple[float, float]]]) -> bytes:
    """One PDF of (G4 TIFF, page size in points) pages, the G4 data embedded as it is (/CCITTFaxDecode)."""
    sizes = iter([size for _, size in pages])

    def layout(_width_px: object, _height_px: object, _dpi: object) -> tuple[float, float, float, float]:
        width, height = next(sizes)  # img2pdf lays the images out in order, one call each
        return width, height, width, height

    return bytes(img2pdf.convert([data for data, _ in pages], layout_fun=layout))


def overhead(pages: int) -> int:
    """About what :func:`wrap` adds around the page data: objects, page dictionaries, cross-references."""
    return 600 + 400 * pages
