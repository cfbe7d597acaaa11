"""Job states: what a job is doing or how it ended.

In: nothing (pure). Out: :class:`State` (the value stored in ``jobs.state``),
the final states a job never leaves by itself, the in-flight states found
mid-step after a crash, the states a job waits in, and :class:`Delay`, why a job is not final yet (what
a "delayed" notice records and says).
"""

from __future__ import annotations

import enum

from gateway.outcomes import HoldKind


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
# States a job waits in before it is sent (not final, not on its way): one told "delayed" after a while.
WAITING_STATES = frozenset({State.QUEUED, State.DEFERRED, State.HELD, State.AMBIGUOUS, State.QUARANTINED})


class Delay(enum.StrEnum):
    """Why a job is not final yet: the cause a "delayed" notice records and gives."""

    CREDIT = "credit"  # held: the fax account needs credit
    RETRY = "retry"  # deferred: the provider or the storage could not be reached
    OPERATOR = "operator"  # held for the configuration or the document URL, left after unclear answers, quarantined
    CHECKING = "checking"  # an unclear answer: waiting for a receipt before trying again
    WAITING = "waiting"  # queued, or on its way


class Ending(enum.StrEnum):
    """Why a job failed when no provider answer or receipt says it: the cause a "failed" notice records."""

    EXPIRED = "expired"  # not sent within delivery.max_queue_lifetime_seconds
    CANCELLED = "cancelled"  # by the administrator
    REFUSED = "refused"  # accepted with refusals = "mail": the document cannot be faxed ("refused:<reason>")


def delay_of(state: State, hold_kind: str, next_attempt_at: float) -> Delay:
    """Why a job in ``state`` waits (an ambiguous job with no next attempt is left for an operator)."""
    if state == State.HELD:
        return Delay.CREDIT if hold_kind == HoldKind.CREDIT else Delay.OPERATOR
    if state == State.QUARANTINED or (state == State.AMBIGUOUS and not next_attempt_at):
        return Delay.OPERATOR
    if state == State.AMBIGUOUS:
        return Delay.CHECKING
    if state == State.DEFERRED:
        return Delay.RETRY
    return Delay.WAITING
