"""The notifier: sends the receipts, notices and alerts queued in the store.

In: ``notifications`` rows (state ``new``) queued by the worker and the
receipt stage. Out: mails through the relay (aiosmtplib: STARTTLS and AUTH
as set). A row is composed once (``payload``, ``recipient``; state
``pending``), then sent; the relay being down or answering 4xx reschedules it
with backoff (doubling from ``notify.min_backoff_seconds``) until
``notify.max_retry_seconds``; a 5xx refusal of the recipient or content is
recorded (``failed``) and never retried. Rows that must not be sent (no
usable recipient; delivered receipts with ``notify.receipts = "failures"``;
alerts with no admin address) end ``skipped`` with the reason. With
``notify.status_links``, each mail about a job carries a link of its own to
the sender's status page (``/fax/<token>``). An admin alert
that stops faxing (:data:`URGENT_ALERTS`: submissions paused for the
configuration or credit, a job left to an operator, a quarantined job) goes out
at once; the others, and an urgent one whose kind already went out within
``notify.admin_alert_interval_seconds``, at most once per interval: the alerts
due together form one mail.

Several gateways may share one store: each notifier claims the rows it is about
to send (under ``cluster.instance``, for ``delivery.lease_seconds``, renewed as
it goes), and the others pass them over, so each mail goes out once. A claim
left by a gateway that died expires and the row is due again; one left by this
gateway's previous run is ended at start-up: as with one machine, a mail in
flight at a crash goes again.

The notices due together (at most :data:`_BATCH`) go over one connection to the
relay, one MAIL FROM, RCPT and DATA each (aiosmtplib sends RSET after a refusal);
each is marked sent after its own 250 and a refusal ends or reschedules that one
alone. A relay that cannot be reached (connect, TLS or AUTH failing) reschedules
every notice of the batch; a connection that breaks after carrying a mail leaves
the rest due, their claims ended, for the next pass on a fresh connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.policy
import functools
import logging
import ssl
import time
from collections.abc import Callable

import aiosmtplib

from gateway.backoff import doubling
from gateway.notify.compose import Alert, Facts, compose, compose_alerts
from gateway.sender import recipient_of_message
from gateway.settings import Settings, instance_name, status_links_on
from gateway.spool import FAX_NAME, Spool
from gateway.store import (
    FINAL_STATES,
    AsyncStore,
    Notice,
    NoticeKind,
    NoticeState,
    Store,
    StoreUnavailable,
    alert,
    database_errors,
)
from gateway.text import clean

log = logging.getLogger("gateway.notify")

_BATCH = 50
# CRLF on the wire; headers folded only past RFC 5322's 998 (Python folds a long
# Subject right after the colon at 78, which some readers show with a leading space).
WIRE = email.policy.SMTP.clone(max_line_length=998)


# Alerts that stop faxing: sent at once, only their repeats wait for the interval.
URGENT_ALERTS = frozenset(alert(what) for what in ("config", "credit", "ambiguous-operator", "quarantined"))


class _Refused(Exception):
    """The relay refused for good (5xx on the recipient or the content)."""


class _Unreachable(Exception):
    """No session with the relay: connecting, STARTTLS or AUTH failed (``error`` says how)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _Broken(Exception):
    """The connection broke after it had carried a mail: the rest wait for a fresh one (``error`` says how)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def relay_error(exc: BaseException) -> str:
    """What went wrong with the relay, in words (never an exception's class name)."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return "the relay answered " + "; ".join(f"{e.code} {clean(e.message)}" for e in exc.recipients)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"the relay answered {exc.code} {clean(exc.message)}"
    if isinstance(exc, (aiosmtplib.SMTPTimeoutError, TimeoutError)):
        return "the relay did not answer in time"
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return "the relay closed the connection"
    if isinstance(exc, aiosmtplib.SMTPConnectError):
        cause = exc.__cause__
        why = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc)
        return f"could not connect to the relay ({why})"
    if isinstance(exc, ssl.SSLError):
        return "the TLS handshake with the relay failed (check notify.relay_ca_file)"
    if isinstance(exc, aiosmtplib.SMTPException):
        return f"the relay conversation failed: {exc}"
    if isinstance(exc, OSError):
        return f"the relay could not be reached ({(exc.strerror or 'connection error').lower()})"
    return f"an unexpected fault while talking to the relay: {exc}"


# -- store side (store thread) ------------------------------------------------------


