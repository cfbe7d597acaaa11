"""Two gateways in this process on one PostgreSQL database and one S3 bucket: what one took, the other
delivers once the first is stopped, from the objects in S3; a receipt for a job one submitted, called
back to the other, is applied."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.store import State
from tests.support_cluster import Cluster, mail_to, queued
from tests.support_delivery import drain_stages
from tests.support_simulator import SimFactory, provider_env, provider_table
from tests.support_sink import Sink

SECRET = "cluster-callback-secret-0123"
NEVER = {"delivery": {"poll_seconds": 3600.0}}


async def test_what_gateway_a_took_gateway_b_delivers_once_a_is_stopped(
    cluster: Cluster, sim_factory: SimFactory, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    sim = await sim_factory()
    caplog.set_level(logging.INFO, "gateway")
    common = {**provider_table(sim), "storage": {"keep_days": 1},  # the notifier attaches the document
              "notify": {"relay": f"127.0.0.1:{sink.port}", "attach_document": True}}  # fmt: skip
    a = await cluster.start("a", {**common, "delivery": {"paused": True}}, provider_env())
    taken = [queued(await asyncio.to_thread(mail_to, a.smtp.port, to=f"014567890{n}@fax.local"))[0] for n in (1, 2)]
    await a.stop()  # nothing of them is on a's disk
    assert list(a.spool.messages.iterdir()) == []
    keys = set(cluster.s3.keys())
    b = await cluster.start("b", common, provider_env())
    requests = await sim.wait_requests(2, timeout=20)
    assert sorted(r.params["ref"] for r in requests) == sorted(taken)
    await asyncio.wait_for(b.worker.drain(), 20)
    jobs = [await b.store.run(lambda s, j=j: s.get_job(j)) for j in taken]
    assert [j.state for j in jobs if j is not None] == [State.SUBMITTED, State.SUBMITTED]
    assert not [r for r in caplog.records if "document stored" in r.getMessage()]  # b uploaded nothing again
    assert set(cluster.s3.keys()) == keys
    # b reads a's objects itself too: the receipt it mails carries the document a put in S3.
    for job in jobs:
        assert job is not None
        await b.store.run(lambda s, j=job.id: s.transition(j, State.DELIVERED, "receipt", expect=[State.SUBMITTED]))
        await b.store.run(lambda s, j=job.id: s.queue_notice(j, "delivered", "delivered"))
    await asyncio.wait_for(b.notifier.drain(), 20)
    received = await sink.wait_for(2)
    for got in received:
        [attachment] = list(got.message.iter_attachments())
        assert attachment.get_content_type() == "application/pdf" and attachment.get_content().startswith(b"%PDF-")


async def test_a_receipt_called_back_to_gateway_b_settles_the_job_gateway_a_submitted(
    cluster: Cluster, sim_factory: SimFactory
) -> None:
    sim = await sim_factory()
    env = {**provider_env(), "FAX_GATEWAY_CALLBACK_SECRET": SECRET}
    table = {**provider_table(sim), **NEVER}
    b = await cluster.start("b", {**table, "delivery": {"paused": True, "poll_seconds": 3600.0}}, env)
    sim.callback_url = f"http://127.0.0.1:{b.http.port}/receipt/{SECRET}"  # the provider calls b back
    a = await cluster.start("a", table, env)
    [job_id] = queued(await asyncio.to_thread(mail_to, a.smtp.port))
    [request] = await sim.wait_requests(1, timeout=20)
    assert request.params["ref"] == job_id
    [callback] = await sim.wait_callbacks(1, timeout=20)
    assert callback.status == 200
    await asyncio.wait_for(drain_stages(b.worker, b.receipts), 20)
    await asyncio.wait_for(drain_stages(a.worker, a.receipts), 20)
    job = await b.store.run(lambda s: s.get_job(job_id))
    assert job is not None and job.state == State.DELIVERED and job.provider_ref
    receipts = await b.store.run(lambda s: s.receipts_of_job(job_id))
    assert len(receipts) == 1
