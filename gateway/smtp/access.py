"""Who may send: trusted client networks, AUTH users, sender allow-lists, AUTH back-off.

In: the client's address, the AUTH user if any, the envelope sender. Out: the
network or user that vouches for the client and whether the sender is one it
may use. The SMTP handler turns a "no" into 530 5.7.0 (AUTH would help),
550 5.7.1 (it would not) or, after repeated AUTH failures from one address,
454 4.7.0 for a growing while (:class:`~gateway.throttle.AuthThrottle`, on the
ground floor: the web console's login uses it too).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from gateway import passwords as auth
from gateway.networks import parse_address, parse_network
from gateway.settings import Network, User
from gateway.throttle import AuthThrottle

__all__ = ["AuthThrottle", "check_user", "client_network", "sender_allowed"]


def client_network(ip: str, networks: Iterable[Network]) -> Network | None:
    """The first trusted network holding ``ip`` (see :mod:`gateway.networks`)."""
    address = parse_address(ip)
    if address is None:
        return None
    return next((net for net in networks if address in parse_network(net.cidr)), None)


def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile("[^@]*".join(re.escape(part) for part in pattern.lower().split("*")))


def sender_allowed(sender: str, patterns: Iterable[str]) -> bool:
    """Whether ``sender`` matches one of ``patterns`` (``*@example.com``); no patterns: any."""
    compiled = [_pattern(p) for p in patterns]
    return not compiled or any(p.fullmatch(sender.lower()) for p in compiled)


def check_user(users: Iterable[User], login: bytes, password: bytes) -> User | None:
    """The user whose name and password match; blocking (scrypt): run it in a thread."""
    user = next((u for u in users if u.name.encode() == login), None)
    ok = auth.verify_password(password, user.password_hash if user else None)
    return user if ok else None