def _finish(notice: Notice, state: NoticeState, why: str, *, job_id: str | None = None) -> Callable[[Store], None]:
    """End ``notice`` unsent, said on the timeline of ``job_id`` (default: the notice's job)."""
    job = notice.job_id if job_id is None else job_id
    return lambda s: s.finish_notice(notice.id, state, why, job_id=job)


def _mark_sent(notice: Notice, what: str) -> Callable[[Store], None]:
    """``notice`` went out; ``what`` goes on its job's timeline."""
    return lambda s: s.mark_notice_sent(notice.id, notice.job_id, what)


def _release(owner: str, notice_ids: list[int], store: Store) -> None:
    """End ``owner``'s claims on ``notice_ids``: they are due again at once."""
    store.release_notice_claims(owner, notice_ids)


def _prepare(store: Store, settings: Settings, spool: Spool, item: Notice) -> Notice | None:
    """Compose a ``new`` notice: it becomes ``pending`` with its payload (returned), or ``skipped`` (None)."""
    notice = store.notice(item.id)
    if notice is None:
        return None
    job = store.get_job(notice.job_id)
    message = store.message(job.message_id) if job is not None else None
    kind = notice.kind
    if job is None or message is None:
        _finish(notice, NoticeState.SKIPPED, "the job is not in the store")(store)
        return None
    if kind == NoticeKind.DELAYED and job.state in FINAL_STATES:
        why = f"the job ended ({job.state}) before the notice went out"
        _finish(notice, NoticeState.SKIPPED, why, job_id=job.id)(store)
        return None
    if kind == NoticeKind.DELIVERED and settings.notify.receipts == "failures":
        _finish(notice, NoticeState.SKIPPED, "notify.receipts is 'failures'", job_id=job.id)(store)
        return None
    recipient = notice.recipient or recipient_of_message(settings, message)
    if not recipient:
        why = "no usable sender address (null, MAILER-DAEMON or a fax domain)"
        _finish(notice, NoticeState.SKIPPED, why, job_id=job.id)(store)
        return None
    receipt = store.latest_applied_receipt(job.id)
    document = None
    if settings.notify.attach_document and kind in (NoticeKind.DELIVERED, NoticeKind.FAILED):
        with contextlib.suppress(OSError):
            document = spool.read(job.message_id, FAX_NAME)
    facts = Facts(kind, notice.detail, notice.message_id, job, message, receipt, code=notice.code)
    link = ""
    if status_links_on(settings):  # each mail its own token; only its hash is stored
        link = f"{settings.http.public_url.rstrip('/')}/fax/{store.add_status_link(job.id)}"
    mail = compose(settings, facts, recipient, document=document, source=notice.source, now=store.clock(),
                   status_url=link)  # fmt: skip
    payload = mail.as_bytes(policy=WIRE)
    store.mark_notice_composed(notice.id, recipient, payload)
    return dataclasses.replace(item, recipient=recipient, payload=payload)


