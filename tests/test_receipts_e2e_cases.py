"""The receipt cases end to end: mail in over SMTP, the simulator calling back for real, the sink as relay.

Each test starts the whole daemon; what it checks is what a sender (the sink),
the provider (the status its callback got) and an operator (the job, the
receipts on file, the log) would see.
"""

from __future__ import annotations

import re
import sqlite3
import time
from typing import Any

import aiohttp
import pytest

from gateway.store import State
from tests.support_clock import FakeClock
from tests.support_docs import pdf
from tests.support_receipts import SECRET, Running
from tests.support_simulator import SIM_EMAIL, SIM_PASSWORD, DocumentServer
from tests.support_sink import Received

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _body(got: Received) -> str:
    part = got.message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def _by_number(got: list[Received]) -> dict[str, Received]:
    return {str(m.message["X-Fax-Number"]): m for m in got}


_BODY = {
    "en": [
        "Status: not delivered (wrong number)",
        "Fax number: +33 1 45 67 89 03",
        "Pages: 2 in the document",
        "Attempt at: {heure}",
        "Job: {job}",
        'Your mail: "Devis 7"',
        "Sent on: Monday 30 November 2026, 09:00 CET (UTC+01:00)",
        "Provider code: 31083 (wrong number)",
        "What to do: The number does not reach a fax machine.",
    ],
    "fr": [
        "État : non remis (mauvais numéro)",
        "Numéro de fax : +33 1 45 67 89 03",
        "Pages : 2 dans le document",
        "Tentative à : {heure}",
        "Tâche : {job}",
        'Votre message : "Devis 7"',
        "Envoyé le : lundi 30 novembre 2026 à 09:00 CET (UTC+01:00)",
        "Code fournisseur : 31083 (mauvais numéro)",
        "Que faire : Ce numéro n'aboutit pas à un fax.",
    ],
}
_SUBJECT = {
    "en": "Fax to +33 1 45 67 89 03 not delivered: wrong number",
    "fr": "Fax vers +33 1 45 67 89 03 non remis : mauvais numéro",
}


@pytest.mark.parametrize("language", ["en", "fr"])
async def test_a_failure_receipt_in_each_language_says_it_all(running: Any, language: str) -> None:
    r: Running = await running({"notify": {"language": language}})
    r.sim.receipt_code = "31083"
    await r.send("0145678903@fax.local", pages=2, sender="bob@example.com", subject="Devis 7")
    (job,) = await r.settle()
    assert (job.state, job.receipt_code) == (State.FAILED, "31083")
    (got,) = await r.sink.wait_for(1)
    assert got.rcpt_tos == ["bob@example.com"] and got.message["Subject"] == _SUBJECT[language]
    (callback,) = r.sim.callbacks
    body = _body(got)
    for line in _BODY[language]:
        assert line.format(heure=callback.params["heure"], job=job.id) in body
    assert (got.message["X-Fax-Status"], got.message["X-Fax-Category"]) == ("failed", "wrong number")


async def test_a_permanent_refusal_by_the_provider_is_told_to_the_sender(running: Any) -> None:
    r: Running = await running()
    r.sim.set_fault("code:107")
    await r.send(sender="bob@example.com")
    (job,) = await r.settle()
    assert job.state == State.FAILED
    (got,) = await r.sink.wait_for(1)
    assert got.rcpt_tos == ["bob@example.com"] and got.message["X-Fax-Status"] == "failed"
    assert str(got.message["Subject"]).startswith("Fax to +33 1 45 67 89 00 not delivered: ")
    assert got.message["X-Fax-Reason"] and r.sim.callbacks == []


