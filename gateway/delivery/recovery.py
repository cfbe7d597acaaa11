"""Recovery: what a crash (kill -9, power loss) or a dead instance left mid-step, made readable again.

In: the job store as the last run left it, or jobs whose lease ran out (the
gateway working on them died, or lost the store for longer than
``delivery.lease_seconds``). Out: every job in a state a person can read, each
change on its timeline. ``submitting`` may have reached the provider, so it
becomes ``ambiguous`` (never resent at once); ``uploading`` surely did not, so
it is queued again; a job found mid-step too often is quarantined instead of
looping. A restart is how a configuration fix is applied, so jobs held for
configuration resume. A receipt recorded before the crash for a job now
ambiguous is the receipt stage's to apply (it looks at start-up); recovery only
writes state.

With one gateway (SQLite), start-up recovers every job found mid-step. On a
store several gateways share (PostgreSQL), start-up takes only the jobs whose
lease ran out and those leased under this gateway's own name (its previous
run's), never those another live gateway is working on; and every worker pass
takes over the jobs whose lease ran out (:func:`take_over_expired`). Each such
move adds one to the job's lease token, so the old owner's later writes are
refused.

A receipt sent while the gateway was down is lost (unless it also comes by
mail: ``provider.accuse_email = "gateway"``), so an ambiguous job whose grace
period the gateway did not watch whole (found ``submitting`` now, or already
ambiguous: the daemon stopped during its grace, and no other gateway was alive)
is marked ``grace_unwatched``; the worker leaves it to an operator instead of
resubmitting it (``delivery.ambiguous_unwatched_action``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from gateway.outcomes import HoldKind
from gateway.settings import DeliverySettings
from gateway.store import Job, State, Store, alert

log = logging.getLogger("gateway.worker")

_UNWATCHED = "the gateway was down during the grace period: a receipt sent meanwhile may have been missed"


def recover(store: Store, delivery: DeliverySettings, *, instance: str = "") -> list[str]:
    """At start-up: resolve jobs a crash left mid-step, and release configuration holds.

    ``submitting`` may have reached the provider: ambiguous. ``uploading``: queued
    again. A job recovered more than ``max_recoveries`` times is quarantined.
    A restart is how a configuration fix is applied, so config holds resume.
    On a shared store, only the jobs whose lease ran out or that ``instance`` held.
    Returns the jobs recovered as ambiguous.
    """
    now = store.clock()
    watched = store.shared and any(
        name != instance for name in store.live_instances(now - delivery.lease_seconds)
    )  # another gateway was alive: it took the receipts meanwhile
    if not watched:
        for job_id in store.mark_grace_unwatched(_UNWATCHED):
            log.warning("job %s: ambiguous, and the gateway was down during its grace period", job_id,
                        extra={"job_id": job_id})  # fmt: skip
    if store.shared:
        ambiguous = _recover_in_flight(store, delivery, now, owner=instance)
    else:
        ambiguous = _recover_in_flight(store, delivery, math.inf)
    with store.transaction():
        held = store.held_job_ids(HoldKind.CONFIG)
        for job_id in held:
            store.transition(job_id, State.QUEUED, "released at start-up (configuration reloaded)",
                             expect=[State.HELD], event="released", hold_kind="")  # fmt: skip
    for job_id in held:
        log.info("job %s: released at start-up", job_id, extra={"job_id": job_id})
    return ambiguous


def take_over_expired(store: Store, delivery: DeliverySettings) -> list[str]:
    """Jobs whose lease ran out (their gateway died or lost the store): moved as start-up recovery does,
    by whichever gateway looks first. Returns the jobs now ambiguous."""
    return _recover_in_flight(store, delivery, store.clock(), at_start=False)


def _recover_in_flight(store: Store, delivery: DeliverySettings, now: float, *, owner: str | None = None,
                       at_start: bool = True) -> list[str]:  # fmt: skip
    ambiguous: list[str] = []
    max_recoveries, grace = delivery.max_recoveries, delivery.ambiguous_grace_seconds
    done: set[str] = set()
    while True:
        with store.transaction():  # the rows stay locked (PostgreSQL): two gateways never move one job twice
            stuck = [job for job in store.expired_leases(now, 500, owner=owner) if job.id not in done]
            for job in stuck:
                done.add(job.id)
                if _recover_one(store, job, max_recoveries, grace, at_start):
                    ambiguous.append(job.id)
        if not stuck:
            return ambiguous


def _recover_one(store: Store, job: Job, max_recoveries: int, grace: float, at_start: bool) -> bool:
    """Move one job found mid-step; returns whether it is now ambiguous."""
    count = job.recoveries + 1
    sent = job.state == State.SUBMITTING
    step = "during submission (the provider may have received it)" if sent else "while storing the document"
    if at_start:
        cause, found = "interrupted", "found mid-step at start-up"
    else:
        who = f"gateway {job.lease_owner!r}" if job.lease_owner else "its gateway"
        cause, found = f"left by {who}, whose lease ran out,", "found mid-step"
    # Under the token seen, and one higher after it: the old owner's writes are refused from now on.
    fence: dict[str, Any] = {"token": job.lease_token, "lease_token": job.lease_token + 1}
    now_ambiguous = False
    if count > max_recoveries:
        reason = f"{cause} {step}; {found} {count} times"
        if store.transition(job.id, State.QUARANTINED, reason, expect=[job.state], recoveries=count, **fence):
            store.queue_notice(job.id, alert("quarantined"), reason)
    elif sent:
        reason = f"{cause} {step}; waiting for a matching receipt"
        if store.transition(job.id, State.AMBIGUOUS, reason, expect=[State.SUBMITTING], event="recovered",
                            recoveries=count, ambiguities=job.ambiguities + 1,
                            next_attempt_at=store.clock() + grace, grace_unwatched=1, **fence):  # fmt: skip
            kind = alert("ambiguous") if job.ambiguities == 0 else alert("ambiguous-again")
            store.queue_notice(job.id, kind, reason)
            now_ambiguous = True
    else:
        store.transition(job.id, State.QUEUED, f"{cause} {step}", expect=[State.UPLOADING], event="recovered",
                         recoveries=count, **fence)  # fmt: skip
    where = "at start-up" if at_start else "after its lease ran out"
    log.warning("job %s: recovered %s: %s %s", job.id, where, cause, step, extra={"job_id": job.id})
    return now_ambiguous
