"""Bounds on what decoding one mail's documents may cost, measured before any library decodes them.

In: the raw bytes of a PDF, or the sizes an image or a PDF declares, and the document settings.
Out: nothing, or ``formats.Unfit("limits")`` whose text names the setting that was passed.

- ``documents.max_stream_bytes``: the bytes all streams of the mail's PDFs decode to, object
  streams and cross-reference streams included (pikepdf decodes those as soon as it opens a file
  and counts its pages; pikepdf's own save and PDFium decode the others). :func:`pdf_streams`
  finds every ``N G obj << ... >> stream`` in the raw bytes, reads its /Filter and /Length, and
  decodes it through its generic filters (Flate, LZW, RunLength, ASCIIHex, ASCII85) in chunks,
  counting and discarding what comes out: memory stays a few MB and the work stops at the bound.
  Image filters (DCT, JPX, JBIG2, CCITT) end the count: pixels bound those.
- ``documents.max_image_pixels`` (one image or frame) and ``documents.max_total_pixels`` (every
  image and frame of the mail), from the headers, before anything is decoded (:meth:`Budget.images`).

Blocking, pure Python and zlib: runs where the rest of the examination runs.
"""

from __future__ import annotations

import base64
import re
import zlib
from collections.abc import Iterable, Iterator

from gateway.documents.formats import Unfit
from gateway.settings import DocumentSettings

# Decoded bytes taken from zlib at a time (the most held at once, per filter of a chain).
CHUNK = 1 << 20
# Compressed bytes given to zlib at a time.
_FEED = 1 << 14
_OBJ = re.compile(rb"(?<![0-9])[0-9]{1,10}[ \t\r\n\f\0]+[0-9]{1,5}[ \t\r\n\f\0]+obj(?![A-Za-z])")
_WHITE = b" \t\r\n\f\0"
_DELIMS = b"()<>[]{}/%"
_ABBREVIATIONS = {"Fl": "FlateDecode", "LZW": "LZWDecode", "RL": "RunLengthDecode", "AHx": "ASCIIHexDecode",
                  "A85": "ASCII85Decode"}  # fmt: skip
GENERIC = ("FlateDecode", "LZWDecode", "RunLengthDecode", "ASCIIHexDecode", "ASCII85Decode")


class Budget:
    """What one mail's documents may still cost: decoded stream bytes, and pixels."""

    def __init__(self, settings: DocumentSettings) -> None:
        self.settings = settings
        self.stream_bytes = 0
        self.pixels = 0

    def images(self, sizes: list[tuple[int, int]], what: str) -> None:
        """Count images (the frames of one file, or those of one page) before any is decoded; Unfit past a bound.

        ``what`` says what they are in a refusal ("an image", "page 2 holds an image").
        """
        s = self.settings
        self.pixels += sum(width * height for width, height in sizes)
        if self.pixels > s.max_total_pixels:
            raise Unfit("limits", f"{what} of more than {s.max_total_pixels} pixels in all its frames, with the "
                                  "other images of the mail (documents.max_total_pixels)")  # fmt: skip
        for width, height in sizes:
            if width * height > s.max_image_pixels:
                raise Unfit("limits", f"{what} of {width}x{height} pixels is too large (over "
                                      f"documents.max_image_pixels, {s.max_image_pixels})")  # fmt: skip

    def decoded(self, count: int) -> None:
        self.stream_bytes += count
        if self.stream_bytes > self.settings.max_stream_bytes:
            raise Unfit("limits", f"the PDF streams of this mail decode to more than {self.settings.max_stream_bytes}"
                                  " bytes (documents.max_stream_bytes)")  # fmt: skip


def pdf_streams(data: bytes, budget: Budget) -> None:
    """Decode every stream of ``data`` through its generic filters, counting into ``budget`` (see the docstring)."""
    view = memoryview(data)
    for m in _OBJ.finditer(data):
        try:
            value, pos = _Parser(data, m.end()).parse_at()
        except (ValueError, IndexError, RecursionError):
            continue  # not an object qpdf would read either, or one without a dictionary
        if not isinstance(value, dict):
            continue
        start = _stream_start(data, pos)
        if start is None:
            continue
        end = data.find(b"endstream", start)
        end = len(data) if end < 0 else end
        length = value.get("Length")
        if isinstance(length, int) and 0 <= length <= end - start:
            end = start + length
        _decode(view[start:end], _filters(value.get("Filter")), budget)


