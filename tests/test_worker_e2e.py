"""End to end in one process: a PDF mailed to the gateway over SMTP reaches the simulator
as one correct submission with a URL it downloads, and the job reaches ``submitted``."""

from __future__ import annotations

import asyncio
import re
import smtplib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from gateway.answers import ANSWER_CODES
from gateway.daemon.app import Gateway
from gateway.delivery.simulator import ProviderSimulator
from gateway.store import Job, State
from tests.support_clock import FakeClock
from tests.support_delivery import drain_stages
from tests.support_net import free_port
from tests.support_s3 import S3
from tests.support_settings import SettingsFactory, deep_merge
from tests.support_simulator import SimFactory, provider_env, provider_table
from tests.support_sink import Sink
from tests.support_smtp import fax_mail


def _send(port: int, to: str) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("scanner.example.com")
        client.mail("alice@example.com")
        client.rcpt(to)
        code, reply = client.data(fax_mail(to=to))
    assert code == 250, reply
    match = re.search(rb"queued as ([0-9a-f]+)", reply)
    assert match, reply
    return match.group(1).decode()


@pytest.fixture
async def started(make_settings: SettingsFactory) -> AsyncIterator[list[Gateway]]:
    gateways: list[Gateway] = []
    try:
        yield gateways
    finally:
        for gw in gateways:
            await gw.stop()


