"""The provider simulator over real HTTP: its checks, its downloads, its receipts and its faults."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from email import message_from_bytes, policy
from email.message import Message
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.delivery.simulator import MASK, ProviderSimulator
from gateway.settings import HostPort
from tests.support_docs import image
from tests.support_docs import pdf as minimal_pdf
from tests.support_simulator import SIM_EMAIL, SIM_PASSWORD, DocumentServer, SimFactory


class CallbackSink:
    """The gateway's side of the receipt callback: records each call; answers ``statuses`` in turn, then 200."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []
        self.statuses: list[int] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.calls.append(dict(request.query))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200, text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/receipt/s3cret", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/receipt/s3cret"  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class MailSink:
    """An aiosmtpd handler keeping every message."""

    def __init__(self) -> None:
        self.messages: list[tuple[Envelope, Message]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append((envelope, message_from_bytes(envelope.content, policy=policy.default)))
        return "250 2.0.0 Ok"


@pytest.fixture
async def callbacks() -> AsyncIterator[CallbackSink]:
    sink = CallbackSink()
    await sink.start()
    try:
        yield sink
    finally:
        await sink.stop()


@pytest.fixture
async def mailbox() -> AsyncIterator[tuple[MailSink, HostPort]]:
    sink = MailSink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(sink, hostname="sink.test"), "127.0.0.1", 0)
    try:
        yield sink, HostPort("127.0.0.1", server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def fax(sim: ProviderSimulator | str, *, url: str = "", number: str = "0145678900",
              **extra: str) -> tuple[int, str]:
    """One submission the way the gateway makes it; (HTTP status, answer)."""
    endpoint = sim if isinstance(sim, str) else sim.url
    params = {"email": SIM_EMAIL, "pass": SIM_PASSWORD, "fax": number, "ref": "job-1", "url": url, "ref_accuse": "1"}
    params.update(extra)
    async with aiohttp.ClientSession() as session, session.get(endpoint, params=params) as resp:
        return resp.status, await resp.text()


FIXED_CLOCK = datetime(2026, 11, 30, 14, 3, 27)


async def test_accepts_downloads_and_calls_back(sim_factory: SimFactory, documents: DocumentServer,
                                                callbacks: CallbackSink) -> None:
    sim = await sim_factory(callback_url=callbacks.url, clock=lambda: FIXED_CLOCK)
    status, answer = await fax(sim, url=documents.add("/three.pdf", minimal_pdf(3)))
    assert status == 200 and answer.startswith("113-")
    ref = answer[4:]
    (cb,) = await sim.wait_callbacks(1)
    assert cb.status == 200
    assert callbacks.calls == [{"etat_e": "0", "ref_accuse": ref, "numero": "0145678900", "nb_page": "3",
                                "heure": "14:03", "validated": "1"}]
    assert documents.hits == ["/three.pdf"]
    assert sim.requests[0].params["pass"] == MASK and sim.requests[0].answer == answer


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "TIFF"])
async def test_images_are_accepted_as_one_page(fmt: str, sim_factory: SimFactory, documents: DocumentServer,
                                               callbacks: CallbackSink) -> None:
    sim = await sim_factory(callback_url=callbacks.url)
    status, answer = await fax(sim, url=documents.add("/img", image(fmt), "application/octet-stream"))
    assert answer.startswith("113-")
    await sim.wait_callbacks(1)
    assert callbacks.calls[0]["nb_page"] == "1"


@pytest.mark.parametrize(("body", "code"), [
    (b"", "111"),
    (b"%PDF-1.4\n" + b"0" * (1_048_577 - 9), "110"),
    (b"plain text is not a fax\n" * 10, "109"),
    (b"<html><body>hello</body></html>", "109"),
], ids=["empty", "over-1MB", "text", "html"])
async def test_refuses_empty_too_big_and_wrong_type(body: bytes, code: str, simulator: ProviderSimulator,
                                                    documents: DocumentServer) -> None:
    assert (await fax(simulator, url=documents.add("/doc", body)))[1] == f"{code}-"
    assert documents.hits == ["/doc"]


async def test_exactly_one_megabyte_is_not_too_big(simulator: ProviderSimulator, documents: DocumentServer) -> None:
    pdf = minimal_pdf()
    body = pdf + b"\n%" + b"x" * (1_048_576 - len(pdf) - 2)
    assert len(body) == 1_048_576
    assert (await fax(simulator, url=documents.add("/big.pdf", body)))[1].startswith("113-")


async def test_unusable_url_is_105(simulator: ProviderSimulator, documents: DocumentServer) -> None:
    assert (await fax(simulator, url=documents.base + "/missing.pdf"))[1] == "105-"
    documents.add("/real.pdf", minimal_pdf())
    assert (await fax(simulator, url=documents.base + "/redirect?to=/real.pdf"))[1] == "105-"
    assert "/real.pdf" not in documents.hits  # the redirect was not followed
    assert (await fax(simulator, url="ftp://127.0.0.1/x.pdf"))[1] == "105-"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert (await fax(simulator, url=f"http://127.0.0.1:{closed}/x.pdf"))[1] == "105-"


