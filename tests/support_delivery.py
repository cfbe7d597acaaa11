"""The delivery stages assembled on loopback without SMTP intake: store, spool,
storage (S3 or local), the real provider client, the worker, and the receipt
stage it wakes (receipts that came before a submit answer are applied there).

Messages are spooled through the same Spool/Store API intake uses; a
:class:`~tests.support_clock.FakeClock` shared by the store and the worker moves time for backoff,
grace periods and holds without sleeping; ``await d.drain()`` runs the worker
and the receipt stage until neither has anything to do now
(:func:`drain_stages`, also for a whole :class:`~gateway.daemon.app.Gateway`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from gateway.daemon.http import HttpServer
from gateway.delivery.provider import ProviderClient
from gateway.delivery.storage import LocalStorage, build_storage
from gateway.delivery.worker import Worker
from gateway.receipts.callback import Receipts
from gateway.settings import Settings
from gateway.spool import FAX_NAME, RAW_NAME, Spool
from gateway.store import AsyncStore, Job, Location, NewMessage, Store, new_id
from tests.support_clock import FakeClock
from tests.support_docs import pdf

NUMBER = "+33145678900"


class LoopbackRig:
    """What every stage rig has: the settings, a fake clock, the spool, the store on it (or at ``where``,
    a PostgreSQL database several rigs share) and the HTTP listener."""

    def __init__(self, settings: Settings, clock: FakeClock | None = None, where: Location | None = None) -> None:
        self.settings = settings
        self.clock = clock or FakeClock()
        self.spool = Spool(settings.spool.directory)
        self.store = AsyncStore(self.spool.db_path if where is None else where, clock=self.clock)
        self.http = HttpServer(settings)

    async def job(self, job_id: str) -> Job:
        job = await self.store.run(lambda s: s.get_job(job_id))
        assert job is not None
        return job


class Delivery(LoopbackRig):
    def __init__(self, settings: Settings, clock: FakeClock | None = None, where: Location | None = None) -> None:
        super().__init__(settings, clock, where)
        self.storage = build_storage(settings, self.store, self.spool)
        if isinstance(self.storage, LocalStorage):
            self.http.add_routes(self.storage.routes())
        self.provider = ProviderClient(settings)
        self.wake_event = asyncio.Event()
        self.receipts = Receipts(settings, self.store)
        # Set each time the worker records a submission's answer (submitted or ambiguous): a test awaits it.
        self.answered = asyncio.Event()
        self.worker = Worker(settings, self.store, self.spool, self.storage, self.provider, clock=self.clock,
                             wake_event=self.wake_event, on_submitted=self._answered, stop_timeout=2.0)  # fmt: skip
        self._started: list[Any] = []

    def _answered(self) -> None:
        self.answered.set()
        self.receipts.wake()

    async def start(self, *, worker: bool = True) -> None:
        await asyncio.to_thread(self.spool.create)
        await self.store.open()
        for part in (self.http, self.storage, self.provider) + ((self.worker,) if worker else ()):
            await part.start()
            self._started.append(part)

    async def start_worker(self) -> None:
        await self.worker.start()
        self._started.append(self.worker)

    async def stop(self) -> None:
        for part in reversed(self._started):
            await part.stop()
        self._started.clear()
        await self.store.close()

    async def spool_message(
        self, *numbers: str, document: bytes | None = None, sender: str = "alice@example.com"
    ) -> list[str]:
        """Spool one message with a job per number (as intake does); returns the job ids."""
        numbers = numbers or (NUMBER,)
        data = pdf() if document is None else document
        message_id = new_id()
        jobs = [(new_id(), n, "") for n in numbers]
        msg = NewMessage(id=message_id, envelope_from=sender, header_from=sender, reply_to="",
                         message_id_header=f"<{message_id}@example.com>", subject="Invoice", date_header="",
                         client_addr="127.0.0.1", auth_user="", doc_type="pdf", doc_pages=1,
                         doc_bytes=len(data))  # fmt: skip
        await asyncio.to_thread(self.spool.write, message_id, {RAW_NAME: b"Subject: Invoice\r\n\r\n", FAX_NAME: data})
        await self.store.run(lambda s: s.add_message(msg, jobs, "accepted"))
        self.worker.wake()
        return [j for j, _, _ in jobs]

    async def events(self, job_id: str) -> list[tuple[str, str]]:
        rows = await self.store.run(lambda s: s.timeline(job_id))
        return [(r["kind"], r["detail"]) for r in rows]

    async def notices(self, job_id: str) -> list[str]:
        rows = await self.store.run(
            lambda s: s.db.execute("SELECT kind FROM notifications WHERE job_id = ? ORDER BY id", (job_id,)).fetchall()
        )
        return [r["kind"] for r in rows]

    async def set_state(self, job_id: str, **columns: Any) -> None:
        """Change a job as the CLI does (another writer of the same store)."""
        await self.store.run(lambda s: s.update_job(job_id, **columns))

    async def drain(self, timeout: float = 20.0) -> None:
        await asyncio.wait_for(drain_stages(self.worker, self.receipts), timeout)


async def drain_stages(worker: Worker, receipts: Receipts) -> None:
    """Run the worker and the receipt stage until neither has anything to do now (no sleeping)."""
    while True:
        await worker.drain()
        if not await receipts.drain():
            return


def sync_store(settings: Settings) -> Store:
    return Store(Spool(settings.spool.directory).db_path)


def replace(settings: Settings, section: str, **fields: Any) -> Settings:
    return dataclasses.replace(settings, **{section: dataclasses.replace(getattr(settings, section), **fields)})
