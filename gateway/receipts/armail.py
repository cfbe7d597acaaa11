"""Reading the provider's receipt (AR) mail: the receipt it carries, if it can be read.

In: the raw bytes of an AR copy the provider mailed (``accuse_email``). Out:
the callback's parameters (``etat_e``, ``ref_accuse``, ``numero``,
``nb_page``, ``heure``) as found in the French text (``Référence d'envoi :``,
``État : <code>``, ``Pages transmises :``, ``Heure d'arrivée :``,
``Numéro du destinataire :``), or None. Pure. The values still go through the
callback's validation; a mail that cannot be read is forwarded as it came.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage

_FIELDS = {
    "ref_accuse": re.compile(r"R[ée]f[ée]rence d'envoi\s*:\s*(\S+)", re.IGNORECASE),
    "etat_e": re.compile(r"[ÉE]tat\s*:\s*(\d+)", re.IGNORECASE),
    "nb_page": re.compile(r"Pages?\s+transmises?\s*:\s*(\d+)", re.IGNORECASE),
    "heure": re.compile(r"Heure d'arriv[ée]e\s*:\s*([^\r\n]*)", re.IGNORECASE),
    "numero": re.compile(r"Num[ée]ro (?:du destinataire|de fax)\s*:\s*(\+?\d+)", re.IGNORECASE),
}
_MAX_TEXT = 64 * 1024


def _text_of(raw: bytes) -> str:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    if not isinstance(msg, EmailMessage):  # pragma: no cover - the default policy makes EmailMessage
        return ""
    body = msg.get_body(("plain",))
    text = ""
    if body is not None:
        try:
            content = body.get_content()
        except (LookupError, ValueError):  # an unknown charset or a damaged part: nothing to read
            content = ""
        text = content if isinstance(content, str) else ""
    return text[:_MAX_TEXT]


def receipt_in_mail(raw: bytes) -> list[tuple[str, str]] | None:
    """The receipt parameters an AR mail carries, or None when it does not name a reference and a code."""
    text = _text_of(raw)
    found = [(name, m.group(1).strip()) for name, pattern in _FIELDS.items() if (m := pattern.search(text))]
    names = {name for name, _ in found}
    return found if {"ref_accuse", "etat_e"} <= names else None
