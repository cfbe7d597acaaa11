"""Who may send: trusted client networks, AUTH users, sender allow-lists, AUTH back-off.

In: the client's address, the AUTH user if any, the envelope sender. Out: the
network or user that vouches for the client and whether the sender is one it
may use. The SMTP handler turns a "no" into 530 5.7.0 (AUTH would help),
550 5.7.1 (it would not) or, after repeated AUTH failures from one address,
454 4.7.0 for a growing while (:class:`AuthThrottle`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gateway import passwords as auth
from gateway.backoff import doubling
from gateway.networks import parse_address, parse_network
from gateway.settings import Network, User

MAX_BACKOFF_SECONDS = 3600.0
_MAX_TRACKED = 4096


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


@dataclass
class _Failures:
    count: int
    last: float


class AuthThrottle:
    """Failed AUTH per client address: after ``threshold`` failures, refuse for a while.

    The pause doubles with each further failure (capped at an hour) and starts
    from the last failure; a success forgets the address.
    """

    def __init__(self, threshold: int, backoff_seconds: float, clock: Callable[[], float]) -> None:
        self.threshold = threshold
        self.backoff_seconds = backoff_seconds
        self.clock = clock
        self._failures: dict[str, _Failures] = {}

    def _pause(self, f: _Failures) -> float:
        if f.count < self.threshold:
            return 0.0
        return doubling(self.backoff_seconds, f.count - self.threshold, MAX_BACKOFF_SECONDS)

    def blocked(self, ip: str) -> bool:
        f = self._failures.get(ip)
        return f is not None and self.clock() < f.last + self._pause(f)

    def failed(self, ip: str) -> None:
        now = self.clock()
        f = self._failures.setdefault(ip, _Failures(0, now))
        f.count, f.last = f.count + 1, now
        if len(self._failures) > _MAX_TRACKED:
            self._failures = {k: v for k, v in self._failures.items() if now < v.last + MAX_BACKOFF_SECONDS}

    def succeeded(self, ip: str) -> None:
        self._failures.pop(ip, None)
