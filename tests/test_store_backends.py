"""The store on both backends: every query, the migrations, the claims under concurrency, the DSN kept secret.

Each test asks for ``store_location`` (tests/support_postgres.py) and so runs on
SQLite and on a real PostgreSQL server; the PostgreSQL-only ones ask for
``postgres_dsn``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest

from gateway.outcomes import HoldKind
from gateway.settings import Secret
from gateway.store import (
    SCHEMA_VERSION,
    Location,
    NewMessage,
    NewPart,
    NoticeKind,
    NoticeState,
    OpenSet,
    Part,
    PartTaken,
    PostgreSQL,
    State,
    Store,
    StoreError,
    alert,
    database_errors,
)
from gateway.store import schema as schema_mod
from tests.support_delivery import FakeClock

NUMBER = "+33145678900"


def _message(message_id: str, sender: str = "Alice@Example.com") -> NewMessage:
    return NewMessage(
        id=message_id, envelope_from=sender, header_from="", reply_to="", message_id_header="<a@b>",
        subject="Facture", date_header="", client_addr="127.0.0.1", auth_user="", doc_type="pdf", doc_pages=2,
        doc_bytes=10, documents=[{"name": "a.pdf"}],
    )  # fmt: skip


@pytest.fixture
def backend_store(store_location: Location) -> Iterator[Store]:
    clock = FakeClock()
    s = Store(store_location, clock=clock)
    try:
        yield s
    finally:
        s.close()


def test_intake_jobs_and_the_timeline(backend_store: Store) -> None:
    s = backend_store
    now = s.clock()
    s.add_message(_message("m1"), [("j1", NUMBER, "key-1"), ("j2", "+33298765432", "")], "accepted")
    assert s.recorded_messages(["m1", "m2"]) == {"m1"}
    assert s.find_duplicate("key-1", now - 1) == "j1" and s.find_duplicate("", now - 1) is None
    assert s.count_recent_jobs(now - 1) == 2 and s.count_recent_jobs(now - 1, "Alice@Example.com") == 2
    job = s.get_job("j1")
    assert job is not None and job.state is State.QUEUED and job.doc_pages == 2 and job.envelope_from
    assert s.job_by_ar_token(job.ar_token) == "j1"
    message = s.message("m1")
    assert message is not None and message["subject"] == "Facture" and dict(message)["doc_bytes"] == 10
    assert [j.id for j in s.jobs_of_message("m1")] == ["j1", "j2"]
    assert {j.id for j in s.list_jobs(sender="alice@EXAMPLE")} == {"j1", "j2"}  # ASCII case ignored, as SQLite
    assert len(s.list_jobs(states=[State.QUEUED], limit=-1)) == 2 and len(s.list_jobs(limit=1)) == 1
    assert len(s.list_jobs(number="33145678900", since=now - 1)) == 1
    assert [j.id for j in s.due_for_delivery(s.clock(), 10)] == ["j1", "j2"]
    assert [j.id for j in s.due_jobs([State.QUEUED], s.clock(), 1)] == ["j1"]
    assert s.count_by_state() == {"queued": 2}
    s.update_message("m1", upload_key="fax/m1.pdf", uploaded_at=now)
    s.update_job("j2", next_attempt_at=now + 60, attempts=1)
    assert s.next_attempt_at() == now + 60
    assert s.transition("j1", State.SUBMITTED, "accepted", provider_ref="R1", submitted_at=now)
    assert s.job_by_provider_ref("R1") is not None and s.job_by_provider_ref("") is None
    assert s.transition("j2", State.DELIVERED, "receipt 0", event="delivered")
    assert not s.transition("j2", State.QUEUED, "a final state is never left")
    assert s.served_message("fax/m1.pdf") == "m1"
    assert s.transition("j1", State.FAILED, "refused")
    assert s.finished_uploads(now + 1) == [("m1", "fax/m1.pdf")] and s.served_message("fax/m1.pdf") is None
    assert [(r["kind"], r["detail"]) for r in s.timeline("j2")] == [("accepted", "accepted"),
                                                                    ("delivered", "receipt 0")]  # fmt: skip
    assert s.count_events("j1", "accepted") == 1 and s.count_messages() == 1
    assert s.submitted_after(0) == [(now, now)]


def test_holds_grace_and_refused_messages(backend_store: Store) -> None:
    s = backend_store
    s.add_refused_message(_message("m1"), [("j1", NUMBER)], "refused", "not a PDF", why="type")
    job = s.get_job("j1")
    assert job is not None and job.state is State.FAILED and s.notices_of_job("j1")[0]["kind"] == "failed"
    s.add_message(_message("m2"), [("j2", NUMBER, ""), ("j3", NUMBER, "")], "accepted")
    s.transition("j2", State.HELD, "credit", hold_kind=HoldKind.CREDIT)
    s.transition("j3", State.AMBIGUOUS, "unknown", next_attempt_at=s.clock() + 10)
    assert s.has_held(HoldKind.CREDIT) and s.held_job_ids(HoldKind.CREDIT) == ["j2"]
    assert s.mark_grace_unwatched("down") == ["j3"] and s.mark_grace_unwatched("again") == []
    ambiguous = s.get_job("j3")
    assert ambiguous is not None and ambiguous.grace_unwatched is True


def test_receipts_on_both_backends(backend_store: Store) -> None:
    s = backend_store
    s.add_message(_message("m1"), [("j1", NUMBER, "")], "accepted")
    s.transition("j1", State.SUBMITTING, "sending", submitted_at=s.clock())
    assert s.submission_in_flight("0145678900", s.clock() - 1)
    first = s.add_receipt(source="callback", ref_accuse="R1", etat_e="0", numero="0145678900", nb_page=1,
                          heure="12:00", validated="1")  # fmt: skip
    again = s.add_receipt(source="mail", ref_accuse="R1", etat_e="0", numero="0145678900", nb_page=1,
                          heure="12:00", validated="1")  # fmt: skip
    assert isinstance(first, int) and again is None  # a replay
    assert s.count_unmatched_receipts(0) == 1 and s.count_receipts_by_code() == {"0": 1}
    s.transition("j1", State.SUBMITTED, "accepted", provider_ref="R1")
    assert s.jobs_with_pending_receipts(math.inf) == ["j1"] and len(s.unapplied_receipts("R1")) == 1
    s.mark_receipt_applied(first, "j1")
    s.transition("j1", State.DELIVERED, "receipt 0", receipt_code="0")
    applied = s.latest_applied_receipt("j1")
    assert applied is not None and applied["ref_accuse"] == "R1"
    assert [r["source"] for r in s.receipts_of_job("j1")] == ["callback"]
    assert s.settled_by_receipt_after(0) and s.ambiguous_job_for_number(NUMBER, 0, math.inf) is None


def test_the_outbox_on_both_backends(backend_store: Store) -> None:
    s = backend_store
    s.add_message(_message("m1"), [("j1", NUMBER, "")], "accepted")
    assert s.open_jobs_without_notice(NoticeKind.ACCEPTED, 0) == ["j1"]
    assert [j.id for j in s.jobs_to_tell_delayed(s.clock(), 10)] == ["j1"] and s.first_untold_delay() == s.clock()
    assert s.queue_notice("j1", NoticeKind.ACCEPTED) and not s.queue_notice("j1", NoticeKind.ACCEPTED)
    assert s.queue_ar_mail("j1", "d1", "AR", b"\x00raw mail\xff") and not s.queue_ar_mail("j1", "d1", "AR", b"x")
    s.attach_source("j1", NoticeKind.ACCEPTED, b"\x01source")
    notice, forwarded = s.due_notices(s.clock(), 10)
    assert notice.source == b"\x01source" and forwarded.source == b"\x00raw mail\xff" and notice.payload == b""
    s.mark_notice_composed(notice.id, "alice@example.com", b"composed \x00 mail")
    composed = s.notice(notice.id)
    assert composed is not None and composed.state is NoticeState.PENDING and composed.payload == b"composed \x00 mail"
    s.mark_notice_sent(notice.id, "j1", "to alice")
    s.retry_notice_later(forwarded.id, s.clock() + 60, "relay down")
    s.queue_notice("", alert("config"), "fix it")
    (flagged,) = s.due_alerts(s.clock(), 10)
    s.postpone_notices([flagged.id], s.clock() + 5)
    assert s.due_alerts(s.clock(), 10) == []
    s.mark_notice_sent(flagged.id, "", "alert")
    assert s.last_alert_sent_at() == s.clock() and s.alert_kinds_sent_since(0) == {"alert:config"}
    assert s.count_notices()[("accepted", "sent")] == 1
    token = s.add_status_link("j1")
    linked = s.job_by_status_token(token)
    assert linked is not None and linked.id == "j1" and s.job_by_status_token("x" * 32) is None
    assert s.writable() and s.schema_version == SCHEMA_VERSION


def test_a_failed_transaction_leaves_nothing(backend_store: Store) -> None:
    s = backend_store
    with pytest.raises(database_errors()), s.transaction():
        s.add_message(_message("m1"), [("j1", NUMBER, "")], "accepted")
        s.add_message(_message("m1"), [("j2", NUMBER, "")], "accepted")  # the same message id twice
    assert s.recorded_messages(["m1"]) == set() and s.get_job("j1") is None
    s.add_message(_message("m1"), [("j1", NUMBER, "")], "accepted")  # the connection is usable again
    assert s.get_job("j1") is not None


def test_a_claim_is_won_by_one_store_of_many(store_location: Location) -> None:
    stores = [Store(store_location) for _ in range(4)]
    try:
        stores[0].add_message(_message("m1"), [(f"j{i}", NUMBER, "") for i in range(20)], "accepted")
        won: list[tuple[int, str]] = []
        barrier = threading.Barrier(len(stores))

        def claim(n: int) -> None:
            barrier.wait(timeout=30)
            for job in stores[n].due_for_delivery(stores[n].clock(), 100):
                if stores[n].transition(job.id, State.SUBMITTING, "sending", expect=[State.QUEUED]):
                    won.append((n, job.id))

        threads = [threading.Thread(target=claim, args=(n,)) for n in range(len(stores))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sorted(job for _, job in won) == sorted(f"j{i}" for i in range(20))  # each claimed exactly once
        assert all(stores[0].count_events(f"j{i}", "submitting") == 1 for i in range(20))
    finally:
        for s in stores:
            s.close()


def _part(number: int, total: int = 3, *, set_id: str = "scan-1@printer", sender: str = "alice@example.com",
          size: int = 100) -> NewPart:
    return NewPart(sender=sender, set_id=set_id, number=number, total=total, spool_id=f"{set_id}/{sender}/{number}",
                   numbers=["+33145678900", "+33298765432"], client_addr="192.0.2.7", auth_user="copier",
                   size=size)  # fmt: skip


def _clock(s: Store) -> FakeClock:
    assert isinstance(s.clock, FakeClock)
    return s.clock


def test_split_mail_parts_are_kept_once_in_order_and_per_sender(backend_store: Store) -> None:
    s, clock = backend_store, _clock(backend_store)
    first_at = s.clock()
    assert s.add_partial_part(_part(3)) is PartTaken.KEPT
    clock.advance(5)
    assert s.add_partial_part(_part(1, total=0)) is PartTaken.KEPT  # a part may leave the total out
    assert s.add_partial_part(replace(_part(1), spool_id="a second copy")) is PartTaken.RESENT  # the first copy stays
    assert s.add_partial_part(_part(1, sender="bob@example.com")) is PartTaken.KEPT  # another sender's set
    kept = s.partial_set("alice@example.com", "scan-1@printer")
    assert kept == [
        Part("alice@example.com", "scan-1@printer", 1, 0, "scan-1@printer/alice@example.com/1", first_at + 5,
             ("+33145678900", "+33298765432"), "192.0.2.7", "copier"),
        Part("alice@example.com", "scan-1@printer", 3, 3, "scan-1@printer/alice@example.com/3", first_at,
             ("+33145678900", "+33298765432"), "192.0.2.7", "copier"),
    ]  # fmt: skip
    assert [p.number for p in s.partial_set("bob@example.com", "scan-1@printer")] == [1]
    assert s.partial_set("alice@example.com", "no-such-set") == []
    assert s.open_partial_sets() == [OpenSet("alice@example.com", "scan-1@printer", first_at),
                                     OpenSet("bob@example.com", "scan-1@printer", first_at + 5)]  # fmt: skip
    assert s.open_partial_sets(limit=1) == [OpenSet("alice@example.com", "scan-1@printer", first_at)]
    # A kept part's file is the store's: start-up does not remove it.
    s.add_message(_message("m1"), [("j1", NUMBER, "")], "accepted")
    spool = ["m1", "scan-1@printer/alice@example.com/1", "a second copy", "m2"]
    assert s.recorded_messages(spool) == {"m1", "scan-1@printer/alice@example.com/1"}


def test_split_mails_are_bounded_per_sender_and_in_bytes(backend_store: Store) -> None:
    s = backend_store
    for n in range(2):
        assert s.add_partial_part(_part(1, set_id=f"set-{n}"), max_sets=2) is PartTaken.KEPT
    assert s.add_partial_part(_part(1, set_id="set-2"), max_sets=2) is PartTaken.TOO_MANY_SETS
    assert s.add_partial_part(_part(2, set_id="set-1"), max_sets=2) is PartTaken.KEPT  # an open set takes more
    assert s.add_partial_part(_part(1, set_id="set-2", sender="bob@example.com"), max_sets=2) is PartTaken.KEPT
    assert s.add_partial_part(_part(1, set_id="set-2"), max_sets=0) is PartTaken.KEPT  # 0: no bound
    s.finish_partial_set("alice@example.com", "set-0")  # a finished set no longer counts
    assert s.add_partial_part(_part(1, set_id="set-3"), max_sets=3) is PartTaken.KEPT
    assert s.add_partial_part(_part(1, set_id="set-4"), max_sets=3) is PartTaken.TOO_MANY_SETS
    # The parts of a set together: up to max_bytes, not one byte more.
    assert s.add_partial_part(_part(1, set_id="big", size=600), max_bytes=1000) is PartTaken.KEPT
    assert s.add_partial_part(_part(2, set_id="big", size=401), max_bytes=1000) is PartTaken.TOO_BIG
    assert s.add_partial_part(_part(2, set_id="big", size=400), max_bytes=1000) is PartTaken.KEPT
    assert s.add_partial_part(_part(3, set_id="big", size=1), max_bytes=1000) is PartTaken.TOO_BIG
    assert s.add_partial_part(_part(3, set_id="big", size=10**9), max_bytes=0) is PartTaken.KEPT
    assert [p.number for p in s.partial_set("alice@example.com", "big")] == [1, 2, 3]


def test_a_finished_split_mail_is_closed_then_forgotten(backend_store: Store) -> None:
    s, clock = backend_store, _clock(backend_store)
    for n in (1, 2):
        s.add_partial_part(_part(n))
    s.add_partial_part(_part(1, set_id="other"))
    # Ended in the caller's transaction: rolled back with it, the set is still open.
    with pytest.raises(RuntimeError), s.transaction():
        s.finish_partial_set("alice@example.com", "scan-1@printer")
        raise RuntimeError("the commit of the whole failed")
    assert len(s.partial_set("alice@example.com", "scan-1@printer")) == 2
    clock.advance(10)
    ended_at = s.clock()
    assert sorted(s.finish_partial_set("alice@example.com", "scan-1@printer")) == [
        "scan-1@printer/alice@example.com/1", "scan-1@printer/alice@example.com/2"]  # fmt: skip
    assert s.finish_partial_set("alice@example.com", "scan-1@printer") == []  # once
    assert s.partial_set("alice@example.com", "scan-1@printer") == []
    assert [o.set_id for o in s.open_partial_sets()] == ["other"]
    assert s.recorded_messages(["scan-1@printer/alice@example.com/1"]) == set()  # its files may go
    # A part of a finished set sent again is not a new set, until the set is forgotten.
    assert s.add_partial_part(_part(3)) is PartTaken.FINISHED
    assert s.add_partial_part(_part(1)) is PartTaken.FINISHED
    assert s.forget_partial_sets(ended_at) == 0  # finished at ended_at, not before
    assert s.forget_partial_sets(ended_at + 1) == 2  # its two rows; the open set stays
    assert [o.set_id for o in s.open_partial_sets()] == ["other"]
    assert s.add_partial_part(_part(3)) is PartTaken.KEPT
    assert s.forget_partial_sets(math.inf) == 0


# -- PostgreSQL only ---------------------------------------------------------------------------------


def test_instances_starting_together_migrate_once(postgres_dsn: str) -> None:
    where = PostgreSQL(Secret(postgres_dsn))
    opened: list[Store] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait(timeout=30)
        try:
            opened.append(Store(where))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert errors == [] and len(opened) == 4
        assert {s.schema_version for s in opened} == {SCHEMA_VERSION}
        with psycopg.connect(postgres_dsn) as db:
            assert db.execute("SELECT COUNT(*) FROM schema_version").fetchone() == (1,)
    finally:
        for s in opened:
            s.close()


def test_an_older_postgresql_store_is_migrated_and_a_failing_migration_changes_nothing(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    where = PostgreSQL(Secret(postgres_dsn))
    old = Store(where)
    old.add_message(_message("m1"), [("j1", NUMBER, "")], "accepted")
    old.close()
    version = SCHEMA_VERSION
    broken = "ALTER TABLE jobs ADD COLUMN note TEXT; ALTER TABLE no_such_table ADD COLUMN x TEXT"
    monkeypatch.setattr(schema_mod, "MIGRATIONS", [*schema_mod.MIGRATIONS, broken])
    monkeypatch.setattr(schema_mod, "SCHEMA_VERSION", version + 1)
    with pytest.raises(psycopg.errors.UndefinedTable):
        Store(where)
    fixed = "ALTER TABLE jobs ADD COLUMN note TEXT"
    monkeypatch.setattr(schema_mod, "MIGRATIONS", [*schema_mod.MIGRATIONS[:-1], fixed])
    new = Store(where)
    try:
        assert new.schema_version == version + 1
        row = new.db.execute("SELECT number, state, note FROM jobs WHERE id = 'j1'").fetchone()
        assert tuple(row) == (NUMBER, "queued", None)
    finally:
        new.close()


def test_a_postgresql_store_from_a_newer_version_is_refused(postgres_dsn: str) -> None:
    Store(PostgreSQL(Secret(postgres_dsn))).close()
    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match="schema version 99 is newer than this fax-gateway knows"):
        Store(PostgreSQL(Secret(postgres_dsn)))


def test_a_failed_connection_never_shows_the_dsn_or_its_password(postgres_dsn: str) -> None:
    wrong = postgres_dsn.replace("password=", "password=canary-wrong-")
    with pytest.raises(StoreError) as caught:
        Store(PostgreSQL(Secret(wrong)))
    message = str(caught.value)
    assert "cannot connect" in message and "password authentication failed" in message
    assert "canary" not in message and "password=" not in message and caught.value.__cause__ is None
    assert "canary" not in repr(PostgreSQL(Secret(wrong))) and "canary" not in str(PostgreSQL(Secret(wrong)))


def _blocked_on_a_lock(dsn: str, timeout: float = 30.0) -> None:
    """Wait until a connection to the test's database waits for a lock another holds (another connection)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as db:
        while time.monotonic() < deadline:
            row = db.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
                             " AND wait_event_type = 'Lock'").fetchone()  # fmt: skip
            if row is not None and row[0]:
                return
            time.sleep(0.02)
    raise AssertionError(f"no connection waited for a lock within {timeout:g} s")


