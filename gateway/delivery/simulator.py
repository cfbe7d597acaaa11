"""A stand-in for 123-fax.net: the same endpoint and answers, over real HTTP. No fax is ever sent.

In: ``GET /http.php?email=&pass=&fax=&ref=&url=&ref_accuse=1[&accuse_email=]``.
Out: ``CODE-ref_accuse``. The checks run in the provider's order: account
(101, 102, 103), document URL present (104), number (106, 107), balance (108);
then the document is really downloaded (no redirect followed): unreachable or
not 200 -> 105, empty -> 111, over 1 MB -> 110, not PDF/TIFF/JPEG/PNG/GIF by
content -> 109; otherwise ``113-<fresh reference>``. After ``callback_delay``
the receipt (AR) callback is made to ``callback_url`` and, when ``accuse_email``
was given and a mail relay is set, a receipt copy is mailed in French.

Faults (``set_fault(name, once=...)`` or ``POST /_sim/fault`` with JSON
``{"fault": "5xx", "once": true}``) imitate what a real provider does on a bad
day. Whether the fax went out matters to the gateway, so it is stated for each:
``5xx``, ``html`` (a 200 maintenance page), ``hang`` (never answers), ``empty``
(an empty 200) and ``no-credit`` (108) send nothing; ``reset`` (the connection
closes mid-answer) and ``no-ref`` (113 without a reference) send the fax and
call back with its reference; ``early-callback`` calls back before answering;
``duplicate-callback`` calls back twice at once; ``code:NNN`` answers NNN
(``code:113`` accepts without checking); ``delay:S`` answers S seconds late, as
it would have at once (a slow provider: the fax is sent and called back after
the answer). ``receipt_codes`` maps a number to the
receipt code it always gets (``{"+33145678900": "31064"}``: line busy).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import os
import re
import secrets
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import aiosmtplib
import magic
import phonenumbers
from aiohttp import web
from yarl import URL

from gateway.arcodes import lookup
from gateway.delivery.faults import FAULT_HELP, PATTERNS, is_fault
from gateway.settings import HostPort, parse_hostport

log = logging.getLogger("gateway.simulator")

MAX_DOCUMENT_BYTES = 1_048_576
DOCUMENT_TYPES = {"application/pdf", "image/tiff", "image/jpeg", "image/png", "image/gif"}
FAULTS = tuple(name for name in FAULT_HELP if name not in PATTERNS)
MASK = "********"

@dataclass
class SimRequest:
    """One request to ``http.php``: its parameters (password masked) and what was answered."""

    params: dict[str, str]
    answer: str = ""


@dataclass(frozen=True)
class SimCallback:
    """One receipt callback attempt: its parameters and the HTTP status it got (0: no connection)."""

    params: dict[str, str]
    status: int


@dataclass
class _Fax:
    """An accepted submission, for its receipt."""

    ref: str
    number: str
    pages: int
    accuse_email: str
    job_ref: str
    receipt_code: str = "0"


def _normal(number: str) -> str:
    try:
        return phonenumbers.format_number(phonenumbers.parse(number, "FR"), phonenumbers.PhoneNumberFormat.E164)
    except phonenumbers.NumberParseException:
        return number


class ProviderSimulator:
    """The simulated provider; ``email``/``password`` None: any non-empty account is accepted (the demo)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, email: str | None = None, password: str | None = None,
                 callback_url: str | None = None, callback_delay: float = 0.05, receipt_code: str = "0",
                 mail_relay: HostPort | None = None, balance: int | None = None, callback_tries: int = 3,
                 clock: Callable[[], datetime] = datetime.now) -> None:
        self.host, self.port = host, port
        self.email, self.password = email, password
        self.callback_url, self.callback_delay, self.callback_tries = callback_url, callback_delay, callback_tries
        self.receipt_code = receipt_code
        self.receipt_codes: dict[str, str] = {}
        self.mail_relay, self.balance, self.clock = mail_relay, balance, clock
        self.fault: str | None = None
        self.fault_once = False
        self.requests: list[SimRequest] = []
        self.callbacks: list[SimCallback] = []
        self.mails: list[EmailMessage] = []
        self.open_requests = self.most_open = 0
        self._changed = asyncio.Condition()
        self._released = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._refs: set[str] = set()
        self._magic_lock = threading.Lock()
        self._magic: Any = None
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/http.php"

    def set_fault(self, fault: str | None, *, once: bool = False) -> None:
        """Switch a fault on (``None``: off); ``once``: only for the next request."""
        if fault is not None and not is_fault(fault):
            raise ValueError(f"unknown fault {fault!r}; one of {', '.join((*FAULTS, *PATTERNS))}")
        self.fault, self.fault_once = fault, once

    async def start(self) -> None:
        """Return once listening (``port`` is then the real one); raises bind errors."""
        self._magic = await asyncio.to_thread(magic.Magic, mime=True)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        app = web.Application()
        app.add_routes([web.get("/http.php", self._http_php), web.post("/_sim/fault", self._set_fault),
                        web.get("/_sim/requests", self._list)])
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        try:
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port)
            await site.start()
        except BaseException:
            await self.stop()
            raise
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.port

    async def stop(self) -> None:
        self._released.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def wait_requests(self, n: int, timeout: float = 10.0) -> list[SimRequest]:
        """Wait until ``n`` requests have arrived; raises TimeoutError after ``timeout``."""
        await self._wait(lambda: len(self.requests) >= n, timeout)
        return self.requests

    async def wait_callbacks(self, n: int, timeout: float = 10.0) -> list[SimCallback]:
        """Wait until ``n`` callback attempts have completed (whatever their status)."""
        await self._wait(lambda: len(self.callbacks) >= n, timeout)
        return self.callbacks

    async def wait_mails(self, n: int, timeout: float = 10.0) -> list[EmailMessage]:
        await self._wait(lambda: len(self.mails) >= n, timeout)
        return self.mails

    async def _wait(self, predicate: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- the provider's endpoint -------------------------------------------------

    async def _http_php(self, request: web.Request) -> web.StreamResponse:
        """Counts the requests open at once (``most_open``: a client's concurrency as seen from here)."""
        self.open_requests += 1
        self.most_open = max(self.most_open, self.open_requests)
        try:
            return await self._answer(request)
        finally:
            self.open_requests -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        params = {k: request.query.getone(k) for k in request.query}
        record = SimRequest({k: (MASK if k == "pass" and v else v) for k, v in params.items()})
        self.requests.append(record)
        await self._notify()
        fault = self.fault
        if self.fault_once:
            self.fault, self.fault_once = None, False
        if fault is not None and fault.startswith("delay:"):
            await asyncio.sleep(float(fault[6:]))  # a slow provider, then the answer it would have given
            fault = None
        if fault == "hang":
            record.answer = "(hang)"
            await self._released.wait()
            raise web.HTTPServiceUnavailable()
        canned = {"5xx": (500, "text/html", "<html><body>500 Internal Server Error</body></html>"),
                  "html": (200, "text/html", "<html><body><h1>Maintenance en cours</h1></body></html>"),
                  "empty": (200, "text/plain", "")}
        if fault in canned:
            status, ctype, text = canned[fault]
            record.answer = f"({fault})"
            return web.Response(status=status, text=text, content_type=ctype)
        if fault == "no-credit":
            code, fax = 108, None
        elif fault is not None and fault.startswith("code:"):
            code, fax = int(fault[5:]), None
            if code == 113:
                fax = _Fax(self._fresh_ref(), params.get("fax", ""), 1, params.get("accuse_email", ""),
                           params.get("ref", ""))
        else:
            code, fax = await self._check(params)
        answer = f"{code}-"
        if fax is not None:
            if self.balance is not None:
                self.balance -= 1
            fax.receipt_code = self._receipt_code_for(fax)
            answer = f"113-{fax.ref}" if params.get("ref_accuse") == "1" and fault != "no-ref" else "113"
            if fault == "early-callback":
                await self._receipt(fax, copies=1, delay=0.0)
            else:
                self._spawn(self._receipt(fax, copies=2 if fault == "duplicate-callback" else 1,
                                          delay=self.callback_delay))
        record.answer = answer
        log.info("simulator: request ref=%s fax=%s answered %s", params.get("ref", ""), params.get("fax", ""), answer)
        if fault == "reset":
            record.answer = f"{answer} (reset)"
            return await self._reset(request, answer)
        return web.Response(text=answer, content_type="text/plain")

    async def _reset(self, request: web.Request, answer: str) -> web.StreamResponse:
        """Start the answer, then close the connection in the middle of it."""
        resp = web.StreamResponse(headers={"Content-Type": "text/plain", "Content-Length": str(len(answer) + 8)})
        await resp.prepare(request)
        await resp.write(answer[:2].encode())
        if request.transport is not None:
            request.transport.close()
        raise asyncio.CancelledError  # aiohttp drops a handler cancelled after its peer is gone

    async def _check(self, params: Mapping[str, str]) -> tuple[int, _Fax | None]:
        """The provider's checks in its order; the code, and the fax when accepted (113)."""
        if not params.get("email"):
            return 101, None
        if not params.get("pass"):
            return 102, None
        if not (_same(params["email"], self.email) and _same(params["pass"], self.password)):
            return 103, None
        if not params.get("url"):
            return 104, None
        number = params.get("fax", "")
        if not number:
            return 106, None
        if not _plausible(number):
            return 107, None
        if self.balance is not None and self.balance <= 0:
            return 108, None
        code, pages = await self._download(params["url"])
        if code:
            return code, None
        return 113, _Fax(self._fresh_ref(), number, pages, params.get("accuse_email", ""), params.get("ref", ""))

    async def _download(self, url: str) -> tuple[int, int]:
        """Fetch the document as the provider does: (refusal code or 0, pages; -1 pages: not readable)."""
        assert self._session is not None
        data = bytearray()
        try:
            target = URL(url, encoded=True)
            if target.scheme not in ("http", "https") or not target.host:
                return 105, 0
            async with self._session.get(target, allow_redirects=False) as resp:
                if resp.status != 200:
                    log.info("simulator: document download answered HTTP %s: 105", resp.status)
                    return 105, 0
                async for chunk in resp.content.iter_chunked(65536):
                    data += chunk
                    if len(data) > MAX_DOCUMENT_BYTES:
                        return 110, 0
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            # The URL may carry a signature: the failure's type only, never its text.
            log.info("simulator: the document could not be downloaded (%s): 105", exc or "no detail")
            return 105, 0
        if not data:
            return 111, 0
        mime = await asyncio.to_thread(self._mime, bytes(data))
        if mime not in DOCUMENT_TYPES:
            return 109, 0
        if mime != "application/pdf":
            return 0, 1
        return 0, await asyncio.to_thread(_pdf_pages, bytes(data))

    def _mime(self, data: bytes) -> str:
        with self._magic_lock:  # one libmagic handle: not safe across threads
            return str(self._magic.from_buffer(data))

    def _fresh_ref(self) -> str:
        while (ref := str(1_000_000_000 + secrets.randbelow(9_000_000_000))) in self._refs:
            pass
        self._refs.add(ref)
        return ref

    def _receipt_code_for(self, fax: _Fax) -> str:
        if fax.pages < 0:
            return "25012"  # a PDF the provider cannot read fails at conversion, after the 113
        wanted = _normal(fax.number)
        return next((code for num, code in self.receipt_codes.items() if _normal(num) == wanted), self.receipt_code)

    # --- receipts ------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _receipt(self, fax: _Fax, *, copies: int, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        ok = fax.receipt_code == "0"
        params = {"etat_e": fax.receipt_code, "ref_accuse": fax.ref, "numero": fax.number,
                  "nb_page": str(fax.pages if ok else 0), "heure": self.clock().strftime("%H:%M"),
                  "validated": "1" if ok else "0"}
        if self.callback_url:
            await asyncio.gather(*(self._callback(params) for _ in range(copies)))
        if fax.accuse_email and self.mail_relay is not None:
            await self._mail(fax, params)

    async def _callback(self, params: dict[str, str]) -> None:
        """GET the callback URL; a non-200 answer is retried, like a provider that wants its receipt taken."""
        assert self._session is not None and self.callback_url
        sep = "&" if "?" in self.callback_url else "?"
        url = URL(f"{self.callback_url}{sep}{urlencode(params, quote_via=quote, safe='')}", encoded=True)
        for attempt in range(self.callback_tries):
            status = 0
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with self._session.get(url, allow_redirects=False) as resp:
                    status = resp.status
            self.callbacks.append(SimCallback(dict(params), status))
            await self._notify()
            if status == 200:
                return
            if attempt + 1 < self.callback_tries:
                await asyncio.sleep(self.callback_delay)
        log.warning("simulator: receipt callback for %s not taken (last status %s)", params["ref_accuse"], status)

    async def _mail(self, fax: _Fax, params: Mapping[str, str]) -> None:
        assert self.mail_relay is not None
        text = lookup(fax.receipt_code).french or "code inconnu"
        msg = EmailMessage()
        msg["From"] = "123-fax.net <accuse@123-fax.net>"
        msg["To"] = fax.accuse_email
        msg["Subject"] = f"Accusé de réception de votre fax n° {fax.ref} : {text}"
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = make_msgid(domain="123-fax.net")
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(
            f"Bonjour,\n\nVoici l'accusé de réception de votre fax.\n\n"
            f"Référence d'envoi : {fax.ref}\nVotre référence : {fax.job_ref}\n"
            f"Numéro du destinataire : {fax.number}\nÉtat : {fax.receipt_code} = {text}\n"
            f"Pages transmises : {params['nb_page']}\nHeure d'arrivée : {params['heure']}\n\n"
            "Message automatique du simulateur 123-fax.net : aucun fax n'a réellement été envoyé.\n")
        try:
            await aiosmtplib.send(msg, hostname=self.mail_relay.host, port=self.mail_relay.port, start_tls=False,
                                  sender="accuse@123-fax.net", recipients=[fax.accuse_email], timeout=10)
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.warning("simulator: receipt copy for %s not mailed: %s", fax.ref, exc or "no detail")
            return
        self.mails.append(msg)
        await self._notify()

    # --- control endpoints (for a simulator running in another process) -------------

    async def _set_fault(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            if "fault" in body:
                self.set_fault(body["fault"], once=bool(body.get("once", False)))
            if "receipt_code" in body:
                self.receipt_code = str(body["receipt_code"])
            if "receipt_codes" in body:
                self.receipt_codes = {str(k): str(v) for k, v in dict(body["receipt_codes"]).items()}
            if "balance" in body:
                self.balance = None if body["balance"] is None else int(body["balance"])
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"fault": self.fault, "once": self.fault_once, "receipt_code": self.receipt_code,
                                  "receipt_codes": self.receipt_codes, "balance": self.balance})

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": [asdict(r) for r in self.requests],
                                  "callbacks": [asdict(c) for c in self.callbacks]})