async def _gateway(started: list[Gateway], make_settings: SettingsFactory, sim: ProviderSimulator,
                   table: dict[str, Any], clock: FakeClock | None = None) -> Gateway:  # fmt: skip
    port = free_port()
    base = {"http": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"}}
    settings = make_settings(deep_merge(deep_merge(base, provider_table(sim)), table), provider_env())
    gw = Gateway(settings) if clock is None else Gateway(settings, clock=clock)
    await gw.start()
    started.append(gw)
    return gw


@pytest.mark.parametrize("backend", ["local", "s3"])
async def test_a_mailed_pdf_becomes_one_submission_with_a_downloadable_url(
    started: list[Gateway], make_settings: SettingsFactory, sim_factory: SimFactory, s3: S3, backend: str
) -> None:
    sim = await sim_factory()
    gw = await _gateway(started, make_settings, sim, s3.table() if backend == "s3" else {})
    job_id = await asyncio.to_thread(_send, gw.smtp.port, "0145678900@fax.local")
    await asyncio.wait_for(gw.worker.drain(), 20)
    job = await gw.store.run(lambda s: s.get_job(job_id))
    assert job is not None and job.state == State.SUBMITTED
    assert len(sim.requests) == 1
    params = sim.requests[0].params
    assert params["ref"] == job_id and params["fax"] == "0145678900" and params["email"] == "account@gateway.test"
    assert sim.requests[0].answer == f"113-{job.provider_ref}"
    url = params["url"]
    if backend == "s3":
        assert "X-Amz-Signature=" in url and s3.keys() == [job.upload_key]
    else:
        assert urlsplit(url).path == f"/documents/{job.upload_key}"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200 and (await resp.read()).startswith(b"%PDF-")


async def test_a_receipt_that_comes_before_the_submit_answer_is_applied_once_it_lands(
    started: list[Gateway], make_settings: SettingsFactory, sim_factory: SimFactory
) -> None:
    port = free_port()
    secret = "cb-secret-0123456789"
    sim = await sim_factory(callback_url=f"http://127.0.0.1:{port}/receipt/{secret}")
    sim.set_fault("early-callback")
    table = deep_merge(provider_table(sim), {"http": {"listen": f"127.0.0.1:{port}",
                                                      "public_url": f"http://127.0.0.1:{port}"}})  # fmt: skip
    gw = Gateway(make_settings(table, {**provider_env(), "FAX_GATEWAY_CALLBACK_SECRET": secret}))
    await gw.start()
    started.append(gw)
    job_id = await asyncio.to_thread(_send, gw.smtp.port, "0145678900@fax.local")
    await asyncio.wait_for(drain_stages(gw.worker, gw.receipts), 20)
    job = await gw.store.run(lambda s: s.get_job(job_id))
    assert sim.callbacks and sim.callbacks[0].status == 200
    assert job is not None and job.state == State.DELIVERED and job.provider_ref
    assert len(sim.requests) == 1


async def test_intake_keeps_accepting_while_s3_is_down_and_the_jobs_go_out_when_it_is_back(
    started: list[Gateway], make_settings: SettingsFactory, sim_factory: SimFactory, s3: S3
) -> None:
    sim = await sim_factory()
    clock = FakeClock()
    gw = await _gateway(started, make_settings, sim, s3.table(timeout_seconds=0.5), clock)
    s3.relay.mode = "refuse"
    first = await asyncio.to_thread(_send, gw.smtp.port, "0145678900@fax.local")
    await asyncio.wait_for(gw.worker.drain(), 20)
    second = await asyncio.to_thread(_send, gw.smtp.port, "0145678901@fax.local")
    await asyncio.wait_for(gw.worker.drain(), 20)
    for job in [await _job(gw, first), await _job(gw, second)]:
        assert job.state == State.DEFERRED and job.reason.startswith("S3 upload failed")
    s3.relay.mode = "forward"
    clock.advance(3600)
    await asyncio.wait_for(gw.worker.drain(), 20)
    assert [(await _job(gw, j)).state for j in (first, second)] == [State.SUBMITTED, State.SUBMITTED]
    assert len(sim.requests) == 2


async def test_intake_answers_while_an_upload_hangs_on_s3(
    started: list[Gateway], make_settings: SettingsFactory, sim_factory: SimFactory, s3: S3
) -> None:
    """boto3 blocks; it runs in a thread, so a black-holed S3 call never freezes the daemon's event loop."""
    sim = await sim_factory()
    clock = FakeClock()
    # A minute per S3 call: on the event loop, a hung call would hold the SMTP reply below far past its bound.
    gw = await _gateway(started, make_settings, sim, s3.table(timeout_seconds=60.0), clock)
    s3.relay.mode = "hang"
    loop = asyncio.get_running_loop()
    begun = loop.time()
    first = await asyncio.to_thread(_send, gw.smtp.port, "0145678900@fax.local")
    await asyncio.to_thread(s3.relay.wait_connections, 1)  # the upload is under way, into the black hole
    second = await asyncio.to_thread(_send, gw.smtp.port, "0145678901@fax.local")
    assert loop.time() - begun < 30, "the event loop stood still while S3 hung"
    assert (await _job(gw, first)).state == State.UPLOADING
    s3.relay.mode = "forward"
    s3.relay.drop_hung()
    await asyncio.wait_for(gw.worker.drain(), 60)
    clock.advance(3600)  # in case the dropped call was deferred rather than retried at once
    await asyncio.wait_for(gw.worker.drain(), 60)
    assert [(await _job(gw, j)).state for j in (first, second)] == [State.SUBMITTED, State.SUBMITTED]
    assert sorted(r.params["ref"] for r in sim.requests) == sorted([first, second])


async def test_a_spooled_job_and_the_notice_it_ends_in_go_out_at_once_not_at_the_next_poll(
    started: list[Gateway], make_settings: SettingsFactory, sim_factory: SimFactory, sink: Sink
) -> None:
    sim = await sim_factory()
    sim.set_fault("code:107")
    # An hour between polls: within the wait below, only intake waking the worker (the job is
    # submitted and fails with 107) and the worker waking the notifier (the sender's mail) get it out.
    table = {"delivery": {"poll_seconds": 3600.0}, "notify": {"relay": f"127.0.0.1:{sink.port}"}}
    gw = await _gateway(started, make_settings, sim, table)
    job_id = await asyncio.to_thread(_send, gw.smtp.port, "0145678900@fax.local")
    (got,) = await sink.wait_for(1, timeout=30)
    assert got.message["X-Fax-Job"] == job_id and got.message["X-Fax-Status"] == "failed"
    assert (await _job(gw, job_id)).state == State.FAILED



@pytest.mark.parametrize("code", [107, 109])
async def test_a_french_receipt_for_a_refused_fax_gives_the_provider_reason_in_french(
    started: list[Gateway], make_settings: SettingsFactory, sim_factory: SimFactory, sink: Sink, code: int
) -> None:
    sim = await sim_factory()
    sim.set_fault(f"code:{code}")
    table = {"notify": {"relay": f"127.0.0.1:{sink.port}", "language": "fr"}}
    gw = await _gateway(started, make_settings, sim, table)
    await asyncio.to_thread(_send, gw.smtp.port, "0145678900@fax.local")
    (got,) = await sink.wait_for(1, timeout=30)
    body = str(got.message.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    entry = ANSWER_CODES[code]
    assert f"{entry.french} (code {code})" in body and entry.french in got.message["Subject"]
    assert entry.english not in body and entry.english not in got.message["X-Fax-Reason"]
    assert "the provider" not in body  # no English words left in a French receipt


async def test_an_early_receipt_is_applied_and_mailed_on_wake_ups_alone(
    started: list[Gateway], make_settings: SettingsFactory, sim_factory: SimFactory, sink: Sink
) -> None:
    port = free_port()
    secret = "cb-secret-0123456789"
    sim = await sim_factory(callback_url=f"http://127.0.0.1:{port}/receipt/{secret}")
    sim.set_fault("early-callback")  # the receipt is on file before the submit answer
    # An hour between polls: only wake-ups get it out. The worker records the answer and wakes the
    # receipt stage, which applies the receipt and wakes the notifier.
    table = deep_merge(provider_table(sim), {
        "http": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"},
        "delivery": {"poll_seconds": 3600.0}, "notify": {"relay": f"127.0.0.1:{sink.port}"},
    })  # fmt: skip
    gw = Gateway(make_settings(table, {**provider_env(), "FAX_GATEWAY_CALLBACK_SECRET": secret}))
    await gw.start()
    started.append(gw)
    job_id = await asyncio.to_thread(_send, gw.smtp.port, "0145678900@fax.local")
    (got,) = await sink.wait_for(1, timeout=30)
    assert got.message["X-Fax-Job"] == job_id and got.message["X-Fax-Status"] == "delivered"
    assert (await _job(gw, job_id)).state == State.DELIVERED and len(sim.requests) == 1



async def _job(gw: Gateway, job_id: str) -> Job:
    job = await gw.store.run(lambda s: s.get_job(job_id))
    assert job is not None
    return job
