"""Several gateways on one store: leases and fencing, take-overs, instance names, notices, dedupe, quotas, receipts.

The store-level tests ask for ``store_location`` and run on SQLite and on a real
PostgreSQL server (tests/support_postgres.py); those about several live gateways
ask for ``postgres_dsn``. Each "gateway" is a :class:`~gateway.store.Store` of its
own (its own connection) used from its own thread where they race; a shared
:class:`~tests.support_clock.FakeClock` moves time past a lease instead of waiting.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator

import pytest

from gateway.delivery.recovery import recover, take_over_expired
from gateway.receipts.callback import KEPT, ReceiptParams, RetryPolicy, apply_pending, record_receipt
from gateway.settings import DeliverySettings, Secret
from gateway.store import (
    Job,
    Location,
    NewMessage,
    NoticeKind,
    PostgreSQL,
    Quota,
    QuotaReached,
    State,
    Store,
    StoreError,
    StoreUnavailable,
    alert,
)
from tests.support_clock import FakeClock
from tests.support_delivery import Delivery
from tests.support_net import free_port
from tests.support_postgres import PostgresServer
from tests.support_settings import SettingsFactory
from tests.support_simulator import SimFactory, provider_env, provider_table

NUMBER = "+33145678900"
LEASE = DeliverySettings().lease_seconds


def _message(message_id: str, sender: str = "alice@example.com") -> NewMessage:
    return NewMessage(
        id=message_id, envelope_from=sender, header_from="", reply_to="", message_id_header="<a@b>",
        subject="Facture", date_header="", client_addr="127.0.0.1", auth_user="", doc_type="pdf", doc_pages=1,
        doc_bytes=10,
    )  # fmt: skip


@pytest.fixture
def two_stores(store_location: Location) -> Iterator[tuple[Store, Store, FakeClock]]:
    """Two gateways' stores on one database (one SQLite file, or one PostgreSQL database), one clock."""
    clock = FakeClock()
    a, b = Store(store_location, clock=clock), Store(store_location, clock=clock)
    try:
        yield a, b, clock
    finally:
        a.close()
        b.close()


def _claim(s: Store, owner: str, limit: int = 100) -> list[Job]:
    """What a worker's claim does: the due jobs, claimed in the transaction that found them."""
    now = s.clock()
    with s.transaction():
        due = s.due_for_delivery(now, limit)
        claimed = [s.claim_job(job, owner, now + LEASE, "storing the document", "uploading") for job in due]
    return [job for job in claimed if job is not None]


def _in_threads(n: int, work: Callable[[int], None]) -> None:
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            work(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads) and errors == []


# -- claims and fencing ----------------------------------------------------------------------------


def test_two_gateways_claiming_at_once_never_take_the_same_job(two_stores: tuple[Store, Store, FakeClock]) -> None:
    a, b, _ = two_stores
    a.add_message(_message("m1"), [(f"j{i:02}", NUMBER, "") for i in range(30)], "accepted")
    won: list[tuple[str, Job]] = []
    stores = {0: ("a", a), 1: ("b", b)}

    def claim(i: int) -> None:
        owner, s = stores[i]
        while got := _claim(s, owner, limit=3):
            won.extend((owner, job) for job in got)

    _in_threads(2, claim)
    assert sorted(job.id for _, job in won) == [f"j{i:02}" for i in range(30)]  # each exactly once
    for owner, job in won:
        stored = a.get_job(job.id)
        assert stored is not None and stored.state == State.UPLOADING and stored.lease_owner == owner
        assert stored.lease_token == job.lease_token == 1 and stored.lease_expires_at == a.clock() + LEASE
        assert a.count_events(job.id, "uploading") == 1