def _stream_start(data: bytes, pos: int) -> int | None:
    """Where the data of a stream begins, if the keyword ``stream`` follows the dictionary ending at ``pos``."""
    while pos < len(data) and data[pos] in _WHITE:
        pos += 1
    if not data.startswith(b"stream", pos):
        return None
    pos += 6
    if data.startswith(b"\r\n", pos):
        return pos + 2
    return pos + 1 if data[pos : pos + 1] in (b"\n", b"\r") else pos


def _filters(value: object) -> list[str]:
    """The filter names of a stream; one that is not a name (an indirect reference) is taken to be Flate."""
    items = value if isinstance(value, list) else [] if value is None else [value]
    names = []
    for item in items:
        name = item[1:] if isinstance(item, str) and item.startswith("/") else "FlateDecode"
        names.append(_ABBREVIATIONS.get(name, name))
    return names


def _decode(raw: memoryview, filters: list[str], budget: Budget) -> None:
    """Run ``raw`` through the chain's generic filters, each stage's output counted as it comes."""
    chunks: Iterable[bytes] = iter([bytes(raw)])
    for name in filters:
        if name not in GENERIC:
            break  # an image filter: pixels bound what it gives
        chunks = _charged(_DECODERS[name](chunks), budget)
    for _ in chunks:
        pass


def _charged(chunks: Iterable[bytes], budget: Budget) -> Iterator[bytes]:
    for chunk in chunks:
        budget.decoded(len(chunk))
        yield chunk


def _flate(chunks: Iterable[bytes]) -> Iterator[bytes]:
    d = zlib.decompressobj()
    try:
        for whole in chunks:
            for at in range(0, len(whole), _FEED):
                chunk = whole[at : at + _FEED]  # small pieces: zlib copies what it has not consumed yet
                while chunk and not d.eof:
                    out = d.decompress(chunk, CHUNK)
                    if out:
                        yield out
                    chunk = d.unconsumed_tail
                if d.eof:
                    return
        tail = d.flush(CHUNK)
        if tail:
            yield tail
    except zlib.error:
        return  # damaged data: qpdf stops decoding there too


def _run_length(chunks: Iterable[bytes]) -> Iterator[bytes]:
    data = b"".join(chunks)
    out = bytearray()
    i = 0
    while i < len(data):
        n = data[i]
        if n == 128:
            break
        if n < 128:
            out += data[i + 1 : i + 2 + n]
            i += 2 + n
        else:
            out += data[i + 1 : i + 2] * (257 - n)
            i += 2
        if len(out) >= CHUNK:
            yield bytes(out)
            out.clear()
    yield bytes(out)


def _ascii_hex(chunks: Iterable[bytes]) -> Iterator[bytes]:
    text = bytes(b for b in b"".join(chunks).split(b">", 1)[0] if b not in _WHITE)
    try:
        yield bytes.fromhex((text + b"0" * (len(text) % 2)).decode("ascii"))
    except ValueError:
        return


def _ascii85(chunks: Iterable[bytes]) -> Iterator[bytes]:
    text = b"".join(chunks).split(b"~>", 1)[0]
    text = text[2:] if text.lstrip().startswith(b"<~") else text
    try:
        yield base64.a85decode(text, ignorechars=_WHITE)
    except ValueError:
        return