@pytest.mark.parametrize("fault", ["no-ref", "reset"])
async def test_a_receipt_resolves_an_ambiguous_submission_by_number(running: Any, fault: str) -> None:
    r: Running = await running({"notify": {"admin_address": "ops@example.com"}})
    r.sim.gate.clear()
    r.sim.set_fault(fault, once=True)  # the fax went out, but the answer did not say (or not whole)
    await r.send(pages=2, sender="bob@example.com")
    await r.gw.worker.drain()
    (job,) = await r.jobs()
    assert (job.state, job.provider_ref) == (State.AMBIGUOUS, "")
    r.sim.gate.set()
    (job,) = await r.settle()
    assert (job.state, job.pages_sent) == (State.DELIVERED, 2) and job.provider_ref
    assert len(r.sim.requests) == 1  # resolved, never resent
    got = {m.rcpt_tos[0]: m.message for m in await r.sink.wait_for(2)}
    assert got["bob@example.com"]["Subject"] == "Fax to +33 1 45 67 89 00 delivered, 2 pages"
    assert got["ops@example.com"]["Subject"] == "fax-gateway alert: ambiguous"


async def test_a_receipt_for_an_unknown_reference_changes_nothing(running: Any, documents: DocumentServer) -> None:
    r: Running = await running()
    await r.send()
    (job,) = await r.settle()
    assert job.state == State.DELIVERED
    # Another system using the same provider account sends a fax: its receipt reaches this gateway.
    url = documents.add("/other.pdf", pdf(1))
    params = {"email": SIM_EMAIL, "pass": SIM_PASSWORD, "fax": "0145678900", "ref": "elsewhere-1",
              "url": url, "ref_accuse": "1"}  # fmt: skip
    async with aiohttp.ClientSession() as session, session.get(r.sim.url, params=params) as resp:
        answer = await resp.text()
    assert answer.startswith("113-")
    foreign = answer.removeprefix("113-")
    await r.sim.wait_callbacks(2)
    assert [c.status for c in r.sim.callbacks] == [200, 200]
    await r.gw.notifier.drain()
    # No request to that number is in flight here: the receipt is answered 200 and not kept (issue 15 item 5).
    assert await r.rows("SELECT job_id, applied_at FROM receipts WHERE ref_accuse = ?", foreign) == []
    after = await r.gw.store.run(lambda s: s.get_job(job.id))
    assert after is not None and (after.state, after.updated_at) == (State.DELIVERED, job.updated_at)
    assert len(await r.rows("SELECT id FROM notifications")) == 1
    assert len(r.sink.messages) == 1


async def _every_try_refused(r: Running, status: int) -> None:
    """Send a fax; the provider's every callback try gets ``status``, and the job keeps waiting."""
    await r.send()
    await r.gw.worker.drain()
    await r.sim.wait_callbacks(r.sim.callback_tries)
    assert [c.status for c in r.sim.callbacks] == [status] * r.sim.callback_tries
    (job,) = await r.jobs()
    assert job.state == State.SUBMITTED
    assert await r.rows("SELECT id FROM receipts") == []


