"""Receipts (AR): the provider's callback, AR copies by mail, and matching them to jobs.

In: ``GET /receipt/<callback secret>?etat_e=..&ref_accuse=..&numero=..&nb_page=..&heure=..``
from the provider, and (``provider.accuse_email = "gateway"``) the provider's
AR mails, which SMTP intake hands over for a known per-job token. Out: the
receipt stored durably (``receipts`` table), the job moved forward
(``delivered``, ``failed``, or ``deferred`` for an automatic resubmission on
busy / no answer), and a notice queued for the notifier.

Answers: 200 once the receipt is stored (also for duplicates and unknown
references, which change nothing); 400 for malformed parameters; 404 for any
other path, a wrong secret or a source outside ``http.callback_networks``;
503 when the store cannot take the receipt (the provider may try again).

Matching runs on the store thread (:func:`record_receipt`, :func:`apply_pending`):
by ``ref_accuse``; a receipt that comes before the submit answer is kept and
applied when the worker records the answer; a receipt with an unknown
reference resolves an ``ambiguous`` job with the same number whose attempt
came before it. State only moves forward: a final job never changes.
"""

from __future__ import annotations

import functools
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
from gateway.replies import clean, has_control
from gateway.sender import Row, recipient_of_message
from gateway.settings import DeliverySettings, Settings
from gateway.store import AsyncStore, Job, State, Store

log = logging.getLogger("gateway.receipts")

# States a receipt may move a job out of; any other state keeps the receipt on record only.
_OPEN_STATES = (State.SUBMITTED, State.AMBIGUOUS)
# A receipt for an ambiguous job may come this long after the attempt (the provider retries busy lines).
_MATCH_WINDOW_SECONDS = 2 * 86400.0


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


def _digits_tail(number: str) -> str:
    """The last nine digits: the same line whatever the format (0145.., +33145.., 0033145..)."""
    return re.sub(r"\D", "", number)[-9:]


# -- applying a receipt (store thread) ------------------------------------------


def _retries_used(store: Store, job_id: str) -> int:
    row = store.db.execute("SELECT COUNT(*) FROM events WHERE job_id = ? AND kind = 'busy retry'", (job_id,)).fetchone()
    return int(row[0])


def _apply(store: Store, job: Job, receipt_id: int, r: ReceiptParams, policy: RetryPolicy) -> str:
    """Apply one stored receipt to its job, inside the caller's transaction; returns what happened."""
    code = lookup(r.etat_e)
    now = store.clock()
    store.db.execute("UPDATE receipts SET job_id = ?, applied_at = ? WHERE id = ?", (job.id, now, receipt_id))
    said = f"receipt {clean(r.etat_e, 12)} ({code.english}), {r.nb_page} page(s), received {clean(r.heure, 40)}"
    if job.state not in _OPEN_STATES:
        store.add_event(job.id, "receipt ignored", f"{said}; the job is already {job.state}")
        return f"ignored ({job.state})"
    expect = list(_OPEN_STATES)
    if code.delivered:
        store.transition(
            job.id, State.DELIVERED, f"delivered, {r.nb_page} page(s)", expect=expect, event="delivered",
            receipt_code=r.etat_e, pages_sent=r.nb_page,
        )  # fmt: skip
        store.queue_notice(job.id, "delivered", said)
        return "delivered"
    used = _retries_used(store, job.id)
    if code.category in RETRYABLE and used < policy.tries:
        store.transition(
            job.id, State.DEFERRED, f"{code.english}: resubmission {used + 1} of {policy.tries}", expect=expect,
            event="busy retry", next_attempt_at=now + policy.delay, receipt_code=r.etat_e,
            provider_ref="",  # a later receipt for this attempt matches nothing
        )  # fmt: skip
        return "deferred"
    reason = f"not delivered: {code.english}" + (f" (after {used} resubmissions)" if used else "")
    store.transition(job.id, State.FAILED, reason, expect=expect, receipt_code=r.etat_e, pages_sent=r.nb_page)
    store.queue_notice(job.id, "failed", said)
    return "failed"


