"""Start-up recovery: what a crash (kill -9, power loss) left mid-step, made readable again.

In: the job store as the last run left it. Out: every job in a state a person
can read, each change on its timeline. ``submitting`` may have reached the
provider, so it becomes ``ambiguous`` (never resent at once); ``uploading``
surely did not, so it is queued again; a job found mid-step too often is
quarantined instead of looping. A restart is how a configuration fix is
applied, so jobs held for configuration resume. A receipt recorded before the
crash for a job now ambiguous is the receipt stage's to apply (it looks at
start-up); recovery only writes state.

A receipt sent while the gateway was down is lost (unless it also comes by
mail: ``provider.accuse_email = "gateway"``), so an ambiguous job whose grace
period the gateway did not watch whole (found ``submitting`` now, or already
ambiguous: the daemon stopped during its grace) is marked ``grace_unwatched``;
the worker leaves it to an operator instead of resubmitting it
(``delivery.ambiguous_unwatched_action``).
"""

from __future__ import annotations

import logging
import math

from gateway.outcomes import HoldKind
from gateway.settings import DeliverySettings
from gateway.store import State, Store, alert

log = logging.getLogger("gateway.worker")

_UNWATCHED = "the gateway was down during the grace period: a receipt sent meanwhile may have been missed"


def recover(store: Store, delivery: DeliverySettings) -> list[str]:
    """At start-up: resolve jobs a crash left mid-step, and release configuration holds.

    ``submitting`` may have reached the provider: ambiguous. ``uploading``: queued
    again. A job recovered more than ``max_recoveries`` times is quarantined.
    A restart is how a configuration fix is applied, so config holds resume.
    Returns the jobs recovered as ambiguous.
    """
    ambiguous: list[str] = []
    now, max_recoveries, grace = store.clock(), delivery.max_recoveries, delivery.ambiguous_grace_seconds
    for job_id in store.mark_grace_unwatched(_UNWATCHED):
        log.warning("job %s: ambiguous, and the gateway was down during its grace period", job_id,
                    extra={"job_id": job_id})  # fmt: skip
    while stuck := store.due_jobs([State.SUBMITTING, State.UPLOADING], math.inf, limit=500):
        for job in stuck:
            count = job.recoveries + 1
            sent = job.state == State.SUBMITTING
            step = "during submission (the provider may have received it)" if sent else "while storing the document"
            if count > max_recoveries:
                reason = f"interrupted {step}; found mid-step at start-up {count} times"
                store.transition(job.id, State.QUARANTINED, reason, expect=[job.state], recoveries=count)
                store.queue_notice(job.id, alert("quarantined"), reason)
            elif sent:
                store.transition(job.id, State.AMBIGUOUS, f"interrupted {step}; waiting for a matching receipt",
                                 expect=[State.SUBMITTING], event="recovered", recoveries=count,
                                 ambiguities=job.ambiguities + 1, next_attempt_at=now + grace,
                                 grace_unwatched=1)  # fmt: skip
                kind = alert("ambiguous") if job.ambiguities == 0 else alert("ambiguous-again")
                store.queue_notice(job.id, kind, f"interrupted {step}; waiting for a matching receipt")
                ambiguous.append(job.id)
            else:
                store.transition(job.id, State.QUEUED, f"interrupted {step}", expect=[State.UPLOADING],
                                 event="recovered", recoveries=count)  # fmt: skip
            log.warning("job %s: recovered at start-up: interrupted %s", job.id, step, extra={"job_id": job.id})
    with store.transaction():
        held = store.held_job_ids(HoldKind.CONFIG)
        for job_id in held:
            store.transition(job_id, State.QUEUED, "released at start-up (configuration reloaded)",
                             expect=[State.HELD], event="released", hold_kind="")  # fmt: skip
    for job_id in held:
        log.info("job %s: released at start-up", job_id, extra={"job_id": job_id})
    return ambiguous
