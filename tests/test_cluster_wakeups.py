"""Wake-ups across gateways: a commit that makes work due on one store wakes the stages listening on
another (PostgreSQL LISTEN/NOTIFY), with polling set so long that only the notification explains it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
import pytest

from gateway.settings import Secret
from gateway.store import (
    WAKE_ALL,
    WAKE_JOBS,
    WAKE_NOTICES,
    WAKE_RECEIPTS,
    NewMessage,
    NoticeKind,
    PostgreSQL,
    State,
    Store,
    Wakeups,
    new_id,
)
from tests.support_cluster import Cluster, mail_to, queued
from tests.support_simulator import SimFactory, provider_env, provider_table

BOUND = 10.0  # seconds a wake-up may take at most (it takes milliseconds)
NEVER = {"delivery": {"poll_seconds": 3600.0}}


class Heard:
    """What a listener was told, as an awaitable."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, what: str) -> None:
        self.said.append(what)
        self._changed.set()

    async def wait_for(self, what: str) -> None:
        async def until() -> None:
            while what not in self.said:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), BOUND)


@pytest.fixture
async def listener(postgres_dsn: str) -> AsyncIterator[tuple[Wakeups, Heard]]:
    heard = Heard()
    wakeups = Wakeups(PostgreSQL(Secret(postgres_dsn)), heard)
    Store(PostgreSQL(Secret(postgres_dsn))).close()  # the schema, as the daemon's store makes it first
    await wakeups.start()
    try:
        yield wakeups, heard
    finally:
        await wakeups.stop()


def _message() -> NewMessage:
    return NewMessage(id=new_id(), envelope_from="alice@example.com", header_from="alice@example.com", reply_to="",
                      message_id_header="<m@example.com>", subject="Invoice", date_header="", client_addr="127.0.0.1",
                      auth_user="", doc_type="pdf", doc_pages=1, doc_bytes=10)  # fmt: skip


async def _on_other_store(dsn: str, fn: Callable[[Store], object]) -> None:
    def run() -> None:
        store = Store(PostgreSQL(Secret(dsn)))
        try:
            fn(store)
        finally:
            store.close()

    await asyncio.to_thread(run)


async def test_commits_on_one_store_wake_the_listener_of_another(
    listener: tuple[Wakeups, Heard], postgres_dsn: str
) -> None:
    _, heard = listener
    job_id = new_id()
    await _on_other_store(postgres_dsn, lambda s: s.add_message(_message(), [(job_id, "+33145678900", "")], "in"))
    await heard.wait_for(WAKE_JOBS)
    await _on_other_store(postgres_dsn, lambda s: s.queue_notice(job_id, NoticeKind.DELAYED, "late"))
    await heard.wait_for(WAKE_NOTICES)

    def submitted(s: Store) -> None:
        s.transition(job_id, State.UPLOADING, "", expect=[State.QUEUED])
        s.transition(job_id, State.SUBMITTED, "accepted", expect=[State.UPLOADING])

    await _on_other_store(postgres_dsn, submitted)
    await heard.wait_for(WAKE_RECEIPTS)


async def test_a_rolled_back_commit_announces_nothing(listener: tuple[Wakeups, Heard], postgres_dsn: str) -> None:
    _, heard = listener

    def rolled_back(s: Store) -> None:
        with pytest.raises(RuntimeError), s.transaction():
            s.add_message(_message(), [(new_id(), "+33145678900", "")], "in")
            raise RuntimeError("no commit")
        s.queue_notice("", "alert:bug", "after the rollback")  # then one that commits, to know the first came by

    await _on_other_store(postgres_dsn, rolled_back)
    await heard.wait_for(WAKE_NOTICES)
    assert WAKE_JOBS not in heard.said


async def test_the_listener_listens_again_once_its_connection_is_back(
    listener: tuple[Wakeups, Heard], postgres_dsn: str
) -> None:
    wakeups, heard = listener
    dbname = psycopg.conninfo.conninfo_to_dict(postgres_dsn)["dbname"]
    admin = psycopg.conninfo.make_conninfo(postgres_dsn, dbname="postgres")

    def cut() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND query LIKE"
                         " 'LISTEN%%'", (dbname,))  # fmt: skip

    await asyncio.to_thread(cut)
    await heard.wait_for(WAKE_ALL)  # back: every stage looks, for what was announced meanwhile
    assert wakeups.connects == 2
    await _on_other_store(postgres_dsn, lambda s: s.add_message(_message(), [(new_id(), "+33145678900", "")], "in"))
    await heard.wait_for(WAKE_JOBS)


async def test_sqlite_has_nothing_to_listen_to(tmp_path: Path) -> None:
    wakeups = Wakeups(tmp_path / "jobs.sqlite3", Heard())
    await wakeups.start()
    assert not await wakeups.listening(0)
    await wakeups.stop()


async def test_a_mail_taken_by_one_gateway_is_submitted_at_once_by_the_idle_worker_of_another(
    cluster: Cluster, sim_factory: SimFactory
) -> None:
    sim = await sim_factory()
    provider = {**provider_table(sim), **NEVER}
    a = await cluster.start("a", {**provider, "delivery": {"paused": True, "poll_seconds": 3600.0}}, provider_env())
    b = await cluster.start("b", provider, provider_env())
    [job_id] = queued(await asyncio.to_thread(mail_to, a.smtp.port))
    [request] = await sim.wait_requests(1, timeout=BOUND)  # b's worker, woken by a's commit
    assert request.params["ref"] == job_id
    assert b.worker.next_wakeup > b.clock() + 600  # it was not its poll that found the job