def test_a_write_with_an_old_token_is_refused_once_another_gateway_took_the_job_over(
    two_stores: tuple[Store, Store, FakeClock],
) -> None:
    a, b, clock = two_stores
    a.add_message(_message("m1"), [("j1", NUMBER, ""), ("j2", "+33298765432", "")], "accepted")
    j1, j2 = _claim(a, "a")
    assert a.transition("j1", State.SUBMITTING, "sending", expect=[State.UPLOADING], token=j1.lease_token,
                        submitted_at=clock())  # fmt: skip
    assert take_over_expired(b, DeliverySettings()) == []  # the leases still run: nothing is taken
    clock.advance(LEASE / 2)
    assert a.renew_leases("a", {"j1": j1.lease_token, "j2": j2.lease_token}, clock() + LEASE) == []
    clock.advance(LEASE / 2 + 1)
    assert take_over_expired(b, DeliverySettings()) == []  # renewed: still a's
    clock.advance(LEASE)  # a paused: no renewal

    assert take_over_expired(b, DeliverySettings()) == ["j1"]
    sent, stored = b.get_job("j1"), b.get_job("j2")
    assert sent is not None and sent.state == State.AMBIGUOUS and sent.grace_unwatched and sent.lease_owner == ""
    assert sent.lease_token == j1.lease_token + 1 and sent.recoveries == 1 and sent.ambiguities == 1
    assert "left by gateway 'a', whose lease ran out, during submission" in sent.reason
    assert [n["kind"] for n in b.notices_of_job("j1")] == [alert("ambiguous")]
    assert stored is not None and stored.state == State.QUEUED and stored.lease_token == j2.lease_token + 1

    # a comes back: each of its writes is refused, and it can tell why
    assert not a.transition("j1", State.SUBMITTED, "accepted", expect=[State.SUBMITTING, State.AMBIGUOUS],
                            token=j1.lease_token, provider_ref="R1")  # fmt: skip
    assert not a.lease_held("j1", j1.lease_token) and a.lease_held("j1", j1.lease_token + 1)
    assert a.renew_leases("a", {"j1": j1.lease_token, "j2": j2.lease_token}, clock() + LEASE) == ["j1", "j2"]
    (again,) = _claim(b, "b")  # j2 is due again: b claims it, with a token higher still
    assert again.id == "j2" and again.lease_token == j2.lease_token + 2
    assert not a.transition("j2", State.SUBMITTING, "sending", expect=[State.UPLOADING], token=j2.lease_token)
    assert b.transition("j2", State.SUBMITTING, "sending", expect=[State.UPLOADING], token=again.lease_token)
    final = b.get_job("j1")
    assert final is not None and final.state == State.AMBIGUOUS and final.provider_ref == ""


def test_a_job_found_mid_step_too_often_is_quarantined_by_the_gateway_taking_it_over(
    two_stores: tuple[Store, Store, FakeClock],
) -> None:
    a, b, clock = two_stores
    a.add_message(_message("m1"), [("j1", NUMBER, "")], "accepted")
    a.update_job("j1", recoveries=DeliverySettings().max_recoveries)
    _claim(a, "a")
    clock.advance(LEASE + 1)
    assert take_over_expired(b, DeliverySettings()) == []
    job = b.get_job("j1")
    assert job is not None and job.state == State.QUARANTINED and "found mid-step 4 times" in job.reason
    assert [n["kind"] for n in b.notices_of_job("j1")] == [alert("quarantined")]


def test_start_up_recovery_leaves_the_jobs_of_a_live_gateway_alone(two_stores: tuple[Store, Store, FakeClock]) -> None:
    a, b, clock = two_stores
    a.add_message(_message("m1"), [("live", NUMBER, ""), ("mine", NUMBER, ""), ("dead", NUMBER, "")], "accepted")
    a.add_message(_message("m2"), [("waiting", NUMBER, "")], "accepted")
    a.transition("waiting", State.AMBIGUOUS, "unknown", next_attempt_at=clock() + 600)
    for job in a.due_for_delivery(clock(), 10):
        owner, until = {"live": ("a", clock() + LEASE), "mine": ("b", clock() + LEASE), "dead": ("c", clock() - 1)}[
            job.id
        ]
        assert a.claim_job(job, owner, until, "storing the document", "uploading") is not None
    for s, name in ((a, "a"), (b, "b")):
        assert s.register_instance(name, name + "-run", "host", 1, alive_since=clock() - LEASE) is None

    recover(b, DeliverySettings(), instance="b")  # b starts again after a crash; a is alive

    states = {job_id: job.state for job_id in ("live", "mine", "dead") if (job := b.get_job(job_id))}
    waiting = b.get_job("waiting")
    assert waiting is not None
    if b.shared:  # PostgreSQL: only b's own jobs and the dead lease; a watched the grace period meanwhile
        assert states == {"live": State.UPLOADING, "mine": State.QUEUED, "dead": State.QUEUED}
        assert not waiting.grace_unwatched
    else:  # SQLite: one gateway only, every job found mid-step is recovered, as always
        assert states == {"live": State.QUEUED, "mine": State.QUEUED, "dead": State.QUEUED}
        assert waiting.grace_unwatched


# -- instance names ----------------------------------------------------------------------------------


