"""Text as fax pages: a plain-text attachment, a cover page, a mail body, drawn straight to 1-bit G4.

In: text (the bytes of a text/plain attachment, decoded here; or the lines of a cover page), the
page size and a page bound. Out: a PDF of fax pages (1728 pixels wide, fine resolution, CCITT Group
4, as :mod:`gateway.documents.render` makes them) and its page count, or ``formats.Unfit`` (``empty``:
nothing to print; ``limits``: more pages than ``documents.max_pdf_pages``).

How text is laid out: UTF-8 (a byte-order mark honoured; bytes that are not UTF-8 read as Windows-1252),
monospace (DejaVu Sans Mono from Debian's fonts-dejavu-core when installed, else Pillow's own
scalable font) at 10 pt, 80 columns or so on A4; tabs every 8 columns, a long line continued on the
next, a form feed starts a new page, other control characters dropped. No LibreOffice: drawing text
directly is faster (milliseconds a page), and what the sender typed is what is printed, column for column.

Pages are counted before any is drawn. Blocking, CPU-bound (Pillow): runs in the document worker processes.
"""

from __future__ import annotations

import codecs
import functools
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from gateway.documents import render
from gateway.documents.formats import PAGE_SIZES, Unfit

FONT_DIRECTORIES = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu")
FONT_FILES = {"mono": "DejaVuSansMono.ttf", "mono-bold": "DejaVuSansMono-Bold.ttf",
              "sans": "DejaVuSans.ttf", "sans-bold": "DejaVuSans-Bold.ttf"}  # fmt: skip
# Body text size, in points, and the page's margins, in points (20 mm).
TEXT_POINTS = 10.0
MARGIN_POINTS = 56.7
LINE_SPACING = 1.25
TAB = 8
# Control characters other than the line end and the form feed.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Line:
    """One line of a laid-out page: its text and how it is drawn."""

    text: str
    points: float = TEXT_POINTS
    font: str = "mono"  # a key of FONT_FILES


# Put in a list of lines: the lines after it start a new page.
PAGE_BREAK = Line("\f")


def decode(data: bytes) -> str:
    """The text of a text file: its byte-order mark, else UTF-8, else Windows-1252."""
    for bom, codec in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
                       (codecs.BOM_UTF16_BE, "utf-16-be")):  # fmt: skip
        if data.startswith(bom):
            return data[len(bom) :].decode(codec, "replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def text_lines(text: str, columns: int) -> list[Line]:
    """Lines of at most ``columns`` characters, tabs expanded, a :data:`PAGE_BREAK` for each form feed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    out: list[Line] = []
    for number, page in enumerate(text.split("\f")):
        if number:
            out.append(PAGE_BREAK)
        for raw in page.split("\n"):
            line = _CONTROL.sub("", raw.expandtabs(TAB)).rstrip()
            while len(line) > columns:
                out.append(Line(line[:columns]))
                line = line[columns:]
            out.append(Line(line))
    return out


def text_pdf(data: bytes, page_size: str, max_pages: int) -> tuple[bytes, int]:
    """A text attachment as fax pages: (PDF, pages)."""
    layout = Layout(page_size)
    text = decode(data)
    if not text.strip():
        raise Unfit("empty", "the text file holds nothing to print")
    lines = text_lines(text, layout.columns())
    while lines and lines[-1] in (PAGE_BREAK, Line("")):  # a form feed or blank lines at the end: no empty page
        lines.pop()
    return layout.pdf(lines, max_pages)


class Layout:
    """Pages of a given size at fine fax resolution, drawn on square pixels then resampled to 204x196 dpi."""

    def __init__(self, page_size: str) -> None:
        self.width_pt, self.height_pt = PAGE_SIZES[page_size]
        self.shape = render.shape(self.width_pt, self.height_pt, render.FINE)
        self.scale = self.shape.columns / self.width_pt  # pixels per point, across
        self.margin = round(MARGIN_POINTS * self.scale)
        self.canvas = (self.shape.columns, round(self.height_pt * self.scale))

    def font(self, kind: str, points: float) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        return _font(kind, round(points * self.scale))

    def columns(self, points: float = TEXT_POINTS) -> int:
        """Monospace characters that fit across the text area."""
        width = self.font("mono", points).getlength("M")
        return max(20, int((self.canvas[0] - 2 * self.margin) // max(width, 1.0)))

    def fits(self, text: str, kind: str, points: float) -> bool:
        return self.font(kind, points).getlength(text) <= self.canvas[0] - 2 * self.margin

    def paginate(self, lines: list[Line]) -> list[list[Line]]:
        pages: list[list[Line]] = [[]]
        used = 0
        room = self.canvas[1] - 2 * self.margin
        for line in lines:
            if line == PAGE_BREAK:
                pages.append([])
                used = 0
                continue
            height = round(line.points * self.scale * LINE_SPACING)
            if used + height > room and pages[-1]:
                pages.append([])
                used = 0
            pages[-1].append(line)
            used += height
        return pages

    def pdf(self, lines: list[Line], max_pages: int) -> tuple[bytes, int]:
        """The lines laid out and drawn: (PDF, pages); Unfit("limits") past ``max_pages``, before drawing."""
        pages = self.paginate(lines)
        if len(pages) > max_pages:
            raise Unfit("limits", f"the text makes more than {max_pages} pages (documents.max_pdf_pages)")
        size = (self.width_pt, self.height_pt)
        return render.wrap([(self.draw(page), size) for page in pages]), len(pages)

    def draw(self, lines: list[Line]) -> bytes:
        """One page as a G4 TIFF at fine resolution."""
        canvas = Image.new("L", self.canvas, 255)
        pen = ImageDraw.Draw(canvas)
        y = self.margin
        for line in lines:
            if line.text:
                pen.text((self.margin, y), line.text, font=self.font(line.font, line.points), fill=0)
            y += round(line.points * self.scale * LINE_SPACING)
        page = canvas.resize((self.shape.columns, self.shape.rows), Image.Resampling.LANCZOS)
        black_and_white = page.point(lambda v: 255 if v >= 160 else 0).convert("1")
        dpi = (self.shape.columns / (self.width_pt / 72), self.shape.rows / (self.height_pt / 72))
        return render.g4_tiff(black_and_white, dpi)


@functools.cache
def font_file(kind: str) -> str | None:
    """The DejaVu file for ``kind``, if fonts-dejavu-core (or the like) is installed."""
    for directory in FONT_DIRECTORIES:
        path = Path(directory) / FONT_FILES[kind]
        if path.is_file():
            return str(path)
    return None


@functools.cache
def _font(kind: str, pixels: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = font_file(kind)
    if path is not None:
        return ImageFont.truetype(path, pixels)
    return ImageFont.load_default(pixels)
