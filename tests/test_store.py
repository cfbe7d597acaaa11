"""The store's own rules: typed rows, notice kinds and states, and which jobs have a receipt waiting."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.outcomes import HoldKind
from gateway.store import (
    Location,
    NewMessage,
    NoticeKind,
    NoticeState,
    State,
    Store,
    alert,
    alert_subject,
    ar_mail,
    is_alert,
    is_ar_mail,
    kind_family,
    number_tail,
)
from tests.support_delivery import FakeClock

NUMBER = "+33145678900"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(store_location: Location, clock: FakeClock) -> Iterator[Store]:
    s = Store(store_location, clock=clock)
    try:
        yield s
    finally:
        s.close()


def _job(store: Store, job_id: str, number: str = NUMBER) -> str:
    msg = NewMessage(
        id=f"m-{job_id}", envelope_from="alice@example.com", header_from="", reply_to="", message_id_header="",
        subject="", date_header="", client_addr="127.0.0.1", auth_user="", doc_type="pdf", doc_pages=1, doc_bytes=1,
    )  # fmt: skip
    store.add_message(msg, [(job_id, number, "")], "accepted")
    return job_id


def _receipt(store: Store, ref: str, numero: str = "0145678900", code: str = "0") -> int:
    receipt_id = store.add_receipt(source="callback", ref_accuse=ref, etat_e=code, numero=numero, nb_page=1,
                                   heure="12:00", validated="1")  # fmt: skip
    assert receipt_id is not None
    return receipt_id


def test_a_job_is_read_back_with_its_state_and_hold_kind_as_enums(store: Store) -> None:
    _job(store, "j1")
    job = store.get_job("j1")
    assert job is not None and type(job.state) is State and job.state is State.QUEUED and job.hold_kind == ""
    store.transition("j1", State.HELD, "account refused", hold_kind=HoldKind.CONFIG)
    held = store.get_job("j1")
    assert held is not None and held.state is State.HELD and held.hold_kind is HoldKind.CONFIG
    assert store.has_held(HoldKind.CONFIG) and not store.has_held(HoldKind.CREDIT)
    assert store.held_job_ids(HoldKind.CONFIG) == ["j1"]


def test_notice_kinds_and_states(store: Store) -> None:
    assert (alert("config"), ar_mail("ab12")) == ("alert:config", "ar-mail:ab12")
    assert is_alert(alert("bug")) and not is_alert(NoticeKind.DELIVERED) and not is_alert(ar_mail("x"))
    assert is_ar_mail(ar_mail("x")) and not is_ar_mail(alert("x"))
    assert alert_subject(alert("ambiguous-again")) == "ambiguous-again"
    assert [kind_family(k) for k in (NoticeKind.FAILED, alert("url"), ar_mail("x"))] == ["failed", "alert", "ar-mail"]
    _job(store, "j1")
    assert store.queue_notice("j1", NoticeKind.DELIVERED, "receipt 0")
    assert not store.queue_notice("j1", NoticeKind.DELIVERED, "receipt 0 again")  # once per (job, kind)
    assert store.queue_notice("j1", alert("bug"), "oops")
    (notice,) = store.due_notices(store.clock(), 10)
    (flagged,) = store.due_alerts(store.clock(), 10)
    assert (notice.kind, notice.state, notice.message_id) == ("delivered", NoticeState.NEW, "j1.delivered")
    assert type(notice.state) is NoticeState and flagged.kind == "alert:bug"
    store.finish_notice(notice.id, NoticeState.SKIPPED, "no recipient", job_id="j1")
    skipped = store.notice(notice.id)
    assert skipped is not None and skipped.state is NoticeState.SKIPPED and skipped.last_error == "no recipient"
    assert store.timeline("j1")[-1]["kind"] == "notice skipped"
    assert store.count_notices() == {("delivered", "skipped"): 1, ("alert:bug", "new"): 1}


def test_numbers_compare_by_their_last_nine_digits() -> None:
    assert number_tail("+33145678900") == number_tail("0145678900") == number_tail("0033 1 45 67 89 00")
    assert number_tail("0145678901") != number_tail("0145678900")


def test_a_submitted_job_waits_for_the_receipt_its_reference_has_on_file(store: Store) -> None:
    _job(store, "j1")
    _job(store, "j2")
    _receipt(store, "R1")  # came before the answer
    store.transition("j1", State.SUBMITTED, "accepted", provider_ref="R1")
    store.transition("j2", State.SUBMITTED, "accepted", provider_ref="R2")
    assert store.jobs_with_pending_receipts() == ["j1"]
    (row,) = store.unapplied_receipts("R1")
    store.mark_receipt_applied(row["id"], "j1")
    assert store.jobs_with_pending_receipts() == [] and store.unapplied_receipts("R1") == []


def test_an_ambiguous_job_waits_only_for_a_receipt_for_its_number_on_file_since_its_attempt(
    store: Store, clock: FakeClock
) -> None:
    _job(store, "early")
    _receipt(store, "OLD")  # before the attempt below: about another one
    clock.advance(3600)
    store.transition("early", State.SUBMITTING, "sending", submitted_at=clock.now)
    other = _receipt(store, "OTHER", numero="0298765432")
    mine = _receipt(store, "MINE")
    clock.advance(30)
    store.transition("early", State.AMBIGUOUS, "outcome unknown")
    job = store.get_job("early")
    assert job is not None
    found = store.receipt_for_ambiguous(job)
    assert found is not None and found["id"] == mine and found["id"] != other
    assert store.jobs_with_pending_receipts() == ["early"]

    store.mark_receipt_applied(mine, "early")
    assert store.jobs_with_pending_receipts() == []
    _job(store, "late")
    store.transition("late", State.SUBMITTING, "sending", submitted_at=clock.now)
    store.transition("late", State.AMBIGUOUS, "outcome unknown")
    clock.advance(3 * 86400)  # a receipt long after the job was recorded ambiguous: matched as it comes, or never
    _receipt(store, "LATE")
    assert store.jobs_with_pending_receipts() == []


_FULL_DISK = """
import os, resource, signal, sys
from gateway.store import Store
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
store = Store(sys.argv[1])
wal = os.path.getsize(sys.argv[1] + "-wal")
resource.setrlimit(resource.RLIMIT_FSIZE, (wal, wal))  # from here on no file may grow: the disk is full
print(store.writable())
"""


def test_the_write_probe_writes_so_a_full_disk_is_seen(tmp_path: Path) -> None:
    # In its own process: the file size limit applies to every file the process writes.
    done = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path / "jobs.sqlite3")], capture_output=True,
                          text=True, timeout=60, check=True)  # fmt: skip
    assert done.stdout.strip() == "False"  # taking the lock alone (BEGIN IMMEDIATE, ROLLBACK) said True
    store = Store(tmp_path / "jobs.sqlite3")
    try:
        assert store.writable()
        assert store.db.execute("SELECT COUNT(*) FROM probe").fetchone()[0] == 0
    finally:
        store.close()
