"""Receipts (AR): the provider's callback, AR copies by mail, and matching them to jobs.

In: ``GET /receipt/<callback secret>?etat_e=..&ref_accuse=..&numero=..&nb_page=..&heure=..``
from the provider, and (``provider.accuse_email = "gateway"``) the provider's
AR mails, which SMTP intake hands over for a known per-job token; a wake-up
from the worker once it records a job submitted or ambiguous. Out: the
receipt stored durably (``receipts`` table), the job moved forward
(``delivered``, ``failed``, or ``deferred`` for an automatic resubmission on
busy / no answer), and a notice queued for the notifier.

Answers: 200 once the receipt is stored (also for duplicates, which change
nothing, and for unknown references, ignored or kept as below); 400 for
malformed parameters; 404 for any other path, a wrong secret or a source
outside ``http.callback_networks``; 503 when the store cannot take the receipt,
or an unknown reference comes past ``http.unknown_receipts_per_minute`` or
``http.unknown_receipts_max`` (the provider may try again).

Matching runs on the store thread (:func:`record_receipt`, :func:`apply_pending`):
by ``ref_accuse``; a receipt with an unknown reference resolves an
``ambiguous`` job with the same number whose attempt came before it. A
receipt that comes before the submit answer (an early receipt) is kept only
while a request to its number is in flight (sent less than
``provider.total_timeout`` + 60 s ago, no answer recorded yet), and only
applies to a job whose request went out before it came and within that
window: whoever holds the callback URL cannot plant a receipt for a reference
not issued yet. Any other unknown reference is ignored (logged, counted in
``faxgw_unknown_receipts_total``). The worker only records the answer, and
wakes this stage (:meth:`Receipts.wake`), which applies what the store says is
waiting (:meth:`~gateway.store.Store.jobs_with_pending_receipts`: early receipts
of submitted jobs, receipts on file for the number of a job recorded
ambiguous, also after a restart). State only moves forward: a final job never
changes.

Every gateway sharing the store runs this stage, and a receipt may come to any
of them (or to two: the callback and its mail): applying a receipt, moving the
job and queuing its notice are one transaction with the job's row locked, so
the second sees the first's work and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import default as default_policy

from aiohttp import web

from gateway.arcodes import RETRYABLE, lookup
from gateway.networks import Networks
from gateway.receipts.armail import receipt_in_mail
from gateway.sender import Row
from gateway.settings import DeliverySettings, Settings
from gateway.store import AsyncStore, Job, NoticeKind, State, Store, StoreUnavailable, number_tail
from gateway.text import clean, has_control

log = logging.getLogger("gateway.receipts")

# States a receipt may move a job out of; any other state keeps the receipt on record only.
_OPEN_STATES = (State.SUBMITTED, State.AMBIGUOUS)
# A receipt for an ambiguous job may come this long after the attempt (the provider retries busy lines).
_MATCH_WINDOW_SECONDS = 2 * 86400.0
# The timeline event of an automatic resubmission (counted against delivery.busy_retries).
_BUSY_RETRY = "busy retry"
# How long a stop waits for a pass under way (one store call).
_STOP_TIMEOUT = 10.0
# An early receipt may come this long after its request's timeout (the clocks, the provider's own delays).
_EARLY_SLACK_SECONDS = 60.0
# What becomes of a receipt for a reference no job has (the log says it; the metrics count it by the first word).
KEPT = "kept: no job has this reference yet; a request to its number is in flight"
IGNORED = "ignored: no job has this reference, and no request to its number is in flight"


class ReceiptRefused(Exception):
    """An unknown reference past the limits on unknown receipts: nothing is stored, the caller answers 503."""


@dataclass(frozen=True)
class EarlyRules:
    """Which receipts for an unknown reference are kept: while a request to their number is in flight
    (sent less than ``window`` seconds ago), at most ``per_minute`` a minute and ``on_file`` over
    ``_MATCH_WINDOW_SECONDS``."""

    window: float = 60.0 + _EARLY_SLACK_SECONDS
    per_minute: int = 60
    on_file: int = 1000

    @classmethod
    def of(cls, settings: Settings) -> EarlyRules:
        http = settings.http
        return cls(settings.provider.total_timeout + _EARLY_SLACK_SECONDS, http.unknown_receipts_per_minute,
                   http.unknown_receipts_max)  # fmt: skip


@dataclass(frozen=True)
class RetryPolicy:
    """Automatic resubmission on busy / no answer: ``tries`` more attempts, ``delay`` apart (0: off)."""

    tries: int = 0
    delay: float = 600.0

    @classmethod
    def of(cls, delivery: DeliverySettings) -> RetryPolicy:
        return cls(delivery.busy_retries, delivery.busy_retry_delay_seconds)


@dataclass(frozen=True)
class ReceiptParams:
    etat_e: str
    ref_accuse: str
    numero: str = ""
    nb_page: int = 0
    heure: str = ""
    validated: str = ""


# -- applying a receipt (store thread) ------------------------------------------


def _retries_used(store: Store, job_id: str) -> int:
    return store.count_events(job_id, _BUSY_RETRY)


def _apply(store: Store, job: Job, receipt_id: int, r: ReceiptParams, policy: RetryPolicy) -> str:
    """Apply one stored receipt to its job, inside the caller's transaction; returns what happened."""
    code = lookup(r.etat_e)
    now = store.clock()
    store.mark_receipt_applied(receipt_id, job.id)
    said = f"receipt {clean(r.etat_e, 12)} ({code.english}), {r.nb_page} page(s), received {clean(r.heure, 40)}"
    if job.state not in _OPEN_STATES:
        store.add_event(job.id, "receipt ignored", f"{said}; the job is already {job.state}")
        return f"ignored ({job.state})"
    expect = list(_OPEN_STATES)
    if code.delivered:
        if not store.transition(
            job.id, State.DELIVERED, f"delivered, {r.nb_page} page(s)", expect=expect, event="delivered",
            receipt_code=r.etat_e, pages_sent=r.nb_page,
        ):  # fmt: skip
            return _moved(store, job, said)
        store.queue_notice(job.id, NoticeKind.DELIVERED, said)
        return NoticeKind.DELIVERED
    used = _retries_used(store, job.id)
    if code.category in RETRYABLE and used < policy.tries:
        if not store.transition(
            job.id, State.DEFERRED, f"{code.english}: resubmission {used + 1} of {policy.tries}", expect=expect,
            event=_BUSY_RETRY, next_attempt_at=now + policy.delay, receipt_code=r.etat_e,
            provider_ref="",  # a later receipt for this attempt matches nothing
        ):  # fmt: skip
            return _moved(store, job, said)
        return "deferred"
    reason = f"not delivered: {code.english}" + (f" (after {used} resubmissions)" if used else "")
    if not store.transition(job.id, State.FAILED, reason, expect=expect, receipt_code=r.etat_e,
                            pages_sent=r.nb_page):  # fmt: skip
        return _moved(store, job, said)
    store.queue_notice(job.id, NoticeKind.FAILED, said)
    return NoticeKind.FAILED


