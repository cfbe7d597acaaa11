"""What the daemon knows of the document checks without loading them.

The checks (``policy`` and all it uses: libmagic, pikepdf, Pillow, pypdfium2,
numpy) run in the worker processes; the daemon gives them an
:class:`Envelope` and gets back an :class:`Extraction`, a
:class:`DocumentRefused` or :class:`Busy`, all defined here so that neither
making nor unpickling them imports the checks. Each is re-exported where it
was first named (``policy``, ``cover``, ``office``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from gateway.replies import Answer

# Subject keywords: [cover] and [nocover], any case, with the spaces around them.
KEYWORD = re.compile(r"\s*\[(no)?cover\]\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Envelope:
    """What the examination knows of a mail beyond its bytes (given by SMTP intake)."""

    numbers: tuple[str, ...] = ()
    received: float = 0.0  # Unix time
    language: str = "en"
    timezone: str = ""


def without_keywords(subject: str) -> str:
    return KEYWORD.sub(" ", subject).strip()


@dataclass(frozen=True)
class Extraction:
    document: bytes
    doc_type: str
    pages: int
    # What went in, in order: {"name", "type", "pages", "bytes"}.
    documents: list[dict[str, Any]] = field(default_factory=list)
    # What was left out (unsupported = "skip"): {"name", "type", "reason"}.
    skipped: list[dict[str, Any]] = field(default_factory=list)


class DocumentRefused(Exception):
    """The message cannot be faxed; ``reply`` is the SMTP answer, ``reason`` the policy reason.

    Reasons: no-document, type, empty, encoding, corrupt, encrypted, limits, too-big.
    ``str()`` of the exception is the reply line.
    """

    def __init__(self, reply: Answer, reason: str) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.reason = reason

    def __reduce__(self) -> tuple[type[DocumentRefused], tuple[Answer, str]]:
        # Raised in a worker process and pickled back: rebuilt from both arguments (``args`` has one).
        return DocumentRefused, (self.reply, self.reason)


class Busy(Exception):
    """No worker, or no conversion slot, was free in time: intake answers 451 and the client retries."""