def _same(given: str, expected: str | None) -> bool:
    """Credentials check; a simulator made without an account (``None``) takes any."""
    return expected is None or secrets.compare_digest(given.encode(), expected.encode())


def _plausible(number: str) -> bool:
    """Digits (with ``+`` or ``00`` for abroad) that make a possible number; a ``+`` turned space fails."""
    if not re.fullmatch(r"\+?\d{6,20}", number):
        return False
    try:
        return bool(phonenumbers.is_possible_number(phonenumbers.parse(number, "FR")))
    except phonenumbers.NumberParseException:
        return False


def _pdf_pages(data: bytes) -> int:
    import pikepdf

    try:
        with pikepdf.open(io.BytesIO(data)) as pdf:
            return len(pdf.pages)
    except pikepdf.PdfError:
        return -1


def main(args: argparse.Namespace) -> int:
    """``fax-gateway simulate-provider``: run in the foreground until SIGINT or SIGTERM."""
    listen = parse_hostport("--listen", args.listen)
    relay = parse_hostport("--mail-relay", args.mail_relay) if args.mail_relay else None
    sim = ProviderSimulator(listen.host, listen.port, email=args.email,
                            password=args.password or os.environ.get("FAX_GATEWAY_PROVIDER_PASSWORD") or None,
                            callback_url=args.callback_url, callback_delay=args.callback_delay,
                            receipt_code=args.receipt_code, mail_relay=relay, balance=args.balance)
    if args.fault:
        sim.set_fault(args.fault)

    async def run() -> None:
        await sim.start()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"provider simulator listening on {sim.url} (no fax is sent)", flush=True)
        try:
            await stop.wait()
        finally:
            await sim.stop()

    asyncio.run(run())
    return 0
