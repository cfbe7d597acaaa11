"""A minimal SMTP client that timestamps the end of DATA (for end-to-end latency).

One session per mail: EHLO, MAIL, RCPT, DATA, the message, QUIT. The time is
taken just before the final ``.`` line is written: the moment the sender's
side has handed over the whole message.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

_QUEUED = re.compile(r"queued as (\S+)")


class SmtpError(Exception):
    pass


@dataclass(frozen=True)
class Sent:
    end_of_data: float  # time.monotonic() just before the final "."
    replied: float  # when the reply to DATA arrived
    reply: str
    job_id: str


def dot_stuff(mail_crlf: bytes) -> bytes:
    """RFC 5321 4.5.2: double a leading dot; make sure the data ends with CRLF."""
    body = mail_crlf.replace(b"\r\n.", b"\r\n..")
    if body.startswith(b"."):
        body = b"." + body
    return body if body.endswith(b"\r\n") else body + b"\r\n"


async def _reply(reader: asyncio.StreamReader, expect: int) -> str:
    lines = []
    while True:
        line = (await reader.readline()).decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            raise SmtpError(f"connection closed while waiting for {expect}")
        lines.append(line)
        if len(line) < 4 or line[3] != "-":
            break
    if not lines[-1].startswith(str(expect)):
        raise SmtpError(f"expected {expect}, got: {' | '.join(lines)}")
    return lines[-1]


async def send(host: str, port: int, sender: str, recipient: str, stuffed: bytes, timeout: float = 60.0) -> Sent:
    """Send one mail whose data is already dot-stuffed (see :func:`dot_stuff`)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            await _reply(reader, 220)
            for command, code in ((b"EHLO bench.example", 250), (f"MAIL FROM:<{sender}>".encode(), 250),
                                  (f"RCPT TO:<{recipient}>".encode(), 250), (b"DATA", 354)):  # fmt: skip
                writer.write(command + b"\r\n")
                await _reply(reader, code)
            writer.write(stuffed)
            await writer.drain()
            end = time.monotonic()
            writer.write(b".\r\n")
            reply = await _reply(reader, 250)
            replied = time.monotonic()
            writer.write(b"QUIT\r\n")
            await writer.drain()
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
    m = _QUEUED.search(reply)
    return Sent(end, replied, reply, m[1].rstrip(".,;") if m else "")
