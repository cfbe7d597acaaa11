"""Documents made on the spot for the tests (pikepdf, Pillow, a hand-written TNEF stream): no fixture files."""

from __future__ import annotations

import io
import struct

import pikepdf
from PIL import Image

A4 = (595.28, 841.89)


def pdf(pages: int = 1, size: tuple[float, float] = (595, 842)) -> bytes:
    """A PDF with ``pages`` blank pages of ``size`` points (sizes tell documents apart after a merge)."""
    with pikepdf.new() as doc:
        for _ in range(pages):
            doc.add_blank_page(page_size=size)
        out = io.BytesIO()
        doc.save(out, deterministic_id=True)
        return out.getvalue()


def pdf_of_size(total: int) -> bytes:
    """A valid one-page PDF of exactly ``total`` bytes (an uncompressed padding stream)."""
    pad = max(0, total - 1000)
    for _ in range(5):
        with pikepdf.new() as doc:
            doc.add_blank_page()
            doc.Root.Padding = doc.make_stream(b"0" * pad)
            out = io.BytesIO()
            doc.save(out, compress_streams=False, deterministic_id=True)
        data = out.getvalue()
        if len(data) == total:
            return data
        pad += total - len(data)
    raise AssertionError(f"could not make a PDF of {total} bytes")


def encrypted_pdf() -> bytes:
    with pikepdf.new() as doc:
        doc.add_blank_page()
        out = io.BytesIO()
        doc.save(out, encryption=pikepdf.Encryption(user="s3cret", owner="owner"))
        return out.getvalue()


def image(fmt: str, size: tuple[int, int] = (400, 300), dpi: int = 200, mode: str = "RGB") -> bytes:
    im = Image.new(mode, size, "white" if mode != "1" else 1)
    out = io.BytesIO()
    im.save(out, fmt, dpi=(dpi, dpi)) if fmt in ("JPEG", "PNG", "TIFF") else im.save(out, fmt)
    return out.getvalue()


def tiff_pages(pages: int, size: tuple[int, int] = (1728, 2200)) -> bytes:
    """A black-and-white multi-page TIFF (CCITT G4, 200 dpi) as a scanner makes it."""
    frames = [Image.new("1", size, 1) for _ in range(pages)]
    out = io.BytesIO()
    frames[0].save(out, "TIFF", compression="group4", dpi=(200, 200), save_all=True, append_images=frames[1:])
    return out.getvalue()


def tiff_headers(frames: int, width: int, height: int) -> bytes:
    """A little-endian TIFF whose ``frames`` pages each declare ``width`` x ``height`` pixels (G4, 1 bit).

    The strips are a few bytes: only the headers are honest, as in a decompression bomb.
    """
    strip = b"\x00" * 16
    out = bytearray(b"II*\x00" + struct.pack("<I", 8 + len(strip)) + strip)
    tags = [(256, 4, width), (257, 4, height), (258, 3, 1), (259, 3, 4), (262, 3, 0), (273, 4, 8),
            (278, 4, height), (279, 4, len(strip))]  # fmt: skip
    for i in range(frames):
        ifd = struct.pack("<H", len(tags))
        ifd += b"".join(struct.pack("<HHII", tag, kind, 1, value) for tag, kind, value in tags)
        following = len(out) + len(ifd) + 4 if i < frames - 1 else 0
        out += ifd + struct.pack("<I", following)
    return bytes(out)

def exe() -> bytes:
    """The start of a Windows program (an MZ header)."""
    return b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + bytes(240)


def tnef(attachments: list[tuple[str, bytes]]) -> bytes:
    """A TNEF stream (Outlook's winmail.dat, MS-OXTNEF) holding ``attachments``."""

    def attr(level: int, ident: int, kind: int, data: bytes) -> bytes:
        return struct.pack("<BHHI", level, ident, kind, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)

    out = struct.pack("<IH", 0x223E9F78, 1)
    out += attr(1, 0x9006, 0x0008, struct.pack("<I", 0x10000))  # attTnefVersion
    out += attr(1, 0x9007, 0x0006, struct.pack("<II", 1252, 0))  # attOemCodepage
    for name, data in attachments:
        out += attr(2, 0x9002, 0x0006, b"\x01\x00\xff\xff\xff\xff" + bytes(8))  # attAttachRendData
        out += attr(2, 0x8010, 0x0001, name.encode("cp1252") + b"\x00")  # attAttachTitle
        out += attr(2, 0x800F, 0x0006, data)  # attAttachData
    return out
