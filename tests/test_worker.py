"""The worker against real parts: the provider simulator over HTTP, local and S3 storage.

Every answer of the provider's table and every transport fault ends in the
state, reason, timeline and notices the delivery contract gives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.daemon.metrics import MeteredProvider, Metrics
from gateway.delivery.provider import ProviderClient
from gateway.delivery.simulator import ProviderSimulator
from gateway.delivery.worker import CHECKING
from gateway.outcomes import Accepted, DeliveryOutcome, Submission
from gateway.store import State
from tests.support_clock import FakeClock
from tests.support_delivery import Delivery
from tests.support_net import free_port
from tests.support_s3 import S3
from tests.support_settings import SettingsFactory, deep_merge
from tests.support_simulator import SIM_PASSWORD, SimFactory, provider_env, provider_table

DeliveryFactory = Callable[..., Coroutine[Any, Any, tuple[Delivery, ProviderSimulator]]]

DELIVERY = {
    "min_backoff_seconds": 10.0,
    "max_backoff_seconds": 100.0,
    "max_queue_lifetime_seconds": 1000.0,
    "credit_retry_seconds": 50.0,
    "ambiguous_grace_seconds": 30.0,
    "poll_seconds": 60.0,
}


@pytest.fixture
async def make_delivery(make_settings: SettingsFactory, sim_factory: SimFactory) -> AsyncIterator[DeliveryFactory]:
    started: list[Delivery] = []

    async def factory(table: dict[str, Any] | None = None, *, start_worker: bool = True,
                      sim: dict[str, Any] | None = None) -> tuple[Delivery, ProviderSimulator]:  # fmt: skip
        simulator = await sim_factory(**(sim or {}))
        port = free_port()
        base = {
            "http": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"},
            "delivery": DELIVERY,
            "provider": {"total_timeout": 2.0, "concurrency": 2},
        }
        settings = make_settings(deep_merge(deep_merge(base, provider_table(simulator)), table or {}), provider_env())
        d = Delivery(settings, FakeClock())
        await d.start(worker=start_worker)
        started.append(d)
        return d, simulator

    try:
        yield factory
    finally:
        for d in started:
            await d.stop()


def kinds(events: list[tuple[str, str]]) -> list[str]:
    return [k for k, _ in events]


# -- 113 ----------------------------------------------------------------------


async def test_a_job_reaches_submitted_with_one_request_and_a_downloadable_url(make_delivery: DeliveryFactory) -> None:
    d, sim = await make_delivery()
    (job_id,) = await d.spool_message()
    await d.drain()
    job = await d.job(job_id)
    assert job.state == State.SUBMITTED
    assert len(sim.requests) == 1
    params = sim.requests[0].params
    assert params["ref"] == job_id and params["ref_accuse"] == "1" and params["fax"] == "0145678900"
    assert sim.requests[0].answer == f"113-{job.provider_ref}"
    assert urlsplit(params["url"]).path == f"/documents/{job.upload_key}"
    assert kinds(await d.events(job_id)) == ["accepted", "uploading", "submitting", "submitted"]
    assert job.attempts == 1 and job.submitted_at == d.clock.now


async def test_jobs_of_one_message_share_one_upload_deleted_once_all_are_final(
    make_delivery: DeliveryFactory, s3: S3
) -> None:
    d, sim = await make_delivery(s3.table())
    jobs = await d.spool_message("+33145678900", "+33145678901", "+33145678902")
    await d.drain()
    assert [(await d.job(j)).state for j in jobs] == [State.SUBMITTED] * 3
    keys = s3.keys()
    assert len(keys) == 1 and keys[0].startswith("fax/")
    assert {urlsplit(r.params["url"]).path for r in sim.requests} == {f"/{'fax-documents'}/{keys[0]}"}
    await d.store.run(lambda s: [s.transition(j, State.DELIVERED, "receipt 0") for j in jobs[:2]])
    await d.drain()
    assert s3.keys() == keys  # one job still open
    await d.store.run(lambda s: s.transition(jobs[2], State.FAILED, "receipt 31083"))
    await d.drain()
    assert s3.keys() == []
    message_id = (await d.job(jobs[0])).message_id
    message = await d.store.run(lambda s: s.message(message_id))
    assert message is not None and message["object_deleted_at"] == d.clock.now


async def test_presigned_url_arrives_intact_and_the_simulator_downloads_it(
    make_delivery: DeliveryFactory, s3: S3
) -> None:
    d, sim = await make_delivery(s3.table(presign_seconds=3600))
    (job_id,) = await d.spool_message()
    await d.drain()
    assert (await d.job(job_id)).state == State.SUBMITTED  # 113 means the simulator downloaded a real PDF
    url = sim.requests[0].params["url"]
    assert "X-Amz-Signature=" in url and "X-Amz-Credential=" in url and "&" in url and "%2F" in url
    assert url.startswith(s3.endpoint)


async def test_plus_number_arrives_intact_in_e164(make_delivery: DeliveryFactory) -> None:
    d, sim = await make_delivery({"numbers": {"wire_format": "e164"}})
    (job_id,) = await d.spool_message("+33145678900")
    await d.drain()
    assert sim.requests[0].params["fax"] == "+33145678900"
    assert (await d.job(job_id)).state == State.SUBMITTED


# -- permanent failures ---------------------------------------------------------


@pytest.mark.parametrize(("code", "bug"), [("107", False), ("109", False), ("110", True), ("111", True)])
async def test_permanent_failures_fail_the_job_and_tell_the_sender(
    make_delivery: DeliveryFactory, code: str, bug: bool
) -> None:
    d, sim = await make_delivery()
    sim.set_fault(f"code:{code}")
    (job_id,) = await d.spool_message()
    await d.drain()
    job = await d.job(job_id)
    assert job.state == State.FAILED and f"code {code}" in job.reason
    assert await d.notices(job_id) == (["failed", "alert:bug"] if bug else ["failed"])
    d.clock.advance(10_000)
    await d.drain()
    assert len(sim.requests) == 1


async def test_a_refused_empty_document_is_failed_by_the_simulator_itself(make_delivery: DeliveryFactory) -> None:
    d, sim = await make_delivery()
    (job_id,) = await d.spool_message(document=b"")
    await d.drain()
    job = await d.job(job_id)
    assert sim.requests[0].answer == "111-"
    assert job.state == State.FAILED and "empty" in job.reason


# -- holds ------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["101", "102", "103", "104", "106"])
async def test_configuration_answers_hold_and_pause_until_restart(make_delivery: DeliveryFactory, code: str) -> None:
    d, sim = await make_delivery()
    sim.set_fault(f"code:{code}")
    (first,) = await d.spool_message()
    await d.drain()
    job = await d.job(first)
    assert job.state == State.HELD and job.hold_kind == "config" and "submissions paused" in job.reason
    assert await d.notices(first) == ["alert:config"]
    (second,) = await d.spool_message("+33145678901")
    d.clock.advance(10_000)
    await d.drain()
    assert len(sim.requests) == 1  # paused: no hammering with a bad configuration
    assert (await d.job(second)).state == State.QUEUED
    sim.set_fault(None)  # the configuration is fixed; a restart applies it
    await d.worker.stop()
    await d.worker.start()
    await d.drain()
    assert [(await d.job(j)).state for j in (first, second)] == [State.SUBMITTED, State.SUBMITTED]
    assert "released" in kinds(await d.events(first))
    assert len(sim.requests) == 3


async def test_a_config_hold_released_by_the_operator_resumes_submissions(make_delivery: DeliveryFactory) -> None:
    d, sim = await make_delivery()
    sim.set_fault("code:103", once=True)
    (first,) = await d.spool_message()
    (second,) = await d.spool_message("+33145678901")
    await d.drain()
    assert {(await d.job(j)).state for j in (first, second)} >= {State.HELD}
    # What `fax-gateway release` does, from another process: held -> queued.
    await d.store.run(lambda s: s.transition(first, State.QUEUED, "released by operator", expect=[State.HELD],
                                             hold_kind=""))  # fmt: skip
    await d.drain()
    assert [(await d.job(j)).state for j in (first, second)] == [State.SUBMITTED, State.SUBMITTED]


async def test_the_worker_says_when_submissions_resume_after_a_release(
    make_delivery: DeliveryFactory, caplog: pytest.LogCaptureFixture
) -> None:
    d, sim = await make_delivery()
    sim.set_fault("code:103", once=True)
    (first,) = await d.spool_message()
    await d.drain()
    assert (await d.job(first)).state == State.HELD
    (second,) = await d.spool_message("+33145678901")
    await d.drain()
    assert (await d.job(second)).state == State.QUEUED  # paused
    resumed = "submissions resume: no job is held for a configuration error any more"
    assert resumed not in caplog.text
    await d.store.run(lambda s: s.transition(first, State.QUEUED, "released by operator", expect=[State.HELD],
                                             hold_kind=""))  # fmt: skip
    with caplog.at_level(logging.INFO, logger="gateway.worker"):
        await d.drain()
    assert [r.getMessage() for r in caplog.records].count(resumed) == 1
    assert (await d.job(second)).state == State.SUBMITTED


async def test_url_refused_holds_the_job_without_pausing_others(make_delivery: DeliveryFactory) -> None:
    d, sim = await make_delivery()
    sim.set_fault("code:105", once=True)
    (held,) = await d.spool_message()
    await d.drain()
    job = await d.job(held)
    assert job.state == State.HELD and job.hold_kind == "url" and "code 105" in job.reason
    assert await d.notices(held) == ["alert:url"]
    (other,) = await d.spool_message("+33145678901")
    d.clock.advance(10_000)
    await d.drain()
    assert (await d.job(other)).state == State.SUBMITTED
    assert (await d.job(held)).state == State.HELD


@pytest.mark.parametrize("fault", ["no-credit", "code:112"])
async def test_no_credit_holds_retries_on_a_timer_and_tells_the_sender_once(
    make_delivery: DeliveryFactory, fault: str
) -> None:
    d, sim = await make_delivery()
    sim.set_fault(fault)
    (job_id,) = await d.spool_message()
    await d.drain()
    job = await d.job(job_id)
    assert job.state == State.HELD and job.hold_kind == "credit"
    assert job.next_attempt_at == d.clock.now + 50.0
    assert await d.notices(job_id) == ["alert:credit", "delayed"]
    d.clock.advance(49)
    await d.drain()
    assert len(sim.requests) == 1
    d.clock.advance(2)
    await d.drain()
    assert len(sim.requests) == 2 and (await d.job(job_id)).state == State.HELD
    assert await d.notices(job_id) == ["alert:credit", "delayed"]  # once per job
    sim.set_fault(None)
    d.clock.advance(51)
    await d.drain()
    assert (await d.job(job_id)).state == State.SUBMITTED


# -- transient failures --------------------------------------------------------------


async def test_unreachable_provider_is_retried_with_backoff_then_failed(make_delivery: DeliveryFactory) -> None:
    closed = free_port()
    d, _ = await make_delivery({"provider": {"url": f"http://127.0.0.1:{closed}/http.php"}})
    (job_id,) = await d.spool_message()
    created = d.clock.now
    await d.drain()
    delays = []
    while (job := await d.job(job_id)).state == State.DEFERRED:
        assert "no fax was sent" in job.reason
        delays.append(job.next_attempt_at - d.clock.now)
        d.clock.now = job.next_attempt_at
        await d.drain()
    assert job.state == State.FAILED and "could not be sent within" in job.reason
    assert d.clock.now >= created + 1000.0
    for i, delay in enumerate(delays[:-1]):  # the last one is cut short by the queue lifetime
        base = min(100.0, 10.0 * 2**i)  # doubles from min_backoff up to max_backoff, jittered in [base/2, base]
        assert base / 2 <= delay <= base
    # Still deferred after notify.delay_notice_seconds (900): the sender was told it is late, then that it failed.
    assert await d.notices(job_id) == ["delayed", "failed"]
    assert job.attempts == len(delays) + 1


async def test_s3_down_defers_the_upload_and_it_goes_through_when_back(
    make_delivery: DeliveryFactory, s3: S3
) -> None:
    d, sim = await make_delivery(s3.table(timeout_seconds=0.5))
    s3.relay.mode = "refuse"
    (job_id,) = await d.spool_message()
    await d.drain()
    job = await d.job(job_id)
    assert job.state == State.DEFERRED and job.reason.startswith("S3 upload failed")
    (later,) = await d.spool_message("+33145678901")  # intake is not blocked by S3
    s3.relay.mode = "forward"
    d.clock.advance(200)
    await d.drain()
    assert [(await d.job(j)).state for j in (job_id, later)] == [State.SUBMITTED, State.SUBMITTED]
    assert len(sim.requests) == 2


# -- ambiguous outcomes ------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["5xx", "html", "empty", "no-ref", "reset", "hang"])
async def test_unknown_outcomes_wait_then_resubmit_once_with_the_same_ref(
    make_delivery: DeliveryFactory, fault: str
) -> None:
    d, sim = await make_delivery({"provider": {"total_timeout": 0.5}})
    sim.set_fault(fault, once=True)
    (job_id,) = await d.spool_message()
    await d.drain()
    job = await d.job(job_id)
    assert job.state == State.AMBIGUOUS and "waiting for a matching receipt" in job.reason
    assert await d.notices(job_id) == ["alert:ambiguous"]
    d.clock.advance(29)
    await d.drain()
    assert len(sim.requests) == 1  # never resent at once
    d.clock.advance(2)
    await d.drain()
    job = await d.job(job_id)
    assert job.state == State.SUBMITTED
    assert [r.params["ref"] for r in sim.requests] == [job_id, job_id]
    assert "resubmitting" in kinds(await d.events(job_id))


async def test_error_pages_are_resubmitted_up_to_ambiguous_resubmits_then_left_for_an_operator(
    make_delivery: DeliveryFactory,
) -> None:
    # Before issue 15 the second ambiguous answer left the job to an operator, and the sender heard nothing.
    d, sim = await make_delivery()
    sim.set_fault("5xx")
    (job_id,) = await d.spool_message()
    await d.drain()
    for ambiguities in (2, 3):  # each grace watched whole: resubmitted, with the same reference
        d.clock.advance(31)
        await d.drain()
        job = await d.job(job_id)
        assert job.state == State.AMBIGUOUS and job.ambiguities == ambiguities
    d.clock.advance(31)
    await d.drain()
    d.clock.advance(10_000)
    await d.drain()
    assert [r.params["ref"] for r in sim.requests] == [job_id] * 3
    job = await d.job(job_id)
    assert job.state == State.AMBIGUOUS and "after 2 resubmissions; left for an operator" in job.reason
    assert await d.notices(job_id) == ["alert:ambiguous", "alert:ambiguous-again", "alert:ambiguous-operator",
                                       "delayed"]  # fmt: skip
    (told,) = [n for n in await d.store.run(lambda s: s.notices_of_job(job_id)) if n["kind"] == "delayed"]
    assert told["detail"] == CHECKING


async def test_a_job_found_mid_submission_at_start_up_is_left_for_an_operator(make_delivery: DeliveryFactory) -> None:
    d, sim = await make_delivery(start_worker=False)
    (job_id,) = await d.spool_message()
    await d.set_state(job_id, state="submitting", submitted_at=d.clock.now - 5)  # killed mid-request
    await d.start_worker()
    await d.drain()
    assert (await d.job(job_id)).grace_unwatched  # its receipt may have hit the dead daemon
    d.clock.advance(10_000)
    await d.drain()
    assert sim.requests == []  # never faxed a second time
    job = await d.job(job_id)
    assert job.state == State.AMBIGUOUS and "the gateway was down for part of it" in job.reason
    assert await d.notices(job_id) == ["alert:ambiguous", "alert:ambiguous-operator", "delayed"]


async def test_a_stop_during_the_grace_period_leaves_the_job_for_an_operator(make_delivery: DeliveryFactory) -> None:
    d, sim = await make_delivery()
    sim.set_fault("5xx", once=True)
    (job_id,) = await d.spool_message()
    await d.drain()
    assert not (await d.job(job_id)).grace_unwatched
    await d.worker.stop()  # a receipt sent now would be lost
    d.clock.advance(10)
    await d.worker.start()
    assert "grace not watched" in kinds(await d.events(job_id))
    d.clock.advance(31)
    await d.drain()
    assert len(sim.requests) == 1
    assert "left for an operator" in (await d.job(job_id)).reason


async def test_unwatched_grace_periods_may_be_resubmitted_if_chosen(make_delivery: DeliveryFactory) -> None:
    d, sim = await make_delivery({"delivery": {"ambiguous_unwatched_action": "resubmit"}}, start_worker=False)
    (job_id,) = await d.spool_message()
    await d.set_state(job_id, state="submitting", submitted_at=d.clock.now - 5)
    await d.start_worker()
    await d.drain()
    d.clock.advance(31)
    await d.drain()
    assert [r.params["ref"] for r in sim.requests] == [job_id]
    assert (await d.job(job_id)).state == State.SUBMITTED


async def test_operator_mode_never_resubmits(make_delivery: DeliveryFactory) -> None:
    d, sim = await make_delivery({"delivery": {"ambiguous_action": "operator"}})
    sim.set_fault("html", once=True)
    (job_id,) = await d.spool_message()
    await d.drain()
    d.clock.advance(10_000)
    await d.drain()
    assert len(sim.requests) == 1
    steps = [k for k in kinds(await d.events(job_id)) if not k.startswith("notice")]
    assert steps[-2:] == ["ambiguous", "left for an operator"]


# -- delay notices and timers -----------------------------------------------------------------


async def _delay_notices(d: Delivery, job_id: str) -> list[tuple[str, str]]:
    rows = await d.store.run(lambda s: s.notices_of_job(job_id))
    return [(r["kind"], r["code"]) for r in rows if r["kind"] == "delayed"]


# fault, extra settings, the cause the one "delayed" notice records
DELAYS: dict[str, tuple[str, dict[str, Any], str]] = {
    "deferred": ("refuse", {}, "retry"),
    "held for the credentials": ("code:103", {}, "operator"),
    "held for the document URL": ("code:105", {}, "operator"),
    "being checked": ("html", {"delivery": {"ambiguous_grace_seconds": 5000.0}}, "checking"),
    "left for an operator": ("html", {"delivery": {"ambiguous_action": "operator"}}, "operator"),
    "waiting for credit": ("no-credit", {}, "credit"),
}


@pytest.mark.parametrize("case", list(DELAYS))
async def test_a_job_not_final_after_the_delay_gets_one_delayed_notice_saying_why(
    make_delivery: DeliveryFactory, case: str
) -> None:
    fault, table, cause = DELAYS[case]
    if fault == "refuse":
        table = {"provider": {"url": f"http://127.0.0.1:{free_port()}/http.php"},
                 "delivery": {"max_queue_lifetime_seconds": 5000.0}}  # fmt: skip
    d, sim = await make_delivery(table)
    if fault != "refuse":
        sim.set_fault(fault)
    (job_id,) = await d.spool_message()
    await d.drain()
    told_at_once = cause == "credit"  # a credit hold tells the sender at once, and only then
    assert await _delay_notices(d, job_id) == ([("delayed", "credit")] if told_at_once else [])
    d.clock.advance(899)
    await d.drain()
    # Left for an operator once its grace is over: the sender is told then (the fax is being checked).
    told_when_left = case == "left for an operator"
    assert len(await _delay_notices(d, job_id)) == (1 if told_at_once or told_when_left else 0)
    d.clock.advance(2)
    await d.drain()
    assert await _delay_notices(d, job_id) == [("delayed", cause)]
    d.clock.advance(2000)
    await d.drain()
    assert await _delay_notices(d, job_id) == [("delayed", cause)]  # one per job
    assert (await d.job(job_id)).state not in (State.DELIVERED, State.FAILED)


async def test_no_delay_notice_with_notify_delay_notice_seconds_zero(make_delivery: DeliveryFactory) -> None:
    d, sim = await make_delivery({"notify": {"delay_notice_seconds": 0}})
    sim.set_fault("code:103")
    (job_id,) = await d.spool_message()
    await d.drain()
    d.clock.advance(10_000)
    await d.drain()
    assert await _delay_notices(d, job_id) == []


async def test_the_next_wake_up_is_the_earliest_timer_not_the_next_poll(make_delivery: DeliveryFactory) -> None:
    d, sim = await make_delivery({"delivery": {"ambiguous_grace_seconds": 2.0, "poll_seconds": 5.0}})
    sim.set_fault("5xx", once=True)
    (job_id,) = await d.spool_message()
    await d.drain()
    job = await d.job(job_id)
    assert job.state == State.AMBIGUOUS and job.next_attempt_at == d.clock.now + 2.0
    assert d.worker.next_wakeup == d.clock.now + 2.0  # a 2 s grace is seen after 2 s, not at the 5 s poll
    d.clock.advance(2.0)
    await d.drain()
    assert (await d.job(job_id)).state == State.SUBMITTED
    # Nothing on a timer: the next delay notice due, or the poll.
    assert d.worker.next_wakeup == d.clock.now + 5.0


async def test_a_deferred_job_wakes_the_worker_at_its_retry_time(make_delivery: DeliveryFactory) -> None:
    d, _ = await make_delivery({"provider": {"url": f"http://127.0.0.1:{free_port()}/http.php"}})
    (job_id,) = await d.spool_message()
    await d.drain()
    job = await d.job(job_id)
    assert job.state == State.DEFERRED and job.next_attempt_at < d.clock.now + 60.0
    assert d.worker.next_wakeup == job.next_attempt_at  # not the 60 s poll


async def test_the_running_loop_fires_a_grace_period_at_its_due_time(make_delivery: DeliveryFactory) -> None:
    # An hour between polls: only a wake-up set for the grace period's end can resubmit within the wait below.
    d, sim = await make_delivery({"delivery": {"ambiguous_grace_seconds": 0.5, "poll_seconds": 3600.0}})
    sim.set_fault("5xx", once=True)
    (job_id,) = await d.spool_message()
    await asyncio.wait_for(d.answered.wait(), 10)
    assert (await d.job(job_id)).state == State.AMBIGUOUS
    d.clock.advance(0.5)
    await sim.wait_requests(2, timeout=10)
    await asyncio.wait_for(_until_submitted(d, job_id), 10)


async def _until_submitted(d: Delivery, job_id: str) -> None:
    while True:
        d.answered.clear()  # before the look: an answer recorded after it sets the event again
        if (await d.job(job_id)).state == State.SUBMITTED:
            return
        await d.answered.wait()


# -- logs and metrics in words ------------------------------------------------------------------

_CLASS_NAMES = re.compile(r"\b(Ambiguous|PermanentFailure|Retry|Hold|Accepted|DeliveryOutcome|\w+Error|\w+Exception)\b")


@pytest.mark.parametrize("fault", ["code:107", "code:103", "no-credit", "5xx", "html", "reset", "hang"])
async def test_logs_and_timeline_say_each_outcome_once_in_words(
    make_delivery: DeliveryFactory, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    d, sim = await make_delivery({"provider": {"total_timeout": 0.5}})
    sim.set_fault(fault, once=True)
    with caplog.at_level(logging.INFO, logger="gateway"):
        (job_id,) = await d.spool_message()
        await d.drain()
    job = await d.job(job_id)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("gateway.") and job_id in r.getMessage()]
    texts = lines + [f"{kind}: {detail}" for kind, detail in await d.events(job_id)]
    assert not [t for t in texts if _CLASS_NAMES.search(t)]
    outcome = job.reason.split("; ")[0].removeprefix("outcome unknown: ")
    assert sum(outcome in line for line in lines) == 1, lines  # the answer is said once, with the job's new state
    for line in lines:
        phrases = re.split(r"[:;] ", line)
        assert len(phrases) == len(set(phrases)), line


async def test_metrics_label_every_ambiguous_answer_alike_with_its_cause(make_delivery: DeliveryFactory) -> None:
    d, sim = await make_delivery({"provider": {"total_timeout": 0.5}})
    metrics = Metrics()
    metered = MeteredProvider(d.provider, metrics)
    for fault in ("html", "5xx", "empty", "hang", "code:107", "code:105"):
        sim.set_fault(fault, once=True)
        with contextlib.suppress(DeliveryOutcome):
            await metered.submit(Submission("0123456789abcdef", "+33145678900", "http://127.0.0.1:1/doc.pdf"))
    counts = {(f.name, tuple(sorted(s.labels.items()))): s.value
              for f in text_string_to_metric_families(metrics.render().decode()) for s in f.samples
              if s.name == "faxgw_provider_answers_total"}  # fmt: skip
    assert {labels for _, labels in counts} == {
        (("answer", "ambiguous"), ("cause", "not-an-answer")),
        (("answer", "ambiguous"), ("cause", "http-500")),
        (("answer", "ambiguous"), ("cause", "empty-answer")),
        (("answer", "ambiguous"), ("cause", "timeout")),
        (("answer", "failed"), ("cause", "107")),
        (("answer", "held"), ("cause", "105")),
    }


# -- concurrency and recovery ---------------------------------------------------------------


PENDING = 500  # jobs waiting at start-up


class CountingProvider(ProviderClient):
    """The real client, counting how many submissions are in flight at once."""

    in_flight = 0
    peak = 0

    async def submit(self, sub: Submission) -> Accepted:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await super().submit(sub)
        finally:
            self.in_flight -= 1


async def test_many_pending_jobs_at_start_up_never_burst_past_the_concurrency_limit(
    make_delivery: DeliveryFactory,
) -> None:
    d, sim = await make_delivery({"provider": {"concurrency": 3}}, start_worker=False)
    counting = CountingProvider(d.settings)
    await counting.start()
    d.worker.provider = counting
    try:
        jobs = []
        for i in range(PENDING // 10):
            jobs += await d.spool_message(*(f"+331456{i:03d}{k:02d}" for k in range(10)))
        # What a crash leaves behind: jobs queued, mid-upload and deferred (now due), all found at start-up.
        await d.store.run(lambda s: [s.update_job(j, state="uploading") for j in jobs[::3]])
        await d.store.run(lambda s: [s.update_job(j, state="deferred", next_attempt_at=1.0) for j in jobs[1::3]])
        await d.start_worker()
        await d.drain(timeout=240)
        assert counting.peak == 3 and sim.most_open <= 3
        assert sorted(r.params["ref"] for r in sim.requests) == sorted(jobs)
        assert {(await d.job(j)).state for j in jobs} == {State.SUBMITTED}
    finally:
        await counting.stop()


async def test_start_up_recovers_jobs_left_mid_step(make_delivery: DeliveryFactory) -> None:
    d, sim = await make_delivery({"delivery": {"max_recoveries": 2}}, start_worker=False)
    sending, storing, worn, config = [(await d.spool_message(f"+3314567890{i}"))[0] for i in range(4)]
    await d.set_state(sending, state="submitting")
    await d.set_state(storing, state="uploading")
    await d.set_state(worn, state="submitting", recoveries=2)
    await d.set_state(config, state="held", hold_kind="config")
    await d.start_worker()
    await d.drain()
    job = await d.job(sending)
    assert job.state == State.AMBIGUOUS and job.recoveries == 1 and "interrupted during submission" in job.reason
    assert await d.notices(sending) == ["alert:ambiguous"]
    assert (await d.job(storing)).state == State.SUBMITTED and (await d.job(storing)).recoveries == 1
    assert (await d.job(worn)).state == State.QUARANTINED
    assert await d.notices(worn) == ["alert:quarantined"]
    assert (await d.job(config)).state == State.SUBMITTED
    assert sorted(r.params["ref"] for r in sim.requests) == sorted([storing, config])


async def test_a_stop_during_a_submission_is_bounded_and_found_ambiguous_at_restart(
    make_delivery: DeliveryFactory,
) -> None:
    d, sim = await make_delivery({"provider": {"total_timeout": 60.0}})
    sim.set_fault("hang")
    (job_id,) = await d.spool_message()
    await sim.wait_requests(1)
    await asyncio.wait_for(d.worker.stop(), 10)  # stop_timeout is 2 s: the hung request is abandoned
    assert (await d.job(job_id)).state == State.SUBMITTING
    sim.set_fault(None)
    await d.worker.start()
    await d.drain()
    job = await d.job(job_id)
    assert job.state == State.AMBIGUOUS and job.recoveries == 1
    assert len(sim.requests) == 1


async def test_stored_documents_are_kept_keep_days_after_the_last_final_state(
    make_delivery: DeliveryFactory, s3: S3
) -> None:
    d, _ = await make_delivery(s3.table(keep_days=2))
    (job_id,) = await d.spool_message()
    await d.drain()
    await d.store.run(lambda s: s.transition(job_id, State.DELIVERED, "receipt 0"))
    d.clock.advance(2 * 86400 - 1)
    await d.drain()
    assert len(s3.keys()) == 1
    d.clock.advance(2)
    await d.drain()
    assert s3.keys() == []


async def test_the_canary_password_never_reaches_logs_store_or_spool(
    make_delivery: DeliveryFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    d, sim = await make_delivery({"provider": {"total_timeout": 0.5}})
    for fault in ("reset", "5xx", "code:103", "html", "hang", None):
        sim.set_fault(fault, once=fault is not None)
        await d.spool_message()
        await d.drain()
        await d.worker.stop()  # a restart releases the config hold
        await d.worker.start()
    d.clock.advance(10_000)
    await d.drain()
    assert len(sim.requests) >= 6
    canary = SIM_PASSWORD
    assert canary not in caplog.text and quote(canary) not in caplog.text
    for path in Path(d.settings.spool.directory).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert canary.encode() not in data and quote(canary).encode() not in data, path


async def test_a_final_job_queued_again_after_its_document_was_deleted_is_uploaded_afresh(
    make_delivery: DeliveryFactory, s3: S3
) -> None:
    d, sim = await make_delivery(s3.table())
    (job_id,) = await d.spool_message()
    await d.drain()
    first_key = (await d.job(job_id)).upload_key
    await d.store.run(lambda s: s.transition(job_id, State.FAILED, "receipt 31083"))
    await d.drain()
    assert s3.keys() == []
    # What `fax-gateway retry` does: the failed job is queued again.
    await d.store.run(lambda s: s.transition(job_id, State.QUEUED, "operator: retry", expect=[State.FAILED]))
    await d.drain()
    job = await d.job(job_id)
    assert job.state == State.SUBMITTED and job.upload_key != first_key and s3.keys() == [job.upload_key]
    assert len(sim.requests) == 2


async def test_a_receipt_stored_before_a_crash_resolves_the_job_recovered_as_ambiguous(
    make_delivery: DeliveryFactory,
) -> None:
    d, sim = await make_delivery(start_worker=False)
    (job_id,) = await d.spool_message("+33145678900")
    await d.set_state(job_id, state="submitting", submitted_at=d.clock.now - 5)
    await d.store.run(lambda s: s.db.execute(
        "INSERT INTO receipts (received_at, source, ref_accuse, etat_e, numero, nb_page, heure)"
        " VALUES (?, 'callback', '77001', '0', '0145678900', 1, '12:00')", (d.clock.now - 1,)))  # fmt: skip
    await d.start_worker()
    await d.drain()
    job = await d.job(job_id)
    assert job.state == State.DELIVERED and job.provider_ref == "77001"
    assert "recovered" in kinds(await d.events(job_id)) and sim.requests == []


def _receipt_on_file(ref: str) -> Any:
    return lambda s: s.add_receipt(source="callback", ref_accuse=ref, etat_e="0", numero="0145678900", nb_page=1,
                                   heure="12:00", validated="1")  # fmt: skip


async def test_the_worker_leaves_a_receipt_on_file_to_the_receipt_stage(make_delivery: DeliveryFactory) -> None:
    d, sim = await make_delivery()
    sim.set_fault("no-ref", once=True)  # the fax went out, the answer did not say its reference
    await d.store.run(_receipt_on_file("77002"))  # the provider called back before answering
    (job_id,) = await d.spool_message()
    await d.worker.drain()
    assert (await d.job(job_id)).state == State.AMBIGUOUS  # the worker only records the answer
    assert await d.store.run(lambda s: s.jobs_with_pending_receipts()) == [job_id]
    assert await d.receipts.drain() == 1
    job = await d.job(job_id)
    assert (job.state, job.provider_ref) == (State.DELIVERED, "77002") and len(sim.requests) == 1
    assert "receipt matched" in kinds(await d.events(job_id))


async def test_the_receipt_stage_applies_at_start_a_receipt_for_a_job_recovered_ambiguous(
    make_delivery: DeliveryFactory,
) -> None:
    d, sim = await make_delivery(start_worker=False)
    (job_id,) = await d.spool_message()
    await d.set_state(job_id, state="submitting", submitted_at=d.clock.now - 5)
    await d.store.run(_receipt_on_file("77003"))
    await d.start_worker()  # recovery writes the state only
    assert (await d.job(job_id)).state == State.AMBIGUOUS
    await d.receipts.start()
    try:
        job = await d.job(job_id)
        assert (job.state, job.provider_ref) == (State.DELIVERED, "77003") and sim.requests == []
    finally:
        await d.receipts.stop()