def test_an_instance_name_is_one_live_gateways(store_location: Location) -> None:
    clock = FakeClock()
    s = Store(store_location, clock=clock)
    try:
        assert s.register_instance("gw-1", "run-1", "host-a", 10, alive_since=clock() - LEASE) is None
        other = s.register_instance("gw-1", "run-2", "host-b", 20, alive_since=clock() - LEASE)
        assert other is not None and (other.host, other.pid, other.token) == ("host-a", 10, "run-1")
        assert s.register_instance("gw-1", "run-2", "host-a", 20, alive_since=clock() - LEASE,
                                   stale=lambda row: row.host == "host-a") is None  # its process is gone
        assert not s.instance_heartbeat("gw-1", "run-1") and s.instance_heartbeat("gw-1", "run-2")
        clock.advance(LEASE + 1)
        assert s.live_instances(clock() - LEASE) == []
        assert s.register_instance("gw-1", "run-3", "host-c", 30, alive_since=clock() - LEASE) is None  # silent
        s.unregister_instance("gw-1", "run-3")
        assert s.register_instance("gw-1", "run-4", "host-d", 40, alive_since=clock() - LEASE) is None
    finally:
        s.close()


async def test_a_gateway_starting_under_the_name_of_a_live_one_is_refused(
    make_settings: SettingsFactory, postgres_dsn: str
) -> None:
    where = PostgreSQL(Secret(postgres_dsn))
    clock = FakeClock()
    other = Store(where, clock=clock)
    try:  # a gateway on another machine under the same name, alive
        assert other.register_instance("gw-1", "their-run", "other-host", 4242, alive_since=0) is None
        d = Delivery(make_settings({"cluster": {"instance": "gw-1"}}), clock, where)
        with pytest.raises(StoreError, match=r"cluster.instance 'gw-1' is the name of another gateway that is alive"
                                             r" \(on 'other-host', process 4242"):  # fmt: skip
            await d.start()
        await d.stop()
        clock.advance(LEASE + 1)  # it stopped answering: its name may be taken
        d = Delivery(make_settings({"cluster": {"instance": "gw-1"}}), clock, where)
        await d.start()
        await d.stop()
        assert other.live_instances(0) == []  # a stop frees the name at once
    finally:
        other.close()


def test_a_dead_run_on_this_host_does_not_keep_its_name() -> None:
    import socket

    from gateway.delivery.worker import _gone
    from gateway.store import Instance

    here = socket.gethostname()
    assert _gone(Instance("gw", "t", here, os.getpid(), 0, 0))  # this very process number: a run before it
    assert not _gone(Instance("gw", "t", here, os.getppid(), 0, 0))  # a process alive
    assert not _gone(Instance("gw", "t", "other-host", 2**22 + 1, 0, 0))


# -- notices ----------------------------------------------------------------------------------------


def test_two_notifiers_claim_each_notice_once(two_stores: tuple[Store, Store, FakeClock]) -> None:
    a, b, clock = two_stores
    a.add_message(_message("m1"), [(f"j{i:02}", NUMBER, "") for i in range(20)], "accepted")
    for i in range(20):
        a.queue_notice(f"j{i:02}", NoticeKind.ACCEPTED, "queued")
        a.queue_notice(f"j{i:02}", alert("bug"), "an alert")
    taken: list[tuple[str, int]] = []
    stores = {0: ("a", a), 1: ("b", b)}

    def send(i: int) -> None:
        owner, s = stores[i]
        for alerts in (False, True):
            while batch := s.claim_notices(owner, clock(), clock() + LEASE, 3, alerts=alerts):
                for notice in batch:
                    taken.append((owner, notice.id))
                    s.mark_notice_sent(notice.id, notice.job_id, "sent")

    _in_threads(2, send)
    ids = sorted(n for _, n in taken)
    assert len(ids) == 40 and len(set(ids)) == 40  # every notice and alert sent once
    assert a.count_notices() == {("accepted", "sent"): 20, ("alert:bug", "sent"): 20}


def test_a_claim_that_ran_out_makes_the_notice_due_again(two_stores: tuple[Store, Store, FakeClock]) -> None:
    a, b, clock = two_stores
    a.add_message(_message("m1"), [("j1", NUMBER, "")], "accepted")
    a.queue_notice("j1", NoticeKind.FAILED, "refused")
    (claimed,) = a.claim_notices("a", clock(), clock() + LEASE, 10, alerts=False)
    assert b.claim_notices("b", clock(), clock() + LEASE, 10, alerts=False) == []
    assert b.due_notices(clock(), 10) == []
    a.renew_notice_claims("a", [claimed.id], clock() + 2 * LEASE)
    clock.advance(LEASE + 1)
    assert b.claim_notices("b", clock(), clock() + LEASE, 10, alerts=False) == []  # renewed
    clock.advance(LEASE)  # a died mid-send: the mail goes again, as after a crash on one machine
    (again,) = b.claim_notices("b", clock(), clock() + LEASE, 10, alerts=False)
    assert again.id == claimed.id
    assert a.release_notice_claims("b") == 1 and len(a.due_notices(clock(), 10)) == 1


