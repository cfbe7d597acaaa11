"""The 123-fax.net client: one HTTP GET per fax, its answer turned into an outcome.

In: a :class:`~gateway.outcomes.Submission` (job id, E.164 number, document
URL, optional receipt-copy address). Out: :class:`~gateway.outcomes.Accepted`
(answer 113 with the provider's reference), or one of the outcome exceptions
``PermanentFailure``, ``Hold``, ``Retry``, ``Ambiguous``; the worker alone turns
them into job state.

The line that matters is whether the request may have reached the provider. A
failure before the request headers were written (connection refused, DNS, TLS,
a timeout while connecting) is ``Retry``: no fax can have been sent. Any failure
after that (a timeout waiting for the answer, the connection closed mid-answer,
a 5xx, an HTML page, an empty body, a 113 without a reference) is ``Ambiguous``:
the fax may be on its way, and resending at once could fax a person twice.

The password travels in the query string, so the URL as sent is never logged
and no aiohttp exception text is ever passed on: reasons are written here and
run through :func:`gateway.redact.redact` when they quote anything received.
"""

from __future__ import annotations

import logging
import re
import types
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import phonenumbers
from yarl import URL

from gateway.answers import ANSWER_CODES, Answer
from gateway.outcomes import Accepted, Ambiguous, Hold, HoldKind, PermanentFailure, Retry, Submission
from gateway.redact import redact, secrets_of
from gateway.settings import Settings

log = logging.getLogger("gateway.provider")

__all__ = ["ANSWERS", "Answer", "ProviderClient", "build_query", "parse_answer", "wire_number"]

# A real answer is a dozen bytes; anything longer is not the provider talking.
MAX_ANSWER_BYTES = 4096


# The provider's answer codes (gateway.answers): code -> (what it means, the reason in English).
ANSWERS: Mapping[int, tuple[Answer, str]] = types.MappingProxyType(
    {code: (entry.answer, entry.english) for code, entry in ANSWER_CODES.items()}
)

# An answer: a code, then "-" and the reference (the reference may be empty).
_ANSWER = re.compile(r"(?P<code>\d{1,6})(?:-(?P<ref>[\x21-\x7e]{0,128}))?")
_HOLD_KINDS = {Answer.HOLD_CONFIG: HoldKind.CONFIG, Answer.HOLD_URL: HoldKind.URL, Answer.HOLD_CREDIT: HoldKind.CREDIT}


def wire_number(number: str, default_region: str, wire_format: str = "national") -> str:
    """The number as the provider wants it: national digits at home, ``00`` + country code abroad, or E.164."""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        raise PermanentFailure(f"the fax number {number!r} is not a number in international form") from None
    if wire_format == "e164":
        return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    national = phonenumbers.national_significant_number(parsed)
    if parsed.country_code == phonenumbers.country_code_for_region(default_region):
        return re.sub(r"\D", "", phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL))
    return f"00{parsed.country_code}{national}"


def build_query(settings: Settings, sub: Submission) -> str:
    """The encoded query string, in the documented order (``accuse_email`` last).

    ``quote_via=quote`` with no safe characters: ``+`` becomes ``%2B`` (never a
    space) and a presigned URL's ``&``, ``=``, ``%`` and ``/`` survive.
    """
    numbers = settings.numbers
    params = [
        ("email", settings.provider.email),
        ("pass", settings.provider.password.reveal()),
        ("fax", wire_number(sub.number, numbers.default_region, numbers.wire_format)),
        ("ref", sub.job_id),
        ("url", sub.document_url),
        ("ref_accuse", "1"),
    ]
    if sub.accuse_email:
        params.append(("accuse_email", sub.accuse_email))
    return urlencode(params, quote_via=quote, safe="")


def parse_answer(body: bytes, secrets: list[str]) -> Accepted:
    """Turn a 200 answer body into ``Accepted`` or raise the outcome its code means."""
    text = body.decode("utf-8", errors="replace").strip().lstrip("\ufeff").strip()
    m = _ANSWER.fullmatch(text)
    if m is None:
        shown = redact(re.sub(r"[^\x20-\x7e]+", " ", text)[:80], secrets)
        what = "an empty answer" if not text else f"an answer that is not CODE-reference ({shown!r})"
        raise Ambiguous(f"the provider sent {what}; the fax may have been accepted",
                        code="empty-answer" if not text else "not-an-answer")
    code, ref = int(m["code"]), m["ref"] or ""
    entry = ANSWERS.get(code)
    if entry is None:
        # The provider answered with a number, and only 113 means accepted: no fax
        # went out. It is not resent on its own (a new code could also be a new
        # kind of success): submissions pause until a person has looked.
        raise Hold(f"the provider answered with code {code}, which is not in its documented table; "
                   "it did not accept the fax: read the provider's notes, then release the job",
                   kind=HoldKind.CONFIG, code=str(code))
    outcome, words = entry
    if outcome is Answer.ACCEPTED:
        if not ref:
            raise Ambiguous("the provider answered 113 (accepted) without a reference; "
                            "the fax is probably on its way", code="113")
        return Accepted(code="113", ref_accuse=ref)
    if outcome in _HOLD_KINDS:
        raise Hold(f"{words} (code {code})", kind=_HOLD_KINDS[outcome], code=str(code))
    raise PermanentFailure(f"{words} (code {code})", code=str(code), bug_alert=outcome is Answer.FAILED_BUG)