def test_the_same_part_kept_by_two_stores_at_once_is_kept_once(postgres_dsn: str) -> None:
    where = PostgreSQL(Secret(postgres_dsn))
    first, second = Store(where), Store(where)
    got: list[PartTaken | BaseException] = []

    def add_again() -> None:
        try:
            got.append(second.add_partial_part(replace(_part(1), spool_id="a second copy")))
        except BaseException as exc:  # noqa: BLE001 - reported below
            got.append(exc)

    try:
        with first.transaction():
            assert first.add_partial_part(_part(1)) is PartTaken.KEPT
            thread = threading.Thread(target=add_again)
            thread.start()
            _blocked_on_a_lock(postgres_dsn)  # the second found no row yet, and waits on the first's
        thread.join(timeout=30)
        assert got == [PartTaken.RESENT]
        assert [p.spool_id for p in first.partial_set("alice@example.com", "scan-1@printer")] == [
            "scan-1@printer/alice@example.com/1"]  # fmt: skip
    finally:
        first.close()
        second.close()


def test_two_stores_opening_sets_of_one_sender_at_once_stay_within_the_bound(postgres_dsn: str) -> None:
    where = PostgreSQL(Secret(postgres_dsn))
    first, second = Store(where), Store(where)
    got: list[PartTaken | BaseException] = []

    def open_another() -> None:
        try:
            got.append(second.add_partial_part(_part(1, set_id="set-2"), max_sets=1))
        except BaseException as exc:  # noqa: BLE001 - reported below
            got.append(exc)

    try:
        with first.transaction():
            assert first.add_partial_part(_part(1, set_id="set-1"), max_sets=1) is PartTaken.KEPT
            thread = threading.Thread(target=open_another)
            thread.start()
            _blocked_on_a_lock(postgres_dsn)  # the second waits for the first's sets to be counted
        thread.join(timeout=30)
        assert got == [PartTaken.TOO_MANY_SETS]  # not a second open set for a sender allowed one
    finally:
        first.close()
        second.close()
