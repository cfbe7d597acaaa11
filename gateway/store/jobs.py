"""Jobs and messages: what intake commits, the worker claims and moves, and the timeline.

In: accepted messages (after their files are on disk) and state changes from
the worker, the receipt stage and operators. Out: :class:`Job` rows (their
``state`` a :class:`~gateway.store.states.State`), each with a timeline of
events a person can read, and the questions the stages ask about them (which
jobs are due, whether submissions are paused, which stored documents are done
with).

Leases (several gateways on one database): the worker claims a due job
(:meth:`JobQueries.claim_job`) for ``lease_seconds``, under its instance's name,
and the claim adds one to the job's ``lease_token``. Each later write of that
worker carries the token (``transition(..., token=)``) and is refused once the
token moved on: another instance took the job over after the lease expired
(:meth:`JobQueries.expired_leases`), so a paused or cut-off instance never
overwrites what the other did. Any state a job leaves the in-flight states for
ends its lease.
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

from gateway.outcomes import HoldKind
from gateway.store.base import Connection, Row
from gateway.store.states import FINAL_STATES, IN_FLIGHT_STATES, State


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
    state: State
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
    hold_kind: HoldKind | Literal[""] = ""
    ambiguities: int = 0
    # Ambiguous: the gateway was down for part of the grace period (a receipt may have been lost meanwhile).
    grace_unwatched: bool = False
    # The lease of an in-flight job: the instance working on it ("" for none), until when, and the token
    # its writes must carry (it only grows).
    lease_owner: str = ""
    lease_expires_at: float = 0.0
    lease_token: int = 0

    @classmethod
    def from_row(cls, row: Row) -> Job:
        values = {f.name: row[f.name] for f in fields(cls)}
        values["state"] = State(values["state"])
        values["grace_unwatched"] = bool(values["grace_unwatched"])
        values["hold_kind"] = HoldKind(values["hold_kind"]) if values["hold_kind"] else ""
        return cls(**values)


_JOB_SELECT = """
SELECT j.*, m.envelope_from AS envelope_from, m.doc_pages AS doc_pages, m.upload_key AS upload_key
FROM jobs j JOIN messages m ON m.id = j.message_id
"""


def _marks(values: Collection[object]) -> str:
    return ",".join("?" * len(values))


_FINALS = sorted(str(s) for s in FINAL_STATES)
_IN_FLIGHT = sorted(str(s) for s in IN_FLIGHT_STATES)


@dataclass(frozen=True)
class Quota:
    """Hourly quotas checked in the transaction that adds jobs (0: none): at most ``per_sender`` jobs of one
    sender and ``overall`` jobs in all taken in since ``since``."""

    since: float
    per_sender: int = 0
    overall: int = 0


class QuotaReached(Exception):
    """Adding the jobs would take the sender (``per_sender``) or everyone past an hourly quota."""

    def __init__(self, per_sender: bool) -> None:
        super().__init__("the sender's hourly quota" if per_sender else "the hourly quota of the gateway")
        self.per_sender = per_sender


class JobQueries(Connection):
    """The ``messages``, ``jobs`` and ``events`` tables."""

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

    def add_message(
        self,
        msg: NewMessage,
        jobs: Sequence[tuple[str, str, str]],
        detail: str | Callable[[Mapping[str, str]], str],
        *,
        dedupe_since: float | None = None,
        quota: Quota | None = None,
    ) -> dict[str, str]:
        """Commit a spooled message and its jobs: ``jobs`` is (job id, number, dedupe key).

        With ``dedupe_since``, a job whose key another job took in since then is not added: the
        answer maps its number to that job (the key is written in this transaction, so that of two
        copies taken in at once, on two gateways, one makes the job and the other gets its id). When
        every job is such a copy the message itself is not added. ``detail`` (the timeline's words,
        or made from that answer) goes on each new job's "accepted" event. With ``quota``, the jobs
        are counted against the hourly quotas under a lock per sender and one for everyone, so that
        gateways taking mail at once never go past them together (:class:`QuotaReached`).
        """
        now = self.clock()
        with self.transaction() as db:
            existing: dict[str, str] = {}
            since = math.inf if dedupe_since is None else dedupe_since  # None: every key is taken
            for job_id, number, key in jobs:
                if key and (found := self._take_dedupe_key(key, job_id, now, since)) != job_id:
                    existing[number] = found
            new = [(job_id, number, key) for job_id, number, key in jobs if number not in existing]
            if not new:
                return existing
            if quota is not None:
                self._check_quota(msg.envelope_from, len(new), quota)
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
            words = detail if isinstance(detail, str) else detail(existing)
            for job_id, number, dedupe_key in new:
                db.execute(
                    "INSERT INTO jobs (id, message_id, number, state, created_at, updated_at, dedupe_key, ar_token)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (job_id, msg.id, number, State.QUEUED, now, now, dedupe_key, secrets.token_hex(16)),
                )
                self.add_event(job_id, "accepted", words, now=now)
        return existing

    def _take_dedupe_key(self, key: str, job_id: str, now: float, since: float) -> str:
        """Write ``key`` for ``job_id`` unless a job took it in since ``since``; the job that has it now.

        On PostgreSQL a second transaction writing the same key waits for the first, then sees its row.
        """
        rows = self.db.execute(
            "INSERT INTO dedupe (dedupe_key, job_id, created_at) VALUES (?, ?, ?) ON CONFLICT (dedupe_key) DO UPDATE"
            " SET job_id = excluded.job_id, created_at = excluded.created_at WHERE dedupe.created_at < ?"
            " RETURNING job_id",
            (key, job_id, now, since),
        ).fetchall()
        if rows:
            return str(rows[0][0])
        row = self.db.execute("SELECT job_id FROM dedupe WHERE dedupe_key = ?", (key,)).fetchone()
        return str(row[0])

    def _check_quota(self, sender: str, adding: int, quota: Quota) -> None:
        if quota.per_sender:
            self.serialise(f"quota:{sender.lower()}")
            if self.count_recent_jobs(quota.since, sender) + adding > quota.per_sender:
                raise QuotaReached(per_sender=True)
        if quota.overall:
            self.serialise("quota")
            if self.count_recent_jobs(quota.since) + adding > quota.overall:
                raise QuotaReached(per_sender=False)

    def recorded_messages(self, message_ids: Collection[str]) -> set[str]:
        """Which of ``message_ids`` have a ``messages`` row."""
        ids, found = list(message_ids), set()
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            rows = self.db.execute(f"SELECT id FROM messages WHERE id IN ({_marks(chunk)})", chunk)
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

    def count_events(self, job_id: str, kind: str) -> int:
        """How many times ``kind`` is on the job's timeline."""
        row = self.db.execute("SELECT COUNT(*) FROM events WHERE job_id = ? AND kind = ?", (job_id, kind)).fetchone()
        return int(row[0])

    def get_job(self, job_id: str) -> Job | None:
        row = self.db.execute(_JOB_SELECT + " WHERE j.id = ?", (job_id,)).fetchone()
        return None if row is None else Job.from_row(row)

    def job_by_provider_ref(self, ref: str) -> Job | None:
        """The job the provider knows as ``ref`` (its ``ref_accuse``)."""
        row = self.db.execute("SELECT id FROM jobs WHERE provider_ref = ? AND provider_ref != ''", (ref,)).fetchone()
        return None if row is None else self.get_job(row["id"])

    def jobs_of_message(self, message_id: str) -> list[Job]:
        rows = self.db.execute(_JOB_SELECT + " WHERE j.message_id = ? ORDER BY j.id", (message_id,))
        return [Job.from_row(r) for r in rows]

    def message(self, message_id: str) -> Row | None:
        row: Row | None = self.db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        return row

    def transition(
        self,
        job_id: str,
        state: State,
        reason: str = "",
        *,
        expect: Sequence[State] | None = None,
        event: str | None = None,
        token: int | None = None,
        **columns: Any,
    ) -> bool:
        """Move a job to ``state``, record why, and set extra ``columns``.

        With ``expect``, the move happens only from one of those states (an
        atomic claim); returns whether the row changed. Final states are never
        left, except by an explicit ``expect`` that names them. With ``token``
        (the lease's, :meth:`claim_job`), only while the job's token is still
        that one: :meth:`lease_held` tells a job moved meanwhile from a lease
        lost. A state out of the in-flight ones ends the lease.
        """
        now = self.clock()
        if state not in IN_FLIGHT_STATES:
            columns = {"lease_owner": "", "lease_expires_at": 0, **columns}
        sets = ["state = ?", "reason = ?", "updated_at = ?"] + [f"{c} = ?" for c in columns]
        values: list[Any] = [str(state), reason, now, *columns.values()]
        if state in FINAL_STATES and "final_at" not in columns:
            sets.append("final_at = ?")
            values.append(now)
        allowed = list(expect) if expect is not None else [s for s in State if s not in FINAL_STATES]
        fence, fenced = (" AND lease_token = ?", [token]) if token is not None else ("", [])
        with self.transaction() as db:
            cur = db.execute(
                f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND state IN ({_marks(allowed)}){fence}",
                (*values, job_id, *[str(s) for s in allowed], *fenced),
            )
            if cur.rowcount != 1:
                return False
            self.add_event(job_id, event or str(state), reason, now=now)
        return True

    # -- leases -------------------------------------------------------------

    def claim_job(self, job: Job, owner: str, expires_at: float, reason: str, event: str, **columns: Any) -> Job | None:
        """Move ``job`` (as it was read, in its state and with its token) to ``uploading``, leased to ``owner``
        until ``expires_at`` with a token one higher; the job as claimed, or None if it moved meanwhile."""
        now = self.clock()
        sets = "".join(f", {c} = ?" for c in columns)
        with self.transaction() as db:
            rows = db.execute(
                "UPDATE jobs SET state = ?, reason = ?, updated_at = ?, lease_owner = ?, lease_expires_at = ?,"
                f" lease_token = lease_token + 1{sets} WHERE id = ? AND state = ? AND lease_token = ?"
                " RETURNING lease_token",
                (State.UPLOADING, reason, now, owner, expires_at, *columns.values(), job.id, job.state,
                 job.lease_token),
            ).fetchall()  # fmt: skip
            if not rows:
                return None
            self.add_event(job.id, event, reason, now=now)
        return dataclasses.replace(job, state=State.UPLOADING, reason=reason, updated_at=now, lease_owner=owner,
                                   lease_expires_at=expires_at, lease_token=int(rows[0][0]), **columns)  # fmt: skip

    def lease_held(self, job_id: str, token: int) -> bool:
        """Whether the job's token is still ``token`` (no other instance took it over since)."""
        row = self.db.execute("SELECT lease_token FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row is not None and int(row[0]) == token

    def renew_leases(self, owner: str, held: Mapping[str, int], expires_at: float) -> list[str]:
        """Extend the leases ``owner`` holds (job id -> token) to ``expires_at``; returns the jobs whose
        lease another instance took over meanwhile."""
        lost: list[str] = []
        with self.transaction() as db:
            for job_id, token in held.items():
                cur = db.execute(
                    f"UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND lease_owner = ? AND lease_token = ?"
                    f" AND state IN ({_marks(_IN_FLIGHT)})",
                    (expires_at, job_id, owner, token, *_IN_FLIGHT),
                )
                if cur.rowcount != 1 and not self.lease_held(job_id, token):
                    lost.append(job_id)
        return lost

    def expired_leases(self, now: float, limit: int, *, owner: str | None = None) -> list[Job]:
        """In-flight jobs whose lease ended before ``now`` (and, with ``owner``, those leased to it),
        oldest first; inside a transaction on PostgreSQL they stay locked until it ends, and rows
        another instance holds are passed over."""
        mine, args = (" OR j.lease_owner = ?", [owner]) if owner is not None else ("", [])
        rows = self.db.execute(
            _JOB_SELECT + f" WHERE j.state IN ({_marks(_IN_FLIGHT)}) AND (j.lease_expires_at < ?{mine})"
            " ORDER BY j.updated_at, j.id LIMIT ?" + self.dialect.skip_locked,
            (*_IN_FLIGHT, now, *args, limit),
        )
        return [Job.from_row(r) for r in rows]

    def lock_job(self, job_id: str) -> Job | None:
        """The job as it is now, its row locked until the transaction ends (PostgreSQL): two instances
        deciding about the same job do it one after the other, the second seeing what the first did."""
        if self.dialect.for_update:
            self.db.execute("SELECT id FROM jobs WHERE id = ?" + self.dialect.for_update, (job_id,)).fetchall()
        return self.get_job(job_id)

    def due_jobs(self, states: Sequence[State], now: float, limit: int = 100) -> list[Job]:
        rows = self.db.execute(
            _JOB_SELECT + f" WHERE j.state IN ({_marks(states)}) AND j.next_attempt_at <= ?"
            " ORDER BY j.next_attempt_at, j.created_at LIMIT ?" + self.dialect.skip_locked,
            (*[str(s) for s in states], now, limit),
        )
        return [Job.from_row(r) for r in rows]

    def due_for_delivery(self, now: float, limit: int) -> list[Job]:
        """Jobs the worker should start now: queued, deferred, credit holds and ambiguous
        jobs past their grace period (``next_attempt_at`` 0 means left for an operator)."""
        rows = self.db.execute(
            _JOB_SELECT + " WHERE (j.state IN (?, ?)"
            " OR (j.state = ? AND j.hold_kind = ?)"
            " OR (j.state = ? AND j.next_attempt_at > 0))"
            " AND j.next_attempt_at <= ? ORDER BY j.next_attempt_at, j.created_at LIMIT ?" + self.dialect.skip_locked,
            (State.QUEUED, State.DEFERRED, State.HELD, HoldKind.CREDIT, State.AMBIGUOUS, now, limit),
        )
        return [Job.from_row(r) for r in rows]

    def mark_grace_unwatched(self, why: str) -> list[str]:
        """At start-up: every ambiguous job still waiting out its grace period (or past it, not yet acted
        on) was not watched for the whole of it, since the gateway was down meanwhile; returns them."""
        with self.transaction() as db:
            rows = db.execute(
                "SELECT id FROM jobs WHERE state = ? AND next_attempt_at > 0 AND grace_unwatched = 0",
                (State.AMBIGUOUS,),
            ).fetchall()
            ids = [str(r["id"]) for r in rows]
            for job_id in ids:
                db.execute("UPDATE jobs SET grace_unwatched = 1 WHERE id = ?", (job_id,))
                self.add_event(job_id, "grace not watched", why)
        return ids

    def next_attempt_at(self) -> float | None:
        """The earliest time a job waiting on a timer is due for delivery (a retry, the end of a grace
        period, a credit hold's retry), perhaps already past; None when no job waits on one."""
        row = self.db.execute(
            "SELECT MIN(next_attempt_at) FROM jobs WHERE (state IN (?, ?) OR (state = ? AND hold_kind = ?)"
            " OR state = ?) AND next_attempt_at > 0",
            (State.QUEUED, State.DEFERRED, State.HELD, HoldKind.CREDIT, State.AMBIGUOUS),
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def has_held(self, kind: HoldKind) -> bool:
        """Whether a job is held for ``kind`` (held for configuration: submissions are paused)."""
        row = self.db.execute(
            "SELECT 1 FROM jobs WHERE state = ? AND hold_kind = ? LIMIT 1", (State.HELD, kind)
        ).fetchone()
        return row is not None

    def held_job_ids(self, kind: HoldKind) -> list[str]:
        """The jobs held for ``kind``."""
        rows = self.db.execute("SELECT id FROM jobs WHERE state = ? AND hold_kind = ?", (State.HELD, kind))
        return [str(r[0]) for r in rows]

    def list_jobs(
        self,
        *,
        states: Sequence[str] = (),
        since: float | None = None,
        number: str | None = None,
        sender: str | None = None,
        limit: int = 200,
    ) -> list[Job]:
        """The jobs that match, newest first; ``limit`` below 0: all of them."""
        where: list[str] = []
        args: list[Any] = []
        if states:
            where.append(f"j.state IN ({_marks(states)})")
            args.extend(str(s) for s in states)
        if since is not None:
            where.append("j.created_at >= ?")
            args.append(since)
        if number:
            where.append("j.number LIKE ?")
            args.append(f"%{number.lstrip('+')}%")
        if sender:
            where.append("LOWER(m.envelope_from) LIKE LOWER(?)")  # as SQLite's LIKE: ASCII case ignored
            args.append(f"%{sender}%")
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        if limit >= 0:
            clause += " ORDER BY j.created_at DESC LIMIT ?"
            args.append(limit)
        else:
            clause += " ORDER BY j.created_at DESC"
        rows = self.db.execute(_JOB_SELECT + clause, args)
        return [Job.from_row(r) for r in rows]

    def timeline(self, job_id: str) -> list[Row]:
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

    # -- stored documents -----------------------------------------------------

    def finished_uploads(self, final_before: float) -> list[tuple[str, str]]:
        """(message id, key) of stored documents whose jobs all ended before ``final_before`` (100 at most)."""
        rows = self.db.execute(
            "SELECT m.id, m.upload_key FROM messages m WHERE m.upload_key != '' AND m.object_deleted_at = 0"
            f" AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.message_id = m.id AND (j.state NOT IN ({_marks(_FINALS)})"
            " OR j.final_at > ?)) LIMIT 100",
            (*_FINALS, final_before),
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    def served_message(self, key: str) -> str | None:
        """The message whose stored document is ``key``, while one of its jobs is not final."""
        row = self.db.execute(
            "SELECT m.id FROM messages m WHERE m.upload_key = ? AND m.object_deleted_at = 0"
            f" AND EXISTS (SELECT 1 FROM jobs j WHERE j.message_id = m.id AND j.state NOT IN ({_marks(_FINALS)}))",
            (key, *_FINALS),
        ).fetchone()
        return None if row is None else str(row["id"])