def test_an_alert_for_one_event_seen_by_two_gateways_is_queued_once(
    two_stores: tuple[Store, Store, FakeClock],
) -> None:
    a, b, _ = two_stores
    a.add_message(_message("m1"), [("j1", NUMBER, "")], "accepted")
    queued: list[bool] = []
    stores = {0: a, 1: b}

    def raise_alert(i: int) -> None:
        queued.append(stores[i].queue_notice("j1", alert("ambiguous"), "outcome unknown"))

    _in_threads(2, raise_alert)
    assert sorted(queued) == [False, True] and len(a.notices_of_job("j1")) == 1


# -- intake: the resend dedupe and the quotas ------------------------------------------------------------


def test_two_copies_of_a_mail_committed_at_once_make_one_job(store_location: Location) -> None:
    clock = FakeClock()
    stores = [Store(store_location, clock=clock) for _ in range(4)]
    answers: dict[int, dict[str, str]] = {}
    try:

        def add(i: int) -> None:
            answers[i] = stores[i].add_message(_message(f"m{i}"), [(f"j{i}", NUMBER, "key-1"), (f"k{i}", "+3329876",
                                               f"key-2-{i}")], "accepted", dedupe_since=clock() - 3600)  # fmt: skip

        _in_threads(4, add)
        winners = [i for i, taken in answers.items() if not taken]
        assert len(winners) == 1 and all(taken == {NUMBER: f"j{winners[0]}"} for i, taken in answers.items()
                                         if i not in winners)  # fmt: skip
        jobs = stores[0].list_jobs(limit=-1)
        assert sorted(j.id for j in jobs if j.number == NUMBER) == [f"j{winners[0]}"]
        assert len([j for j in jobs if j.number != NUMBER]) == 4  # the other number of each copy is its own
        clock.advance(3601)  # past the window: the same key makes a new job
        assert stores[0].add_message(_message("m9"), [("j9", NUMBER, "key-1")], "accepted",
                                     dedupe_since=clock() - 3600) == {}  # fmt: skip
        assert stores[0].find_duplicate("key-1", clock() - 1) == "j9"
    finally:
        for s in stores:
            s.close()


def test_a_message_whose_every_job_is_a_copy_is_not_added(two_stores: tuple[Store, Store, FakeClock]) -> None:
    a, b, clock = two_stores
    assert a.add_message(_message("m1"), [("j1", NUMBER, "key")], "accepted", dedupe_since=clock() - 60) == {}
    assert b.add_message(_message("m2"), [("j2", NUMBER, "key")], "accepted", dedupe_since=clock() - 60) == {
        NUMBER: "j1"
    }
    assert a.recorded_messages(["m1", "m2"]) == {"m1"} and b.get_job("j2") is None


@pytest.mark.parametrize("per_sender", [True, False])
def test_gateways_taking_mail_at_once_never_pass_a_quota_together(store_location: Location, per_sender: bool) -> None:
    clock = FakeClock()
    stores = [Store(store_location, clock=clock) for _ in range(4)]
    quota = Quota(clock() - 3600, per_sender=5 if per_sender else 0, overall=0 if per_sender else 5)
    outcomes: dict[int, str] = {}
    try:

        def add(i: int) -> None:
            sender = "alice@example.com" if per_sender else f"user{i}@example.com"
            jobs = [(f"j{i}a", NUMBER, ""), (f"j{i}b", "+33298765432", "")]
            try:
                stores[i].add_message(_message(f"m{i}", sender), jobs, "accepted", quota=quota)
            except QuotaReached as exc:
                outcomes[i] = "sender" if exc.per_sender else "everyone"
            else:
                outcomes[i] = "added"

        _in_threads(4, add)
        assert sorted(outcomes.values()) == ["added", "added", *["sender" if per_sender else "everyone"] * 2]
        assert stores[0].count_recent_jobs(clock() - 3600) == 4
    finally:
        for s in stores:
            s.close()


# -- receipts ------------------------------------------------------------------------------------------


def _submitted(s: Store, ref: str = "R1") -> None:
    s.add_message(_message("m1"), [("j1", NUMBER, "")], "accepted")
    s.transition("j1", State.SUBMITTING, "sending", submitted_at=s.clock())
    s.transition("j1", State.SUBMITTED, "accepted", provider_ref=ref)