@pytest.mark.parametrize(("change", "code"), [
    ({"email": ""}, "101"), ({"pass": ""}, "102"), ({"pass": "wrong"}, "103"), ({"email": "x@y.z"}, "103"),
    ({"url": ""}, "104"), ({"fax": ""}, "106"), ({"fax": "12"}, "107"), ({"fax": " 33145678900"}, "107"),
    ({"fax": "01 45 67 89 00"}, "107"),
])
async def test_account_and_number_checks(change: dict[str, str], code: str, simulator: ProviderSimulator) -> None:
    assert (await fax(simulator, **{"url": "http://127.0.0.1:9/x.pdf", **change}))[1] == f"{code}-"


async def test_balance_runs_out(sim_factory: SimFactory, documents: DocumentServer) -> None:
    sim = await sim_factory(balance=1)
    url = documents.add("/d.pdf", minimal_pdf())
    assert (await fax(sim, url=url))[1].startswith("113-")
    assert (await fax(sim, url=url))[1] == "108-"


async def test_unreadable_pdf_is_accepted_then_fails_at_conversion(
        sim_factory: SimFactory, documents: DocumentServer, callbacks: CallbackSink) -> None:
    sim = await sim_factory(callback_url=callbacks.url)
    assert (await fax(sim, url=documents.add("/bad.pdf", b"%PDF-1.4\nnot really a pdf\n")))[1].startswith("113-")
    await sim.wait_callbacks(1)
    assert callbacks.calls[0]["etat_e"] == "25012" and callbacks.calls[0]["nb_page"] == "0"


async def test_receipt_code_per_number(sim_factory: SimFactory, documents: DocumentServer,
                                       callbacks: CallbackSink) -> None:
    sim = await sim_factory(callback_url=callbacks.url)
    sim.receipt_codes["+33145678900"] = "31064"
    url = documents.add("/d.pdf", minimal_pdf())
    await fax(sim, url=url, number="0145678900")
    await fax(sim, url=url, number="0033145678901")
    await sim.wait_callbacks(2)
    codes = {c["numero"]: (c["etat_e"], c["validated"]) for c in callbacks.calls}
    assert codes == {"0145678900": ("31064", "0"), "0033145678901": ("0", "1")}


# --- faults --------------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "status", "body"), [
    ("5xx", 500, "Internal Server Error"), ("html", 200, "<html>"), ("empty", 200, ""), ("no-credit", 200, "108-"),
    ("code:112", 200, "112-"),
])
async def test_answer_faults(fault: str, status: int, body: str, simulator: ProviderSimulator) -> None:
    simulator.set_fault(fault)
    got_status, got_body = await fax(simulator, url="http://127.0.0.1:9/x.pdf")
    assert got_status == status and body in got_body and (body or got_body == "")
    assert simulator.fault == fault  # sticky


async def test_one_shot_fault_then_normal(simulator: ProviderSimulator, documents: DocumentServer) -> None:
    simulator.set_fault("5xx", once=True)
    url = documents.add("/d.pdf", minimal_pdf())
    assert (await fax(simulator, url=url))[0] == 500
    assert (await fax(simulator, url=url))[1].startswith("113-")


async def test_no_ref_sends_the_fax_and_calls_back_with_its_reference(
        sim_factory: SimFactory, documents: DocumentServer, callbacks: CallbackSink) -> None:
    sim = await sim_factory(callback_url=callbacks.url)
    sim.set_fault("no-ref")
    assert (await fax(sim, url=documents.add("/d.pdf", minimal_pdf())))[1] == "113"
    await sim.wait_callbacks(1)
    assert callbacks.calls[0]["ref_accuse"].isdigit()


async def test_reset_closes_mid_answer_after_sending(sim_factory: SimFactory, documents: DocumentServer,
                                                     callbacks: CallbackSink) -> None:
    sim = await sim_factory(callback_url=callbacks.url)
    sim.set_fault("reset")
    with pytest.raises(aiohttp.ClientPayloadError):
        await fax(sim, url=documents.add("/d.pdf", minimal_pdf()))
    await sim.wait_callbacks(1)
    assert sim.requests[0].answer.endswith("(reset)")


async def test_hang_never_answers(simulator: ProviderSimulator) -> None:
    simulator.set_fault("hang")
    task = asyncio.ensure_future(fax(simulator, url="http://127.0.0.1:9/x.pdf"))
    await simulator.wait_requests(1)
    done, _ = await asyncio.wait([task], timeout=0.3)
    assert not done
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_early_callback_arrives_before_the_answer(sim_factory: SimFactory, documents: DocumentServer,
                                                        callbacks: CallbackSink) -> None:
    sim = await sim_factory(callback_url=callbacks.url, callback_delay=5.0)
    sim.set_fault("early-callback")
    _, answer = await fax(sim, url=documents.add("/d.pdf", minimal_pdf()))
    assert len(callbacks.calls) == 1 and callbacks.calls[0]["ref_accuse"] == answer[4:]