def _moved(store: Store, job: Job, said: str) -> str:
    """The job left the states a receipt moves it out of meanwhile (never with the row locked: a safeguard)."""
    now = store.get_job(job.id)
    state = now.state if now is not None else "gone"
    store.add_event(job.id, "receipt ignored", f"{said}; the job is already {state}")
    return f"ignored ({state})"


def _match_ambiguous(store: Store, numero: str, received_at: float) -> Job | None:
    """The oldest ambiguous job to ``numero`` whose attempt came before the receipt."""
    if len(number_tail(numero)) < 6:
        return None
    return store.ambiguous_job_for_number(numero, received_at - _MATCH_WINDOW_SECONDS, received_at + 60.0)


def _may_keep_unknown(store: Store, r: ReceiptParams, early: EarlyRules) -> bool:
    """Whether a receipt for an unknown reference is kept (an early one); raises ReceiptRefused past the limits."""
    now = store.clock()
    if not r.numero or not store.submission_in_flight(r.numero, now - early.window):
        return False
    if store.count_unmatched_receipts(now - 60.0) >= early.per_minute:
        raise ReceiptRefused(f"more than {early.per_minute} receipts for unknown references in a minute")
    if store.count_unmatched_receipts(now - _MATCH_WINDOW_SECONDS) >= early.on_file:
        raise ReceiptRefused(f"{early.on_file} receipts for unknown references on file")
    return True


