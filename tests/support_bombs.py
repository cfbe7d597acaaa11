"""Decompression bombs made on the spot: small files that expand hugely when decoded.

Each is built without ever holding its expansion: a deflate block compressed once after a full
flush does not depend on what came before, so the same bytes repeated inflate to that block's
input as many times (about 1,000 to 1). The PDF's Catalog, Pages and Page sit in one FlateDecode
object stream, after ``expanded`` bytes of spaces; the PNG is a plain white RGB image of
``side`` x ``side`` pixels; the TIFF is ``frames`` white Group 4 pages of ``width`` x ``height`` sharing one strip.
Also :func:`peak_rss` (a process's high-water mark of resident memory, from ``/proc``).
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

_MIB = 1 << 20


def deflate_repeated(prefix: bytes, chunk: bytes, count: int, suffix: bytes) -> bytes:
    """A zlib stream of ``prefix``, ``count`` times ``chunk``, then ``suffix`` (its checksum true)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: the header and checksum are written here
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    assert block == again  # after a full flush, the same input gives the same bytes
    checksum = zlib.adler32(prefix)
    for _ in range(count):
        checksum = zlib.adler32(chunk, checksum)
    checksum = zlib.adler32(suffix, checksum)
    body = head + block * count + c.compress(suffix) + c.flush()
    return b"\x78\xda" + body + struct.pack(">I", checksum)


def pdf_object_stream_bomb(expanded_mib: int) -> bytes:
    """A one-page PDF whose Catalog, Pages and Page are in an object stream of about ``expanded_mib`` MiB."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>"]  # fmt: skip
    pad = expanded_mib * _MIB
    offsets, body = [], b""
    for obj in objects:
        offsets.append(pad + len(body))
        body += obj + b"\n"
    header = b" ".join(b"%d %d" % (n + 1, off) for n, off in enumerate(offsets)) + b"\n"
    data = deflate_repeated(header, b" " * _MIB, expanded_mib, body)
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    objstm_at = len(out)
    out += b"4 0 obj\n<< /Type /ObjStm /N 3 /First %d /Length %d /Filter /FlateDecode >>\nstream\n" % (
        len(header), len(data))
    out += data + b"\nendstream\nendobj\n"
    xref_at = len(out)
    rows = [(0, 0, 65535)] + [(2, 4, i) for i in range(3)] + [(1, objstm_at, 0), (1, xref_at, 0)]
    table = b"".join(struct.pack(">BIH", *row) for row in rows)
    out += b"5 0 obj\n<< /Type /XRef /Size 6 /W [1 4 2] /Root 1 0 R /Length %d >>\nstream\n" % len(table)
    out += table + b"\nendstream\nendobj\nstartxref\n%d\n%%%%EOF\n" % xref_at
    return bytes(out)


def _chunks(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int) -> bytes:
    """A white RGB PNG of ``side`` x ``side`` pixels (rows of filter 0 and 0xff), a few hundred KB at most."""
    row = b"\x00" + b"\xff" * (3 * side)
    rows_per_block = max(1, _MIB // len(row))
    full, rest = divmod(side, rows_per_block)
    idat = deflate_repeated(b"", row * rows_per_block, full, row * rest)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunks(b"IHDR", ihdr) + _chunks(b"IDAT", idat) + _chunks(b"IEND", b"")


def tiff_bomb(frames: int, width: int, height: int) -> bytes:
    """``frames`` white 1-bit Group 4 pages of ``width`` x ``height``, all drawing the same few KB of strip.

    Pillow encodes one page; its directory (IFD) is then copied ``frames - 1`` times and chained.
    """
    out = io.BytesIO()
    Image.new("1", (width, height), 1).save(out, "TIFF", compression="group4", strip_size=2**30)
    data = bytearray(out.getvalue())
    assert data[:4] == b"II*\x00"
    first = struct.unpack_from("<I", data, 4)[0]
    count = struct.unpack_from("<H", data, first)[0]
    entries = bytes(data[first + 2 : first + 2 + 12 * count])
    at = first + 2 + 12 * count  # the "next IFD" pointer of the page Pillow wrote
    for _ in range(frames - 1):
        struct.pack_into("<I", data, at, len(data))
        data += struct.pack("<H", count) + entries
        at = len(data)
        data += b"\x00\x00\x00\x00"
    return bytes(data)


def peak_rss(pid: int) -> int:
    """The most resident memory process ``pid`` has used so far (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")  # pragma: no cover - Linux always has it