def _status_outcome(status: int) -> Hold | Retry | Ambiguous:
    """An HTTP status other than 200."""
    if status in (408, 429):
        return Retry(f"the provider refused the request with HTTP {status} before handling it; it will be retried",
                     code=f"http-{status}")
    if 400 <= status < 500:
        return Hold(f"the provider URL answered HTTP {status}: check provider.url", kind=HoldKind.CONFIG,
                    code=f"http-{status}")
    if 300 <= status < 400:
        return Ambiguous(f"the provider answered with a redirect (HTTP {status}), which is not followed; "
                         "check provider.url; the fax may have been accepted", code=f"http-{status}")
    return Ambiguous(f"the provider answered HTTP {status}; the fax may have been accepted", code=f"http-{status}")


class _Progress:
    """How far one request got: set by aiohttp's trace hooks."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = False


async def _on_headers_sent(session: aiohttp.ClientSession, ctx: Any, params: Any) -> None:
    progress = ctx.trace_request_ctx
    if isinstance(progress, _Progress):
        progress.sent = True


class ProviderClient:
    """The daemon's one HTTP session to 123-fax.net."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._secrets = secrets_of(settings)

    async def start(self) -> None:
        p = self.settings.provider
        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(_on_headers_sent)
        # A fresh connection per request: a kept-alive socket the server closed
        # meanwhile would turn a never-sent request into an ambiguous one.
        connector = aiohttp.TCPConnector(force_close=True)
        timeout = aiohttp.ClientTimeout(total=p.total_timeout, sock_connect=p.connect_timeout)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, trace_configs=[trace],
                                              headers={"User-Agent": "fax-gateway"})

    async def stop(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def submit(self, sub: Submission) -> Accepted:
        """Send one fax request; return ``Accepted`` or raise its outcome (see the module docstring)."""
        try:
            accepted = parse_answer(await self._get(build_query(self.settings, sub)), self._secrets)
        except (PermanentFailure, Hold, Retry, Ambiguous) as outcome:
            # The worker logs the job's new state with this reason: said once there, here only for debugging.
            log.debug("job %s: the provider's answer: %s", sub.job_id, outcome.reason, extra={"job_id": sub.job_id})
            raise
        log.debug("job %s: the provider accepted the fax, reference %s", sub.job_id, accepted.ref_accuse,
                  extra={"job_id": sub.job_id})
        return accepted

    async def probe(self) -> str:
        """Check the URL and credentials with a request that cannot send a fax (no number, no document).

        Returns words for ``check-config``; raises ``Hold`` (configuration),
        ``Retry`` (unreachable) or ``Ambiguous`` (an answer that makes no sense).
        """
        p = self.settings.provider
        query = urlencode([("email", p.email), ("pass", p.password.reveal())], quote_via=quote, safe="")
        body = await self._get(query)
        try:
            parse_answer(body, self._secrets)
        except PermanentFailure as exc:
            raise Ambiguous(f"the provider gave an unexpected answer to a check: {exc.reason}") from None
        except Hold as exc:
            accepted = f"the provider at {self._where()} accepted the credentials of {p.email}"
            if exc.code in ("104", "106"):
                return accepted
            if exc.kind is HoldKind.CREDIT:
                return f"{accepted}; the account has no credit"
            raise
        raise Ambiguous("the provider accepted a request without a number or document: check provider.url")

    def _where(self) -> str:
        url = URL(self.settings.provider.url)
        return f"{url.scheme}://{url.host}:{url.port}"

    async def _get(self, query: str) -> bytes:
        """GET the provider with ``query``; the 200 body, or the outcome of the failure."""
        if self._session is None:
            raise RuntimeError("ProviderClient.start() was not called")
        url = URL(f"{self.settings.provider.url}?{query}", encoded=True)
        progress = _Progress()
        try:
            async with self._session.get(url, allow_redirects=False, trace_request_ctx=progress) as resp:
                if resp.status != 200:
                    raise _status_outcome(resp.status)
                body = bytearray()
                async for chunk in resp.content.iter_chunked(1024):
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise Ambiguous(f"the provider sent an answer over {MAX_ANSWER_BYTES} bytes "
                                        "(not CODE-reference); the fax may have been accepted",
                                        code="oversized-answer")
                return bytes(body)
        except aiohttp.ClientConnectorError as exc:
            raise Retry(f"could not connect to the provider at {self._where()}: {_why(exc)}; "
                        "no fax was sent", code=_cause(exc)) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if not progress.sent:
                raise Retry(f"the request to the provider at {self._where()} failed before it was sent "
                            f"({_why(exc)}); no fax was sent", code=_cause(exc)) from None
            raise Ambiguous(f"the provider at {self._where()} did not answer usably: {_why(exc)}; "
                            "the fax may have been accepted", code=_cause(exc)) from None


def _why(exc: BaseException) -> str:
    """Words for a transport failure, built here: aiohttp's own texts hold the URL."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "the TLS certificate was refused"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "the TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "the host name did not resolve"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return (exc.os_error.strerror or "connection failed").lower()
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "timed out while connecting"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the connection was closed before the answer"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the connection was closed in the middle of the answer"
    if isinstance(exc, OSError):
        return (exc.strerror or "connection error").lower()
    return "the connection failed"


def _cause(exc: BaseException) -> str:
    """A transport failure as a short label (the outcome's ``code``: a metrics label, never shown alone)."""
    if isinstance(exc, aiohttp.ClientSSLError):
        return "tls"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        return "disconnected"
    return "transport"