@pytest.mark.parametrize("codes", [("0", "0"), ("0", "31083")])
def test_a_receipt_that_reaches_two_gateways_at_once_is_applied_once(
    two_stores: tuple[Store, Store, FakeClock], codes: tuple[str, str]
) -> None:
    a, b, _ = two_stores
    _submitted(a)
    outcomes: dict[int, str] = {}
    stores = {0: a, 1: b}

    def receive(i: int) -> None:
        params = ReceiptParams(etat_e=codes[i], ref_accuse="R1", numero="0145678900", nb_page=1, heure="12:00")
        outcomes[i], _ = record_receipt(stores[i], params, "callback", RetryPolicy())

    _in_threads(2, receive)
    job = a.get_job("j1")
    assert job is not None and job.state in (State.DELIVERED, State.FAILED)
    first = str(job.state)
    assert first in outcomes.values()
    other = next(o for o in outcomes.values() if o != first)
    assert other == ("duplicate: nothing changes" if codes[0] == codes[1] else f"ignored ({first})")
    assert [n["kind"] for n in a.notices_of_job("j1")] == [first]
    assert a.count_events("j1", "delivered") + a.count_events("j1", "failed") == 1


def test_a_receipt_on_file_applied_by_two_receipt_stages_at_once_counts_once(
    two_stores: tuple[Store, Store, FakeClock],
) -> None:
    a, b, clock = two_stores
    a.add_message(_message("m1"), [("j1", NUMBER, "")], "accepted")
    a.transition("j1", State.SUBMITTING, "sending", submitted_at=clock())
    clock.advance(1)
    early = ReceiptParams(etat_e="0", ref_accuse="R1", numero="0145678900", nb_page=1, heure="12:00")
    assert record_receipt(a, early, "callback", RetryPolicy())[0] == KEPT  # before the submit answer
    a.transition("j1", State.SUBMITTED, "accepted", provider_ref="R1")
    applied: dict[int, int] = {}
    stores = {0: a, 1: b}

    def apply(i: int) -> None:
        applied[i] = apply_pending(stores[i], "j1")

    _in_threads(2, apply)
    assert sorted(applied.values()) == [0, 1]
    assert [n["kind"] for n in a.notices_of_job("j1")] == ["delivered"] and a.count_events("j1", "delivered") == 1


# -- a lost connection -----------------------------------------------------------------------------------


def test_a_store_connects_again_after_the_server_restarted(postgres_server: PostgresServer, postgres_dsn: str) -> None:
    s = Store(PostgreSQL(Secret(postgres_dsn)))
    try:
        s.add_message(_message("m1"), [("j1", NUMBER, "")], "accepted")
        postgres_server.stop()
        try:
            with pytest.raises(StoreUnavailable) as lost:
                s.get_job("j1")
            with pytest.raises(StoreUnavailable) as down:  # still down: each call tries again, and says so
                with s.transaction():
                    s.get_job("j1")
        finally:
            postgres_server.start()
        for caught in (lost, down):
            message = str(caught.value)
            assert postgres_server.password not in message and "password=" not in message
            assert caught.value.__cause__ is None and caught.value.__suppress_context__
        assert "the connection was lost" in str(lost.value) and "cannot connect" in str(down.value)
        assert s.transition("j1", State.CANCELLED, "by an operator")  # connected again
        job = s.get_job("j1")
        assert job is not None and job.state == State.CANCELLED
    finally:
        s.close()


async def test_the_worker_pauses_while_the_store_is_away_and_resumes_when_it_is_back(
    make_settings: SettingsFactory, sim_factory: SimFactory, postgres_server: PostgresServer, postgres_dsn: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO, logger="gateway.worker")
    sim = await sim_factory()
    port = free_port()
    table = {**provider_table(sim), "http": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"}}
    settings = make_settings(table, provider_env())
    d = Delivery(settings, FakeClock(), PostgreSQL(Secret(postgres_dsn)))
    await d.start(worker=False)
    try:
        postgres_server.stop()
        try:
            waits = []
            for _ in range(3):
                await d.worker.run_pass()
                waits.append(d.worker.next_wakeup - d.clock())
        finally:
            postgres_server.start()
        said = [r for r in caplog.records if "delivery paused until the store answers again" in r.getMessage()]
        assert len(said) == 1 and said[0].exc_info is None and postgres_server.password not in said[0].getMessage()
        assert waits == sorted(waits) and waits[0] < waits[-1]  # a doubling pause between tries
        await d.worker.run_pass()
        assert any("the store answers again; delivery resumes" in r.getMessage() for r in caplog.records)
        (job_id,) = await d.spool_message()
        await d.drain()
        assert (await d.job(job_id)).state == State.SUBMITTED and len(sim.requests) == 1
    finally:
        await d.stop()