def record_receipt(store: Store, r: ReceiptParams, source: str, policy: RetryPolicy,
                   early: EarlyRules | None = None) -> tuple[str, str]:  # fmt: skip
    """Store a receipt and apply it if its job is known; returns what happened (for the log) and the job id.

    One transaction: the receipt is on disk before the caller answers 200. A
    replay of a stored receipt (same reference, code, time and pages) changes
    nothing. A receipt whose reference no job has is kept only as an early one
    (:class:`EarlyRules`; :data:`KEPT`), else :data:`IGNORED` and not stored;
    past the limits, :class:`ReceiptRefused`.
    """
    early = EarlyRules() if early is None else early
    with store.transaction():
        # The job's row locked first (PostgreSQL): a gateway applying the same receipt at the same time
        # waits, then finds the receipt on record (a duplicate) and the job already moved.
        job, matched = _job_of(store, r)
        if job is None and not _may_keep_unknown(store, r, early):
            # PostgreSQL: each statement sees what was committed when it began, so the job may have left
            # ``submitting`` (recorded submitted with this reference, or taken over as ambiguous) between the
            # look-up above and the in-flight check: look once more, now that the check saw it leave.
            job, matched = _job_of(store, r)
            if job is None:
                return IGNORED, ""
        receipt_id = store.add_receipt(
            source=source, ref_accuse=r.ref_accuse, etat_e=r.etat_e, numero=r.numero, nb_page=r.nb_page,
            heure=r.heure, validated=r.validated,
        )  # fmt: skip
        if receipt_id is None:
            return "duplicate: nothing changes", ""
        if job is None:
            return KEPT, ""
        if matched is not None:
            store.update_job(matched.id, provider_ref=r.ref_accuse)
            store.add_event(matched.id, "receipt matched", f"by number and time: reference {r.ref_accuse}")
        return _apply(store, job, receipt_id, r, policy), job.id


def _job_of(store: Store, r: ReceiptParams) -> tuple[Job | None, Job | None]:
    """The job of a receipt, its row locked: by reference, else the ambiguous job it matches by number
    (then also the second value)."""
    job = store.job_by_provider_ref(r.ref_accuse)
    job = store.lock_job(job.id) if job is not None else None
    if job is None and r.numero:
        found = _match_ambiguous(store, r.numero, store.clock())
        found = store.lock_job(found.id) if found is not None else None
        if found is not None and found.state == State.AMBIGUOUS:
            return found, found
    return job, None


def _params_of(row: Row) -> ReceiptParams:
    names = ("etat_e", "ref_accuse", "numero", "nb_page", "heure", "validated")
    return ReceiptParams(*(row[n] for n in names))


def apply_pending(store: Store, job_id: str, delivery: DeliverySettings | None = None,
                  early: EarlyRules | None = None) -> int:  # fmt: skip
    """Apply receipts that arrived before this job's submit answer was recorded; returns how many.

    Sync, on the store thread. For a ``submitted`` job, the receipts on file for
    its ``provider_ref``; for an ``ambiguous`` one, the oldest receipt on file
    for its number that came after the attempt
    (:meth:`~gateway.store.Store.receipt_for_ambiguous`); in both cases only a
    receipt that came while the job's request was in flight (``early``). Any
    other state: none. ``delivery`` gives the busy / no-answer resubmission
    policy (none: report the failure at once).
    """
    policy = RetryPolicy() if delivery is None else RetryPolicy.of(delivery)
    return _apply_pending(store, job_id, policy, EarlyRules() if early is None else early)


def _apply_pending(store: Store, job_id: str, policy: RetryPolicy, early: EarlyRules) -> int:
    with store.transaction():
        job = store.lock_job(job_id)  # two receipt stages (two gateways) apply a receipt one after the other
        if job is None:
            return 0
        if job.state == State.SUBMITTED and job.provider_ref:
            rows = store.unapplied_receipts(job.provider_ref, job.submitted_at, job.submitted_at + early.window)
        elif job.state == State.AMBIGUOUS:
            found = store.receipt_for_ambiguous(job, early.window)
            rows = [] if found is None else [found]
            if found is not None:
                store.update_job(job.id, provider_ref=found["ref_accuse"])
                store.add_event(job.id, "receipt matched", f"by number and time: reference {found['ref_accuse']}")
        else:
            return 0
        for row in rows:
            current = store.get_job(job_id)
            if current is not None:
                outcome = _apply(store, current, row["id"], _params_of(row), policy)
                what = f"job {job_id}: early receipt {row['etat_e']} applied: {outcome}"
                log.info("%s", what, extra={"job_id": job_id})
        return len(rows)


def apply_waiting(store: Store, policy: RetryPolicy, early: EarlyRules | None = None) -> int:
    """Apply every receipt the store says a job waits for (:func:`apply_pending` for each); returns how many."""
    early = EarlyRules() if early is None else early
    pending = store.jobs_with_pending_receipts(early.window)
    return sum(_apply_pending(store, job_id, policy, early) for job_id in pending)


