"""Operator actions on jobs: show, retry, cancel, release, resolve.

Kept apart from the command line (:mod:`gateway.ops.jobs` parses and prints)
so that every way of acting on a job runs this same code and leaves the same
timeline. In: a :class:`~gateway.store.Store` (the CLI opens the daemon's own store file;
WAL lets both run at once) and a job id. Out: plain data for the CLI to print,
or :class:`AdminError` saying why the action does not apply. Every change goes
through :meth:`Store.transition` with ``expect``: an atomic move from the
states the action applies to, so a job the daemon is working on at that
moment is never taken from under it, and every action is a timeline event
(``operator: ...``) whose detail says who: "the operator" from the command
line, or the name the web console passes as ``actor``. The daemon's worker picks up re-queued jobs on its timer
(``delivery.poll_seconds``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from gateway.store import FINAL_STATES, Ending, Job, NoticeKind, State, Store


class AdminError(Exception):
    """The action does not apply; the message says why and what to do instead."""


# Which states each action moves a job from.
RETRYABLE = (State.FAILED, State.HELD, State.DEFERRED, State.QUARANTINED)
CANCELLABLE = (State.QUEUED, State.DEFERRED, State.HELD, State.QUARANTINED, State.AMBIGUOUS)

_WHY_NOT = {
    State.UPLOADING: "the daemon is working on it right now; try again in a moment",
    State.SUBMITTING: "the daemon is submitting it right now; try again in a moment",
    State.SUBMITTED: "the provider has it already; its receipt will settle it",
    State.AMBIGUOUS: (
        "the provider may have it: check the provider's account, then 'resolve --sent' or 'resolve --not-sent'"
    ),
    State.DELIVERED: "it was delivered",
    State.CANCELLED: "it was cancelled",
    State.QUEUED: "it is queued already",
}


def _by(actor: str) -> str:
    """Who acted, as the timeline says it: the operator (the command line), or the console's user."""
    return f"the operator {actor}" if actor else "the operator"


def _job(store: Store, job_id: str) -> Job:
    job = store.get_job(job_id)
    if job is None:
        raise AdminError(f"no job {job_id!r}")
    return job


def _refuse(job: Job, action: str) -> AdminError:
    why = _WHY_NOT.get(job.state, f"it is {job.state}")
    return AdminError(f"cannot {action} job {job.id} ({job.state}): {why}")


def job_dict(job: Job) -> dict[str, Any]:
    """A job as plain data; without ``ar_token`` (it names the job's AR mailbox)."""
    data = asdict(job)
    data.pop("ar_token", None)
    return data


def check_states(states: Sequence[str]) -> None:
    """Refuse a state name that is not one (the ``jobs --state`` filter)."""
    for s in states:
        if s not in {str(x) for x in State}:
            raise AdminError(f"unknown state {s!r} (one of: {', '.join(str(x) for x in State)})")


def show(store: Store, job_id: str) -> dict[str, Any]:
    """Everything known about one job: the job, its message, the timeline, receipts, notices."""
    job = _job(store, job_id)
    message = store.message(job.message_id)
    msg: dict[str, Any] = {}
    if message is not None:
        msg = {k: message[k] for k in message.keys()}
        for k in ("documents", "skipped"):
            try:
                msg[k] = json.loads(msg[k])
            except (TypeError, ValueError):
                pass
    detail = job_dict(job)
    return {
        "job": detail,
        "message": msg,
        "siblings": [j.id for j in store.jobs_of_message(job.message_id) if j.id != job.id],
        "timeline": [dict(at=r["at"], kind=r["kind"], detail=r["detail"]) for r in store.timeline(job.id)],
        "receipts": store.receipts_of_job(job.id),
        "notifications": store.notices_of_job(job.id),
    }