def _queue_accepted(store: Store, since: float) -> None:
    """``notify.accepted_notice``: one ``accepted`` notice per open job taken in since ``since``."""
    job_ids = store.open_jobs_without_notice(NoticeKind.ACCEPTED, since)
    if job_ids:
        with store.transaction():
            for job_id in job_ids:
                store.queue_notice(job_id, NoticeKind.ACCEPTED, "queued for sending")


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
        self.instance = instance_name(settings)
        self._lease = settings.delivery.lease_seconds
        self._store_down = False

    async def start(self) -> None:
        # Jobs accepted shortly before a restart still get their "accepted" notice (once: the row is unique).
        self._since = self.clock() - 3600.0
        self._stopping = False
        instance = self.instance
        released = await self.store.run(lambda s: s.release_notice_claims(instance))
        if released:
            log.warning("notifier: %d mail(s) claimed by the previous run were not recorded sent: they go again",
                        released)  # fmt: skip
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
            instance = self.instance
            with contextlib.suppress(*database_errors()):  # the rows claimed and not sent are due again at once
                await self.store.run(lambda s: s.release_notice_claims(instance))

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self.drain()
            except StoreUnavailable as exc:  # said once; tried again at each tick until the store answers
                if not self._store_down:
                    log.error("notifier: %s; mails wait until the store answers again", exc)
                self._store_down = True
            except Exception:  # a bug: log, and try again on the next tick
                log.exception("notifier: run failed; trying again later")
            else:
                if self._store_down:
                    log.info("notifier: the store answers again; mails go out")
                self._store_down = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.delivery.poll_seconds)

    async def drain(self) -> int:
        """Send everything due now; returns how many mails went out. Sending fails are rescheduled."""
        sent = 0
        async with self._lock:
            if self.settings.notify.accepted_notice:
                since = self._since
                await self.store.run(lambda s: _queue_accepted(s, since))
            while not self._stopping and (batch := await self._claim(alerts=False)):
                async with _Relay(self.settings) as relay:
                    sent += await self._send_batch(relay, batch)
            if not self._stopping:
                sent += await self._send_alerts()
        return sent

    async def _claim(self, *, alerts: bool) -> list[Notice]:
        """The notices (or alerts) due now, claimed for this gateway: no other one sends them meanwhile."""
        instance, now = self.instance, self.clock()
        limit = _BATCH
        return await self.store.run(lambda s: s.claim_notices(instance, now, now + self._lease, limit, alerts=alerts))

    async def _renew(self, notice_ids: list[int]) -> None:
        instance, until = self.instance, self.clock() + self._lease
        await self.store.run(lambda s: s.renew_notice_claims(instance, notice_ids, until))

    async def _send_batch(self, relay: _Relay, batch: list[Notice]) -> int:
        """Send the claimed ``batch`` over ``relay``'s one connection; returns how many went out."""
        sent = 0
        claimed_at = self.clock()
        for i, item in enumerate(batch):
            if self._stopping:
                break  # the rest are released by stop()
            if self.clock() - claimed_at >= self._lease / 3:  # a slow relay: keep the rest claimed
                claimed_at = self.clock()
                await self._renew([n.id for n in batch[i:]])
            try:
                sent += await self._send_one(relay, item)
            except _Unreachable as exc:  # the relay is down for them all: each waits its own backoff
                for notice in batch[i:]:
                    what = f"job {notice.job_id}: {notice.kind} notice"
                    await self._reschedule(notice.id, notice.job_id, notice.attempts, notice.created_at, what,
                                           exc.error)  # fmt: skip
                break
            except _Broken as exc:  # not this one's fault: it and the rest go on a fresh connection
                rest = [n.id for n in batch[i:]]
                await self.store.run(functools.partial(_release, self.instance, rest))
                log.info("notifier: %s after %d mail(s) on one connection; %d wait for a fresh one",
                         relay_error(exc.error), relay.mails, len(rest))  # fmt: skip
                break
        return sent

    async def _send_one(self, relay: _Relay, item: Notice) -> int:
        if not item.payload:
            try:
                prepared = await self.store.run(lambda s: _prepare(s, self.settings, self.spool, item))
            except database_errors():
                raise  # the store: the whole run stops and is tried again
            except Exception:  # a bug in composing this one: record it, do not block the others
                log.exception("job %s: %s notice could not be composed", item.job_id, item.kind,
                              extra={"job_id": item.job_id})  # fmt: skip
                await self.store.run(_finish(item, NoticeState.FAILED, "could not be composed (a bug: see the log)"))
                return 0
            if prepared is None:
                return 0
            item = prepared
        what = f"job {item.job_id}: {item.kind} notice to {item.recipient}"
        try:
            await relay.send(item.recipient, item.payload)
        except (_Unreachable, _Broken):
            raise
        except _Refused as exc:
            why = f"refused by the relay: {exc}"
            log.warning("%s %s; not retried", what, why, extra={"job_id": item.job_id})
            await self.store.run(_finish(item, NoticeState.FAILED, why))
            return 0
        except Exception as exc:
            await self._reschedule(item.id, item.job_id, item.attempts, item.created_at, what, exc)
            return 0
        # Shielded: once the relay took it, a stop must not leave it to be sent twice.
        await asyncio.shield(self.store.run(_mark_sent(item, f"{item.kind} to {item.recipient}")))
        log.info("%s sent", what, extra={"job_id": item.job_id})
        return 1

    async def _send_alerts(self) -> int:
        due = await self._claim(alerts=True)
        if not due:
            return 0
        notify = self.settings.notify
        if not notify.admin_address:
            for notice in due:
                log.warning("alert %s for job %s (no notify.admin_address): %s", notice.kind, notice.job_id or "-",
                            clean(notice.detail), extra={"job_id": notice.job_id})  # fmt: skip
                await self.store.run(_finish(notice, NoticeState.SKIPPED, "no notify.admin_address", job_id=""))
            return 0
        now = self.clock()
        interval = notify.admin_alert_interval_seconds
        not_before = await self.store.run(lambda s: s.last_alert_sent_at()) + interval
        if now < not_before:  # rate limit: the alerts wait and go out together, unless one stops faxing
            recent = await self.store.run(lambda s: s.alert_kinds_sent_since(now - interval))
            if not any(n.kind in URGENT_ALERTS and n.kind not in recent for n in due):
                ids = [n.id for n in due]
                await self.store.run(lambda s: s.postpone_notices(ids, not_before))
                return 0
        alerts = [Alert(n.kind, n.job_id, n.detail, n.created_at) for n in due]
        mail = compose_alerts(self.settings, alerts, due[0].message_id, now)
        taken = False
        try:
            async with _Relay(self.settings) as relay:
                await relay.send(notify.admin_address, mail.as_bytes(policy=WIRE))
                taken = True
                # Before the QUIT, shielded: once the relay took it, neither a kill during the goodbye
                # nor a stop may leave it to be sent twice.
                for notice in due:
                    await asyncio.shield(self.store.run(_mark_sent(notice, f"{notice.kind} to admin")))
        except Exception as exc:
            if taken:
                raise  # the relay took it: recording it failed (the store), nothing for the relay to do again
            if isinstance(exc, (_Unreachable, _Broken)):
                exc = exc.error
            for notice in due:
                await self._reschedule(notice.id, "", notice.attempts, notice.created_at, f"alert {notice.kind}", exc)
            return 0
        log.info("admin alert sent: %s", mail["Subject"])
        return 1

    async def _reschedule(self, row_id: int, job_id: str, attempts: int, created: float, what: str,
                          exc: Exception) -> None:  # fmt: skip
        notify = self.settings.notify
        now = self.clock()
        error = clean(relay_error(exc), 300)
        if now - created >= notify.max_retry_seconds:
            log.error("%s: given up after %d tries: %s", what, attempts + 1, error, extra={"job_id": job_id})
            why = f"relay unreachable: {error}"
            await self.store.run(lambda s: s.finish_notice(row_id, NoticeState.FAILED, why, job_id=job_id))
            return
        delay = doubling(notify.min_backoff_seconds, attempts, notify.max_backoff_seconds)
        log.warning("%s: relay did not take it (%s); next try in %.0f s", what, error, delay, extra={"job_id": job_id})
        await self.store.run(lambda s: s.retry_notice_later(row_id, now + delay, error))