@pytest.mark.parametrize("where", ["wrong secret", "another path"])
async def test_a_callback_with_a_bad_secret_is_404_and_changes_nothing(
    running: Any, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    r: Running = await running()
    assert r.sim.callback_url is not None and r.sim.callback_url.endswith(f"/receipt/{SECRET}")
    base = r.sim.callback_url.removesuffix(f"/receipt/{SECRET}")
    r.sim.callback_url = base + (f"/receipt/{SECRET}x" if where == "wrong secret" else f"/receipts/{SECRET}")
    await _every_try_refused(r, 404)
    await r.gw.notifier.drain()
    assert r.sink.messages == [] and SECRET not in caplog.text


@pytest.mark.parametrize("code", ["busy", "31064\r\nX-Injected: 1", "31064\x85"])
async def test_a_malformed_callback_is_400_and_nothing_reaches_a_log_line(
    running: Any, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="gateway")
    r: Running = await running()
    r.sim.receipt_code = code  # a provider sending garbage
    await _every_try_refused(r, 400)
    refused = [rec.getMessage() for rec in caplog.records if rec.name == "gateway.receipts"]
    assert len(refused) == r.sim.callback_tries and all("malformed: " in m for m in refused)
    assert not any(_CONTROL.search(rec.getMessage()) for rec in caplog.records)
    assert "Injected" not in caplog.text


async def test_a_store_that_cannot_take_the_receipt_answers_503_and_the_retry_lands(running: Any) -> None:
    r: Running = await running(callback_tries=6)
    r.sim.gate.clear()  # the provider calls back once the store is locked
    await r.send(pages=1)
    await r.gw.worker.drain()
    (job,) = await r.jobs()
    assert job.state == State.SUBMITTED
    await r.gw.store.run(lambda s: s.db.execute("PRAGMA busy_timeout = 300"))
    other = sqlite3.connect(r.gw.spool.db_path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another process (the CLI, a backup) holds the database
        r.sim.gate.set()
        first, *_ = await r.sim.wait_callbacks(1)
        assert first.status == 503
    finally:
        other.execute("ROLLBACK")
        other.close()
    (job,) = await r.settle()
    assert (job.state, job.pages_sent) == (State.DELIVERED, 1)
    statuses = [c.status for c in r.sim.callbacks]
    assert statuses[-1] == 200 and statuses.count(200) == 1 and set(statuses) == {503, 200}
    assert len(await r.rows("SELECT id FROM receipts")) == 1
    assert len(await r.sink.wait_for(1)) == 1


async def test_relay_down_then_up_the_receipt_arrives_once(running: Any) -> None:
    clock = FakeClock(time.time())
    r: Running = await running({"notify": {"min_backoff_seconds": 60, "max_backoff_seconds": 600}}, clock=clock)
    await r.sink.down()
    await r.send(pages=2, sender="bob@example.com")
    (job,) = await r.settle()
    assert job.state == State.DELIVERED
    (row,) = await r.rows("SELECT state, attempts, last_error FROM notifications")
    assert (row["state"], row["attempts"]) == ("pending", 1) and row["last_error"]
    await r.sink.up()
    clock.advance(61)
    await r.gw.notifier.drain()
    (got,) = await r.sink.wait_for(1)
    assert got.rcpt_tos == ["bob@example.com"] and got.message["X-Fax-Job"] == job.id
    clock.advance(86400)
    await r.gw.notifier.drain()
    assert len(r.sink.messages) == 1
    (row,) = await r.rows("SELECT state FROM notifications")
    assert row["state"] == "sent"


# (envelope sender, From, Reply-To, who gets the receipt), one mail per number.
_DEFAULT_ORDER = {
    "0145678901": ("bob@example.com", "", "Alice <alice@example.com>", "alice@example.com"),
    "0145678902": ("bob@example.com", "Carol <carol@example.com>", "", "carol@example.com"),
    "0145678903": ("dave@example.com", "MAILER-DAEMON@example.com", "0145678900@fax.local", "dave@example.com"),
    "0145678904": ("erin@example.com", "ar-0123@ar.fax.local", "<>", "erin@example.com"),
    "0145678905": ("scanner@example.com", "", "", "team@example.com"),
}
_ENVELOPE_FIRST = {
    "0145678906": ("scanner-2@example.com", "Frank <frank@example.com>", "gina@example.com", "scanner-2@example.com"),
}


@pytest.mark.parametrize(
    ("order", "mails"),
    [(["reply-to", "from", "envelope"], _DEFAULT_ORDER), (["envelope", "reply-to"], _ENVELOPE_FIRST)],
)
async def test_who_gets_the_receipt(running: Any, order: list[str],
                                    mails: dict[str, tuple[str, str, str, str]]) -> None:  # fmt: skip
    notify = {"recipient_order": order, "sender_map": {"Scanner@example.com": "team@example.com"}}
    r: Running = await running({"notify": notify})
    for number, (envelope, header_from, reply_to, _) in mails.items():
        await r.send(f"{number}@fax.local", sender=envelope, header_from=header_from, reply_to=reply_to)
    await r.settle(len(mails))
    got = _by_number(await r.sink.wait_for(len(mails)))
    assert len(r.sink.messages) == len(mails)
    for number, (*_, expected) in mails.items():
        assert got["+33" + number[1:]].rcpt_tos == [expected], number