def _act(
    store: Store,
    job_id: str,
    action: str,
    allowed: Sequence[State],
    change: Callable[[Job], bool],
    *,
    only: str = "",
) -> Job:
    """Apply ``change`` (in one transaction) to a job in one of the ``allowed`` states; the job after it.

    ``change`` returns whether the job moved: it did not when the daemon took
    it meanwhile, and the refusal then names the state it is in now. ``only``
    words the refusal of a job in another state (default: why that state).
    """
    job = _job(store, job_id)
    if job.state not in allowed:
        if only:
            raise AdminError(f"cannot {action} job {job.id} ({job.state}): only {only}")
        raise _refuse(job, action)
    with store.transaction():
        moved = change(job)
    if not moved:
        raise _refuse(_job(store, job_id), action)
    return _job(store, job_id)


def _requeue(store: Store, job: Job, actor: str = "") -> bool:
    moved = store.transition(
        job.id,
        State.QUEUED,
        f"retry requested by {_by(actor)} (was {job.state}: {job.reason})",
        expect=[job.state],
        event="operator: retry",
        next_attempt_at=0,
        final_at=0,
        recoveries=0,
        receipt_code="",
        hold_kind="",
    )
    message = store.message(job.message_id)
    if moved and message is not None and message["object_deleted_at"]:
        # The uploaded copy is gone (cleanup after the final state): upload again.
        store.update_message(job.message_id, upload_key="", uploaded_at=0, object_deleted_at=0)
    return moved


def _cancel(store: Store, job: Job, actor: str = "") -> bool:
    moved = store.transition(
        job.id, State.CANCELLED, f"cancelled by {_by(actor)}", expect=[job.state], event="operator: cancel"
    )
    if moved:
        store.queue_notice(job.id, NoticeKind.FAILED, "cancelled by the gateway's administrator; the fax was not sent",
                           code=Ending.CANCELLED)
    return moved


def retry(store: Store, job_id: str, *, actor: str = "") -> Job:
    """Queue a failed, held, deferred or quarantined job for a fresh attempt now."""
    return _act(store, job_id, "retry", RETRYABLE, lambda job: _requeue(store, job, actor))


def cancel(store: Store, job_id: str, *, actor: str = "") -> Job:
    """Give up on a job that is not with the provider; the sender is told."""
    return _act(store, job_id, "cancel", CANCELLABLE, lambda job: _cancel(store, job, actor))


def release(store: Store, job_ids: Sequence[str] = (), *, actor: str = "") -> list[Job]:
    """Queue held jobs again (after a configuration or credit fix): the given ones, or all."""
    if job_ids:
        jobs = [_job(store, j) for j in job_ids]
        for job in jobs:
            if job.state != State.HELD:
                raise AdminError(f"cannot release job {job.id} ({job.state}): only held jobs are released")
    else:
        jobs = store.list_jobs(states=[State.HELD], limit=1_000_000)
    released = []
    for job in jobs:
        if store.transition(
            job.id,
            State.QUEUED,
            f"released by {_by(actor)} (was held: {job.reason})",
            expect=[State.HELD],
            event="operator: release",
            next_attempt_at=0,
            hold_kind="",
        ):
            released.append(_job(store, job.id))
    return released


def resolve(store: Store, job_id: str, *, sent: bool, actor: str = "") -> Job:
    """Settle an ambiguous job from the provider's records.

    ``sent``: the provider's account shows the fax went through; the job is
    delivered and the sender told. Not sent: the job is queued for one
    submission with the same reference.
    """

    def settle(job: Job) -> bool:
        if not sent:
            return store.transition(
                job.id,
                State.QUEUED,
                f"{_by(actor)} confirmed from the provider's records that the fax was not sent",
                expect=[State.AMBIGUOUS],
                event="operator: resolve --not-sent",
                next_attempt_at=0,
            )
        moved = store.transition(
            job.id,
            State.DELIVERED,
            f"{_by(actor)} confirmed from the provider's records that the fax was sent",
            expect=[State.AMBIGUOUS],
            event="operator: resolve --sent",
        )
        if moved:
            store.queue_notice(job.id, NoticeKind.DELIVERED, "confirmed by the gateway's administrator")
        return moved

    return _act(store, job_id, "resolve", [State.AMBIGUOUS], settle, only="ambiguous jobs are resolved")


def summary(store: Store) -> dict[str, int]:
    counts = store.count_by_state()
    return {str(s): counts.get(str(s), 0) for s in State}


def is_final(job: Job) -> bool:
    return job.state in FINAL_STATES
