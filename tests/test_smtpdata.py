"""The chunked DATA reader: the same message as a line-by-line reading, whatever the chunks."""

from __future__ import annotations

import asyncio
import random

import pytest

from gateway.smtp.data import Data, read_data
from tests.support_smtp import Raw, Starter, fax_mail

MAX_LINE = 1000
MAX_SIZE = 4000


def by_lines(stream: bytes, *, max_size: int = MAX_SIZE, max_line: int = MAX_LINE) -> tuple[Data, bytes]:
    """RFC 5321 read one CRLF-ended line at a time (aiosmtpd's way): the data and what follows it."""
    lines, size, problem, pos = [], 0, "", 0
    while True:
        eol = stream.index(b"\r\n", pos) + 2
        line, pos = stream[pos:eol], eol
        if line == b".\r\n":
            break
        size += len(line)
        if not problem and len(line) > max_line:
            problem = "line"
        if not problem and size > max_size:
            problem = "size"
        lines.append(line[1:] if line.startswith(b".") else line)
    data = Data(b"", problem) if problem else Data(b"".join(lines))  # type: ignore[arg-type]
    return data, stream[pos:]


async def by_chunks(
    stream: bytes, chunk: int, *, max_size: int = MAX_SIZE, max_line: int = MAX_LINE
) -> tuple[Data, bytes]:
    """``read_data`` taking ``chunk`` bytes at a time; the data and what is left in the reader."""
    reader = asyncio.StreamReader()
    reader.feed_data(stream)
    reader.feed_eof()
    data = await read_data(reader, max_size=max_size, max_line=max_line, chunk=chunk)
    return data, await reader.read()


# Each ends in the end-of-data line, followed by what a pipelining client sends next.
STREAMS = [
    b".\r\nQUIT\r\n",  # an empty message
    b"Subject: x\r\n\r\nbody\r\n.\r\n",
    b"..leading dot\r\n.\r\n\r\n.\r\nMAIL FROM:<a@b.c>\r\n",  # a line of one dot, sent as two
    b".x\r\n..\r\nend\r\n.\r\nQUIT\r\n",
    b"bare\nLF\n.\nstill data\r\n.\n\r\nand\r.\r\n\r\n.\r\n",  # only CRLF . CRLF ends it
    b"a\r\n" + b"y" * (MAX_LINE - 2) + b"\r\n.\r\n",  # the longest line allowed
    b"a\r\n" + b"y" * (MAX_LINE - 1) + b"\r\nmore\r\n.\r\nNOOP\r\n",  # one octet too long
    b"y" * (MAX_LINE * 3) + b"\r\n.\r\n",  # far too long, in many chunks
    b"z" * 998 + b"\r\n" + b"z" * 998 + b"\r\n" + b"z" * 998 + b"\r\n" + b"z" * 998 + b"\r\n.\r\n",  # exactly MAX_SIZE
    b"z" * 998 + b"\r\n" + b"z" * 998 + b"\r\n" + b"z" * 998 + b"\r\n" + b"z" * 999 + b"\r\n.\r\n",  # one over
    b"x" * 5000 + b"\r\n" + b"y" * 1500 + b"\r\n.\r\nQUIT\r\n",  # line and size: the line is met first
]


@pytest.mark.parametrize("stream", STREAMS, ids=range(len(STREAMS)))
async def test_every_split_gives_what_a_line_by_line_reading_gives(stream: bytes) -> None:
    expected = by_lines(stream)
    for chunk in [*range(1, 80), 997, 998, 999, 1000, 1001, 1002, 4096, len(stream)]:
        assert await by_chunks(stream, chunk) == expected, chunk


async def test_random_messages_agree_with_a_line_by_line_reading() -> None:
    rng = random.Random(7)
    pieces = [b"\r\n", b"\n", b"\r", b".", b"..", b"\r\n.", b"a", b"bc", b"\r\n..\r\n", b"x" * 400]
    for _ in range(300):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        stream = body.replace(b"\r\n.\r\n", b"\r\n..\r\n") + b"\r\n.\r\nQUIT\r\n"
        if stream.startswith(b".\r\n"):
            stream = b"." + stream
        limits = {"max_size": rng.choice([100, 4000]), "max_line": rng.choice([50, 1000])}
        chunk = rng.randint(1, 50)
        assert await by_chunks(stream, chunk, **limits) == by_lines(stream, **limits), (stream, chunk)


async def test_a_client_gone_in_the_middle_of_the_data_ends_the_reading() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"Subject: x\r\n\r\nhalf a mess")
    reader.feed_eof()
    with pytest.raises(asyncio.CancelledError):
        await read_data(reader, max_size=MAX_SIZE, max_line=MAX_LINE)


async def test_a_message_sent_in_tiny_pieces_and_pipelined_quit_through_the_server(smtp_gateway: Starter) -> None:
    h = await smtp_gateway()
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO mfp")
    assert (await raw.cmd("MAIL FROM:<alice@example.com>")).startswith("250")
    assert (await raw.cmd("RCPT TO:<0145678900@fax.local>")).startswith("250")
    assert (await raw.cmd("DATA")).startswith("354")
    message = fax_mail() + b".a line that starts with a dot\r\n"
    wire = message.replace(b"\r\n.", b"\r\n..") + b".\r\nQUIT\r\n"
    for i in range(0, 600, 3):  # the first 600 bytes a few at a time, then the rest with QUIT
        await raw.send(wire[i : i + 3])
    await raw.send(wire[600:])
    assert (await raw.reply()).startswith("250 2.0.0 OK: queued as ")
    assert (await raw.reply()).startswith("221")
    await raw.close()
    job = (await h.jobs())[0]
    assert h.spool.read(job.message_id, "message.eml") == message
