"""The daemon: owns every long-lived part, their start order and their stop.

``Gateway.start()`` returns once the spool is locked, the store open and every
listener bound (ports are known then: tests bind port 0 and read them back).
``Gateway.stop()`` is idempotent and stops in reverse order: intake first, so
nothing new is accepted while in-flight work finishes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from .settings import Settings
from .spool import Spool
from .store import AsyncStore

log = logging.getLogger("gateway")


class Component(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Gateway:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.spool = Spool(settings.spool.directory)
        self.store = AsyncStore(self.spool.db_path, clock=clock)
        self.components: list[Component] = []
        self._started: list[Component] = []
        self._stopping = False
        # Called after a message is spooled (wakes the worker).
        self.spooled = asyncio.Event()

    def build(self) -> None:
        """Create the components in start order (imports kept local: stages stay apart).

        The HTTP listener comes first (stages register routes on it), then the
        back-end stages, and SMTP intake last: it opens last and closes first.
        """
        from .http import HttpServer
        from .smtp import SmtpServer

        self.http = HttpServer(self.settings)
        self.smtp = SmtpServer(self.settings, self.store, self.spool, on_spooled=self.spooled.set, clock=self.clock)
        # Back-end stages (storage, worker, receipts, notifier) are added here.
        self.components = [self.http, self.smtp]

    async def start(self) -> None:
        await asyncio.to_thread(self.spool.create)
        await asyncio.to_thread(self.spool.lock)
        try:
            await self.store.open()
            await asyncio.to_thread(self.spool.clean_tmp)
            self.build()
            for component in self.components:
                await component.start()
                self._started.append(component)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        for component in reversed(self._started):
            await _quietly(component.stop, component)
        self._started.clear()
        await self.store.close()
        self.spool.unlock()


async def _quietly(fn: Callable[[], Awaitable[None]], what: object) -> None:
    try:
        await fn()
    except Exception:
        log.exception("error while stopping %s", type(what).__name__)
