"""A clock for the tests: epoch seconds that move only when told.

The store, the SMTP server, the worker and the whole :class:`~gateway.daemon.app.Gateway`
take ``clock=``; a :class:`FakeClock` shared by them lets a test read (``clock.now``), set
(``clock.now = ...``) and move (``clock.advance(seconds)``) their time without sleeping.
"""

from __future__ import annotations


class FakeClock:
    """Epoch seconds that move only when told."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
