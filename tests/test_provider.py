"""The provider client against the simulator (and plain sockets) on loopback: every code, every fault."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from gateway.delivery.provider import ANSWERS, Answer, ProviderClient, parse_answer, wire_number
from gateway.delivery.simulator import ProviderSimulator
from gateway.outcomes import Accepted, Ambiguous, Hold, HoldKind, PermanentFailure, Retry, Submission
from gateway.redact import MASK, redact, secrets_of
from gateway.settings import Settings
from tests.support_docs import pdf as minimal_pdf
from tests.support_net import free_port
from tests.support_simulator import SIM_PASSWORD, DocumentServer, provider_env, provider_table

ClientFactory = Callable[..., Coroutine[Any, Any, ProviderClient]]
CALLBACK_SECRET = "cb-Secret-9981"
NUMBER = "+33145678900"


@pytest.fixture
async def client_for(make_settings: Callable[..., Settings]) -> AsyncIterator[ClientFactory]:
    """Start a client pointed at a simulator (or any URL) with provider/numbers overrides."""
    clients: list[ProviderClient] = []

    async def factory(target: ProviderSimulator | str, *, password: str = SIM_PASSWORD,
                      numbers: dict[str, Any] | None = None, **provider: Any) -> ProviderClient:
        table = provider_table(target) if isinstance(target, ProviderSimulator) else {"provider": {"url": target}}
        table["provider"].update(provider)
        table["numbers"] = numbers or {}
        env = {**provider_env(password), "FAX_GATEWAY_CALLBACK_SECRET": CALLBACK_SECRET}
        client = ProviderClient(make_settings(table, env))
        await client.start()
        clients.append(client)
        return client

    try:
        yield factory
    finally:
        for client in clients:
            await client.stop()
            await client.stop()  # idempotent


def canary_forms() -> set[str]:
    return {form for s in (SIM_PASSWORD, CALLBACK_SECRET) for form in (s, quote(s, safe=""), quote_plus(s))}


def assert_no_secret(texts: list[str]) -> None:
    for text in texts:
        for form in canary_forms():
            assert form not in text


# --- the answer table ---------------------------------------------------------------


def test_answer_table_covers_every_documented_code() -> None:
    assert sorted(ANSWERS) == list(range(101, 114))
    assert ANSWERS[113][0] is Answer.ACCEPTED
    assert {c for c, (a, _) in ANSWERS.items() if a is Answer.FAILED_BUG} == {110, 111}
    assert {c for c, (a, _) in ANSWERS.items() if a is Answer.HOLD_CREDIT} == {108, 112}
    assert all(words and "pass=" not in words for _, words in ANSWERS.values())


@pytest.mark.parametrize("body", [b"113-ABC123", b"  113-ABC123\r\n", b"\xef\xbb\xbf113-ABC123\r\n", b"\n113-ABC123 "])
def test_accepted_answer_tolerates_whitespace_crlf_and_bom(body: bytes) -> None:
    assert parse_answer(body, []) == Accepted(code="113", ref_accuse="ABC123")


@pytest.mark.parametrize("body", [b"113", b"113-", b"113-\r\n"])
def test_accepted_without_reference_is_ambiguous(body: bytes) -> None:
    with pytest.raises(Ambiguous, match="without a reference"):
        parse_answer(body, [])


@pytest.mark.parametrize("body", [b"", b"   \r\n", b"<html><body>113-X</body></html>", b"OK", b"113-A B"])
def test_unusable_answer_is_ambiguous(body: bytes) -> None:
    with pytest.raises(Ambiguous):
        parse_answer(body, [])


def test_unknown_numeric_code_holds_for_a_person() -> None:
    with pytest.raises(Hold) as info:
        parse_answer(b"114-", [])
    assert info.value.kind is HoldKind.CONFIG and info.value.code == "114"
    assert "not in its documented table" in info.value.reason


def test_quoted_garbage_is_redacted() -> None:
    with pytest.raises(Ambiguous) as info:
        parse_answer(f"error pass={SIM_PASSWORD} X-Amz-Signature=abc".encode(), [SIM_PASSWORD])
    assert_no_secret([info.value.reason])
    assert "abc" not in info.value.reason


# --- every code, through the wire ----------------------------------------------------

EXPECTED: dict[int, tuple[type[Exception], HoldKind | None, bool]] = {
    101: (Hold, HoldKind.CONFIG, False), 102: (Hold, HoldKind.CONFIG, False), 103: (Hold, HoldKind.CONFIG, False),
    104: (Hold, HoldKind.CONFIG, False), 105: (Hold, HoldKind.URL, False), 106: (Hold, HoldKind.CONFIG, False),
    107: (PermanentFailure, None, False), 108: (Hold, HoldKind.CREDIT, False), 109: (PermanentFailure, None, False),
    110: (PermanentFailure, None, True), 111: (PermanentFailure, None, True), 112: (Hold, HoldKind.CREDIT, False),
}


@pytest.mark.parametrize("code", sorted(EXPECTED))
async def test_each_refusal_code_maps_to_its_outcome(code: int, simulator: ProviderSimulator,
                                                     client_for: ClientFactory) -> None:
    client = await client_for(simulator)
    simulator.set_fault(f"code:{code}")
    kind, hold_kind, bug = EXPECTED[code]
    with pytest.raises(kind) as info:
        await client.submit(Submission("job-1", NUMBER, "http://127.0.0.1:9/doc.pdf"))
    assert info.value.code == str(code)  # type: ignore[attr-defined]
    if hold_kind is not None:
        assert info.value.kind is hold_kind  # type: ignore[attr-defined]
    else:
        assert info.value.bug_alert is bug  # type: ignore[attr-defined]


async def test_real_submission_is_accepted_and_document_downloaded(
        simulator: ProviderSimulator, client_for: ClientFactory, documents: DocumentServer) -> None:
    url = documents.add("/doc.pdf", minimal_pdf(2))
    client = await client_for(simulator)
    accepted = await client.submit(Submission("job-42", NUMBER, url, accuse_email="ar-x+1@ar.fax.local"))
    assert accepted.code == "113" and accepted.ref_accuse.isdigit()
    (req,) = simulator.requests
    assert list(req.params) == ["email", "pass", "fax", "ref", "url", "ref_accuse", "accuse_email"]
    assert req.params["ref"] == "job-42" and req.params["ref_accuse"] == "1" and req.params["pass"] == MASK
    assert req.params["accuse_email"] == "ar-x+1@ar.fax.local"  # the password (with +&=%) matched too: 113
    assert req.answer == f"113-{accepted.ref_accuse}"
    assert documents.hits == ["/doc.pdf"]


async def test_no_accuse_email_parameter_when_not_set(simulator: ProviderSimulator, client_for: ClientFactory) -> None:
    simulator.set_fault("code:104")
    with pytest.raises(Hold):
        await (await client_for(simulator)).submit(Submission("j", NUMBER, "http://127.0.0.1:9/x"))
    assert "accuse_email" not in simulator.requests[0].params


async def test_presigned_url_arrives_intact_and_downloads(
        simulator: ProviderSimulator, client_for: ClientFactory, documents: DocumentServer) -> None:
    path_qs = ("/fax/4f9a.pdf?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20261130%2Feu%2Fs3"
               "&X-Amz-Signature=ab%2Bcd%3D%3D&x=a+b&pct=100%25")
    documents.add("/fax/4f9a.pdf", minimal_pdf())
    url = documents.base + path_qs
    await (await client_for(simulator)).submit(Submission("j", NUMBER, url))
    assert simulator.requests[0].params["url"] == url
    assert documents.hits == [path_qs]


@pytest.mark.parametrize(("number", "fmt", "wire"), [
    ("+33145678900", "national", "0145678900"),
    ("+442071234567", "national", "00442071234567"),
    ("+33145678900", "e164", "+33145678900"),
    ("+442071234567", "e164", "+442071234567"),
])
async def test_number_on_the_wire(number: str, fmt: str, wire: str, simulator: ProviderSimulator,
                                  client_for: ClientFactory, documents: DocumentServer) -> None:
    url = documents.add("/d.pdf", minimal_pdf())
    client = await client_for(simulator, numbers={"wire_format": fmt, "allowed_regions": ["FR", "GB"]})
    await client.submit(Submission("j", number, url))
    assert simulator.requests[0].params["fax"] == wire
    assert wire_number(number, "FR", fmt) == wire


async def test_invalid_number_fails_without_a_request(simulator: ProviderSimulator, client_for: ClientFactory) -> None:
    with pytest.raises(PermanentFailure):
        await (await client_for(simulator)).submit(Submission("j", "not-a-number", "http://127.0.0.1:9/x"))
    assert simulator.requests == []


async def test_wrong_password_holds_config(simulator: ProviderSimulator, client_for: ClientFactory) -> None:
    with pytest.raises(Hold) as info:
        await (await client_for(simulator, password="wrong")).submit(Submission("j", NUMBER, "http://127.0.0.1:9/x"))
    assert info.value.kind is HoldKind.CONFIG and info.value.code == "103"


# --- faults: ambiguous, retry -----------------------------------------------------------


@pytest.mark.parametrize("fault", ["5xx", "html", "empty", "no-ref", "reset"])
async def test_fault_after_sending_is_ambiguous(fault: str, simulator: ProviderSimulator, client_for: ClientFactory,
                                                documents: DocumentServer) -> None:
    url = documents.add("/d.pdf", minimal_pdf())
    simulator.set_fault(fault)
    with pytest.raises(Ambiguous):
        await (await client_for(simulator)).submit(Submission("j", NUMBER, url))
    assert len(simulator.requests) == 1


async def test_no_answer_in_time_is_ambiguous(simulator: ProviderSimulator, client_for: ClientFactory) -> None:
    simulator.set_fault("hang")
    with pytest.raises(Ambiguous, match="no answer in time"):
        await (await client_for(simulator, total_timeout=0.3)).submit(Submission("j", NUMBER, "http://127.0.0.1:9/x"))


async def test_no_credit_fault_holds_credit(simulator: ProviderSimulator, client_for: ClientFactory) -> None:
    simulator.set_fault("no-credit", once=True)
    with pytest.raises(Hold) as info:
        await (await client_for(simulator)).submit(Submission("j", NUMBER, "http://127.0.0.1:9/x"))
    assert info.value.kind is HoldKind.CREDIT and simulator.fault is None


async def test_connection_refused_is_retry(client_for: ClientFactory) -> None:
    client = await client_for(f"http://127.0.0.1:{free_port()}/http.php")
    with pytest.raises(Retry, match="no fax was sent"):
        await client.submit(Submission("j", NUMBER, "http://127.0.0.1:9/x"))


async def test_tls_failure_is_retry(simulator: ProviderSimulator, client_for: ClientFactory) -> None:
    client = await client_for(simulator.url.replace("http://", "https://"))
    with pytest.raises(Retry, match="TLS"):
        await client.submit(Submission("j", NUMBER, "http://127.0.0.1:9/x"))
    assert simulator.requests == []


async def test_redirect_is_not_followed(client_for: ClientFactory, documents: DocumentServer) -> None:
    client = await client_for(documents.base + "/redirect")
    with pytest.raises(Ambiguous, match="redirect"):
        await client.submit(Submission("j", NUMBER, "http://127.0.0.1:9/x"))
    assert len(documents.hits) == 1 and documents.hits[0].startswith("/redirect?")


async def test_not_found_holds_config(client_for: ClientFactory, documents: DocumentServer) -> None:
    with pytest.raises(Hold, match="provider.url") as info:
        await (await client_for(documents.base + "/nope.php")).submit(Submission("j", NUMBER, "http://127.0.0.1:9/x"))
    assert info.value.kind is HoldKind.CONFIG


async def test_connection_closed_before_any_answer_is_ambiguous(client_for: ClientFactory) -> None:
    """A server that reads the request and closes: it may have acted on it."""
    got = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        got.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(Ambiguous, match="closed"):
            await (await client_for(f"http://127.0.0.1:{port}/http.php")).submit(
                Submission("j", NUMBER, "http://127.0.0.1:9/x"))
        assert got.is_set()
    finally:
        server.close()
        await server.wait_closed()


# --- secrets --------------------------------------------------------------------------

FAILURES = ["5xx", "html", "empty", "no-ref", "reset", "hang", "code:103", "code:105", "code:107", "code:110",
            "code:999", "refused", "tls", "redirect"]


@pytest.mark.parametrize("path", FAILURES)
async def test_canary_password_never_in_errors_or_logs(
        path: str, simulator: ProviderSimulator, client_for: ClientFactory,
        documents: DocumentServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    doc_url = documents.add("/d.pdf", minimal_pdf()) + f"?X-Amz-Signature=sig&cb={quote(CALLBACK_SECRET)}"
    target: ProviderSimulator | str = simulator
    if path == "refused":
        target = f"http://127.0.0.1:{free_port()}/http.php"
    elif path == "tls":
        target = simulator.url.replace("http://", "https://")
    elif path == "redirect":
        target = documents.base + "/redirect"
    else:
        simulator.set_fault(path)
    client = await client_for(target, total_timeout=0.3)
    with pytest.raises((PermanentFailure, Hold, Retry, Ambiguous)) as info:
        await client.submit(Submission("j", NUMBER, doc_url))
    texts = [str(info.value), info.value.reason, repr(info.value.args)]  # type: ignore[union-attr]
    texts += [r.getMessage() for r in caplog.records] + [caplog.text]
    assert_no_secret(texts)
    assert "X-Amz-Signature=sig" not in " ".join(texts)


async def test_probe_sends_no_fax_and_reports(simulator: ProviderSimulator, client_for: ClientFactory) -> None:
    words = await (await client_for(simulator)).probe()
    assert "accepted the credentials" in words
    assert set(simulator.requests[0].params) == {"email", "pass"}
    with pytest.raises(Hold) as info:
        await (await client_for(simulator, password="bad")).probe()
    assert info.value.code == "103"


# --- redaction ----------------------------------------------------------------------------


def test_redact_masks_secrets_and_signature_values() -> None:
    text = (f"GET /http.php?email=a&pass={quote(SIM_PASSWORD, safe='')}&url=x "
            "X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA%2Fx Signature=zzz "
            f"plain {SIM_PASSWORD} and {quote_plus(SIM_PASSWORD)} PASS=other")
    out = redact(text, [SIM_PASSWORD])
    assert_no_secret([out])
    for leaked in ("deadbeef", "AKIA", "zzz", "other"):
        assert leaked not in out
    assert "email=a" in out and "url=x" in out and out.count(MASK) >= 6


def test_secrets_of_finds_every_configured_secret(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings({}, {**provider_env(), "FAX_GATEWAY_CALLBACK_SECRET": CALLBACK_SECRET})
    assert set(secrets_of(settings)) == {SIM_PASSWORD, CALLBACK_SECRET}
