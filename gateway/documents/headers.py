"""The headers of a message that its receipts and its timeline quote.

In: the raw bytes of a message. Out: :class:`Headers` (Message-ID, From,
Reply-To, Subject, Date), each on one line, stripped of control characters and
at most 998 characters (RFC 5322's line limit); the Subject decoded for a
person (RFC 2047 encoded words, raw UTF-8 or Latin-1: :mod:`gateway.text`),
the addresses as written (the notifier picks from them); the cover page keywords
``[cover]`` and ``[nocover]`` left out of the Subject. Only the header block
is parsed: the body can be megabytes. Pure.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
from dataclasses import dataclass

from gateway.documents.outcomes import without_keywords
from gateway.text import clean, display


@dataclass(frozen=True)
class Headers:
    message_id: str
    header_from: str
    reply_to: str
    subject: str
    date: str


class _AsWritten(email.policy.Compat32):
    """compat32, but a value is given as written: compat32 turns escaped 8-bit bytes into U+FFFD."""

    def header_fetch_parse(self, name: str, value: str) -> str:
        return value


_AS_WRITTEN = _AsWritten()


# The empty line that ends the header block, whatever the line ends (as the email parser splits lines).
_END_OF_HEADERS = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r(?!\n))")


def read_headers(raw: bytes) -> Headers:
    """The quoted headers of ``raw``; a header that is missing is empty."""
    end = _END_OF_HEADERS.search(raw)
    block = b"" if raw[:1] in (b"\r", b"\n") else raw[: end.end()] if end else raw
    # Raw 8-bit headers (BODY=8BITMIME) are read as UTF-8; bytes that are not UTF-8 stay escaped, and
    # gateway.text.display reads them as Latin-1.
    msg = email.parser.HeaderParser(policy=_AS_WRITTEN).parsestr(block.decode("utf-8", "surrogateescape"))

    def get(name: str) -> str:
        value = msg.get(name, "")
        return clean(" ".join(str(value).split()), 998)

    # [cover] and [nocover] ask for a cover page (gateway.documents.cover): not part of the subject shown.
    subject = clean(" ".join(without_keywords(display(get("Subject"))).split()), 998)
    return Headers(get("Message-ID"), get("From"), get("Reply-To"), subject, get("Date"))
