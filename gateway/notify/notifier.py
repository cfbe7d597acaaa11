"""The notifier: sends the receipts, notices and alerts queued in the store.

In: ``notifications`` rows (state ``new``) queued by the worker and the
receipt stage. Out: mails through the relay (aiosmtplib: STARTTLS and AUTH
as set). A row is composed once (``payload``, ``recipient``; state
``pending``), then sent; the relay being down or answering 4xx reschedules it
with backoff (doubling from ``notify.min_backoff_seconds``) until
``notify.max_retry_seconds``; a 5xx refusal of the recipient or content is
recorded (``failed``) and never retried. Rows that must not be sent (no
usable recipient; delivered receipts with ``notify.receipts = "failures"``;
alerts with no admin address) end ``skipped`` with the reason. Admin alerts
go out at most once per ``notify.admin_alert_interval_seconds``: the alerts
due together form one mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import functools
import logging
import sqlite3
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiosmtplib

from gateway.backoff import doubling
from gateway.notify.compose import Alert, Facts, compose, compose_alerts
from gateway.replies import clean
from gateway.sender import recipient_of_message
from gateway.settings import Settings
from gateway.spool import FAX_NAME, Spool
from gateway.store import FINAL_STATES, AsyncStore, Store

log = logging.getLogger("gateway.notify")

_BATCH = 50
# CRLF on the wire; headers folded only past RFC 5322's 998 (Python folds a long
# Subject right after the colon at 78, which some readers show with a leading space).
WIRE = email.policy.SMTP.clone(max_line_length=998)


@dataclass(frozen=True)
class Outbound:
    id: int
    job_id: str
    kind: str
    recipient: str
    payload: bytes
    attempts: int
    created_at: float


class _Refused(Exception):
    """The relay refused for good (5xx on the recipient or the content)."""


# -- store side (store thread) ------------------------------------------------------


def _finish(store: Store, row_id: int, job_id: str, state: str, why: str) -> None:
    with store.transaction() as db:
        db.execute("UPDATE notifications SET state = ?, last_error = ? WHERE id = ?", (state, why, row_id))
        if job_id:
            store.add_event(job_id, f"notice {state}", why)


def _prepare(store: Store, settings: Settings, spool: Spool, item: Outbound) -> Outbound | None:
    """Compose a ``new`` row: it becomes ``pending`` with its payload (returned), or ``skipped`` (None)."""
    row_id = item.id
    row = store.db.execute("SELECT * FROM notifications WHERE id = ?", (row_id,)).fetchone()
    job = store.get_job(row["job_id"])
    message = store.message(job.message_id) if job is not None else None
    kind = row["kind"]
    if job is None or message is None:
        _finish(store, row_id, row["job_id"], "skipped", "the job is not in the store")
        return None
    if kind == "delivered" and settings.notify.receipts == "failures":
        _finish(store, row_id, job.id, "skipped", "notify.receipts is 'failures'")
        return None
    recipient = row["recipient"] or recipient_of_message(settings, message)
    if not recipient:
        _finish(store, row_id, job.id, "skipped", "no usable sender address (null, MAILER-DAEMON or a fax domain)")
        return None
    receipt = store.db.execute(
        "SELECT * FROM receipts WHERE job_id = ? AND applied_at > 0 ORDER BY id DESC LIMIT 1", (job.id,)
    ).fetchone()
    document = None
    if settings.notify.attach_document and kind in ("delivered", "failed"):
        with contextlib.suppress(OSError):
            document = spool.read(job.message_id, FAX_NAME)
    facts = Facts(kind, row["detail"], row["message_id"], job, message, receipt)
    mail = compose(settings, facts, recipient, document=document, source=bytes(row["source"]), now=store.clock())
    payload = mail.as_bytes(policy=WIRE)
    with store.transaction() as db:
        db.execute(
            "UPDATE notifications SET state = 'pending', recipient = ?, payload = ?, next_attempt_at = ? WHERE id = ?",
            (recipient, payload, store.clock(), row_id),
        )
    return Outbound(item.id, item.job_id, kind, recipient, payload, item.attempts, item.created_at)


def _due(store: Store, now: float) -> list[Outbound]:
    rows = store.db.execute(
        "SELECT * FROM notifications WHERE state IN ('new', 'pending') AND next_attempt_at <= ?"
        " AND kind NOT LIKE 'alert:%' ORDER BY id LIMIT ?",
        (now, _BATCH),
    )
    return [
        Outbound(r["id"], r["job_id"], r["kind"], r["recipient"], bytes(r["payload"]), r["attempts"], r["created_at"])
        for r in rows
    ]


def _due_alerts(store: Store, now: float) -> list[tuple[int, Alert, str, int, float]]:
    rows = store.db.execute(
        "SELECT * FROM notifications WHERE state IN ('new', 'pending') AND next_attempt_at <= ?"
        " AND kind LIKE 'alert:%' ORDER BY id LIMIT ?",
        (now, _BATCH),
    )
    return [
        (r["id"], Alert(r["kind"], r["job_id"], r["detail"], r["created_at"]), r["message_id"], r["attempts"],
         r["created_at"])
        for r in rows
    ]  # fmt: skip


def _last_alert_sent(store: Store) -> float:
    row = store.db.execute("SELECT MAX(sent_at) FROM notifications WHERE kind LIKE 'alert:%' AND state = 'sent'")
    return float(row.fetchone()[0] or 0.0)


def _queue_accepted(store: Store, since: float) -> None:
    """``notify.accepted_notice``: one ``accepted`` notice per open job taken in since ``since``."""
    finals = [str(s) for s in FINAL_STATES]
    rows = store.db.execute(
        "SELECT j.id FROM jobs j LEFT JOIN notifications n ON n.message_id = j.id || '.accepted'"
        f" WHERE n.id IS NULL AND j.created_at >= ? AND j.state NOT IN ({','.join('?' * len(finals))})",
        (since, *finals),
    ).fetchall()
    if rows:
        with store.transaction():
            for row in rows:
                store.queue_notice(row["id"], "accepted", "queued for sending")


class Notifier:
    """Sends what the store holds to send; ``wake()`` after queueing, ``drain()`` in tests."""

    def __init__(self, settings: Settings, store: AsyncStore, spool: Spool, *,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.settings = settings
        self.store = store
        self.spool = spool
        self.clock = clock
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._since = 0.0
        self._stopping = False

    async def start(self) -> None:
        # Jobs accepted shortly before a restart still get their "accepted" notice (once: the row is unique).
        self._since = self.clock() - 3600.0
        self._stopping = False
        self._task = asyncio.create_task(self._loop(), name="notifier")

    async def stop(self) -> None:
        """Let the mail in flight finish (up to the relay timeout), then stop; idempotent."""
        if self._task is not None:
            task, self._task = self._task, None
            self._stopping = True
            self._wake.set()
            try:
                await asyncio.wait_for(task, self.settings.notify.relay_timeout)
            except (TimeoutError, asyncio.CancelledError):
                pass  # wait_for cancelled it; an unsent mail stays pending and goes after the restart

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self.drain()
            except Exception:  # the store unavailable, a bug: log, and try again on the next tick
                log.exception("notifier: run failed; trying again later")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.delivery.poll_seconds)

    async def drain(self) -> int:
        """Send everything due now; returns how many mails went out. Sending fails are rescheduled."""
        sent = 0
        async with self._lock:
            if self.settings.notify.accepted_notice:
                since = self._since
                await self.store.run(lambda s: _queue_accepted(s, since))
            while not self._stopping and (batch := await self.store.run(lambda s: _due(s, self.clock()))):
                for item in batch:
                    if self._stopping:
                        break
                    sent += await self._send_one(item)
            if not self._stopping:
                sent += await self._send_alerts()
        return sent

    async def _send_one(self, item: Outbound) -> int:
        if not item.payload:
            try:
                prepared = await self.store.run(lambda s: _prepare(s, self.settings, self.spool, item))
            except sqlite3.Error:
                raise  # the store: the whole run stops and is tried again
            except Exception:  # a bug in composing this one: record it, do not block the others
                log.exception("job %s: %s notice could not be composed", item.job_id, item.kind,
                              extra={"job_id": item.job_id})  # fmt: skip
                why = "could not be composed (a bug: see the log)"
                await self.store.run(lambda s: _finish(s, item.id, item.job_id, "failed", why))
                return 0
            if prepared is None:
                return 0
            item = prepared
        what = f"job {item.job_id}: {item.kind} notice to {item.recipient}"
        try:
            await self._deliver(item.recipient, item.payload)
        except _Refused as exc:
            why = f"refused by the relay: {exc}"
            log.warning("%s %s; not retried", what, why, extra={"job_id": item.job_id})
            await self.store.run(lambda s: _finish(s, item.id, item.job_id, "failed", why))
            return 0
        except Exception as exc:
            await self._reschedule(item.id, item.job_id, item.attempts, item.created_at, what, exc)
            return 0
        # Shielded: once the relay took it, a stop must not leave it to be sent twice.
        await asyncio.shield(
            self.store.run(lambda s: self._mark_sent(s, item.id, item.job_id, f"{item.kind} to {item.recipient}"))
        )
        log.info("%s sent", what, extra={"job_id": item.job_id})
        return 1

    async def _send_alerts(self) -> int:
        due = await self.store.run(lambda s: _due_alerts(s, self.clock()))
        if not due:
            return 0
        notify = self.settings.notify
        if not notify.admin_address:
            for row_id, alert, *_ in due:
                log.warning("alert %s for job %s (no notify.admin_address): %s", alert.kind, alert.job_id or "-",
                            clean(alert.detail), extra={"job_id": alert.job_id})  # fmt: skip
                await self.store.run(functools.partial(_finish, row_id=row_id, job_id="", state="skipped",
                                                       why="no notify.admin_address"))  # fmt: skip
            return 0
        now = self.clock()
        not_before = await self.store.run(_last_alert_sent) + notify.admin_alert_interval_seconds
        if now < not_before:  # rate limit: the alerts wait and go out together
            ids = [d[0] for d in due]
            await self.store.run(lambda s: _postpone(s, ids, not_before))
            return 0
        mail = compose_alerts(self.settings, [d[1] for d in due], due[0][2], now)
        try:
            await self._deliver(notify.admin_address, mail.as_bytes(policy=WIRE))
        except Exception as exc:
            for row_id, alert, _mid, attempts, created in due:
                await self._reschedule(row_id, "", attempts, created, f"alert {alert.kind}", exc)
            return 0
        for row_id, alert, *_ in due:
            await self.store.run(functools.partial(self._mark_sent, row_id=row_id, job_id=alert.job_id,
                                                   what=f"{alert.kind} to admin"))  # fmt: skip
        log.info("admin alert sent: %s", mail["Subject"])
        return 1

    def _mark_sent(self, store: Store, row_id: int, job_id: str, what: str) -> None:
        with store.transaction() as db:
            db.execute(
                "UPDATE notifications SET state = 'sent', sent_at = ?, attempts = attempts + 1, last_error = ''"
                " WHERE id = ?",
                (store.clock(), row_id),
            )
            if job_id:
                store.add_event(job_id, "notice sent", what)

    async def _reschedule(self, row_id: int, job_id: str, attempts: int, created: float, what: str,
                          exc: Exception) -> None:  # fmt: skip
        notify = self.settings.notify
        now = self.clock()
        error = clean(f"{type(exc).__name__}: {exc}", 300)
        if now - created >= notify.max_retry_seconds:
            log.error("%s: given up after %d tries: %s", what, attempts + 1, error, extra={"job_id": job_id})
            await self.store.run(lambda s: _finish(s, row_id, job_id, "failed", f"relay unreachable: {error}"))
            return
        delay = doubling(notify.min_backoff_seconds, attempts, notify.max_backoff_seconds)
        log.warning("%s: relay did not take it (%s); next try in %.0f s", what, error, delay, extra={"job_id": job_id})
        await self.store.run(lambda s: _retry_later(s, row_id, now + delay, error))

    async def _deliver(self, recipient: str, payload: bytes) -> None:
        """One mail to the relay; raises :class:`_Refused` for a permanent refusal, anything else is transient."""
        notify = self.settings.notify
        tls: ssl.SSLContext | None = None
        if notify.relay_starttls:
            tls = ssl.create_default_context(cafile=notify.relay_ca_file or None)
        client = aiosmtplib.SMTP(
            hostname=notify.relay.host, port=notify.relay.port, timeout=notify.relay_timeout,
            start_tls=notify.relay_starttls, tls_context=tls, local_hostname=self.settings.smtp.hostname,
        )  # fmt: skip
        async with client:
            if notify.relay_username:
                await client.login(notify.relay_username, notify.relay_password.reveal())
            try:
                await client.sendmail(notify.from_address, [recipient], payload)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                codes = [e.code for e in exc.recipients]
                if all(500 <= c < 600 for c in codes):
                    raise _Refused("; ".join(f"{e.code} {clean(e.message)}" for e in exc.recipients)) from None
                raise
            except aiosmtplib.SMTPDataError as exc:
                if 500 <= exc.code < 600:
                    raise _Refused(f"{exc.code} {clean(exc.message)}") from None
                raise


def _postpone(store: Store, ids: list[int], until: float) -> None:
    with store.transaction() as db:
        for row_id in ids:
            db.execute("UPDATE notifications SET state = 'pending', next_attempt_at = ? WHERE id = ?", (until, row_id))


def _retry_later(store: Store, row_id: int, when: float, error: str) -> None:
    with store.transaction() as db:
        db.execute(
            "UPDATE notifications SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE id = ?",
            (when, error, row_id),
        )
