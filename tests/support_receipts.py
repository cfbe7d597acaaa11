"""The receipt stage and the notifier on loopback, without intake or the worker.

:class:`ReceiptRig` opens a store on a temporary spool, serves the receipt
callback on a real HTTP listener (port 0) and runs a :class:`Notifier` against
a :class:`~tests.support_sink.Sink` relay. Jobs are put in the store through
the same ``Store`` API intake and the worker use; ``rig.get(...)`` calls the
callback with a real aiohttp client; ``await rig.notifier.drain()`` sends what
is due, with a clock that moves only when told.

Fixtures (a plugin of ``tests/conftest.py``: ask for them, never import them):
``make_rig`` starts rigs with settings overrides; ``running`` starts the whole
daemon (:class:`~gateway.daemon.app.Gateway`)
for the end-to-end tests: mail in over SMTP, the provider simulator calling
the receipt callback for real, receipts out through the sink. Its simulator
holds every receipt while ``sim.gate`` is clear (it is set by default), so a
test can change the world before the provider calls back.
"""

from __future__ import annotations

import asyncio
import email.policy
import smtplib
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

import aiohttp
import pytest

from gateway.daemon.app import Gateway
from gateway.daemon.run import callback_url
from gateway.delivery.simulator import ProviderSimulator
from gateway.notify.notifier import Notifier
from gateway.receipts.callback import Receipts
from gateway.settings import Settings
from gateway.spool import FAX_NAME, RAW_NAME
from gateway.store import FINAL_STATES, Job, NewMessage, State, Store, new_id
from tests.support_clock import FakeClock
from tests.support_delivery import NUMBER, LoopbackRig, drain_stages
from tests.support_net import free_port
from tests.support_settings import SettingsFactory, deep_merge
from tests.support_simulator import SIM_EMAIL, SIM_PASSWORD, provider_env, provider_table
from tests.support_sink import Sink
from tests.support_smtp import fax_mail

SECRET = "cb-Secret-4f9a1c"


def rig_table(relay_port: int, **notify: Any) -> dict[str, Any]:
    """Settings (TOML shape) for a rig whose relay is the sink on ``relay_port``."""
    return {"notify": {"relay": f"127.0.0.1:{relay_port}", **notify}}


def rig_env() -> dict[str, str]:
    return {"FAX_GATEWAY_CALLBACK_SECRET": SECRET}


class ReceiptRig(LoopbackRig):
    def __init__(self, settings: Settings, clock: FakeClock | None = None) -> None:
        super().__init__(settings, clock)
        self.notifier = Notifier(settings, self.store, self.spool, clock=self.clock)
        self.receipts = Receipts(settings, self.store, on_notice=self.notifier.wake)
        self.http.add_routes(self.receipts.routes())
        self.session: aiohttp.ClientSession | None = None

    async def start(self, *, notifier: bool = False) -> None:
        await asyncio.to_thread(self.spool.create)
        await self.store.open()
        await self.http.start()
        await self.receipts.start()
        if notifier:  # most tests drive the notifier with drain() alone
            await self.notifier.start()
        self.session = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        await self.notifier.stop()
        await self.receipts.stop()
        await self.http.stop()
        await self.store.close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http.port}"

    async def get(self, params: dict[str, str] | Sequence[tuple[str, str]], *, secret: str = SECRET,
                  path: str | None = None) -> tuple[int, str]:  # fmt: skip
        assert self.session is not None
        url = self.base + (path if path is not None else f"/receipt/{secret}")
        async with self.session.get(url, params=params) as resp:
            return resp.status, await resp.text()

    async def receipt(self, ref: str, code: str = "0", pages: int = 3, *, numero: str = "0145678900",
                      heure: str = "14:32") -> tuple[int, str]:  # fmt: skip
        return await self.get({"etat_e": code, "ref_accuse": ref, "numero": numero, "nb_page": str(pages),
                               "heure": heure, "validated": "1" if code == "0" else "0"})  # fmt: skip

    async def add_job(self, *, number: str = NUMBER, state: State = State.SUBMITTED, ref: str = "", pages: int = 3,
                      envelope_from: str = "alice@example.com", header_from: str = "Alice <alice@example.com>",
                      reply_to: str = "", subject: str = "Invoice 42", document: bytes = b"%PDF-1.4 doc\n",
                      message_id_header: str = "<orig-1@example.com>") -> Job:  # fmt: skip
        """A job as intake and the worker leave it (``ref``: its provider reference once submitted)."""
        message_id, job_id = new_id(), new_id()
        files = {RAW_NAME: b"Subject: x\r\n\r\nx\r\n", FAX_NAME: document}
        await asyncio.to_thread(self.spool.write, message_id, files)
        msg = NewMessage(
            id=message_id, envelope_from=envelope_from, header_from=header_from, reply_to=reply_to,
            message_id_header=message_id_header, subject=subject, date_header="Mon, 30 Nov 2026 09:00:00 +0100",
            client_addr="127.0.0.1", auth_user="", doc_type="pdf", doc_pages=pages, doc_bytes=len(document),
        )  # fmt: skip

        def put(s: Store) -> Job:
            s.add_message(msg, [(job_id, number, "")], "accepted for test")
            if state != State.QUEUED:
                s.transition(job_id, state, f"test: {state}", provider_ref=ref, submitted_at=s.clock())
            job = s.get_job(job_id)
            assert job is not None
            return job

        return await self.store.run(put)

    async def rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return await self.store.run(lambda s: [dict(r) for r in s.db.execute(sql, args)])

    async def events(self, job_id: str) -> list[str]:
        return [r["kind"] for r in await self.store.run(lambda s: s.timeline(job_id))]


