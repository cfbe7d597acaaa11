"""What a delivery step can end in, as types; the worker alone turns them into state.

The provider client and the storage backends raise these; they never decide
backoff, holds or give-up themselves. Every ``reason`` is words for a person
and never holds a secret (password, callback secret, presigned signature).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True)
class Submission:
    """One provider request: ``job_id`` is sent as ``ref``; ``number`` is E.164."""

    job_id: str
    number: str
    document_url: str
    accuse_email: str = ""


@dataclass(frozen=True)
class Accepted:
    """Answer 113: the fax is on its way; ``ref_accuse`` is the provider's reference."""

    code: str
    ref_accuse: str


class HoldKind(enum.StrEnum):
    CONFIG = "config"  # 101-104, 106: our configuration (or a bug); submissions pause
    URL = "url"  # 105: the provider could not fetch the document
    CREDIT = "credit"  # 108, 112: no credit; retried on a timer


class DeliveryOutcome(Exception):
    """Base of every non-success outcome."""

    def __init__(self, reason: str, *, code: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class PermanentFailure(DeliveryOutcome):
    """The fax cannot be sent as it is (107, 109-111). ``bug_alert``: the gateway should have caught it."""

    def __init__(self, reason: str, *, code: str = "", bug_alert: bool = False) -> None:
        super().__init__(reason, code=code)
        self.bug_alert = bug_alert


class Hold(DeliveryOutcome):
    """Stop and wait for a person (or, for credit, a timer)."""

    def __init__(self, reason: str, *, kind: HoldKind, code: str = "") -> None:
        super().__init__(reason, code=code)
        self.kind = kind


class Retry(DeliveryOutcome):
    """The request certainly did not reach the other side: try again with backoff."""


class Ambiguous(DeliveryOutcome):
    """The request may have reached the provider without a usable answer: never resend at once."""
