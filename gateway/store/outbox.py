"""The outbox: the notices, receipt mails and alerts waiting for the notifier.

In: notices queued by the stages (:meth:`Outbox.queue_notice`, once per job
and kind; :meth:`Outbox.queue_ar_mail` for a provider AR mail forwarded as it
came). Out: the ``notifications`` rows the notifier composes and sends, each
moving ``new`` -> ``pending`` (composed) -> ``sent``, or ending ``failed`` /
``skipped`` with the reason (:class:`NoticeState`). This module is the only
code that writes the ``notifications`` table.

A notice's kind says what it tells (:class:`NoticeKind`), ``alert:<what>``
for the administrator (:func:`alert`), or ``ar-mail:<digest>`` for a provider
mail forwarded to the sender (:func:`ar_mail`).

Several gateways on one database send each notice once: a notifier claims the
due rows it will send (:meth:`Outbox.claim_notices`: ``FOR UPDATE SKIP LOCKED``
on PostgreSQL, and a claim with its instance's name and an expiry), and the
others pass them over until the claim ends: the row sent, rescheduled or ended,
or the claim expired (its instance died or was cut off): then the row is due
again, as a mail in flight when a lone gateway crashes is sent again after its
restart. Alerts are rows like notices, once per (job, kind), so an event seen by
two instances queues one alert.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from gateway.store.base import WAKE_NOTICES, Row
from gateway.store.jobs import _JOB_SELECT, Job, JobQueries, _marks
from gateway.store.states import FINAL_STATES, WAITING_STATES


class NoticeState(enum.StrEnum):
    NEW = "new"  # queued, not composed yet
    PENDING = "pending"  # composed (payload, recipient), waiting for the relay
    SENT = "sent"
    FAILED = "failed"  # refused by the relay, given up, or could not be composed
    SKIPPED = "skipped"  # not to be sent (no usable recipient, settings)


class NoticeKind(enum.StrEnum):
    """What a notice to the sender tells."""

    DELIVERED = "delivered"
    FAILED = "failed"
    DELAYED = "delayed"
    ACCEPTED = "accepted"


_ALERT = "alert:"
_AR_MAIL = "ar-mail:"


def alert(what: str) -> str:
    """The kind of an administrator alert about ``what`` (``alert:<what>``)."""
    return f"{_ALERT}{what}"


def ar_mail(digest: str) -> str:
    """The kind of a provider AR mail forwarded as it came (``ar-mail:<digest>``)."""
    return f"{_AR_MAIL}{digest}"


def is_alert(kind: str) -> bool:
    return kind.startswith(_ALERT)


def is_ar_mail(kind: str) -> bool:
    return kind.startswith(_AR_MAIL)


def alert_subject(kind: str) -> str:
    """What an alert is about: ``config`` for ``alert:config``."""
    return kind.removeprefix(_ALERT)


def kind_family(kind: str) -> str:
    """The kind without its detail: ``alert`` for every alert, ``ar-mail`` for every forwarded mail."""
    return kind.split(":", 1)[0]


@dataclass(frozen=True)
class Notice:
    """One ``notifications`` row."""

    id: int
    job_id: str
    kind: str
    recipient: str
    message_id: str  # stable per (job, kind): the mail's Message-ID comes from it
    detail: str
    payload: bytes  # the composed mail (empty until composed)
    source: bytes  # a mail that came in to be forwarded as it came (a provider AR copy)
    state: NoticeState
    attempts: int
    created_at: float
    next_attempt_at: float
    sent_at: float
    last_error: str
    code: str = ""  # the provider's answer code the notice tells of (gateway.answers), or ""

    @classmethod
    def from_row(cls, row: Row) -> Notice:
        values = {f.name: row[f.name] for f in fields(cls)}
        values.update(payload=bytes(row["payload"]), source=bytes(row["source"]), state=NoticeState(row["state"]))
        return cls(**values)


def _notice_id(job_id: str, kind: str) -> str:
    return f"{job_id}.{kind}"


_WAITING = sorted(str(s) for s in WAITING_STATES)
_DUE = ("SELECT * FROM notifications WHERE state IN (?, ?) AND next_attempt_at <= ?"
        " AND (claim_owner = '' OR claim_expires_at < ?)")  # fmt: skip
_UNCLAIM = "claim_owner = '', claim_expires_at = 0"


class Outbox(JobQueries):
    """The ``notifications`` table."""

    # -- queueing -------------------------------------------------------------

    def queue_notice(self, job_id: str, kind: str, detail: str = "", *, recipient: str = "", code: str = "") -> bool:
        """Ask the notifier to tell someone about ``job_id``: once per (job, kind).

        ``kind`` names the outcome (a :class:`NoticeKind`, or :func:`alert` for the
        administrator). The notifier composes and sends it; a second call with the
        same job and kind changes nothing. ``code`` is the provider's answer code
        the notice tells of, so a mail can give its reason in its own language.
        Returns whether it was queued.
        """
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO notifications (job_id, kind, recipient, message_id, detail, code, state, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (job_id, kind, recipient, _notice_id(job_id, kind), detail, code, NoticeState.NEW, self.clock()),
            )
            if cur.rowcount == 1 and job_id:
                self.add_event(job_id, f"notice queued: {kind}", detail)
            if cur.rowcount == 1:
                self.announce(WAKE_NOTICES)
        return cur.rowcount == 1

    def queue_ar_mail(self, job_id: str, digest: str, subject: str, raw: bytes) -> bool:
        """Forward a provider AR mail to the job's sender as it came: once per distinct mail (``digest``)."""
        kind = ar_mail(digest)
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO notifications (job_id, kind, message_id, detail, source, state, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (job_id, kind, _notice_id(job_id, kind), subject, raw, NoticeState.NEW, self.clock()),
            )
            if cur.rowcount == 1:
                self.announce(WAKE_NOTICES)
        return cur.rowcount == 1

    def attach_source(self, job_id: str, kind: NoticeKind, raw: bytes) -> None:
        """Let the job's ``kind`` notice, not composed yet, carry ``raw`` (the provider's mail) as it came."""
        with self.transaction() as db:
            db.execute(
                "UPDATE notifications SET source = ? WHERE job_id = ? AND kind = ? AND state = ?",
                (raw, job_id, kind, NoticeState.NEW),
            )

    def open_jobs_without_notice(self, kind: NoticeKind, since: float) -> list[str]:
        """Jobs taken in since ``since``, not final, that have no ``kind`` notice."""
        finals = sorted(str(s) for s in FINAL_STATES)
        rows = self.db.execute(
            "SELECT j.id FROM jobs j LEFT JOIN notifications n ON n.message_id = j.id || '.' || ?"
            f" WHERE n.id IS NULL AND j.created_at >= ? AND j.state NOT IN ({','.join('?' * len(finals))})",
            (kind, since, *finals),
        ).fetchall()
        return [str(r["id"]) for r in rows]

    def jobs_to_tell_delayed(self, taken_before: float, limit: int) -> list[Job]:
        """Jobs taken in before ``taken_before`` that wait (:data:`WAITING_STATES`) and have no ``delayed`` notice."""
        rows = self.db.execute(
            _JOB_SELECT + " LEFT JOIN notifications n ON n.message_id = j.id || '.' || ?"
            f" WHERE n.id IS NULL AND j.created_at <= ? AND j.state IN ({_marks(_WAITING)})"
            " ORDER BY j.created_at LIMIT ?",
            (NoticeKind.DELAYED, taken_before, *_WAITING, limit),
        )
        return [Job.from_row(r) for r in rows]

    def first_untold_delay(self) -> float | None:
        """When the oldest waiting job without a ``delayed`` notice was taken in (None: there is none)."""
        row = self.db.execute(
            "SELECT MIN(j.created_at) FROM jobs j LEFT JOIN notifications n ON n.message_id = j.id || '.' || ?"
            f" WHERE n.id IS NULL AND j.state IN ({_marks(_WAITING)})",
            (NoticeKind.DELAYED, *_WAITING),
        ).fetchone()
        return None if row[0] is None else float(row[0])

    # -- sending --------------------------------------------------------------

    def notice(self, notice_id: int) -> Notice | None:
        row = self.db.execute("SELECT * FROM notifications WHERE id = ?", (notice_id,)).fetchone()
        return None if row is None else Notice.from_row(row)

    def due_notices(self, now: float, limit: int) -> list[Notice]:
        """Notices (not alerts) to compose or send now, oldest first (none another notifier holds)."""
        rows = self.db.execute(
            _DUE + " AND kind NOT LIKE ? ORDER BY id LIMIT ?",
            (NoticeState.NEW, NoticeState.PENDING, now, now, alert("%"), limit),
        )
        return [Notice.from_row(r) for r in rows]

    def due_alerts(self, now: float, limit: int) -> list[Notice]:
        """Administrator alerts to send now, oldest first (none another notifier holds)."""
        rows = self.db.execute(
            _DUE + " AND kind LIKE ? ORDER BY id LIMIT ?",
            (NoticeState.NEW, NoticeState.PENDING, now, now, alert("%"), limit),
        )
        return [Notice.from_row(r) for r in rows]

    def claim_notices(self, owner: str, now: float, expires_at: float, limit: int, *, alerts: bool) -> list[Notice]:
        """Claim the notices (or, with ``alerts``, the alerts) due now for ``owner`` until ``expires_at``:
        another notifier passes them over until the claim ends. Oldest first."""
        like = "LIKE" if alerts else "NOT LIKE"
        with self.transaction() as db:
            rows = db.execute(
                _DUE + f" AND kind {like} ? ORDER BY id LIMIT ?" + self.dialect.skip_locked_rows,
                (NoticeState.NEW, NoticeState.PENDING, now, now, alert("%"), limit),
            ).fetchall()
            for row in rows:
                db.execute(
                    "UPDATE notifications SET claim_owner = ?, claim_expires_at = ? WHERE id = ?",
                    (owner, expires_at, row["id"]),
                )
        return [Notice.from_row(r) for r in rows]

    def renew_notice_claims(self, owner: str, notice_ids: Sequence[int], expires_at: float) -> None:
        """Extend ``owner``'s claims on ``notice_ids`` (those it still holds) to ``expires_at``."""
        with self.transaction() as db:
            for notice_id in notice_ids:
                db.execute(
                    "UPDATE notifications SET claim_expires_at = ? WHERE id = ? AND claim_owner = ?",
                    (expires_at, notice_id, owner),
                )

    def release_notice_claims(self, owner: str, notice_ids: Sequence[int] | None = None) -> int:
        """End every claim ``owner`` holds (its notifier starting again after a crash: as on one machine,
        a mail in flight then goes again), or only those on ``notice_ids``; returns how many."""
        with self.transaction() as db:
            if notice_ids is None:
                cur = db.execute(f"UPDATE notifications SET {_UNCLAIM} WHERE claim_owner = ?", (owner,))
                return cur.rowcount
            released = 0
            for notice_id in notice_ids:
                cur = db.execute(
                    f"UPDATE notifications SET {_UNCLAIM} WHERE id = ? AND claim_owner = ?", (notice_id, owner)
                )
                released += cur.rowcount
        return released

    def last_alert_sent_at(self) -> float:
        row = self.db.execute(
            "SELECT MAX(sent_at) FROM notifications WHERE kind LIKE ? AND state = ?", (alert("%"), NoticeState.SENT)
        )
        return float(row.fetchone()[0] or 0.0)

    def alert_kinds_sent_since(self, since: float) -> set[str]:
        """The kinds of the alerts sent at ``since`` or later."""
        rows = self.db.execute(
            "SELECT DISTINCT kind FROM notifications WHERE kind LIKE ? AND state = ? AND sent_at >= ?",
            (alert("%"), NoticeState.SENT, since),
        )
        return {str(r[0]) for r in rows}

    def mark_notice_composed(self, notice_id: int, recipient: str, payload: bytes) -> None:
        """The mail is composed: the notice is ``pending``, due now."""
        with self.transaction() as db:
            db.execute(
                "UPDATE notifications SET state = ?, recipient = ?, payload = ?, next_attempt_at = ? WHERE id = ?",
                (NoticeState.PENDING, recipient, payload, self.clock(), notice_id),
            )

    def mark_notice_sent(self, notice_id: int, job_id: str, what: str) -> None:
        """The relay took it; ``what`` goes on the job's timeline."""
        with self.transaction() as db:
            db.execute(
                f"UPDATE notifications SET state = ?, sent_at = ?, attempts = attempts + 1, last_error = '', {_UNCLAIM}"
                " WHERE id = ?",
                (NoticeState.SENT, self.clock(), notice_id),
            )
            if job_id:
                self.add_event(job_id, "notice sent", what)

    def finish_notice(self, notice_id: int, state: NoticeState, why: str, *, job_id: str = "") -> None:
        """End a notice unsent (``failed`` or ``skipped``) and say why, on the job's timeline too."""
        with self.transaction() as db:
            db.execute(
                f"UPDATE notifications SET state = ?, last_error = ?, {_UNCLAIM} WHERE id = ?", (state, why, notice_id)
            )
            if job_id:
                self.add_event(job_id, f"notice {state}", why)

    def retry_notice_later(self, notice_id: int, when: float, error: str) -> None:
        """The relay did not take it: one more attempt counted, the next one at ``when``."""
        with self.transaction() as db:
            db.execute(
                "UPDATE notifications SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?,"
                f" {_UNCLAIM} WHERE id = ?",
                (when, error, notice_id),
            )

    def postpone_notices(self, notice_ids: Sequence[int], until: float) -> None:
        """Hold notices back until ``until`` (the alert rate limit); they stay due, as ``pending``."""
        with self.transaction() as db:
            for notice_id in notice_ids:
                db.execute(
                    f"UPDATE notifications SET state = ?, next_attempt_at = ?, {_UNCLAIM} WHERE id = ?",
                    (NoticeState.PENDING, until, notice_id),
                )

    # -- reading ----------------------------------------------------------------

    def notices_of_job(self, job_id: str) -> list[dict[str, Any]]:
        """The job's notices, oldest first, as plain data (without the mails themselves)."""
        rows = self.db.execute(
            "SELECT kind, recipient, state, attempts, created_at, sent_at, last_error, detail, code FROM notifications"
            " WHERE job_id = ? ORDER BY id",
            (job_id,),
        )
        return [{k: r[k] for k in r.keys()} for r in rows]

    def count_notices(self) -> dict[tuple[str, str], int]:
        """How many notices there are of each (kind, state)."""
        rows = self.db.execute("SELECT kind, state, COUNT(*) FROM notifications GROUP BY kind, state")
        return {(str(kind), str(state)): int(n) for kind, state, n in rows}