def _lzw(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """LZWDecode (EarlyChange 1), chunk by chunk; the table's entries are at most 4,096 strings."""
    data = b"".join(chunks)
    table: list[bytes] = [bytes([i]) for i in range(256)] + [b"", b""]
    width, bits, nbits, previous = 9, 0, 0, b""
    out = bytearray()
    for byte in data:
        bits, nbits = (bits << 8) | byte, nbits + 8
        while nbits >= width:
            nbits -= width
            code = (bits >> nbits) & ((1 << width) - 1)
            if code == 256:
                table, width, previous = table[:258], 9, b""
                continue
            if code == 257:
                yield bytes(out)
                return
            if code < len(table):
                entry = table[code]
                if previous:
                    table.append(previous + entry[:1])
            elif previous:
                entry = previous + previous[:1]
                table.append(entry)
            else:
                yield bytes(out)
                return
            out += entry
            previous = entry
            if len(table) + 1 >= 1 << width and width < 12:
                width += 1
            if len(out) >= CHUNK:
                yield bytes(out)
                out.clear()
        bits &= (1 << nbits) - 1
    yield bytes(out)


_DECODERS = {"FlateDecode": _flate, "LZWDecode": _lzw, "RunLengthDecode": _run_length,
             "ASCIIHexDecode": _ascii_hex, "ASCII85Decode": _ascii85}  # fmt: skip


class _Parser:
    """Just enough of PDF's object syntax (ISO 32000 7.3) to read a stream's dictionary."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos, self.depth = data, pos, 0

    def parse_at(self) -> tuple[object, int]:
        return self.value(), self.pos

    def skip(self) -> None:
        data = self.data
        while self.pos < len(data):
            c = data[self.pos]
            if c in _WHITE:
                self.pos += 1
            elif c == 0x25:  # % comment to the end of the line
                while self.pos < len(data) and data[self.pos] not in b"\r\n":
                    self.pos += 1
            else:
                return

    def value(self) -> object:
        self.depth += 1
        if self.depth > 32:
            raise ValueError("nested too deep")
        try:
            return self._value()
        finally:
            self.depth -= 1

    def _value(self) -> object:
        self.skip()
        data = self.data
        if data.startswith(b"<<", self.pos):
            self.pos += 2
            out: dict[str, object] = {}
            while True:
                self.skip()
                if data.startswith(b">>", self.pos):
                    self.pos += 2
                    return out
                key = self.value()
                if not isinstance(key, str) or not key.startswith("/"):
                    raise ValueError("a dictionary key is not a name")
                out[key[1:]] = self.value()
        c = data[self.pos : self.pos + 1]
        if c == b"[":
            self.pos += 1
            items: list[object] = []
            while True:
                self.skip()
                if data.startswith(b"]", self.pos):
                    self.pos += 1
                    return items
                items.append(self.value())
        if c == b"(":
            return self._string()
        if c == b"<":
            end = data.index(b">", self.pos)
            self.pos = end + 1
            return b""
        if c == b"/":
            start = self.pos
            self.pos += 1
            while self.pos < len(data) and data[self.pos] not in _WHITE and data[self.pos] not in _DELIMS:
                self.pos += 1
            return data[start : self.pos].decode("latin-1")
        return self._number_or_keyword()

    def _string(self) -> bytes:
        data, depth = self.data, 0
        while True:
            c = data[self.pos]
            self.pos += 1
            if c == 0x5C:  # backslash: the next byte is escaped
                self.pos += 1
            elif c == 0x28:
                depth += 1
            elif c == 0x29:
                depth -= 1
                if depth == 0:
                    return b""

    def _number_or_keyword(self) -> object:
        data = self.data
        start = self.pos
        while self.pos < len(data) and data[self.pos] not in _WHITE and data[self.pos] not in _DELIMS:
            self.pos += 1
        token = data[start : self.pos]
        if not token:
            raise ValueError("unexpected delimiter")
        if re.fullmatch(rb"[0-9]+", token):
            after = self.pos
            ref = re.compile(rb"[ \t\r\n\f\0]+[0-9]+[ \t\r\n\f\0]+R(?![A-Za-z])").match(data, after)
            if ref:
                self.pos = ref.end()
                return ("ref", int(token))
            return int(token)
        if re.fullmatch(rb"[+-]?[0-9]*\.?[0-9]*", token):
            return token.decode("ascii")
        return token.decode("latin-1")
