"""Documents: find what to fax in a mail and build the one document sent.

In: the raw bytes of a message and the document settings. Out: an
:class:`Extraction` (the fax document, its type and page count, what went into
it), or :class:`DocumentRefused` carrying the SMTP reply that tells the sender
what to change. Blocking: callers run it off the event loop.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass, field
from typing import Any

from . import replies
from .settings import DocumentSettings


@dataclass(frozen=True)
class Extraction:
    document: bytes
    doc_type: str
    pages: int
    documents: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)


class DocumentRefused(Exception):
    def __init__(self, reply: str, reason: str) -> None:
        super().__init__(reply)
        self.reply = reply
        self.reason = reason


def extract(raw: bytes, settings: DocumentSettings) -> Extraction:
    """Provisional seam: the first attachment part, unchecked."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    for part in msg.walk():
        if part.is_multipart() or part.get_content_maintype() == "text":
            continue
        data = part.get_payload(decode=True)
        if isinstance(data, bytes) and data:
            return Extraction(data, "pdf", 1, [{"name": part.get_filename() or "", "type": "pdf", "pages": 1}])
    raise DocumentRefused(str(replies.NO_DOCUMENT), "no-document")
