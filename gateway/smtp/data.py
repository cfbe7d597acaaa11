"""The DATA section of an SMTP transaction, read in chunks.

In: a session's ``asyncio.StreamReader`` right after the 354 reply. Out: the
message as the client meant it (RFC 5321 4.5.2: leading dots removed, the
end-of-data line left out), or why it cannot be taken, ``"line"`` (a line
longer than the limit) or ``"size"`` (more than the limit): the section is
always read to its end, so that the session can answer and go on (RFC 5321
4.2.5), and bytes after the end-of-data line stay in the reader for the next
command (pipelining).

aiosmtpd reads DATA one line at a time and keeps every line as an object
until the end; a 1 MiB message is about 14,000 awaits and objects. Here the
bytes go into one buffer as they arrive, and the work per chunk (finding the
end, measuring the lines) is done by ``bytes.find`` and ``bytes.split``.

Only ``<CRLF>.<CRLF>`` ends the data, as a line of its own: a bare LF or CR
never does (SMTP smuggling), the same rule as aiosmtpd's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

from gateway.smtp import library

# Bytes taken from the reader at a time.
CHUNK = 64 * 1024
_END = b"\r\n.\r\n"
# The buffer starts as if a line had just ended: the first line is then like
# any other, for the end-of-data line and for dot removal.
_START = b"\r\n"
Problem = Literal["", "line", "size"]


@dataclass(frozen=True)
class Data:
    content: bytes
    problem: Problem = ""


async def read_data(reader: asyncio.StreamReader, *, max_size: int, max_line: int, chunk: int = CHUNK) -> Data:
    """Read up to and including the end-of-data line.

    ``max_line`` counts a line with its CRLF; ``max_size`` counts the data as
    sent (before dot removal, without the end-of-data line). The first
    problem met is the one reported; past it, the data is read and dropped.
    Raises ``asyncio.CancelledError`` if the connection ends first.
    """
    buf = bytearray(_START)
    line_start = len(_START)  # where the line being read starts in buf
    problem: Problem = ""
    while True:
        got = await reader.read(chunk)
        if not got:  # the client went away in the middle of the data
            raise asyncio.CancelledError
        old = len(buf)
        buf += got
        end = buf.find(_END, max(0, old - len(_END) + 1))
        data_end = end + 2 if end >= 0 else len(buf)  # the last line keeps its CRLF
        if not problem:
            problem, line_start = _lines(buf, old, line_start, data_end, max_line, max_size)
        if end >= 0:
            rest = bytes(buf[end + len(_END) :])
            if rest:
                _unread(reader, rest)
            if problem:
                return Data(b"", problem)
            del buf[data_end:]
            return Data(_undot(buf))
        if problem:  # keep only what can still be part of the end-of-data line
            del buf[: -len(_END)]
        if len(got) == chunk:  # more may be buffered: let the other sessions and timers run first
            await asyncio.sleep(0)


def _lines(
    buf: bytearray, old: int, line_start: int, data_end: int, max_line: int, max_size: int
) -> tuple[Problem, int]:
    """Judge the lines touched by the bytes from ``old``; the problem and where the unfinished line starts.

    Lines are judged in order, when they end: too long first, then over the
    size. A line already too long before its end is too long.
    """
    # One byte back: a CR at the end of the last chunk may end a line now.
    scan_from = max(line_start, old - 1)
    if data_end - line_start <= max_line - 2:  # no line here can be too long: only find where the last starts
        last = buf.rfind(b"\r\n", scan_from, data_end)
        last_start = last + 2 if last >= 0 else line_start
        return ("size" if last_start - len(_START) > max_size else ""), last_start
    lengths = list(map(len, buf[scan_from:data_end].split(b"\r\n")))
    lengths[0] += scan_from - line_start
    last_start = data_end - lengths[-1] if len(lengths) > 1 else line_start
    unfinished = lengths.pop()
    if data_end > last_start and buf[data_end - 1] == 0x0D:  # may be the start of its CRLF
        unfinished -= 1
    longest = max(lengths, default=0)
    if longest <= max_line - 2 and last_start - len(_START) <= max_size:
        return ("line" if unfinished > max_line - 2 else ""), last_start
    pos = line_start
    for length in lengths:  # there is a problem: which line meets it first
        pos += length + 2
        if length > max_line - 2:
            return "line", last_start
        if pos - len(_START) > max_size:
            return "size", last_start
    raise AssertionError("unreachable")  # pragma: no cover


def _undot(buf: bytearray) -> bytes:
    """RFC 5321 4.5.2: a line that starts with a dot loses that dot."""
    # Every line starts after a CRLF (the first after _START), and no line is
    # a lone dot: that would have ended the data.
    out = buf.replace(b"\r\n.", b"\r\n")
    del out[: len(_START)]
    return bytes(out)


def _unread(reader: asyncio.StreamReader, rest: bytes) -> None:
    """Give back bytes read past the end of the data: they are the next commands."""
    library.unread(reader, rest)  # StreamReader has no unread()