def _match_ambiguous(store: Store, numero: str, received_at: float) -> Job | None:
    """The oldest ambiguous job to ``numero`` whose attempt came before the receipt."""
    tail = _digits_tail(numero)
    if len(tail) < 6:
        return None
    rows = store.db.execute(
        "SELECT id, number FROM jobs WHERE state = ? AND updated_at BETWEEN ? AND ? ORDER BY updated_at, id",
        (str(State.AMBIGUOUS), received_at - _MATCH_WINDOW_SECONDS, received_at + 60.0),
    )
    for row in rows:
        if _digits_tail(row["number"]) == tail:
            return store.get_job(row["id"])
    return None


def record_receipt(store: Store, r: ReceiptParams, source: str, policy: RetryPolicy) -> tuple[str, str]:
    """Store a receipt and apply it if its job is known; returns what happened (for the log) and the job id.

    One transaction: the receipt is on disk before the caller answers 200. A
    replay of a stored receipt (same reference, code, time and pages) changes
    nothing.
    """
    with store.transaction() as db:
        cur = db.execute(
            "INSERT OR IGNORE INTO receipts"
            " (received_at, source, ref_accuse, etat_e, numero, nb_page, heure, validated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (store.clock(), source, r.ref_accuse, r.etat_e, r.numero, r.nb_page, r.heure, r.validated),
        )
        if cur.rowcount != 1 or cur.lastrowid is None:
            return "duplicate: nothing changes", ""
        receipt_id = cur.lastrowid
        by_ref = "SELECT id FROM jobs WHERE provider_ref = ? AND provider_ref != ''"
        row = db.execute(by_ref, (r.ref_accuse,)).fetchone()
        job = store.get_job(row["id"]) if row is not None else None
        if job is None and r.numero:
            job = _match_ambiguous(store, r.numero, store.clock())
            if job is not None:
                store.update_job(job.id, provider_ref=r.ref_accuse)
                store.add_event(job.id, "receipt matched", f"by number and time: reference {r.ref_accuse}")
        if job is None:
            return "kept: no job has this reference (yet)", ""
        return _apply(store, job, receipt_id, r, policy), job.id


def _params_of(row: Row) -> ReceiptParams:
    names = ("etat_e", "ref_accuse", "numero", "nb_page", "heure", "validated")
    return ReceiptParams(*(row[n] for n in names))


def apply_pending(store: Store, job_id: str, delivery: DeliverySettings | None = None) -> None:
    """Apply receipts that arrived before the worker recorded this job's submit answer.

    Sync, on the store thread. The worker calls it right after it records the
    job as ``submitted`` with its ``provider_ref`` (and may call it after
    recording ``ambiguous``: a receipt already on file for the number then
    resolves the job). ``delivery`` gives the busy / no-answer resubmission
    policy (none: report the failure at once).
    """
    policy = RetryPolicy() if delivery is None else RetryPolicy.of(delivery)
    with store.transaction() as db:
        job = store.get_job(job_id)
        if job is None:
            return
        if job.state == State.SUBMITTED and job.provider_ref:
            pending = "SELECT * FROM receipts WHERE ref_accuse = ? AND applied_at = 0 ORDER BY id"
            rows = list(db.execute(pending, (job.provider_ref,)))
        elif job.state == State.AMBIGUOUS:
            since = (job.submitted_at or job.updated_at) - 60.0
            candidates = db.execute(
                "SELECT * FROM receipts WHERE job_id = '' AND applied_at = 0 AND received_at >= ? ORDER BY id", (since,)
            )
            rows = [r for r in candidates if _digits_tail(r["numero"]) == _digits_tail(job.number)][:1]
            if rows:
                store.update_job(job.id, provider_ref=rows[0]["ref_accuse"])
                store.add_event(job.id, "receipt matched", f"by number and time: reference {rows[0]['ref_accuse']}")
        else:
            return
        for row in rows:
            current = store.get_job(job_id)
            if current is not None:
                outcome = _apply(store, current, row["id"], _params_of(row), policy)
                what = f"job {job_id}: early receipt {row['etat_e']} applied: {outcome}"
                log.info("%s", what, extra={"job_id": job_id})