class _Relay:
    """One connection to the relay, opened for the first mail and kept for the next ones; closed on exit."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: aiosmtplib.SMTP | None = None
        self.mails = 0  # mails the current connection carried

    async def __aenter__(self) -> _Relay:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None and client.is_connected:
            try:
                await client.quit(timeout=self.settings.notify.relay_timeout)
            except Exception:  # every mail is accounted for already: the goodbye does not matter
                client.close()

    async def _open(self) -> aiosmtplib.SMTP:
        notify = self.settings.notify
        tls: ssl.SSLContext | None = None
        if notify.relay_starttls:
            tls = ssl.create_default_context(cafile=notify.relay_ca_file or None)
        client = aiosmtplib.SMTP(
            hostname=notify.relay.host, port=notify.relay.port, timeout=notify.relay_timeout,
            start_tls=notify.relay_starttls, tls_context=tls, local_hostname=self.settings.smtp.hostname,
        )  # fmt: skip
        try:
            await client.connect()
            if notify.relay_username:
                await client.login(notify.relay_username, notify.relay_password.reveal())
        except Exception as exc:
            client.close()
            raise _Unreachable(exc) from None
        return client

    async def send(self, recipient: str, payload: bytes) -> None:
        """One mail; raises :class:`_Refused` for a permanent refusal, :class:`_Unreachable` without a
        session, :class:`_Broken` when a connection that carried a mail broke; anything else is transient."""
        client = self._client
        if client is None or not client.is_connected:
            self._client = client = await self._open()
            self.mails = 0
        try:
            await client.sendmail(self.settings.notify.from_address, [recipient], payload)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [e.code for e in exc.recipients]
            if all(500 <= c < 600 for c in codes):
                raise _Refused("; ".join(f"{e.code} {clean(e.message)}" for e in exc.recipients)) from None
            self._broken(exc)
            raise
        except aiosmtplib.SMTPDataError as exc:
            if 500 <= exc.code < 600:
                raise _Refused(f"{exc.code} {clean(exc.message)}") from None
            self._broken(exc)
            raise
        except Exception as exc:
            self._broken(exc)
            raise
        self.mails += 1

    def _broken(self, exc: Exception) -> None:
        """Raise :class:`_Broken` if ``exc`` left no connection and this one had carried a mail."""
        if self._client is not None and not self._client.is_connected:
            self._client = None
            if self.mails:
                raise _Broken(exc) from None
