"""The headers of a message that its receipts and its timeline quote.

In: the raw bytes of a message. Out: :class:`Headers` (Message-ID, From,
Reply-To, Subject, Date), each on one line, stripped of control characters and
at most 998 characters (RFC 5322's line limit). Only the header block is
parsed: the body can be megabytes. Pure.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
from dataclasses import dataclass

from gateway.replies import clean


@dataclass(frozen=True)
class Headers:
    message_id: str
    header_from: str
    reply_to: str
    subject: str
    date: str


# The empty line that ends the header block, whatever the line ends (as the email parser splits lines).
_END_OF_HEADERS = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r(?!\n))")


def read_headers(raw: bytes) -> Headers:
    """The quoted headers of ``raw``; a header that is missing is empty."""
    end = _END_OF_HEADERS.search(raw)
    block = b"" if raw[:1] in (b"\r", b"\n") else raw[: end.end()] if end else raw
    msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)

    def get(name: str) -> str:
        value = msg.get(name, "")
        return clean(" ".join(str(value).split()), 998)

    return Headers(get("Message-ID"), get("From"), get("Reply-To"), get("Subject"), get("Date"))
