"""Masking secrets in text that may reach a log line, an error, a record or a mail.

In: any text (an exception message from aiohttp holds the whole request URL)
and the secrets to hide. Out: the same text with every secret, in its plain and
percent-encoded forms, and every secret-carrying query value (``pass=``,
``X-Amz-Signature=``, ``X-Amz-Credential=``, ``Signature=`` ...) replaced by
``********``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

from gateway.settings import Secret

MASK = "********"

# Query parameters whose value is a secret wherever they appear: the provider
# password, and the signature parts of presigned S3 URLs (SigV4 and SigV2).
_SECRET_PARAMS = re.compile(
    r"(?i)(?<![A-Za-z0-9_-])"
    r"(pass|password|X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|AWSAccessKeyId)"
    r"(=|%3D)"
    r"([^&\s\"'<>]*)"
)


def _forms(secret: str) -> set[str]:
    """The ways a secret can show up in text: as is, and percent-encoded."""
    return {secret, quote(secret, safe=""), quote_plus(secret, safe=""), quote(secret)}


def redact(text: str, secrets: Iterable[str | Secret] = ()) -> str:
    """Return ``text`` with ``secrets`` and secret query values masked."""
    values = [s.reveal() if isinstance(s, Secret) else s for s in secrets]
    forms = {form for value in values if value for form in _forms(value)}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return _SECRET_PARAMS.sub(lambda m: f"{m[1]}{m[2]}{MASK}" if m[3] else m[0], text)


def secrets_of(settings: object) -> list[str]:
    """Every non-empty :class:`Secret` value in a settings tree (for log filters)."""
    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, Secret):
            if value:
                found.append(value.reveal())
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name))

    walk(settings)
    return found
