"""Scans made in code, as a multifunction printer makes them: text on tinted paper, noise, a slight rotation.

In: a page size in dots per inch, the lines of text and their sizes. Out: the "scanned" page (a Pillow
image, a JPEG file), a multi-page PDF of such pages (img2pdf, the JPEGs embedded as they are), and the
clean rendering of the same text at fax resolution that the legibility test compares against. Text is
drawn with a real TrueType font: DejaVu Sans (Debian's fonts-dejavu-core) when present, else Pillow's
own scalable default font.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import img2pdf
import numpy as np
from PIL import Image, ImageDraw, ImageFont

A4_INCHES = (8.27, 11.69)
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


@dataclass(frozen=True)
class Line:
    text: str
    points: float  # font size
    top_inches: float  # where the line starts, from the top of the page


def font(size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if DEJAVU.is_file():
        return ImageFont.truetype(str(DEJAVU), size_px)
    return ImageFont.load_default(size=size_px)


# A page of known text: digits and accented letters at 10 pt, and a 6 pt line; wide gaps between lines.
TEXT_LINES = (
    Line("Facture 2024-0381 : 1 234,56 EUR", 10, 1.0),
    Line("0123456789 0123456789 0123456789", 10, 1.6),
    Line("éèêë àâä ùûü ôö ç ÉÈÀÇ ïî œæ", 10, 2.2),
    Line("Réf. 4711-0815 / Échéance 30.06.2024", 10, 2.8),
    Line("Conditions générales : paiement à 30 jours, pénalités 3,75 % l'an (6 pt).", 6, 3.4),
)


def draw_text(width: int, height: int, dpi_x: float, dpi_y: float, lines: tuple[Line, ...] = TEXT_LINES,
              left_inches: float = 0.8) -> Image.Image:  # fmt: skip
    """Black text on white ("L"), at ``dpi_x`` x ``dpi_y``: drawn square at dpi_x, then scaled vertically."""
    square = Image.new("L", (width, round(height * dpi_x / dpi_y)), 255)
    draw = ImageDraw.Draw(square)
    for line in lines:
        size = round(line.points / 72 * dpi_x)
        draw.text((round(left_inches * dpi_x), round(line.top_inches * dpi_x)), line.text, fill=0, font=font(size))
    if dpi_x == dpi_y:
        return square
    return square.resize((width, height), Image.Resampling.BOX)


def scan(dpi: int = 300, seed: int = 1, lines: tuple[Line, ...] = TEXT_LINES, angle: float = 0.6,
         tint: tuple[int, int, int] = (236, 226, 196), noise: float = 3.0) -> Image.Image:  # fmt: skip
    """An A4 colour scan of ``lines``: tinted paper, grey-ish ink, sensor noise, a slight rotation."""
    width, height = round(A4_INCHES[0] * dpi), round(A4_INCHES[1] * dpi)
    ink = draw_text(width, height, dpi, dpi, lines)
    ink = ink.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=255)
    rng = np.random.default_rng(seed)
    # Uneven lighting: the paper is darker towards one corner, as under a scanner's lid.
    shade = np.outer(np.linspace(1.0, 0.93, height, dtype=np.float32), np.linspace(1.0, 0.88, width, dtype=np.float32))
    darkness = 1.0 - np.asarray(ink, np.float32) / 255.0
    grain = rng.standard_normal((height, width), dtype=np.float32) * noise
    ink_colour = (40, 38, 52)
    channels = []
    for paper, inked in zip(tint, ink_colour, strict=True):
        channel = shade * paper
        channel += (inked - channel) * darkness
        channel += grain
        channels.append(Image.fromarray(np.clip(channel, 0, 255).astype(np.uint8), "L"))
    return Image.merge("RGB", channels)


def jpeg(im: Image.Image, dpi: int = 300, quality: int = 75) -> bytes:
    out = io.BytesIO()
    im.save(out, "JPEG", quality=quality, dpi=(dpi, dpi))
    return out.getvalue()


def scanned_pdf(pages: int, dpi: int = 300, distinct: int = 1) -> bytes:
    """A PDF of ``pages`` A4 colour scans as a printer makes it: one JPEG per page (``distinct`` different ones)."""
    jpegs = [jpeg(scan(dpi, seed=i + 1), dpi) for i in range(distinct)]
    return bytes(img2pdf.convert([jpegs[i % distinct] for i in range(pages)]))


def filler_lines(seed: int) -> tuple[Line, ...]:
    """Lines of varied text over the whole page (the size of a real page of text)."""
    vocabulary = ["facture", "échéance", "montant", "1 234,56", "réf.", "Société", "livraison", "à", "de", "le",
                  "TVA", "20 %", "n°", "2024"]  # fmt: skip
    words = random.Random(seed).choices(vocabulary, k=800)
    return tuple(Line(" ".join(words[i * 12:(i + 1) * 12]), 10, 0.8 + i * 0.25) for i in range(40))
