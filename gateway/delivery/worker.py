"""The delivery worker: stores each spooled document and submits its jobs to the provider.

In: job rows (queued, deferred, credit holds, ambiguous past their grace) and
the spooled fax documents. Out: every step as a state change with its time and
reason (``Store.transition`` writes the timeline), notices for the notifier
(``failed``, ``delayed``, ``alert:*``), and a wake-up for the receipt stage
(``on_submitted``) once a job is recorded submitted or ambiguous: a receipt
that came before the answer is applied there, never here.

The provider client and the storage raise outcome types; this module alone
turns them into state, backoff and give-up (the tables below). ``submitting``
is recorded before each request, so a job found in it at start-up may have
been sent and becomes ``ambiguous`` (:mod:`gateway.delivery.recovery`): no job is
submitted twice without the ambiguity on record. At most
``provider.concurrency`` jobs are in flight.

Several gateways may share one store (PostgreSQL). A job is claimed with its
lease (``delivery.lease_seconds``, under ``cluster.instance``) in the
transaction that finds it due, rows another gateway is claiming passed over;
the worker renews the leases of the jobs it holds every third of that, and each
of its later writes carries the job's lease token: once another gateway took
the job over (the lease ran out: this one was paused or cut off), the write is
refused and logged "lease lost: another instance took the job over", and
nothing is queued on its account. Each pass also takes over the jobs whose
lease ran out elsewhere (:func:`~gateway.delivery.recovery.take_over_expired`).
When the store cannot be reached, passes stop (said once), and start again
with backoff until it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.backoff import doubling, jittered
from gateway.delivery.recovery import recover, take_over_expired
from gateway.delivery.storage import Storage, content_type
from gateway.outcomes import Accepted, Ambiguous, Hold, HoldKind, PermanentFailure, Retry, Submission
from gateway.sender import Row, recipient_of_message
from gateway.settings import Settings, instance_name
from gateway.spool import FAX_NAME, Spool
from gateway.store import (
    AsyncStore,
    Delay,
    Ending,
    Instance,
    Job,
    NoticeKind,
    State,
    Store,
    StoreError,
    StoreUnavailable,
    alert,
    delay_of,
)

log = logging.getLogger("gateway.worker")


# What the sender is told about a job left to an operator after an ambiguous submission.
CHECKING = ("the fax is being checked: the fax service may have received it without saying so, "
            "and the fax administrator will confirm whether it was sent before it is sent again")


class Provider(Protocol):
    async def submit(self, submission: Submission) -> Accepted:
        """Send one fax request; raises the outcome types of gateway.outcomes."""
        ...


# What each kind of hold does: the administrator alert it raises and whether a
# timer retries it (credit) or a person/restart releases it (config, URL).
HOLD_ALERTS = {kind: alert(kind) for kind in (HoldKind.CONFIG, HoldKind.URL, HoldKind.CREDIT)}
TIMED_HOLDS = frozenset({HoldKind.CREDIT})

# States worth a warning in the log: the fax did not go (yet), or a person must look.
_WARNED = frozenset({State.DEFERRED, State.HELD, State.AMBIGUOUS, State.QUARANTINED, State.FAILED})

# Why a job waits, in words for its timeline (the sender's mail says it in its own language).
DELAY_WORDS = {
    Delay.CREDIT: "the fax account needs credit",
    Delay.RETRY: "the provider or the storage could not be reached yet; retried on a timer",
    Delay.OPERATOR: "waiting for an operator",
    Delay.CHECKING: "the provider's answer was unclear; waiting for a matching receipt",
    Delay.WAITING: "waiting its turn",
}


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: AsyncStore,
        spool: Spool,
        storage: Storage,
        provider: Provider,
        *,
        clock: Callable[[], float],
        wake_event: asyncio.Event,
        on_notice: Callable[[], None] = lambda: None,
        on_submitted: Callable[[], None] = lambda: None,
        stop_timeout: float | None = None,
    ) -> None:
        self.settings = settings
        self.delivery = settings.delivery
        self.store = store
        self.spool = spool
        self.storage = storage
        self.provider = provider
        self.clock = clock
        self._wake = wake_event
        self._on_notice = on_notice  # wakes the notifier: a queued notice goes out now, not at its next poll
        self._on_submitted = on_submitted  # wakes the receipt stage: a receipt on file may settle the job
        # By default a stop waits out the provider's own timeout: an answer that
        # still comes spares an ambiguous job.
        self._stop_timeout = settings.provider.total_timeout + 5.0 if stop_timeout is None else stop_timeout
        self._limit = settings.provider.concurrency
        self._tasks: set[asyncio.Task[None]] = set()
        self._fill_lock = asyncio.Lock()
        self._sweep_lock = asyncio.Lock()
        self._upload_locks: dict[str, asyncio.Lock] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._sweep_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._next_wakeup = 0.0
        self._config_hold = False  # whether the last look found submissions paused by a configuration hold
        # Leases: this gateway's name, this run's own token (the instances table), the jobs it holds (id ->
        # lease token), when (by the clock) they were last renewed, and the task that renews them.
        self.instance = instance_name(settings)
        self._run_token = secrets.token_hex(8)
        self._shared = False
        self._held: dict[str, int] = {}
        self._renewed_at = -math.inf
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._heartbeat_stop = asyncio.Event()
        self._store_down = 0  # passes failed in a row because the store could not be reached

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        """Take this gateway's name (a shared store), recover jobs left mid-step by a crash, then run
        (returns at once)."""
        delivery, instance, token = self.delivery, self.instance, self._run_token

        def begin(s: Store) -> tuple[bool, list[str]]:
            if s.shared:
                alive_since = s.clock() - delivery.lease_seconds
                other = s.register_instance(instance, token, socket.gethostname(), os.getpid(),
                                            alive_since=alive_since, stale=_gone)  # fmt: skip
                if other is not None:
                    raise StoreError(_name_taken(instance, other, s.clock()))
            return s.shared, recover(s, delivery, instance=instance)

        self._shared, ambiguous = await self.store.run(begin)
        if ambiguous:
            self._on_submitted()  # recovered ambiguous: a receipt recorded before the crash may settle them
        self._stopping = False
        self._renewed_at = self.clock()
        self._heartbeat_stop.clear()
        self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="worker leases")
        self._loop_task = asyncio.create_task(self._run(), name="worker")

    async def stop(self) -> None:
        """Stop taking jobs; let in-flight ones finish up to ``stop_timeout``, then cancel them.

        A job cancelled while ``submitting`` stays so and is found ambiguous at the next start
        (or by another gateway once its lease runs out).
        """
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._stop_timeout
        if self._loop_task is not None:
            # The pass under way ends by itself: cancelled between a claim's commit and the start
            # of its task, it would leave a job marked uploading that nobody works on.
            self.wake()
            done, _ = await asyncio.wait({self._loop_task}, timeout=max(0.0, deadline - loop.time()))
            if not done:
                self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        if self._sweep_task is not None:
            self._sweep_task.cancel()
            await asyncio.gather(self._sweep_task, return_exceptions=True)
            self._sweep_task = None
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - loop.time()))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._heartbeat_task is not None:
            self._heartbeat_stop.set()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
            self._heartbeat_task = None
        if self._shared and not self._held:  # jobs still held keep this name until their lease runs out
            instance, token = self.instance, self._run_token
            with contextlib.suppress(StoreError, *_STORE_FAULTS):
                await self.store.run(lambda s: s.unregister_instance(instance, token))

    def wake(self) -> None:
        self._wake.set()

    @property
    def next_wakeup(self) -> float:
        """When (by the worker's clock) it looks again by itself at the latest, as of its last pass:
        the earliest retry, grace period, credit hold or delay notice due, else the next poll."""
        return self._next_wakeup

    async def drain(self) -> None:
        """Process until no job is due and nothing is in flight (tests call it instead of sleeping)."""
        while True:
            await self._leases()
            started = await self._fill()
            await self._sweep()
            await self._tell_delayed()
            if self._tasks:
                await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)
            elif not started:
                self._next_wakeup = await self._next_timer()
                return

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            if self._sweep_task is None or self._sweep_task.done():
                # Apart from dispatch: a slow storage delete never holds up new submissions.
                self._sweep_task = asyncio.create_task(self._sweep(), name="worker sweep")
            await self.run_pass()
            # Timers fire at their due time; the poll only catches changes made by another process (the CLI).
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, self._next_wakeup - self.clock()))
            except TimeoutError:
                pass

    async def run_pass(self) -> None:
        """One pass of the loop: leases, claims, delay notices, and when to look again (``next_wakeup``).

        A pass that finds the store unreachable says so once and sets the next one after a doubling pause;
        the first that gets through says delivery resumes.
        """
        try:
            await self._leases()
            await self._fill()
            await self._tell_delayed()
            self._next_wakeup = await self._next_timer()
        except StoreUnavailable as exc:
            self._next_wakeup = self.clock() + self._store_lost(exc)
        except Exception:
            log.exception("worker pass failed; trying again at the next wake-up")
            self._next_wakeup = self.clock() + self.delivery.poll_seconds
        else:
            self._store_back()

    def _store_lost(self, exc: StoreUnavailable) -> float:
        """A pass found the store unreachable: said once; the next pass comes after a doubling pause."""
        d = self.delivery
        if not self._store_down:
            log.error("worker: %s; delivery paused until the store answers again", exc)
        self._store_down += 1
        return doubling(min(1.0, d.poll_seconds), self._store_down - 1, max(d.poll_seconds, 60.0))

    def _store_back(self) -> None:
        if self._store_down:
            log.info("worker: the store answers again; delivery resumes")
            self._store_down = 0

    # -- leases ---------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Renew the leases of the jobs held (and this gateway's name) every third of ``delivery.lease_seconds``."""
        every = self.delivery.lease_seconds / 3
        while not self._heartbeat_stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._heartbeat_stop.wait(), every)
            if self._heartbeat_stop.is_set():
                return
            try:
                await self._renew(force=True)
            except Exception as exc:  # the store away: the passes say it, and renew once it is back
                log.debug("worker: leases not renewed: %s", exc)

    async def _renew(self, *, force: bool = False) -> None:
        """Renew the leases held, if a third of ``delivery.lease_seconds`` went by (by the clock) since."""
        lease = self.delivery.lease_seconds
        now = self.clock()
        if not force and now - self._renewed_at < lease / 3:
            return
        held, instance, token, shared = dict(self._held), self.instance, self._run_token, self._shared

        def renew(s: Store) -> tuple[list[str], bool]:
            lost = s.renew_leases(instance, held, now + lease) if held else []
            return lost, (s.instance_heartbeat(instance, token) if shared else True)

        lost, ours = await asyncio.shield(self.store.run(renew))
        self._renewed_at = now
        for job_id in lost:
            if self._held.pop(job_id, None) is not None:
                log.warning("job %s: lease lost: another instance took the job over", job_id, extra={"job_id": job_id})
        if not ours:
            log.error("worker: cluster.instance %r was taken over by another gateway (this one was presumed dead):"
                      " its leases are refused from now on", instance)  # fmt: skip

    async def _leases(self) -> None:
        """Renew this gateway's leases when due, then take over the jobs whose lease ran out elsewhere."""
        await self._renew()
        if self._stopping:
            return
        delivery = self.delivery
        if await self.store.run(lambda s: take_over_expired(s, delivery)):
            self._on_notice()  # an alert for each job made ambiguous
            self._on_submitted()  # a receipt on file may settle them

    async def _next_timer(self) -> float:
        """The earliest of the next poll, the next job due on a timer and the next delay notice due.

        A job due while none can start (submissions paused, every slot taken) does not count: a
        release is seen at the next poll, a freed slot wakes the loop.
        """
        now = self.clock()
        after = self.settings.notify.delay_notice_seconds
        blocked = self._config_hold or self.delivery.paused or len(self._tasks) >= self._limit

        def look(s: Store) -> list[float]:
            found = [None if blocked else s.next_attempt_at()]
            if after > 0 and (first := s.first_untold_delay()) is not None:
                found.append(first + after)
            return [t for t in found if t is not None]

        return min([now + self.delivery.poll_seconds, *await self.store.run(look)])

    async def _tell_delayed(self) -> None:
        """One "delayed" notice for each job still waiting ``notify.delay_notice_seconds`` after its mail came."""
        after = self.settings.notify.delay_notice_seconds
        if after <= 0 or self._stopping:
            return
        cutoff = self.clock() - after
        for job in await self.store.run(lambda s: s.jobs_to_tell_delayed(cutoff, 100)):
            cause = delay_of(job.state, job.hold_kind, job.next_attempt_at)
            await self._notice(job, NoticeKind.DELAYED, f"not sent after {duration(after)}: {DELAY_WORDS[cause]}",
                               code=cause)  # fmt: skip

    # -- dispatch -----------------------------------------------------------

    async def _fill(self) -> int:
        """Claim due jobs while slots are free; returns how many were started."""
        started = 0
        async with self._fill_lock:
            while not self._stopping and not self.delivery.paused:
                free = self._limit - len(self._tasks)
                if free <= 0:
                    break
                lease = self.delivery.lease_seconds
                now = self.clock()
                claim = _claim_due(now, free, self.instance, now + lease, self._plan)
                batch = await asyncio.shield(self.store.run(claim))
                self._saw_config_hold(batch.paused)
                for job, why in batch.left:
                    self._said(job, State.AMBIGUOUS, f"{why}; left for an operator", "left for an operator", True)
                if batch.left:
                    self._on_notice()
                for job, event in batch.claimed:
                    self._said(job, State.UPLOADING, job.reason, event, True)
                    self._held[job.id] = job.lease_token
                    task = asyncio.create_task(self._process(job), name=f"job {job.id}")
                    self._tasks.add(task)
                    task.add_done_callback(self._done)
                    started += 1
                if batch.paused or not (batch.claimed or batch.left):
                    break
        return started

    def _saw_config_hold(self, paused: bool) -> None:
        if self._config_hold and not paused:
            log.info("submissions resume: no job is held for a configuration error any more")
        self._config_hold = paused

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s: stopped by a fault in the gateway (the traceback follows)", task.get_name(), exc_info=exc)
        if not self._stopping:
            self.wake()  # a slot is free

    def _plan(self, job: Job) -> _Plan:
        """What claiming a due job does: why it starts and the event, or why it is left for an operator."""
        if job.state == State.AMBIGUOUS:
            reason = "no matching receipt within the grace period"
            if (why := self._leave_to_operator(job)) is not None:
                return _Plan(leave=f"{reason}{why}")
            of = f"{job.ambiguities} of {self.delivery.ambiguous_resubmits}"
            return _Plan(f"{reason}: submitting once more with the same reference (resubmission {of})", "resubmitting")
        return _Plan("storing the document", "uploading")

    def _leave_to_operator(self, job: Job) -> str | None:
        """Why an ambiguous job past its grace goes to an operator instead of out again (None: resubmit).

        A resubmission is safe only if a receipt would have been seen: the gateway
        listened for the whole grace period (not recovered at start-up, not
        stopped meanwhile: ``grace_unwatched``), and it is one of at most
        ``delivery.ambiguous_resubmits`` (each ambiguous answer counts, each with the same reference).
        """
        d = self.delivery
        if d.ambiguous_action != "resubmit":
            return ""
        if job.grace_unwatched and d.ambiguous_unwatched_action == "operator":
            return ", but the gateway was down for part of it: a receipt may have been missed"
        if job.ambiguities > d.ambiguous_resubmits:
            return f" after {d.ambiguous_resubmits} resubmission{'s' if d.ambiguous_resubmits != 1 else ''}"
        return None

    # -- one job --------------------------------------------------------------

    async def _process(self, job: Job) -> None:
        try:
            await self._work(job)
        finally:
            self._held.pop(job.id, None)

    async def _work(self, job: Job) -> None:
        sent = False
        try:
            key, message = await self._upload(job)
            url = await self.storage.url(key)
            if not await self._record(job, State.SUBMITTING, "sending to the provider", expect=[State.UPLOADING],
                                      submitted_at=self.clock()):  # fmt: skip
                return  # moved meanwhile (cancelled by an operator)
            sent = True
            accuse = accuse_email_for(self.settings, job, message)
            accepted = await self.provider.submit(Submission(job.id, job.number, url, accuse))
        except Retry as exc:
            await self._retry(job, exc.reason, sent)
        except FileNotFoundError:
            missing = "the document is missing from the spool"
            await self._record(job, State.QUARANTINED, missing, notices=[(alert("quarantined"), missing, "")])
        except (PermanentFailure, Hold, Ambiguous) as exc:
            await self._settle(job, exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s: a fault in the gateway", job.id, extra={"job_id": job.id})
            if sent:
                await self._settle(job, Ambiguous("a fault in the gateway during the submission (see the log)"))
            else:
                await self._retry(job, "a fault in the gateway (see the log)", sent)
        else:
            await self._accepted(job, accepted)

    async def _upload(self, job: Job) -> tuple[str, Row]:
        """Store the message's document once for all its jobs; returns the key and the message."""
        message_id = job.message_id
        lock = self._upload_locks.setdefault(message_id, asyncio.Lock())
        async with lock:
            row = await self.store.run(lambda s: s.message(message_id))
            if row is None:
                raise FileNotFoundError(message_id)
            key = str(row["upload_key"])
            deleted = row["object_deleted_at"] > 0  # a final job queued again by an operator
            if key and row["uploaded_at"] > 0 and not deleted:
                return key, row
            if not key or deleted:
                # The key is recorded before the upload: a crash mid-upload reuses it (no orphan object).
                key = self.storage.new_key()
                await self.store.run(lambda s: s.update_message(message_id, upload_key=key, object_deleted_at=0))
            data = await asyncio.to_thread(self.spool.read, message_id, FAX_NAME)
            await self.storage.put(key, data, content_type(data))
            now = self.clock()
            await self.store.run(lambda s: s.update_message(message_id, uploaded_at=now))
            log.info("job %s: document stored (message %s)", job.id, message_id, extra={"job_id": job.id})
            return key, row

    # -- outcomes -------------------------------------------------------------

    async def _accepted(self, job: Job, accepted: Accepted) -> None:
        ref = accepted.ref_accuse
        reason = f"accepted by the provider (code {accepted.code}, reference {ref})"
        if await self._record(job, State.SUBMITTED, reason, expect=[State.SUBMITTING], provider_ref=ref):
            self._on_submitted()  # a receipt that came before this answer is applied by the receipt stage

    async def _settle(self, job: Job, exc: PermanentFailure | Hold | Ambiguous) -> None:
        reason = exc.reason  # words for a person; the provider code is in them
        if isinstance(exc, PermanentFailure):
            notices: list[_Notice] = [(NoticeKind.FAILED, reason, exc.code)]
            if exc.bug_alert:
                notices.append((alert("bug"), f"the gateway should have refused this document: {reason}", ""))
            await self._record(job, State.FAILED, reason, notices=notices)
        elif isinstance(exc, Hold):
            timed = exc.kind in TIMED_HOLDS
            retry_at = self.clock() + self.delivery.credit_retry_seconds if timed else 0.0
            what = "retried automatically" if timed else "submissions paused" if exc.kind == HoldKind.CONFIG else ""
            held = f"{reason}; {what}" if what else reason
            notices = [(HOLD_ALERTS[exc.kind], reason, "")]
            if exc.kind == HoldKind.CREDIT:
                delayed = "the fax service account needs credit; the fax will be sent later"
                notices.append((NoticeKind.DELAYED, delayed, Delay.CREDIT))
            await self._record(job, State.HELD, held, hold_kind=str(exc.kind), next_attempt_at=retry_at,
                               notices=notices)  # fmt: skip
        else:
            grace = self.delivery.ambiguous_grace_seconds
            kind = alert("ambiguous") if job.ambiguities == 0 else alert("ambiguous-again")
            # A grace period that starts now, watched by this run (a restart marks it unwatched).
            if await self._record(job, State.AMBIGUOUS, f"outcome unknown: {reason}; waiting for a matching receipt",
                                  ambiguities=job.ambiguities + 1, next_attempt_at=self.clock() + grace,
                                  grace_unwatched=0, notices=[(kind, reason, "")]):  # fmt: skip
                self._on_submitted()  # a receipt already on file may resolve it (the receipt stage decides)

    async def _retry(self, job: Job, reason: str, sent: bool) -> None:
        """The step surely did not happen: defer with backoff, or fail past the queue lifetime."""
        d = self.delivery
        now = self.clock()
        give_up_at = job.created_at + d.max_queue_lifetime_seconds
        expect = [State.SUBMITTING if sent else State.UPLOADING]
        if now >= give_up_at:
            failed = f"could not be sent within {duration(d.max_queue_lifetime_seconds)}; last error: {reason}"
            await self._record(job, State.FAILED, failed, expect=expect,
                               notices=[(NoticeKind.FAILED, failed, Ending.EXPIRED)])  # fmt: skip
            return
        delay = jittered(doubling(d.min_backoff_seconds, job.attempts - 1, d.max_backoff_seconds))
        retry_at = min(now + delay, give_up_at)
        await self._record(job, State.DEFERRED, f"{reason}; next try in {duration(retry_at - now)}",
                           expect=expect, next_attempt_at=retry_at)  # fmt: skip

    # -- store ----------------------------------------------------------------

    async def _record(self, job: Job, state: State, reason: str, *, expect: list[State] | None = None,
                      event: str | None = None, notices: Sequence[_Notice] = (),
                      **columns: object) -> bool:  # fmt: skip
        """One state change under the job's lease, with the notices it queues, in one transaction;
        shielded: a stop never cancels a state write half-way. Refused once the lease token moved on."""
        allowed = [State.SUBMITTING, State.UPLOADING] if expect is None else expect
        token = job.lease_token

        def write(s: Store) -> bool | None:
            with s.transaction():
                if s.transition(job.id, state, reason, expect=allowed, event=event, token=token, **columns):
                    for kind, detail, code in notices:
                        s.queue_notice(job.id, kind, detail, code=code)
                    return True
            return None if not s.lease_held(job.id, token) else False

        changed = await asyncio.shield(self.store.run(write))
        if changed is None:
            self._held.pop(job.id, None)
            log.warning("job %s: lease lost: another instance took the job over; %s not recorded", job.id,
                        event or state, extra={"job_id": job.id})  # fmt: skip
            return False
        self._said(job, state, reason, event, changed)
        if changed and notices:
            self._on_notice()
        return changed

    def _said(self, job: Job, state: State, reason: str, event: str | None, changed: bool) -> None:
        level = logging.WARNING if not changed or state in _WARNED else logging.INFO
        note = "" if changed else " (not recorded: the job moved meanwhile)"
        head = str(event or state)
        said = reason if head in reason else f"{head}: {reason}"  # each phrase once
        log.log(level, "job %s: %s%s", job.id, said, note, extra={"job_id": job.id})

    async def _notice(self, job: Job, kind: str, detail: str, *, code: str = "") -> None:
        """Queue a notice; ``code`` is the provider's answer code it tells of, for the mail's own language."""
        await asyncio.shield(self.store.run(lambda s: s.queue_notice(job.id, kind, detail, code=code)))
        self._on_notice()

    async def _sweep(self) -> None:
        """Delete stored documents once every job of their message is final (after keep_days)."""
        try:
            await self._sweep_once()
        except Exception:
            log.exception("deleting finished documents failed; trying again at the next wake-up")

    async def _sweep_once(self) -> None:
        now = self.clock()
        keep = self.settings.storage.keep_days * 86400.0
        async with self._sweep_lock:
            for message_id, key in await self.store.run(lambda s: s.finished_uploads(now - keep)):
                try:
                    await self.storage.delete(key)
                except Retry as exc:
                    log.warning("message %s: document not deleted yet: %s", message_id, exc.reason)
                    continue
                await self.store.run(_mark_deleted(message_id, now))
                self._upload_locks.pop(message_id, None)
                log.info("message %s: stored document deleted", message_id)


def _mark_deleted(message_id: str, now: float) -> Callable[[Store], None]:
    return lambda s: s.update_message(message_id, object_deleted_at=now)


def duration(seconds: float) -> str:
    """``2 days``, ``5 hours``, ``17 minutes``: words for a delay."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = round(seconds / size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{round(seconds)} seconds"




# A notice a state change queues: (kind, detail, the answer code it tells of or "").
_Notice = tuple[str, str, str]
# The errors of a store that cannot be reached (the worker says them once and waits).
_STORE_FAULTS: tuple[type[Exception], ...] = (StoreUnavailable, OSError)


@dataclass(frozen=True)
class _Plan:
    """What claiming a due job does: start it (``reason``, ``event``), or leave it for an operator (``leave``)."""

    reason: str = ""
    event: str = ""
    leave: str = ""


@dataclass
class _Batch:
    """What one claim found: the jobs claimed, those left for an operator (with why), whether submissions
    are paused, and how many due jobs it saw."""

    claimed: list[tuple[Job, str]] = field(default_factory=list)
    left: list[tuple[Job, str]] = field(default_factory=list)
    paused: bool = False


def _claim_due(now: float, limit: int, owner: str, expires_at: float,
               plan: Callable[[Job], _Plan]) -> Callable[[Store], _Batch]:  # fmt: skip
    """One transaction: the jobs due now claimed for ``owner`` (rows another gateway is claiming passed over,
    PostgreSQL), ambiguous ones past their grace left for an operator where ``plan`` says so; nothing while a
    job is held for a configuration error (submissions are paused)."""

    def claim(s: Store) -> _Batch:
        batch = _Batch()
        with s.transaction():
            if s.has_held(HoldKind.CONFIG):
                batch.paused = True
                return batch
            for job in s.due_for_delivery(now, limit):
                p = plan(job)
                if p.leave:
                    left = f"{p.leave}; left for an operator"
                    if s.transition(job.id, State.AMBIGUOUS, left, expect=[State.AMBIGUOUS],
                                    event="left for an operator", next_attempt_at=0):  # fmt: skip
                        s.queue_notice(job.id, alert("ambiguous-operator"),
                                       f"{p.leave}; resolve it with fax-gateway resolve")  # fmt: skip
                        # The sender's one delayed notice, at once: a person now decides whether the fax went out.
                        s.queue_notice(job.id, NoticeKind.DELAYED, CHECKING, code=Delay.OPERATOR)
                        batch.left.append((job, p.leave))
                elif (claimed := s.claim_job(job, owner, expires_at, p.reason, p.event, attempts=job.attempts + 1,
                                             hold_kind="", next_attempt_at=0)) is not None:  # fmt: skip
                    batch.claimed.append((claimed, p.event))
        return batch

    return claim


def _gone(row: Instance) -> bool:
    """Whether the run behind ``row`` surely ended: it ran on this host, as a process that is gone
    (or as this very process number: a container started again)."""
    if row.host != socket.gethostname():
        return False
    if row.pid == os.getpid() or row.pid <= 0:
        return True
    try:
        os.kill(row.pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _name_taken(instance: str, other: Instance, now: float) -> str:
    ago = max(0, round(now - other.heartbeat_at))
    return (f"cluster.instance {instance!r} is the name of another gateway that is alive (on {other.host!r},"
            f" process {other.pid}, last heard from {ago} s ago): give each gateway sharing the store its own"
            " cluster.instance (the default is the host name)")  # fmt: skip


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
