"""The job store: an embedded SQLite database beside the spool files.

In: accepted messages (after their files are on disk), state changes from the
worker, receipts and notifications. Out: job rows, each with a timeline of
events a person can read. WAL journal, ``synchronous=FULL``: a commit that
returned is on disk. The schema has a version and migrations; the daemon and
the CLI open the same file (WAL lets them run together).

:class:`Store` is synchronous and must only be used off the event loop; the
daemon reaches it through :class:`AsyncStore`, which runs every call on one
dedicated thread.
"""

from __future__ import annotations

import asyncio
import enum
import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class State(enum.StrEnum):
    QUEUED = "queued"
    UPLOADING = "uploading"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    DELIVERED = "delivered"
    FAILED = "failed"
    HELD = "held"
    DEFERRED = "deferred"
    AMBIGUOUS = "ambiguous"
    QUARANTINED = "quarantined"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset({State.DELIVERED, State.FAILED, State.CANCELLED})
# States a job is in while a step runs; found at start-up they are recovered.
IN_FLIGHT_STATES = frozenset({State.UPLOADING, State.SUBMITTING})


def new_id() -> str:
    """An id with 64 random bits: unguessable enough to name, never a secret."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class NewMessage:
    """What intake knows of an accepted message, before it is stored."""

    id: str
    envelope_from: str
    header_from: str
    reply_to: str
    message_id_header: str
    subject: str
    date_header: str
    client_addr: str
    auth_user: str
    doc_type: str
    doc_pages: int
    doc_bytes: int
    documents: Sequence[dict[str, Any]] = ()
    skipped: Sequence[dict[str, Any]] = ()


@dataclass(frozen=True)
class Job:
    id: str
    message_id: str
    number: str
    state: str
    reason: str
    created_at: float
    updated_at: float
    next_attempt_at: float
    attempts: int
    provider_ref: str
    submitted_at: float
    final_at: float
    recoveries: int
    receipt_code: str
    pages_sent: int
    ar_token: str
    envelope_from: str
    doc_pages: int
    upload_key: str
    hold_kind: str = ""
    ambiguities: int = 0

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        return cls(**{f.name: row[f.name] for f in fields(cls)})


_JOB_SELECT = """
SELECT j.*, m.envelope_from AS envelope_from, m.doc_pages AS doc_pages, m.upload_key AS upload_key
FROM jobs j JOIN messages m ON m.id = j.message_id
"""

MIGRATIONS: list[str] = [
    # 1: the first schema.
    """
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        received_at REAL NOT NULL,
        envelope_from TEXT NOT NULL,
        header_from TEXT NOT NULL DEFAULT '',
        reply_to TEXT NOT NULL DEFAULT '',
        message_id_header TEXT NOT NULL DEFAULT '',
        subject TEXT NOT NULL DEFAULT '',
        date_header TEXT NOT NULL DEFAULT '',
        client_addr TEXT NOT NULL DEFAULT '',
        auth_user TEXT NOT NULL DEFAULT '',
        doc_type TEXT NOT NULL DEFAULT '',
        doc_pages INTEGER NOT NULL DEFAULT 0,
        doc_bytes INTEGER NOT NULL DEFAULT 0,
        documents TEXT NOT NULL DEFAULT '[]',
        skipped TEXT NOT NULL DEFAULT '[]',
        upload_key TEXT NOT NULL DEFAULT '',
        uploaded_at REAL NOT NULL DEFAULT 0,
        object_deleted_at REAL NOT NULL DEFAULT 0
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        message_id TEXT NOT NULL REFERENCES messages(id),
        number TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        provider_ref TEXT NOT NULL DEFAULT '',
        submitted_at REAL NOT NULL DEFAULT 0,
        final_at REAL NOT NULL DEFAULT 0,
        recoveries INTEGER NOT NULL DEFAULT 0,
        receipt_code TEXT NOT NULL DEFAULT '',
        pages_sent INTEGER NOT NULL DEFAULT 0,
        ar_token TEXT NOT NULL DEFAULT '',
        dedupe_key TEXT NOT NULL DEFAULT '',
        -- held jobs: config | url | credit (what releases them)
        hold_kind TEXT NOT NULL DEFAULT '',
        -- submissions whose outcome was unknown (the second one waits for an operator)
        ambiguities INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_state ON jobs(state, next_attempt_at);
    CREATE INDEX jobs_dedupe ON jobs(dedupe_key);
    CREATE INDEX jobs_ref ON jobs(provider_ref);
    CREATE INDEX jobs_number ON jobs(number, submitted_at);
    CREATE INDEX jobs_message ON jobs(message_id);
    CREATE INDEX jobs_ar_token ON jobs(ar_token);
    CREATE INDEX messages_sender ON messages(envelope_from, received_at);
    CREATE INDEX messages_received ON messages(received_at);
    CREATE INDEX messages_upload ON messages(upload_key);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX events_job ON events(job_id, id);
    CREATE TABLE receipts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        received_at REAL NOT NULL,
        source TEXT NOT NULL,
        ref_accuse TEXT NOT NULL,
        etat_e TEXT NOT NULL,
        numero TEXT NOT NULL DEFAULT '',
        nb_page INTEGER NOT NULL DEFAULT 0,
        heure TEXT NOT NULL DEFAULT '',
        validated TEXT NOT NULL DEFAULT '',
        job_id TEXT NOT NULL DEFAULT '',
        applied_at REAL NOT NULL DEFAULT 0,
        UNIQUE (ref_accuse, etat_e, heure, nb_page)
    );
    CREATE INDEX receipts_ref ON receipts(ref_accuse);
    CREATE TABLE notifications (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL DEFAULT '',
        kind TEXT NOT NULL,
        recipient TEXT NOT NULL DEFAULT '',
        message_id TEXT NOT NULL UNIQUE,
        detail TEXT NOT NULL DEFAULT '',
        payload BLOB NOT NULL DEFAULT x'',
        -- a mail that came in to be forwarded as it came (a provider AR copy)
        source BLOB NOT NULL DEFAULT x'',
        state TEXT NOT NULL DEFAULT 'new',
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        sent_at REAL NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX notifications_due ON notifications(state, next_attempt_at);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(RuntimeError):
    pass


class Store:
    """Synchronous access to the job store. One instance per thread."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        try:
            self.migrate()
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    # -- schema -------------------------------------------------------------

    def migrate(self) -> None:
        with self.transaction():
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {version} is newer than this fax-gateway knows"
                    f" ({SCHEMA_VERSION}): run the fax-gateway version that wrote it, or a newer one"
                )
            for n in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[n].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {n + 1}")

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: one writer at a time across processes."""
        if self.db.in_transaction:  # nested: join the outer transaction
            yield self.db
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- intake -------------------------------------------------------------

    def find_duplicate(self, dedupe_key: str, since: float) -> str | None:
        row = self.db.execute(
            "SELECT id FROM jobs WHERE dedupe_key = ? AND dedupe_key != '' AND created_at >= ?", (dedupe_key, since)
        ).fetchone()
        return None if row is None else str(row["id"])

    def job_by_ar_token(self, token: str) -> str | None:
        """The job whose receipt-mail address is ``ar-<token>@...`` (None: no such job)."""
        row = self.db.execute("SELECT id FROM jobs WHERE ar_token = ? AND ar_token != ''", (token,)).fetchone()
        return None if row is None else str(row["id"])

    def add_message(self, msg: NewMessage, jobs: Sequence[tuple[str, str, str]], detail: str) -> None:
        """Commit a spooled message and its jobs: ``jobs`` is (job id, number, dedupe key)."""
        now = self.clock()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO messages (id, received_at, envelope_from, header_from, reply_to, message_id_header,"
                " subject, date_header, client_addr, auth_user, doc_type, doc_pages, doc_bytes, documents, skipped)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    msg.id, now, msg.envelope_from, msg.header_from, msg.reply_to, msg.message_id_header,
                    msg.subject, msg.date_header, msg.client_addr, msg.auth_user, msg.doc_type, msg.doc_pages,
                    msg.doc_bytes, json.dumps(list(msg.documents)), json.dumps(list(msg.skipped)),
                ),
            )  # fmt: skip
            for job_id, number, dedupe_key in jobs:
                db.execute(
                    "INSERT INTO jobs (id, message_id, number, state, created_at, updated_at, dedupe_key, ar_token)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (job_id, msg.id, number, State.QUEUED, now, now, dedupe_key, secrets.token_hex(16)),
                )
                self.add_event(job_id, "accepted", detail, now=now)

    def recorded_messages(self, message_ids: Collection[str]) -> set[str]:
        """Which of ``message_ids`` have a ``messages`` row."""
        ids, found = list(message_ids), set()
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            rows = self.db.execute(f"SELECT id FROM messages WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            found |= {str(r[0]) for r in rows}
        return found

    def count_recent_jobs(self, since: float, envelope_from: str | None = None) -> int:
        if envelope_from is None:
            row = self.db.execute("SELECT COUNT(*) FROM jobs WHERE created_at >= ?", (since,)).fetchone()
        else:
            row = self.db.execute(
                "SELECT COUNT(*) FROM jobs j JOIN messages m ON m.id = j.message_id"
                " WHERE m.envelope_from = ? AND m.received_at >= ?",
                (envelope_from, since),
            ).fetchone()
        return int(row[0])

    # -- jobs ---------------------------------------------------------------

    def add_event(self, job_id: str, kind: str, detail: str = "", *, now: float | None = None) -> None:
        self.db.execute(
            "INSERT INTO events (job_id, at, kind, detail) VALUES (?, ?, ?, ?)",
            (job_id, self.clock() if now is None else now, kind, detail),
        )

    def get_job(self, job_id: str) -> Job | None:
        row = self.db.execute(_JOB_SELECT + " WHERE j.id = ?", (job_id,)).fetchone()
        return None if row is None else Job.from_row(row)

    def jobs_of_message(self, message_id: str) -> list[Job]:
        rows = self.db.execute(_JOB_SELECT + " WHERE j.message_id = ? ORDER BY j.id", (message_id,))
        return [Job.from_row(r) for r in rows]

    def message(self, message_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        return row

    def transition(
        self,
        job_id: str,
        state: State,
        reason: str = "",
        *,
        expect: Sequence[State] | None = None,
        event: str | None = None,
        **columns: Any,
    ) -> bool:
        """Move a job to ``state``, record why, and set extra ``columns``.

        With ``expect``, the move happens only from one of those states (an
        atomic claim); returns whether the row changed. Final states are never
        left, except by an explicit ``expect`` that names them.
        """
        now = self.clock()
        sets = ["state = ?", "reason = ?", "updated_at = ?"] + [f"{c} = ?" for c in columns]
        values: list[Any] = [str(state), reason, now, *columns.values()]
        if state in FINAL_STATES and "final_at" not in columns:
            sets.append("final_at = ?")
            values.append(now)
        allowed = list(expect) if expect is not None else [s for s in State if s not in FINAL_STATES]
        marks = ",".join("?" * len(allowed))
        with self.transaction() as db:
            cur = db.execute(
                f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND state IN ({marks})",
                (*values, job_id, *[str(s) for s in allowed]),
            )
            if cur.rowcount != 1:
                return False
            self.add_event(job_id, event or str(state), reason, now=now)
        return True

    def due_jobs(self, states: Sequence[State], now: float, limit: int = 100) -> list[Job]:
        marks = ",".join("?" * len(states))
        rows = self.db.execute(
            _JOB_SELECT + f" WHERE j.state IN ({marks}) AND j.next_attempt_at <= ?"
            " ORDER BY j.next_attempt_at, j.created_at LIMIT ?",
            (*[str(s) for s in states], now, limit),
        )
        return [Job.from_row(r) for r in rows]

    def due_for_delivery(self, now: float, limit: int) -> list[Job]:
        """Jobs the worker should start now: queued, deferred, credit holds and ambiguous
        jobs past their grace period (``next_attempt_at`` 0 means left for an operator)."""
        rows = self.db.execute(
            _JOB_SELECT + " WHERE (j.state IN ('queued', 'deferred')"
            " OR (j.state = 'held' AND j.hold_kind = 'credit')"
            " OR (j.state = 'ambiguous' AND j.next_attempt_at > 0))"
            " AND j.next_attempt_at <= ? ORDER BY j.next_attempt_at, j.created_at LIMIT ?",
            (now, limit),
        )
        return [Job.from_row(r) for r in rows]

    def list_jobs(
        self,
        *,
        states: Sequence[str] = (),
        since: float | None = None,
        number: str | None = None,
        sender: str | None = None,
        limit: int = 200,
    ) -> list[Job]:
        where: list[str] = []
        args: list[Any] = []
        if states:
            where.append(f"j.state IN ({','.join('?' * len(states))})")
            args.extend(states)
        if since is not None:
            where.append("j.created_at >= ?")
            args.append(since)
        if number:
            where.append("j.number LIKE ?")
            args.append(f"%{number.lstrip('+')}%")
        if sender:
            where.append("m.envelope_from LIKE ?")
            args.append(f"%{sender}%")
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        rows = self.db.execute(_JOB_SELECT + clause + " ORDER BY j.created_at DESC LIMIT ?", (*args, limit))
        return [Job.from_row(r) for r in rows]

    def timeline(self, job_id: str) -> list[sqlite3.Row]:
        return list(self.db.execute("SELECT at, kind, detail FROM events WHERE job_id = ? ORDER BY id", (job_id,)))

    def count_by_state(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self.db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}

    def update_message(self, message_id: str, **columns: Any) -> None:
        sets = ", ".join(f"{c} = ?" for c in columns)
        with self.transaction() as db:
            db.execute(f"UPDATE messages SET {sets} WHERE id = ?", (*columns.values(), message_id))

    def update_job(self, job_id: str, **columns: Any) -> None:
        sets = ", ".join(f"{c} = ?" for c in columns)
        with self.transaction() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*columns.values(), job_id))

    def queue_notice(self, job_id: str, kind: str, detail: str = "", *, recipient: str = "") -> bool:
        """Ask the notifier to tell someone about ``job_id``: once per (job, kind).

        ``kind`` names the outcome (``delivered``, ``failed``, ``delayed``, ``accepted``,
        or ``alert:<what>`` for the administrator). The notifier composes and sends
        it; a second call with the same job and kind changes nothing.
        """
        with self.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO notifications (job_id, kind, recipient, message_id, detail, state, created_at)"
                " VALUES (?, ?, ?, ?, ?, 'new', ?)",
                (job_id, kind, recipient, f"{job_id}.{kind}", detail, self.clock()),
            )
            if cur.rowcount == 1 and job_id:
                self.add_event(job_id, f"notice queued: {kind}", detail)
        return cur.rowcount == 1

    def writable(self) -> bool:
        """A real write, rolled back: is the store usable right now?"""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("ROLLBACK")
        except sqlite3.Error:
            return False
        return True


class AsyncStore:
    """Runs :class:`Store` calls on one dedicated thread, never on the event loop."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
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