# -- AR copies by mail ------------------------------------------------------------


def record_ar_mail(store: Store, job_id: str, raw: bytes, policy: RetryPolicy | None = None) -> bool:
    """Record a provider AR mail on the job (gateway mode); returns whether it was new.

    A mail that carries this job's reference and a code is a receipt like a
    callback (source ``mail``): it moves the job, and rides along, as it came,
    as an attachment of the receipt the sender gets. Any other mail
    (unreadable, or for an attempt the job no longer waits for) is forwarded to
    the sender as it came, once per distinct mail. The mail is kept in the
    notification row (``source``), so it survives a restart.
    """
    digest = hashlib.sha256(raw).hexdigest()[:16]
    subject = clean(str(BytesHeaderParser(policy=default_policy).parsebytes(raw).get("Subject", "")), 120)
    found = receipt_in_mail(raw)
    parsed = parse_params(found) if found is not None else None
    with store.transaction():
        job = store.lock_job(job_id)
        if job is None:
            return False
        if isinstance(parsed, ReceiptParams) and (
            parsed.ref_accuse == job.provider_ref or (job.state == State.AMBIGUOUS and not job.provider_ref)
        ):
            if job.state == State.AMBIGUOUS:  # the address names the job: no need to match by number
                store.update_job(job.id, provider_ref=parsed.ref_accuse)
                store.add_event(job.id, "receipt matched", f"by its mail address: reference {parsed.ref_accuse}")
            outcome, matched = record_receipt(store, parsed, "mail", policy or RetryPolicy())
            store.add_event(job_id, "receipt mail received", f"{subject}: {outcome}")
            if matched == job_id and outcome in (NoticeKind.DELIVERED, NoticeKind.FAILED):
                store.attach_source(job_id, NoticeKind(outcome), raw)
            return not outcome.startswith("duplicate")
        new = store.queue_ar_mail(job_id, digest, subject, raw)
        if new:
            store.add_event(job_id, "receipt mail received", f"{subject}: forwarded as it came")
    return new


# -- the callback ------------------------------------------------------------------

_PARAM_RULES: dict[str, tuple[re.Pattern[str], bool, str]] = {
    # name: (pattern, required, what it must be)
    "etat_e": (re.compile(r"[0-9]{1,7}"), True, "a receipt code (digits)"),
    "ref_accuse": (re.compile(r"[A-Za-z0-9._\-]{1,64}"), True, "a provider reference (letters, digits, . _ -)"),
    "numero": (re.compile(r"\+?[0-9]{0,20}"), False, "a fax number (digits)"),
    "nb_page": (re.compile(r"[0-9]{0,4}"), False, "a page count (digits)"),
    "heure": (re.compile(r"[0-9A-Za-z :/.+\-]{0,40}"), False, "a time (digits, letters, : / . + -)"),
    "validated": (re.compile(r"[A-Za-z0-9_\-]{0,32}"), False, "a flag (letters, digits)"),
}


def parse_params(query: Sequence[tuple[str, str]]) -> ReceiptParams | str:
    """The receipt in a callback's query, or what is wrong with it (never echoing the value)."""
    seen: dict[str, str] = {}
    for name, value in query:
        if has_control(name) or has_control(value):
            return "control characters are not allowed in parameters"
        if name in _PARAM_RULES:
            if name in seen:
                return f"{name}: given more than once"
            seen[name] = value
    for name, (pattern, required, what) in _PARAM_RULES.items():
        value = seen.get(name, "")
        if required and not value:
            return f"{name}: missing"
        if not pattern.fullmatch(value):
            return f"{name}: must be {what}"
    return ReceiptParams(
        etat_e=seen["etat_e"], ref_accuse=seen["ref_accuse"], numero=seen.get("numero", ""),
        nb_page=int(seen.get("nb_page") or 0), heure=seen.get("heure", ""), validated=seen.get("validated", ""),
    )  # fmt: skip