RigFactory = Callable[..., Coroutine[Any, Any, ReceiptRig]]


@pytest.fixture
async def make_rig(make_settings: SettingsFactory, sink: Sink) -> AsyncIterator[RigFactory]:
    """``await make_rig(table, env=..., **notify)``: a started rig whose relay is the sink (stopped at the end)."""
    rigs: list[ReceiptRig] = []

    async def factory(table: dict[str, Any] | None = None, *, env: dict[str, str] | None = None,
                      **notify: Any) -> ReceiptRig:  # fmt: skip
        table = deep_merge(rig_table(sink.port, **notify), table or {})
        rig = ReceiptRig(make_settings(table, rig_env() if env is None else env))
        await rig.start()
        rigs.append(rig)
        return rig

    try:
        yield factory
    finally:
        for rig in rigs:
            await rig.stop()



# -- the whole daemon, end to end ----------------------------------------------------

E2E_TIMEOUT = 20.0


def send_mail(port: int, sender: str, to: str, pages: int, *, header_from: str = "", reply_to: str = "",
              subject: str = "Invoice 42") -> None:  # fmt: skip
    """Mail a PDF of ``pages`` pages to the gateway over SMTP (blocking: run it in a thread)."""
    raw = fax_mail(header_from or sender, to, body="Please fax the attached document.\n", pages=pages, subject=subject,
                   reply_to=reply_to, date="Mon, 30 Nov 2026 09:00:00 +0100", policy=email.policy.SMTP)  # fmt: skip
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail(sender, [to], raw)


class GatedSimulator(ProviderSimulator):
    """The provider simulator, whose receipts (callback and mail) wait while ``gate`` is clear."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("127.0.0.1", 0, **kwargs)
        self.gate = asyncio.Event()
        self.gate.set()

    # Wraps the simulator's one path to a receipt (callback and mail); fail loudly if it is renamed.
    assert callable(getattr(ProviderSimulator, "_receipt", None))

    async def _receipt(self, fax: Any, *, copies: int, delay: float) -> None:
        await self.gate.wait()
        await super()._receipt(fax, copies=copies, delay=delay)


class Running:
    """A started daemon, its simulator and the relay sink."""

    def __init__(self, gw: Gateway, sim: GatedSimulator, relay: Sink) -> None:
        self.gw, self.sim, self.sink = gw, sim, relay

    async def send(self, to: str = "0145678900@fax.local", *, pages: int = 2, sender: str = "scanner@example.com",
                   header_from: str = "", reply_to: str = "", subject: str = "Invoice 42") -> None:  # fmt: skip
        await asyncio.to_thread(send_mail, self.gw.smtp.port, sender, to, pages, header_from=header_from,
                                reply_to=reply_to, subject=subject)  # fmt: skip

    async def jobs(self) -> list[Job]:
        return await self.gw.store.run(lambda s: s.list_jobs())

    async def rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return await self.gw.store.run(lambda s: [dict(r) for r in s.db.execute(sql, args)])

    async def settle(self, jobs: int = 1) -> list[Job]:
        """Drive the worker, the receipt stage and the notifier until ``jobs`` jobs are final and their notices
        are out."""

        async def loop() -> list[Job]:
            while True:
                seen = len(self.sim.callbacks)
                await drain_stages(self.gw.worker, self.gw.receipts)
                found = await self.jobs()
                if len(found) >= jobs and all(j.state in FINAL_STATES for j in found):
                    await self.gw.notifier.drain()
                    return found
                await self.sim.wait_callbacks(seen + 1)  # the next receipt

        return await asyncio.wait_for(loop(), E2E_TIMEOUT)


StartGateway = Callable[..., Coroutine[Any, Any, Running]]


@pytest.fixture
async def running(make_settings: SettingsFactory, sink: Sink) -> AsyncIterator[StartGateway]:
    """``await running(table, clock=..., **simulator_keywords)``: the daemon against a simulator and the sink."""
    started: list[Gateway | ProviderSimulator] = []

    async def start(table: dict[str, Any] | None = None, *, clock: FakeClock | None = None,
                    **sim_kwargs: Any) -> Running:  # fmt: skip
        sim = GatedSimulator(**{"email": SIM_EMAIL, "password": SIM_PASSWORD, "callback_delay": 0.0, **sim_kwargs})
        await sim.start()
        started.append(sim)
        port = free_port()
        base = {"http": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"},
                "notify": {"relay": f"127.0.0.1:{sink.port}"}}  # fmt: skip
        settings = make_settings(deep_merge(deep_merge(base, provider_table(sim)), table or {}),
                                 provider_env() | rig_env())  # fmt: skip
        gw = Gateway(settings) if clock is None else Gateway(settings, clock=clock)
        await gw.start()
        started.append(gw)
        sim.callback_url = callback_url(settings, gw.http.port)
        return Running(gw, sim, sink)

    try:
        yield start
    finally:
        for part in reversed(started):
            await part.stop()
