"""The receipt stage and the notifier on loopback, without intake or the worker.

:class:`ReceiptRig` opens a store on a temporary spool, serves the receipt
callback on a real HTTP listener (port 0) and runs a :class:`Notifier` against
a :class:`~tests.support_sink.Sink` relay. Jobs are put in the store through
the same ``Store`` API intake and the worker use; ``rig.get(...)`` calls the
callback with a real aiohttp client; ``await rig.notifier.drain()`` sends what
is due, with a clock that moves only when told.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import aiohttp

from gateway.http import HttpServer
from gateway.notify import Notifier
from gateway.receipts import Receipts
from gateway.settings import Settings
from gateway.spool import FAX_NAME, RAW_NAME, Spool
from gateway.store import AsyncStore, Job, NewMessage, State, Store, new_id
from tests.support_delivery import FakeClock

SECRET = "cb-Secret-4f9a1c"
NUMBER = "+33145678900"


def rig_table(relay_port: int, **notify: Any) -> dict[str, Any]:
    """Settings (TOML shape) for a rig whose relay is the sink on ``relay_port``."""
    return {"notify": {"relay": f"127.0.0.1:{relay_port}", **notify}}


def rig_env() -> dict[str, str]:
    return {"FAX_GATEWAY_CALLBACK_SECRET": SECRET}


class ReceiptRig:
    def __init__(self, settings: Settings, clock: FakeClock | None = None) -> None:
        self.settings = settings
        self.clock = clock or FakeClock()
        self.spool = Spool(settings.spool.directory)
        self.store = AsyncStore(self.spool.db_path, clock=self.clock)
        self.http = HttpServer(settings)
        self.notifier = Notifier(settings, self.store, self.spool, clock=self.clock)
        self.receipts = Receipts(settings, self.store, wake=self.notifier.wake)
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

    async def job(self, job_id: str) -> Job:
        job = await self.store.run(lambda s: s.get_job(job_id))
        assert job is not None
        return job

    async def rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return await self.store.run(lambda s: [dict(r) for r in s.db.execute(sql, args)])

    async def events(self, job_id: str) -> list[str]:
        return [r["kind"] for r in await self.store.run(lambda s: s.timeline(job_id))]
