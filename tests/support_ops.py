"""A job store with one job in every state, for the operations tests."""

from __future__ import annotations

from pathlib import Path

from gateway.spool import Spool
from gateway.store import NewMessage, State, Store, new_id


def add_job(store: Store, state: State, *, sender: str = "alice@example.com", number: str = "+33145678900") -> str:
    msg = NewMessage(
        id=new_id(), envelope_from=sender, header_from=f"Alice <{sender}>", reply_to="",
        message_id_header=f"<{new_id()}@example.com>", subject="Invoice 42", date_header="", client_addr="127.0.0.1",
        auth_user="", doc_type="pdf", doc_pages=2, doc_bytes=1234,
        documents=[{"name": "invoice.pdf", "type": "pdf", "pages": 2}],
    )  # fmt: skip
    job_id = new_id()
    store.add_message(msg, [(job_id, number, "")], "250 2.0.0 OK: queued as " + job_id)
    if state != State.QUEUED:
        extra: dict[str, object] = {}
        if state == State.HELD:
            extra["hold_kind"] = "config"
        assert store.transition(job_id, state, f"test: {state}", expect=[State.QUEUED], **extra)
    return job_id


def fill_store(spool_dir: Path) -> dict[State, str]:
    """A spool whose store holds one job per state; returns the job id of each state."""
    spool = Spool(spool_dir)
    spool.create()
    store = Store(spool.db_path)
    try:
        jobs = {state: add_job(store, state, sender=f"{state}@example.com") for state in State}
        delivered = jobs[State.DELIVERED]
        store.db.execute(
            "INSERT INTO receipts (received_at, source, ref_accuse, etat_e, numero, nb_page, heure, job_id, applied_at)"
            " VALUES (?, 'callback', 'R123', '0', '0145678900', 2, '2026-01-31 10:00:00', ?, ?)",
            (store.clock(), delivered, store.clock()),
        )
        store.queue_notice(delivered, "delivered", "2 pages", recipient="delivered@example.com")
    finally:
        store.close()
    return jobs