async def test_duplicate_callback(sim_factory: SimFactory, documents: DocumentServer, callbacks: CallbackSink) -> None:
    sim = await sim_factory(callback_url=callbacks.url)
    sim.set_fault("duplicate-callback")
    _, answer = await fax(sim, url=documents.add("/d.pdf", minimal_pdf()))
    await sim.wait_callbacks(2)
    assert [c["ref_accuse"] for c in callbacks.calls] == [answer[4:]] * 2


async def test_callback_is_retried_until_taken(sim_factory: SimFactory, documents: DocumentServer,
                                               callbacks: CallbackSink) -> None:
    callbacks.statuses = [503]
    sim = await sim_factory(callback_url=callbacks.url, callback_delay=0.01)
    await fax(sim, url=documents.add("/d.pdf", minimal_pdf()))
    await sim.wait_callbacks(2)
    assert [c.status for c in sim.callbacks] == [503, 200] and callbacks.calls[0] == callbacks.calls[1]


async def test_without_an_account_any_credentials_do(sim_factory: SimFactory) -> None:
    sim = await sim_factory(email=None, password=None)
    assert (await fax(sim, url="", **{"email": "demo@x.test", "pass": "anything"}))[1] == "104-"
    assert (await fax(sim, url="", **{"pass": ""}))[1] == "102-"


async def test_bind_error_is_raised(simulator: ProviderSimulator) -> None:
    other = ProviderSimulator("127.0.0.1", simulator.port)
    with pytest.raises(OSError):
        await other.start()


def test_unknown_fault_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        ProviderSimulator(email="a@b.c", password="p").set_fault("explode")


async def test_receipt_copy_mailed_in_french(sim_factory: SimFactory, documents: DocumentServer,
                                             mailbox: tuple[MailSink, HostPort]) -> None:
    sink, relay = mailbox
    sim = await sim_factory(mail_relay=relay, receipt_code="31064")
    _, answer = await fax(sim, url=documents.add("/d.pdf", minimal_pdf()), accuse_email="ar-tok@ar.fax.local")
    await sim.wait_mails(1)
    ((envelope, msg),) = sink.messages
    assert envelope.rcpt_tos == ["ar-tok@ar.fax.local"]
    assert answer[4:] in str(msg["Subject"]) and "occupé" in str(msg["Subject"])
    text = msg.get_payload(decode=True)
    assert isinstance(text, bytes) and "Numéro du destinataire : 0145678900" in text.decode("utf-8")


# --- control endpoints and the command ---------------------------------------------------------


async def test_control_endpoint_switches_faults(simulator: ProviderSimulator, documents: DocumentServer) -> None:
    base = simulator.url.rsplit("/", 1)[0]
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/_sim/fault", json={"fault": "html", "once": True}) as resp:
            assert resp.status == 200 and (await resp.json())["fault"] == "html"
        async with session.post(f"{base}/_sim/fault", json={"fault": "boom"}) as resp:
            assert resp.status == 400
        async with session.post(f"{base}/_sim/fault", json={"receipt_codes": {"0145678900": "31083"}}) as resp:
            assert resp.status == 200
    assert "<html>" in (await fax(simulator, url="http://127.0.0.1:9/x.pdf"))[1]
    assert (await fax(simulator, url=documents.add("/d.pdf", minimal_pdf())))[1].startswith("113-")
    assert simulator.receipt_codes == {"0145678900": "31083"}
    async with aiohttp.ClientSession() as session, session.get(f"{base}/_sim/requests") as resp:
        listing: dict[str, Any] = await resp.json()
    assert len(listing["requests"]) == 2 and SIM_PASSWORD not in str(listing)


def test_simulate_provider_command(tmp_path: Path) -> None:
    env = {**os.environ, "FAX_GATEWAY_PROVIDER_PASSWORD": SIM_PASSWORD, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "simulate-provider", "--listen", "127.0.0.1:0", "--email", SIM_EMAIL],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "provider simulator listening on http://127.0.0.1:" in line
        url = line.split(" on ")[1].split()[0]
        assert asyncio.run(fax(url, url="")) == (200, "104-")
        assert asyncio.run(fax(url, url="", **{"pass": "wrong"})) == (200, "103-")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert SIM_PASSWORD not in err


def test_simulate_provider_help_lists_every_fault_and_fault_starts_one() -> None:
    from gateway.delivery.faults import FAULT_HELP
    from gateway.delivery.simulator import FAULTS

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    shown = subprocess.run([sys.executable, "-m", "gateway", "simulate-provider", "--help"], capture_output=True,
                           text=True, env=env, timeout=60).stdout  # fmt: skip
    for name in (*FAULTS, "code:NNN", "delay:S"):
        assert f"  {name} " in shown and FAULT_HELP[name].split(";")[0] in " ".join(shown.split()), name
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "simulate-provider", "--listen", "127.0.0.1:0", "--fault", "code:109"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split(" on ")[1].split()[0]
        assert asyncio.run(fax(url, url="http://127.0.0.1:9/d.pdf")) == (200, "109-")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
