"""The timer of split mails (``message/partial``): the sets that are whole, or past their window, are ended.

In: the intake's :meth:`~gateway.smtp.intake.Handler.expire_partials` and how often to call it. Out: a
loop the daemon starts and stops with the SMTP stage; each round sends on the sets that are whole
and refuses (by a failure receipt naming the missing parts) those still incomplete
``documents.partial_window_seconds`` after their first part. A round is bounded (at most 100 sets);
:meth:`PartialTimer.wake` asks for one at once. Tests call ``expire_partials`` themselves, with a
fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("gateway.smtp")

# The longest between two rounds: an expired set waits at most this much more for its receipt.
MAX_INTERVAL = 60.0


class PartialTimer:
    def __init__(self, check: Callable[[], Awaitable[int]], window_seconds: float) -> None:
        self.check = check
        self.interval = min(MAX_INTERVAL, max(1.0, window_seconds / 10))
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="partial-timer")

    async def stop(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                ended = await self.check()
                if ended:
                    log.info("split mails: %d set(s) ended", ended)
            except Exception:
                log.exception("split mails: the round failed; next in %.0f s", self.interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
