"""The job store: an embedded SQLite database beside the spool files, or a PostgreSQL database.

In: accepted messages (after their files are on disk), state changes from the
worker, receipts and notifications. Out: job rows, each with a timeline of
events a person can read. The stages never call each other: each writes its
outcome here and the next one reads it, so the store is the only place that
speaks SQL (WAL journal, ``synchronous=FULL``: a commit that returned is on
disk; a schema with a version and migrations; the daemon and the CLI open the
same file). With ``[store] backend = "postgresql"`` the same queries run on a
PostgreSQL database that several gateways share (:mod:`~gateway.store.base`).

:class:`Store` is synchronous and must only be used off the event loop; the
daemon reaches it through :class:`AsyncStore`, which runs every call on one
dedicated thread. Its methods come in layers, one module per table group:
:mod:`~gateway.store.jobs` (messages, jobs, the timeline),
:mod:`~gateway.store.receipts`, :mod:`~gateway.store.outbox`
(notifications), :mod:`~gateway.store.reports` (what metrics read),
:mod:`~gateway.store.links` (the senders' status pages),
:mod:`~gateway.store.partials` (the parts of split mails) and
:mod:`~gateway.store.instances` (the gateways sharing a database), over
the connection of :mod:`~gateway.store.base`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from gateway.store.base import Location
from gateway.store.instances import Instances
from gateway.store.jobs import NewMessage
from gateway.store.links import StatusLinks
from gateway.store.outbox import NoticeKind, Outbox
from gateway.store.partials import PartialParts
from gateway.store.receipts import ReceiptQueries
from gateway.store.reports import Reports
from gateway.store.schema import StoreError
from gateway.store.states import Ending, State

T = TypeVar("T")


class Store(PartialParts, ReceiptQueries, Outbox, Reports, StatusLinks, Instances):
    """Synchronous access to the job store. One instance per thread."""

    def add_refused_message(
        self, msg: NewMessage, jobs: Sequence[tuple[str, str]], detail: str, reason: str, *, why: str = ""
    ) -> None:
        """Commit a message that cannot be faxed but was answered 250 (``refusals = "mail"``).

        One transaction: the message, its jobs (``jobs`` is (job id, number)) already ``failed``
        with ``reason``, and for each the "failed" notice that tells the sender why (``why``: the
        documents stage's reason, so that the mail can say it in its own language).
        """
        with self.transaction():
            self.add_message(msg, [(job_id, number, "") for job_id, number in jobs], detail)
            for job_id, _ in jobs:
                self.transition(job_id, State.FAILED, reason, expect=[State.QUEUED], event="refused")
                self.queue_notice(job_id, NoticeKind.FAILED, reason, code=f"{Ending.REFUSED}:{why}")


class AsyncStore:
    """Runs :class:`Store` calls on one dedicated thread, never on the event loop."""

    def __init__(self, path: Location, *, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._store: Store | None = None

    @property
    def sync(self) -> Store:
        if self._store is None:
            raise StoreError("store is not open")
        return self._store

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._store = await loop.run_in_executor(self._executor, lambda: Store(self._path, clock=self._clock))

    async def run(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn(store)`` on the store thread."""
        store = self.sync
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, store)

    async def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            await asyncio.get_running_loop().run_in_executor(self._executor, store.close)
        self._executor.shutdown(wait=True)
