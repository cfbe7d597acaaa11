"""The daemon: owns every long-lived part, their start order and their stop.

``Gateway.start()`` returns once the spool is locked, the store open and every
listener bound (ports are known then: tests bind port 0 and read them back).
``Gateway.stop()`` is idempotent and stops in reverse order: intake first, so
nothing new is accepted while in-flight work finishes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.settings import Settings
from gateway.spool import ObjectSpool, Spool
from gateway.store import WAKE_ALL, WAKE_JOBS, WAKE_NOTICES, WAKE_RECEIPTS, AsyncStore, Wakeups, location

log = logging.getLogger("gateway")


class Component(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Gateway:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        # In a cluster (the PostgreSQL store) accepted files go to the shared bucket before the 250;
        # the directory keeps only this instance's lock and tmp/.
        cluster = settings.store.backend == "postgresql"
        directory = settings.spool.directory
        self.spool = ObjectSpool(directory, settings.storage) if cluster else Spool(directory)
        self.location = location(settings.store, self.spool.db_path)
        self.store = AsyncStore(self.location, clock=clock)
        self.components: list[Component] = []
        self._started: list[Component] = []
        self._stopping = False
        # Called after a message is spooled (wakes the worker).
        self.spooled = asyncio.Event()
        from gateway.daemon.metrics import Metrics

        self.metrics = Metrics(clock=clock)

    def build(self) -> None:
        """Create the components in start order (imports kept local: stages stay apart).

        The HTTP listener comes first (stages register routes on it), then the
        back-end stages (the worker's start-up recovery runs before the receipt
        stage applies the receipts that jobs recovered ambiguous may have on
        file), then the document examiner (its worker processes are up
        before the first mail, and stop only once intake has closed and finished
        spooling), the timer of split mails (``gateway.smtp.partials``), and SMTP
        intake last: it opens last and closes first. The web pages (the sender's status
        page, the administrator's console) are routes on the HTTP listener that read the
        store; the console's actions wake the worker and the notifier.
        """
        from gateway.daemon.health import Health
        from gateway.daemon.http import HttpServer
        from gateway.daemon.metrics import MeteredProvider, MeteredStorage
        from gateway.delivery.provider import ProviderClient
        from gateway.delivery.storage import LocalStorage, build_storage
        from gateway.delivery.worker import Worker
        from gateway.documents.examiner import Examiner
        from gateway.notify.notifier import Notifier
        from gateway.receipts.callback import Receipts
        from gateway.smtp.intake import Handler
        from gateway.smtp.partials import PartialTimer
        from gateway.smtp.server import SmtpServer
        from gateway.web.console import Console
        from gateway.web.status import StatusPage

        self.http = HttpServer(self.settings)
        self.health = Health(self.settings, self.store, self.metrics, lambda: self._smtp_listening(),
                             smtp_sessions=lambda: self._smtp_sessions(), smtp_capped=lambda: self._smtp_capped(),
                             free_bytes=self.spool.free_bytes)  # fmt: skip
        self.http.add_routes(self.health.routes())
        self.storage = build_storage(self.settings, self.store, self.spool)
        if isinstance(self.storage, LocalStorage):
            self.http.add_routes(self.storage.routes())
        self.provider = ProviderClient(self.settings)
        metered = MeteredStorage(self.storage, self.metrics), MeteredProvider(self.provider, self.metrics)
        self.notifier = Notifier(self.settings, self.store, self.spool, clock=self.clock)
        # The stages meet only in the store: a wake-up says there is something new to read there.
        self.receipts = Receipts(self.settings, self.store, on_notice=self.notifier.wake)
        self.receipts.on_unknown = self.metrics.unknown_receipt
        self.http.add_routes(self.receipts.routes())
        self.worker = Worker(self.settings, self.store, self.spool, *metered, clock=self.clock, wake_event=self.spooled,
                             on_notice=self.notifier.wake, on_submitted=self.receipts.wake)  # fmt: skip
        self.examiner = Examiner(self.settings.documents)
        intake = Handler(self.settings, self.store, self.spool, on_spooled=self._on_spooled, clock=self.clock,
                         on_receipt_mail=self.receipts.on_receipt_mail, examiner=self.examiner)  # fmt: skip
        self.smtp = SmtpServer(self.settings, intake)
        # Split mails (message/partial) whole or past their window are ended by a timer of the SMTP stage.
        self.partials = PartialTimer(intake.expire_partials, self.settings.documents.partial_window_seconds)
        self.status_page = StatusPage(self.settings, self.store, clock=self.clock)
        self.http.add_routes(self.status_page.routes())
        self.console = Console(self.settings, self.store, clock=self.clock, health=self.health.report,
                               provider_answers=self.metrics.provider_answers_seen, on_change=self._on_spooled)
        self.http.add_routes(self.console.routes())
        self.smtp.on_reply = self.metrics.smtp_reply
        # Work another gateway on the same PostgreSQL database committed wakes the stage here too.
        self.wakeups = Wakeups(self.location, self._woken)
        self.components = [self.http, self.storage, self.provider, self.worker, self.receipts, self.notifier,
                           self.wakeups, self.examiner, self.partials, self.smtp]  # fmt: skip

    def _smtp_listening(self) -> bool:
        smtp = getattr(self, "smtp", None)  # health may be asked before SMTP is built
        return smtp is not None and smtp.listening

    def _smtp_sessions(self) -> int:
        smtp = getattr(self, "smtp", None)
        return 0 if smtp is None else len(smtp.sessions)

    def _smtp_capped(self) -> list[str]:
        smtp = getattr(self, "smtp", None)
        return [] if smtp is None else smtp.capped()

    def _woken(self, what: str) -> None:
        """A wake-up from the store's channel (on the event loop): the stage it names looks at the store now."""
        if what in (WAKE_JOBS, WAKE_ALL):
            self.spooled.set()  # the worker
        if what in (WAKE_NOTICES, WAKE_ALL):
            self.notifier.wake()
        if what in (WAKE_RECEIPTS, WAKE_ALL):
            self.receipts.wake()

    def _on_spooled(self) -> None:
        self.spooled.set()  # the worker
        self.notifier.wake()  # the "accepted" notice, when notify.accepted_notice is on

    async def start(self) -> None:
        await asyncio.to_thread(self.spool.create)
        await asyncio.to_thread(self.spool.lock)
        try:
            await self.store.open()
            await asyncio.to_thread(self.spool.clean_tmp)
            stray = await self.store.run(lambda s: self.spool.remove_unrecorded(s.recorded_messages))
            for message_id in stray:
                log.warning("spool: removed message %s, written but never committed (no 250 was given)", message_id)
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
        await asyncio.to_thread(self.spool.close)
        self.spool.unlock()


def _words(name: str) -> str:
    """``SmtpServer`` -> ``smtp server``: a part's name said in words."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).lower()


async def _quietly(fn: Callable[[], Awaitable[None]], what: object) -> None:
    try:
        await fn()
    except Exception:
        log.exception("error while stopping the %s", _words(type(what).__name__))
