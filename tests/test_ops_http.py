"""/healthz and /metrics on a running gateway: real SMTP in, the simulator, its real callback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import aiosmtplib
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import replies
from gateway.daemon.app import Gateway
from gateway.daemon.metrics import Metrics
from gateway.daemon.run import callback_url
from gateway.delivery.simulator import ProviderSimulator
from gateway.ops.demo import free_port
from tests.support_delivery import drain_stages
from tests.support_docs import pdf
from tests.support_mail import plain_with
from tests.support_s3 import S3, S3_ENV
from tests.support_settings import SettingsFactory
from tests.support_simulator import SimFactory, provider_env, provider_table
from tests.support_sink import Sink

SECRET = "cb-secret-ops-1234"


async def _gateway(make_settings: SettingsFactory, sim: ProviderSimulator, **table: Any) -> Gateway:
    port = free_port()  # local storage: the provider fetches documents at http.public_url
    http = {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"}
    settings = make_settings(
        {**provider_table(sim), "http": http | table.pop("http", {}), **table},
        env=provider_env() | {"FAX_GATEWAY_CALLBACK_SECRET": SECRET},
    )
    gw = Gateway(settings)
    await gw.start()
    sim.callback_url = callback_url(settings, gw.http.port)
    return gw


@pytest.fixture
async def running(
    make_settings: SettingsFactory,
    sim_factory: SimFactory,
    sink: Sink,
) -> AsyncIterator[tuple[Gateway, Any]]:
    sim = await sim_factory(callback_delay=0.0)
    gw = await _gateway(make_settings, sim, notify={"relay": f"127.0.0.1:{sink.port}"})
    try:
        yield gw, sim
    finally:
        await gw.stop()


async def _get(gw: Gateway, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{gw.http.port}{path}") as resp:
        return resp.status, await resp.text()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def _send(gw: Gateway, rcpt: str) -> None:
    raw = plain_with([("invoice.pdf", "application/pdf", pdf(2))])
    await aiosmtplib.send(raw, sender="alice@example.com", recipients=[rcpt], hostname="127.0.0.1",
                          port=gw.smtp.port, timeout=20)  # fmt: skip


async def test_metrics_count_what_happened(running: tuple[Gateway, ProviderSimulator], sink: Sink) -> None:
    gw, sim = running
    status, text = await _get(gw, "/metrics")
    before = _samples(text)
    assert status == 200
    assert before[("faxgw_messages_accepted_total", ())] == 0
    assert before[("faxgw_jobs", (("state", "queued"),))] == 0

    await _send(gw, "0145678900@fax.local")
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
        await _send(gw, "someone@example.com")
    await sim.wait_callbacks(1)  # answered 200: the receipt is stored, and applied if its job was submitted
    # An early receipt is applied once the submission is recorded (the receipt stage, woken by the worker).
    await asyncio.wait_for(drain_stages(gw.worker, gw.receipts), 20)
    assert [j.state for j in await gw.store.run(lambda s: s.list_jobs())] == ["delivered"]
    await asyncio.wait_for(gw.notifier.drain(), 30)  # the receipt mail, its state recorded
    await sink.wait_for(1, timeout=30)

    status, text = await _get(gw, "/metrics")
    after = _samples(text)
    assert after[("faxgw_messages_accepted_total", ())] == 1
    assert after[("faxgw_smtp_refusals_total", (("reason", "RELAY_DENIED"),))] == 1
    assert after[("faxgw_provider_answers_total", (("answer", "accepted"), ("cause", "113")))] == 1
    assert after[("faxgw_uploads_total", (("result", "ok"),))] == 1
    assert after[("faxgw_receipts_total", (("code", "0"),))] == 1
    assert after[("faxgw_jobs", (("state", "delivered"),))] == 1
    assert after[("faxgw_submit_latency_seconds_count", ())] == 1
    assert after[("faxgw_receipt_latency_seconds_count", ())] == 1
    assert after[("faxgw_notifications", (("kind", "delivered"), ("state", "sent")))] == 1
    assert ("faxgw_notifications", (("kind", "delivered"), ("state", "sent"))) not in before
    # A second scrape does not count the same jobs' latencies again.
    _, text = await _get(gw, "/metrics")
    assert _samples(text)[("faxgw_submit_latency_seconds_count", ())] == 1


def test_refusals_are_counted_by_the_name_of_their_reply() -> None:
    metrics = Metrics()
    for answer in [
        replies.RELAY_DENIED.format(domain="fax.local"),
        replies.RELAY_DENIED.format(domain="other.local"),
        replies.QUOTA_GLOBAL.answer(),
        replies.OK.answer(),
        replies.queued(["0123456789abcdef"]),
        replies.Reply(554, "", "Something new", name="UNLISTED").answer(),
    ]:
        metrics.smtp_reply(answer)
    counted = {k: v for k, v in _samples(metrics.render().decode()).items() if k[0] == "faxgw_smtp_refusals_total"}
    assert counted == {
        ("faxgw_smtp_refusals_total", (("reason", "RELAY_DENIED"),)): 2,
        ("faxgw_smtp_refusals_total", (("reason", "QUOTA_GLOBAL"),)): 1,
        ("faxgw_smtp_refusals_total", (("reason", "UNLISTED"),)): 1,
    }


async def test_healthz_reports_parts(running: tuple[Gateway, ProviderSimulator]) -> None:
    gw, sim = running
    status, text = await _get(gw, "/healthz")
    body = json.loads(text)
    assert status == 200 and body["status"] == "ok"
    assert body["smtp"] == {"ok": True} and body["store"]["ok"] is True
    assert body["provider"] is None and body["storage"] is None
    assert body["waiting"] == {"held": 0, "ambiguous": 0, "quarantined": 0}

    sim.set_fault("code:103")  # wrong credentials: the job is held, the provider result is a failure
    await _send(gw, "0145678900@fax.local")
    await asyncio.wait_for(gw.worker.drain(), 20)
    status, text = await _get(gw, "/healthz")
    body = json.loads(text)
    assert status == 200 and body["status"] == "degraded"
    assert body["provider"]["ok"] is False and body["waiting"]["held"] == 1
    assert body["storage"]["ok"] is True  # the upload itself went through
    assert SECRET not in text

    await gw.smtp.stop()
    status, text = await _get(gw, "/healthz")
    assert status == 503 and json.loads(text)["status"] == "failing"


async def test_status_routes_only_for_status_networks(make_settings: SettingsFactory, sim_factory: SimFactory) -> None:
    sim = await sim_factory()
    gw = await _gateway(make_settings, sim, http={"status_networks": ["192.0.2.0/24"]})
    try:
        assert (await _get(gw, "/metrics"))[0] == 404
        assert (await _get(gw, "/healthz"))[0] == 404
    finally:
        await gw.stop()


async def test_healthz_reports_a_failing_s3(make_settings: SettingsFactory, sim_factory: SimFactory,
                                            s3: S3) -> None:  # fmt: skip
    sim = await sim_factory()
    gw = await _gateway(make_settings, sim, **s3.table())
    try:
        s3.relay.mode = "refuse"  # S3 down: the upload fails, the job waits for its next try
        await _send(gw, "0145678900@fax.local")
        await asyncio.wait_for(gw.worker.drain(), 30)
        status, text = await _get(gw, "/healthz")
        body = json.loads(text)
        assert status == 200 and body["status"] == "degraded"
        assert body["storage"]["ok"] is False and "S3" in body["storage"]["detail"]
        assert body["provider"] is None  # nothing was submitted
        assert S3_ENV["AWS_SECRET_ACCESS_KEY"] not in text
    finally:
        await gw.stop()


# -- health says what a client gets -----------------------------------------------------


async def _health(gw: Gateway) -> tuple[int, dict[str, Any]]:
    status, text = await _get(gw, "/healthz")
    return status, json.loads(text)


async def test_healthz_fails_when_the_spool_is_below_its_minimum(make_settings: SettingsFactory,
                                                                  sim_factory: SimFactory) -> None:  # fmt: skip
    sim = await sim_factory()
    gw = await _gateway(make_settings, sim, spool={"min_free_bytes": 2**62})  # more than any disk: MAIL gets 452
    try:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await _send(gw, "0145678900@fax.local")
        assert refused.value.code == 452
        status, body = await _health(gw)
        assert status == 503 and body["status"] == "failing"
        assert body["spool"]["ok"] is False and "spool.min_free_bytes" in body["spool"]["detail"]
        assert body["replies"]["own_refusals"] == 1 and body["store"]["ok"] is True
    finally:
        await gw.stop()


async def test_healthz_fails_when_the_store_cannot_be_written(running: tuple[Gateway, ProviderSimulator]) -> None:
    gw, _ = running
    await gw.store.run(lambda s: s.db.execute("PRAGMA query_only = ON"))  # locking works, writing fails
    try:
        status, body = await _health(gw)
        assert status == 503 and body["status"] == "failing"
        assert body["store"] == {"ok": False, "detail": "a write failed"}
    finally:
        await gw.store.run(lambda s: s.db.execute("PRAGMA query_only = OFF"))
    status, body = await _health(gw)
    assert status == 200 and body["store"]["ok"] is True
    assert await gw.store.run(lambda s: s.db.execute("SELECT COUNT(*) FROM probe").fetchone()[0]) == 0


async def test_healthz_fails_while_every_connection_slot_is_taken(make_settings: SettingsFactory,
                                                                  sim_factory: SimFactory) -> None:  # fmt: skip
    sim = await sim_factory()
    gw = await _gateway(make_settings, sim, smtp={"max_connections": 2})
    clients = []
    try:
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.smtp.port)
            assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"220")
            clients.append(writer)
        status, body = await _health(gw)
        assert status == 503 and body["status"] == "failing"
        assert body["connections"] == {"ok": False, "open": 2, "max": 2, "detail": "2 of 2 open: new clients get 421"}
        last = clients.pop()
        last.write(b"QUIT\r\n")
        await asyncio.wait_for(reader.read(), 10)  # the server closed: it has let the session go
        last.close()
        status, body = await _health(gw)
        assert status == 200 and body["connections"]["open"] == 1
    finally:
        for writer in clients:
            writer.close()
        await gw.stop()


async def test_healthz_names_an_address_held_at_its_connection_cap(make_settings: SettingsFactory,
                                                                    sim_factory: SimFactory) -> None:  # fmt: skip
    sim = await sim_factory()
    smtp = {"trusted_networks": [{"cidr": "10.0.0.0/8"}], "max_connections_per_address": 1}
    gw = await _gateway(make_settings, sim, smtp=smtp)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.smtp.port)
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"220")
        status, body = await _health(gw)
        assert status == 200 and body["connections"]["capped"] == ["127.0.0.1"]
        assert body["connections"]["detail"] == "1 of 100 open; 127.0.0.1 at smtp.max_connections_per_address (1)"
        writer.write(b"QUIT\r\n")
        await asyncio.wait_for(reader.read(), 10)
        writer.close()
        status, body = await _health(gw)
        assert "capped" not in body["connections"]
    finally:
        await gw.stop()


async def test_healthz_fails_when_most_recent_mails_got_the_gateways_own_4xx(
    running: tuple[Gateway, ProviderSimulator],
) -> None:
    gw, _ = running
    for _ in range(3):  # what the SMTP server reports for each reply it sends
        gw.metrics.smtp_reply(replies.ERROR.answer())
    gw.metrics.smtp_reply(replies.QUOTA_SENDER.format(limit=1, sender="a@example.com"))  # the client's matter
    status, body = await _health(gw)
    assert status == 503 and body["status"] == "failing"
    assert body["replies"] == {"ok": False, "own_refusals": 3, "taken": 0, "seconds": 300.0}
    for _ in range(4):
        gw.metrics.smtp_reply(replies.queued(["0123456789abcdef"]))
    status, body = await _health(gw)
    assert status == 200 and body["status"] == "degraded" and body["replies"]["taken"] == 4


async def test_unknown_receipts_are_counted(running: tuple[Gateway, ProviderSimulator]) -> None:
    gw, _ = running
    query = "etat_e=31083&ref_accuse=PLANTED1&numero=0145678900&nb_page=0"
    assert await _get(gw, f"/receipt/{SECRET}?{query}") == (200, "OK\n")  # nothing in flight: ignored
    _, text = await _get(gw, "/metrics")
    assert _samples(text)[("faxgw_unknown_receipts_total", (("outcome", "ignored"),))] == 1
