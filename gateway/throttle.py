"""Failed logins per client address: after a few, each further try is refused for a growing while.

In: a client address and whether its last try failed or succeeded (SMTP AUTH, the web
console's login), and a clock. Out: whether that address is to be refused now, without
checking its password (a flood costs no scrypt). The pause doubles with each further
failure (capped at an hour) and starts from the last failure; a success forgets the
address. Addresses are forgotten an hour after their last failure once many are tracked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.backoff import doubling

MAX_BACKOFF_SECONDS = 3600.0
_MAX_TRACKED = 4096


@dataclass
class _Failures:
    count: int
    last: float


class AuthThrottle:
    """Failed tries per client address: after ``threshold`` failures, refuse for a while."""

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

    def retry_after(self, ip: str) -> float:
        """Seconds until ``ip`` may try again (0: now)."""
        f = self._failures.get(ip)
        return 0.0 if f is None else max(0.0, f.last + self._pause(f) - self.clock())

    def failed(self, ip: str) -> None:
        now = self.clock()
        f = self._failures.setdefault(ip, _Failures(0, now))
        f.count, f.last = f.count + 1, now
        if len(self._failures) > _MAX_TRACKED:
            self._failures = {k: v for k, v in self._failures.items() if now < v.last + MAX_BACKOFF_SECONDS}

    def succeeded(self, ip: str) -> None:
        self._failures.pop(ip, None)
