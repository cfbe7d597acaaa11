"""Job states: what a job is doing or how it ended.

In: nothing (pure). Out: :class:`State` (the value stored in ``jobs.state``),
the final states a job never leaves by itself, and the in-flight states found
mid-step after a crash.
"""

from __future__ import annotations

import enum


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
