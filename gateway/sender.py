"""Who "the sender" of a fax is: the person its receipts and notices go to.

MFPs send from a shared scanner address, so the choice is a setting: the
first usable of Reply-To, From and the envelope sender in
``notify.recipient_order``, then ``notify.sender_map`` (scanner address ->
person or team). Never a null sender, MAILER-DAEMON, or an address in a fax
domain (or the receipts domain): a notice there would loop or vanish.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from email.utils import getaddresses
from typing import Any, Protocol

from gateway.settings import Settings
from gateway.text import has_control

_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"\\]+@[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?$")
_NO_REPLY_LOCALS = frozenset({"mailer-daemon", "postmaster"})


def _first_address(value: str) -> str:
    if not value or has_control(value):
        return ""
    pairs = getaddresses([value])
    return pairs[0][1].strip() if pairs else ""


def usable(address: str, blocked_domains: Iterable[str]) -> bool:
    """Whether a notice may be sent to ``address``."""
    if not _ADDRESS.match(address) or has_control(address):
        return False
    local, _, domain = address.rpartition("@")
    domain = domain.lower().rstrip(".")
    if local.lower() in _NO_REPLY_LOCALS:
        return False
    return not any(domain == d.lower() or domain.endswith("." + d.lower()) for d in blocked_domains)


def _mapped(address: str, sender_map: Mapping[str, str]) -> str:
    lowered = address.lower()
    for key, target in sender_map.items():
        if key.lower() == lowered:
            return target
    return address


def choose_recipient(settings: Settings, reply_to: str, header_from: str, envelope_from: str) -> str:
    """The address that gets the notices, or "" when no candidate is usable."""
    blocked = (*settings.smtp.fax_domains, settings.provider.receipts_domain)
    candidates = {"reply-to": reply_to, "from": header_from, "envelope": envelope_from}
    for who in settings.notify.recipient_order:
        address = _first_address(candidates.get(who, ""))
        if usable(address, blocked):
            target = _mapped(address, settings.notify.sender_map)
            return target if usable(target, blocked) else ""
    return ""


class Row(Protocol):
    def __getitem__(self, key: str) -> Any: ...


def recipient_of_message(settings: Settings, message: Row) -> str:
    """:func:`choose_recipient` for a ``messages`` row."""
    return choose_recipient(
        settings, str(message["reply_to"] or ""), str(message["header_from"] or ""), str(message["envelope_from"] or "")
    )