# -- AR copies by mail ------------------------------------------------------------


def accuse_email_for(settings: Settings, job: Job, message: Row) -> str:
    """The ``accuse_email`` to send with the job's submission ("" for none).

    ``off``: none; ``sender``: the sender (as the notifier picks them);
    ``address``: the fixed archive address; ``gateway``: the job's own address
    ``ar-<token>@<receipts_domain>``, which the gateway's SMTP server accepts.
    """
    mode = settings.provider.accuse_email
    if mode == "sender":
        return recipient_of_message(settings, message)
    if mode == "address":
        return settings.provider.accuse_email_address
    if mode == "gateway":
        return f"ar-{job.ar_token}@{settings.provider.receipts_domain}"
    return ""


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
    with store.transaction() as db:
        job = store.get_job(job_id)
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
            if matched == job_id and outcome in ("delivered", "failed"):
                db.execute(
                    "UPDATE notifications SET source = ? WHERE job_id = ? AND kind = ? AND state = 'new'",
                    (raw, job_id, outcome),
                )
            return not outcome.startswith("duplicate")
        kind = f"ar-mail:{digest}"
        cur = db.execute(
            "INSERT OR IGNORE INTO notifications (job_id, kind, message_id, detail, source, state, created_at)"
            " VALUES (?, ?, ?, ?, ?, 'new', ?)",
            (job_id, kind, f"{job_id}.{kind}", subject, raw, store.clock()),
        )
        if cur.rowcount == 1:
            store.add_event(job_id, "receipt mail received", f"{subject}: forwarded as it came")
    return cur.rowcount == 1


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
    """The receipt stage: the callback route on the shared HTTP listener and the AR-mail hook."""

    def __init__(self, settings: Settings, store: AsyncStore, *, wake: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.store = store
        self.policy = RetryPolicy.of(settings.delivery)
        self._wake = wake
        self._networks = Networks(settings.http.callback_networks)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/receipt/{secret}", self.callback, allow_head=False)]

    async def start(self) -> None:
        if not self.settings.http.callback_secret:
            log.warning("receipt callback disabled: FAX_GATEWAY_CALLBACK_SECRET is not set")
        # A crash between the worker's "submitted" and its apply_pending leaves early receipts unapplied.
        waiting = await self.store.run(_jobs_with_pending_receipts)
        for job_id in waiting:
            await self.store.run(functools.partial(apply_pending, job_id=job_id, delivery=self.settings.delivery))
        if waiting:
            self._wake()

    async def stop(self) -> None:
        return None

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
            outcome, job_id = await self.store.run(lambda s: record_receipt(s, parsed, "callback", self.policy))
        except Exception as exc:  # the store is locked, read-only or closed: the provider may try again
            log.error("receipt %s for %s not stored: %s", parsed.etat_e, parsed.ref_accuse, clean(exc))
            return web.Response(status=503, text="receipt not stored, try again later\n")
        what = f"job {job_id}: {outcome}" if job_id else outcome
        log.info("receipt %s for %s: %s", parsed.etat_e, parsed.ref_accuse, what, extra={"job_id": job_id})
        self._wake()
        return web.Response(text="OK\n")

    async def on_receipt_mail(self, job_id: str, raw: bytes) -> None:
        """An AR mail for ``job_id`` (gateway mode): recorded durably before intake answers 250."""
        new = await self.store.run(lambda s: record_ar_mail(s, job_id, raw, self.policy))
        log.info("job %s: receipt mail %s", job_id, "recorded" if new else "already recorded", extra={"job_id": job_id})
        self._wake()


def _jobs_with_pending_receipts(store: Store) -> list[str]:
    rows = store.db.execute(
        "SELECT DISTINCT j.id FROM jobs j JOIN receipts r ON r.ref_accuse = j.provider_ref"
        " WHERE j.state = ? AND j.provider_ref != '' AND r.applied_at = 0",
        (str(State.SUBMITTED),),
    )
    return [str(r["id"]) for r in rows]