class Receipts:
    """The receipt stage: the callback route on the shared HTTP listener, the AR-mail hook, and
    a task that applies the receipts jobs wait for (``wake()`` once a job is recorded submitted or
    ambiguous; ``drain()`` in tests)."""

    def __init__(self, settings: Settings, store: AsyncStore, *, on_notice: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.store = store
        self.policy = RetryPolicy.of(settings.delivery)
        self.early = EarlyRules.of(settings)
        # Sees what became of each receipt for an unknown reference: kept, ignored, refused (the metrics count it).
        self.on_unknown: Callable[[str], None] = lambda outcome: None
        self._on_notice = on_notice  # wakes the notifier: a queued notice goes out now, not at its next poll
        self._networks = Networks(settings.http.callback_networks)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._store_down = False

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/receipt/{secret}", self.callback, allow_head=False)]

    async def start(self) -> None:
        """Apply what a crash left waiting (early receipts of submitted jobs, receipts on file for
        jobs recovered ambiguous at start-up), then run (returns at once)."""
        if not self.settings.http.callback_secret:
            log.warning("receipt callback disabled: FAX_GATEWAY_CALLBACK_SECRET is not set")
        await self.drain()
        if self._task is None:  # started once: a second start only applies what waits
            self._stopping = False
            self._task = asyncio.create_task(self._loop(), name="receipts")

    async def stop(self) -> None:
        """Let a pass under way finish (bounded), then stop; idempotent. What waits is applied at the next start."""
        if self._task is not None:
            task, self._task = self._task, None
            self._stopping = True
            self._wake.set()
            try:
                await asyncio.wait_for(task, _STOP_TIMEOUT)
            except (TimeoutError, asyncio.CancelledError):
                pass  # wait_for cancelled it; the store call itself runs to its end on the store thread

    def wake(self) -> None:
        """A job was recorded submitted or ambiguous: a receipt on file may settle it."""
        self._wake.set()

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self.drain()
            except StoreUnavailable as exc:  # said once; tried again at each tick until the store answers
                if not self._store_down:
                    log.error("receipts: %s; waiting receipts are applied once the store answers again", exc)
                self._store_down = True
            except Exception:  # the store locked, a bug: log, and try again on the next tick
                log.exception("receipts: applying waiting receipts failed; trying again later")
            else:
                if self._store_down:
                    log.info("receipts: the store answers again")
                self._store_down = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.delivery.poll_seconds)

    async def drain(self) -> int:
        """Apply every receipt a job waits for now; returns how many were applied."""
        async with self._lock:
            # Shielded: a stop never leaves a pass half-way (it is one store call, in transactions).
            applied = await asyncio.shield(self.store.run(lambda s: apply_waiting(s, self.policy, self.early)))
        if applied:
            self._on_notice()
        return applied

    def _source_allowed(self, remote: str | None) -> bool:
        return self._networks.allows(remote)

    def _secret_matches(self, given: str) -> bool:
        secret = self.settings.http.callback_secret
        return bool(secret) and hmac.compare_digest(given.encode(), secret.reveal().encode())

    async def callback(self, request: web.Request) -> web.Response:
        # Never log the path: it holds the secret.
        if not self._source_allowed(request.remote) or not self._secret_matches(request.match_info["secret"]):
            log.warning("receipt callback: refused a request from %s (wrong path or source)", clean(request.remote))
            raise web.HTTPNotFound()
        parsed = parse_params(list(request.query.items()))
        if isinstance(parsed, str):
            log.warning("receipt callback from %s: malformed: %s", clean(request.remote), parsed)
            return web.Response(status=400, text=f"malformed receipt: {parsed}\n")
        try:
            outcome, job_id = await self.store.run(
                lambda s: record_receipt(s, parsed, "callback", self.policy, self.early)
            )
        except ReceiptRefused as exc:  # a flood of unknown references: the provider's own receipts come again
            log.warning("receipt %s for %s not kept: %s", parsed.etat_e, parsed.ref_accuse, exc)
            self.on_unknown("refused")
            return web.Response(status=503, text="receipt not stored, try again later\n")
        except Exception as exc:  # the store is locked, read-only or closed: the provider may try again
            log.error("receipt %s for %s not stored: %s", parsed.etat_e, parsed.ref_accuse, clean(exc))
            return web.Response(status=503, text="receipt not stored, try again later\n")
        what = f"job {job_id}: {outcome}" if job_id else outcome
        log.info("receipt %s for %s: %s", parsed.etat_e, parsed.ref_accuse, what, extra={"job_id": job_id})
        if outcome in (KEPT, IGNORED):
            self.on_unknown(outcome.split(":", 1)[0])
        self._on_notice()
        return web.Response(text="OK\n")

    async def on_receipt_mail(self, job_id: str, raw: bytes) -> None:
        """An AR mail for ``job_id`` (gateway mode): recorded durably before intake answers 250."""
        new = await self.store.run(lambda s: record_ar_mail(s, job_id, raw, self.policy))
        log.info("job %s: receipt mail %s", job_id, "recorded" if new else "already recorded", extra={"job_id": job_id})
        self._on_notice()

