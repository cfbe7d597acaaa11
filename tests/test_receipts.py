"""The receipt callback over real HTTP: storing, matching, and moving jobs forward."""

from __future__ import annotations

import asyncio
import re
import socket
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.arcodes import CODES, Category, lookup
from gateway.delivery.worker import accuse_email_for
from gateway.receipts.callback import Receipts, apply_pending, record_ar_mail
from gateway.sender import choose_recipient
from gateway.settings import SettingsError
from gateway.store import State
from tests.support_receipts import SECRET, ReceiptRig, RigFactory
from tests.support_settings import SettingsFactory

PROVIDER_DOC = Path("/work/shared/provider/123-fax-http-api.fr.txt")


@pytest.fixture
async def rig(make_rig: RigFactory) -> ReceiptRig:
    return await make_rig()


async def notices(rig: ReceiptRig, job_id: str) -> list[str]:
    return [r["kind"] for r in await rig.rows("SELECT kind FROM notifications WHERE job_id = ? ORDER BY id", job_id)]


# -- the code table --------------------------------------------------------------


def test_every_receipt_code_of_the_provider_is_in_the_table_with_its_french_text() -> None:
    text = PROVIDER_DOC.read_text(encoding="utf-8").split("Les codes retours d'accusé de réception")[1]
    documented = dict(re.findall(r'(\d+)\s*=\s*"([^"]+)"', text))
    assert len(documented) >= 30
    assert set(documented) == set(CODES)
    for code, french in documented.items():
        assert CODES[code].french == french
        assert CODES[code].english and CODES[code].english != french


def test_each_category_and_an_unknown_code() -> None:
    assert {c.category for c in CODES.values()} == set(Category) - {Category.UNKNOWN}
    assert lookup("0").delivered and lookup("31064").category is Category.BUSY
    unknown = lookup("99999")
    assert unknown.category is Category.UNKNOWN and unknown.code == "99999" and not unknown.delivered


# -- delivered and failures ---------------------------------------------------------


async def test_a_delivered_receipt_moves_the_job_and_queues_one_notice(rig: ReceiptRig) -> None:
    job = await rig.add_job(ref="R100")
    assert await rig.receipt("R100", "0", 3) == (200, "OK\n")
    after = await rig.job(job.id)
    assert (after.state, after.pages_sent, after.receipt_code) == (State.DELIVERED, 3, "0")
    assert await notices(rig, job.id) == ["delivered"]
    stored = await rig.rows("SELECT job_id, etat_e, nb_page, heure, applied_at FROM receipts")
    assert stored[0]["job_id"] == job.id and stored[0]["heure"] == "14:32" and stored[0]["applied_at"] > 0


@pytest.mark.parametrize(
    ("code", "reason"),
    [("31064", "line busy"), ("30129", "no answer"), ("31083", "wrong number"),
     ("25012", "the document could not be converted"), ("33126", "transmission error"),
     ("70003", "the number is on a do-not-call list"), ("424242", "unknown receipt code 424242")],
)  # fmt: skip
async def test_each_failure_category_fails_the_job_with_its_reason(rig: ReceiptRig, code: str, reason: str) -> None:
    job = await rig.add_job(ref="R200")
    assert (await rig.receipt("R200", code, 0))[0] == 200
    after = await rig.job(job.id)
    assert after.state == State.FAILED and after.receipt_code == code
    assert reason in after.reason
    assert await notices(rig, job.id) == ["failed"]


async def test_a_late_or_replayed_receipt_never_moves_a_final_job(rig: ReceiptRig) -> None:
    job = await rig.add_job(ref="R300")
    await rig.receipt("R300", "0", 2)
    assert (await rig.receipt("R300", "31064", 0, heure="15:00"))[0] == 200
    assert (await rig.receipt("R300", "0", 2))[0] == 200  # an exact replay
    after = await rig.job(job.id)
    assert (after.state, after.pages_sent) == (State.DELIVERED, 2)
    assert await notices(rig, job.id) == ["delivered"]
    assert (await rig.events(job.id)).count("receipt ignored") == 1
    assert len(await rig.rows("SELECT id FROM receipts")) == 2


async def test_duplicates_in_parallel_store_one_receipt_and_one_notice(rig: ReceiptRig) -> None:
    job = await rig.add_job(ref="R400")
    answers = await asyncio.gather(*(rig.receipt("R400", "0", 4) for _ in range(12)))
    assert [a[0] for a in answers] == [200] * 12
    assert len(await rig.rows("SELECT id FROM receipts")) == 1
    assert await notices(rig, job.id) == ["delivered"]
    assert (await rig.events(job.id)).count("delivered") == 1


async def test_an_unknown_reference_is_answered_and_changes_nothing(rig: ReceiptRig) -> None:
    job = await rig.add_job(ref="R500")
    assert (await rig.receipt("NOSUCH", "0", 1, numero="0299999999"))[0] == 200
    assert (await rig.job(job.id)).state == State.SUBMITTED
    assert await rig.rows("SELECT id FROM notifications") == []
    # No request to that number is in flight: not kept, so it can decide no later job (issue 15 item 5).
    assert await rig.rows("SELECT job_id, applied_at FROM receipts") == []


# -- early receipts and ambiguous jobs -----------------------------------------------


async def test_an_early_receipt_is_kept_and_applied_when_the_answer_is_recorded(rig: ReceiptRig) -> None:
    job = await rig.add_job(state=State.SUBMITTING)
    assert (await rig.receipt("R600", "0", 5))[0] == 200
    assert (await rig.job(job.id)).state == State.SUBMITTING
    assert await rig.rows("SELECT id FROM notifications") == []

    def worker_records_answer(s: Any) -> None:
        assert s.transition(job.id, State.SUBMITTED, "accepted", expect=[State.SUBMITTING], provider_ref="R600")
        apply_pending(s, job.id, rig.settings.delivery)

    await rig.store.run(worker_records_answer)
    after = await rig.job(job.id)
    assert (after.state, after.pages_sent) == (State.DELIVERED, 5)
    assert await notices(rig, job.id) == ["delivered"]
    await rig.store.run(lambda s: apply_pending(s, job.id))  # twice changes nothing
    assert await notices(rig, job.id) == ["delivered"]


async def test_a_receipt_resolves_an_ambiguous_job_by_number_and_time(rig: ReceiptRig) -> None:
    other = await rig.add_job(number="+33298765432", state=State.AMBIGUOUS)
    job = await rig.add_job(state=State.AMBIGUOUS)
    rig.clock.advance(120)
    assert (await rig.receipt("R700", "31083", 0, numero="0145678900"))[0] == 200
    after = await rig.job(job.id)
    assert (after.state, after.provider_ref, after.receipt_code) == (State.FAILED, "R700", "31083")
    assert "receipt matched" in await rig.events(job.id)
    assert (await rig.job(other.id)).state == State.AMBIGUOUS


async def test_a_receipt_on_file_resolves_a_job_recorded_ambiguous_later(rig: ReceiptRig) -> None:
    job = await rig.add_job(state=State.SUBMITTING)
    assert (await rig.receipt("R710", "0", 1, numero="+33145678900"))[0] == 200

    def worker_records_timeout(s: Any) -> None:
        s.transition(job.id, State.AMBIGUOUS, "outcome unknown: timeout", expect=[State.SUBMITTING])
        apply_pending(s, job.id)

    await rig.store.run(worker_records_timeout)
    after = await rig.job(job.id)
    assert (after.state, after.provider_ref) == (State.DELIVERED, "R710")



# -- planted receipts: whoever holds the callback URL cannot decide a later fax ------------------


async def _submit(rig: ReceiptRig, job_id: str, ref: str) -> None:
    """What the worker does with the provider's answer: record it, then the receipt stage applies what waits."""
    await rig.store.run(lambda s: s.transition(job_id, State.SUBMITTED, "accepted", expect=[State.SUBMITTING],
                                               provider_ref=ref))  # fmt: skip
    await rig.receipts.drain()


async def test_a_receipt_planted_for_a_reference_not_issued_yet_decides_nothing(rig: ReceiptRig) -> None:
    planted = [f"P{n}" for n in range(3)]
    for ref in planted:  # nothing is being sent to that number: answered, not kept
        assert await rig.receipt(ref, "31083", 0) == (200, "OK\n")
    rig.clock.advance(5)
    for ref in planted:  # the next faxes get those references from the provider
        job = await rig.add_job(state=State.SUBMITTING)
        await _submit(rig, job.id, ref)
        assert (await rig.job(job.id)).state == State.SUBMITTED
        assert (await rig.receipt(ref, "0", 2, heure="15:00"))[0] == 200  # the true receipt
        assert (await rig.job(job.id)).state == State.DELIVERED
        assert await notices(rig, job.id) == ["delivered"]


async def test_a_receipt_planted_while_another_fax_to_the_number_is_in_flight_decides_nothing(
    rig: ReceiptRig,
) -> None:
    first = await rig.add_job(state=State.SUBMITTING)
    assert (await rig.receipt("P9", "31083", 0))[0] == 200  # kept: it may be the first fax's early receipt
    await _submit(rig, first.id, "R-first")  # it was not
    rig.clock.advance(1)
    second = await rig.add_job(state=State.SUBMITTING)  # its request goes out after the planted receipt came
    await _submit(rig, second.id, "P9")
    assert (await rig.job(second.id)).state == State.SUBMITTED
    assert (await rig.receipt("P9", "0", 3, heure="15:00"))[0] == 200
    assert (await rig.job(second.id)).state == State.DELIVERED


async def test_an_early_receipt_counts_only_while_its_request_is_in_flight(rig: ReceiptRig) -> None:
    job = await rig.add_job(state=State.SUBMITTING)
    window = rig.settings.provider.total_timeout + 60
    rig.clock.advance(window + 1)  # the request timed out long ago (a daemon that died mid-request)
    assert (await rig.receipt("P10", "31083", 0))[0] == 200
    assert await rig.rows("SELECT id FROM receipts") == []
    await rig.store.run(lambda s: s.transition(job.id, State.AMBIGUOUS, "recovered", expect=[State.SUBMITTING]))
    await rig.receipts.drain()
    assert (await rig.job(job.id)).state == State.AMBIGUOUS


async def test_unknown_receipts_are_rate_limited_and_capped(make_rig: RigFactory) -> None:
    rig = await make_rig({"http": {"unknown_receipts_per_minute": 3, "unknown_receipts_max": 5}})
    await rig.add_job(state=State.SUBMITTING)  # in flight: unknown references for its number are kept
    assert [(await rig.receipt(f"U{n}", "0", 1))[0] for n in range(4)] == [200, 200, 200, 503]
    rig.clock.advance(61)
    await rig.add_job(state=State.SUBMITTING)
    assert [(await rig.receipt(f"V{n}", "0", 1))[0] for n in range(3)] == [200, 200, 503]  # 5 on file
    assert len(await rig.rows("SELECT id FROM receipts")) == 5


_RESUBMIT = {"delivery": {"busy_retries": 1, "busy_retry_delay_seconds": 300}}


async def test_busy_is_resubmitted_when_set_then_reported(make_rig: RigFactory) -> None:
    rig = await make_rig(_RESUBMIT)
    job = await rig.add_job(ref="R800")
    await rig.receipt("R800", "31064", 0)
    after = await rig.job(job.id)
    assert after.state == State.DEFERRED and after.provider_ref == ""
    assert after.next_attempt_at == rig.clock.now + 300
    assert await notices(rig, job.id) == []
    # The worker resubmits: a new reference, busy again: now it is final.
    await rig.store.run(lambda s: s.transition(job.id, State.SUBMITTED, "accepted", provider_ref="R801"))
    await rig.receipt("R801", "30129", 0)
    final = await rig.job(job.id)
    assert final.state == State.FAILED and "after 1 resubmissions" in final.reason
    assert await notices(rig, job.id) == ["failed"]


@pytest.mark.parametrize("code", ["31083", "25012", "33126", "70003", "424242"])
async def test_other_failures_are_final_even_with_resubmission_on(make_rig: RigFactory, code: str) -> None:
    rig = await make_rig(_RESUBMIT)
    job = await rig.add_job(ref="R810")
    await rig.receipt("R810", code, 0)
    after = await rig.job(job.id)
    assert after.state == State.FAILED and "resubmission" not in after.reason
    assert await notices(rig, job.id) == ["failed"]


# -- refusals ---------------------------------------------------------------------------


async def test_a_wrong_secret_or_another_path_is_404_and_stores_nothing(rig: ReceiptRig) -> None:
    await rig.add_job(ref="R900")
    good = {"etat_e": "0", "ref_accuse": "R900"}
    assert (await rig.get(good, secret="wrong-secret"))[0] == 404
    assert (await rig.get(good, secret=SECRET[:-1]))[0] == 404
    assert (await rig.get(good, path="/receipt"))[0] == 404
    assert (await rig.get(good, path=f"/receipts/{SECRET}"))[0] == 404
    assert await rig.rows("SELECT id FROM receipts") == []


@pytest.mark.parametrize("networks", [["10.0.0.0/8"], ["127.0.0.0/8"]])
async def test_the_source_network_allow_list(make_rig: RigFactory, networks: list[str]) -> None:
    rig = await make_rig({"http": {"callback_networks": networks}})
    job = await rig.add_job(ref="R950")
    status, _ = await rig.receipt("R950")
    assert status == (200 if networks == ["127.0.0.0/8"] else 404)
    assert (await rig.job(job.id)).state == (State.DELIVERED if status == 200 else State.SUBMITTED)


async def test_an_ipv4_client_of_a_dual_stack_listener_is_judged_as_ipv4(make_rig: RigFactory) -> None:
    # A dual-stack socket (IPV6_V6ONLY off: systemd's default for a [::] socket) sees 127.0.0.1 as
    # ::ffff:127.0.0.1; the IPv4 entry must still admit it.
    rig = await make_rig({"http": {"callback_networks": ["127.0.0.0/8"]}})
    job = await rig.add_job(ref="R951")
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", 0))
    app = web.Application()
    app.add_routes(rig.receipts.routes())
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/receipt/{SECRET}"
        params = {"etat_e": "0", "ref_accuse": "R951", "numero": "0145678900", "nb_page": "3", "heure": "14:32"}
        async with aiohttp.ClientSession() as session, session.get(url, params=params) as resp:
            assert resp.status == 200
    finally:
        await runner.cleanup()
    assert (await rig.job(job.id)).state == State.DELIVERED


async def test_without_a_callback_secret_the_path_is_404(make_rig: RigFactory) -> None:
    rig = await make_rig(env={})
    assert (await rig.get({"etat_e": "0", "ref_accuse": "R1"}, path="/receipt/"))[0] == 404
    assert (await rig.get({"etat_e": "0", "ref_accuse": "R1"}, secret="x"))[0] == 404


@pytest.mark.parametrize(
    "query",
    [
        [("ref_accuse", "R1")],
        [("etat_e", "0")],
        [("etat_e", "ok"), ("ref_accuse", "R1")],
        [("etat_e", "0"), ("ref_accuse", "R 1")],
        [("etat_e", "0"), ("ref_accuse", "R1"), ("nb_page", "three")],
        [("etat_e", "0"), ("ref_accuse", "R1"), ("numero", "01-45")],
        [("etat_e", "0"), ("ref_accuse", "R1"), ("heure", "14:32\r\nX-Injected: 1")],
        [("etat_e", "0"), ("ref_accuse", "R1"), ("other", "a\x00b")],
        [("etat_e", "0"), ("etat_e", "31064"), ("ref_accuse", "R1")],
    ],
)
async def test_malformed_parameters_are_400_and_store_nothing(rig: ReceiptRig, query: list[tuple[str, str]]) -> None:
    await rig.add_job(ref="R1")
    status, text = await rig.get(query)
    assert status == 400 and text.startswith("malformed receipt:")
    assert "\n" not in text.rstrip("\n") and "Injected" not in text
    assert await rig.rows("SELECT id FROM receipts") == []


async def test_a_locked_store_answers_503_and_the_retry_is_taken(rig: ReceiptRig) -> None:
    job = await rig.add_job(ref="R990")
    await rig.store.run(lambda s: s.db.execute("PRAGMA busy_timeout = 50"))
    other = sqlite3.connect(rig.spool.db_path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another process holds the database
        assert (await rig.receipt("R990", "0", 1))[0] == 503
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await rig.rows("SELECT id FROM receipts") == []
    assert (await rig.receipt("R990", "0", 1))[0] == 200
    assert (await rig.job(job.id)).state == State.DELIVERED


async def test_a_read_only_or_closed_store_answers_503(rig: ReceiptRig) -> None:
    await rig.add_job(ref="R991")
    await rig.store.run(lambda s: s.db.execute("PRAGMA query_only = ON"))
    assert (await rig.receipt("R991", "0", 1))[0] == 503
    await rig.store.run(lambda s: s.db.execute("PRAGMA query_only = OFF"))
    await rig.store.close()
    assert (await rig.receipt("R991", "0", 1))[0] == 503


async def test_the_callback_secret_never_reaches_a_log(rig: ReceiptRig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    await rig.add_job(ref="R42")
    await rig.get({"etat_e": "0", "ref_accuse": "R42"}, secret=SECRET + "x")
    await rig.get([("etat_e", "zero"), ("ref_accuse", "R42")])
    await rig.receipt("R42", "0", 1)
    await rig.receipt("UNKNOWN1", "0", 1)
    assert "receipt 0 for R42: job" in caplog.text
    assert SECRET not in caplog.text


async def test_a_provider_receipt_mail_that_names_the_reference_is_a_receipt(rig: ReceiptRig) -> None:
    job = await rig.add_job(ref="R43")
    mail = ("From: 123-fax.net <accuse@123-fax.net>\r\nSubject: =?utf-8?q?Accus=C3=A9?= R43\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            "Référence d'envoi : R43\r\nNuméro du destinataire : 0145678900\r\nÉtat : 31064 = occupé\r\n"
            "Pages transmises : 0\r\nHeure d'arrivée : 10:05\r\n").encode()  # fmt: skip
    assert await rig.store.run(lambda s: record_ar_mail(s, job.id, mail))
    assert not await rig.store.run(lambda s: record_ar_mail(s, job.id, mail))  # the same mail again
    after = await rig.job(job.id)
    assert (after.state, after.receipt_code) == (State.FAILED, "31064")
    (row,) = await rig.rows("SELECT kind, source FROM notifications")
    assert row["kind"] == "failed" and bytes(row["source"]) == mail
    (receipt,) = await rig.rows("SELECT source, heure FROM receipts")
    assert receipt == {"source": "mail", "heure": "10:05"}


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("off", ""),
        ("sender", "team@example.com"),
        ("address", "archive@example.com"),
        ("gateway", "ar-{token}@ar.fax.local"),
    ],  # fmt: skip
)
async def test_the_accuse_email_the_worker_sends(make_settings: SettingsFactory, rig: ReceiptRig, mode: str,
                                                 expected: str) -> None:  # fmt: skip
    settings = make_settings({"provider": {"accuse_email": mode, "accuse_email_address": "archive@example.com"}})
    job = await rig.add_job(ref="R44", reply_to="Team <team@example.com>")
    message = await rig.store.run(lambda s: s.message(job.message_id))
    assert message is not None and len(job.ar_token) == 32
    assert accuse_email_for(settings, job, message) == expected.format(token=job.ar_token)


@pytest.mark.parametrize(
    ("reply_to", "header_from", "envelope", "expected"),
    [
        ("<>", "", "bob@example.com", "bob@example.com"),
        ("", "Postmaster <POSTMASTER@example.com>", "bob@example.com", "bob@example.com"),
        ("", "0145678900@sub.fax.local", "bob@example.com", "bob@example.com"),
        ("", "ar-123@ar.fax.local", "bob@example.com", "bob@example.com"),
        ("not an address", "", "", ""),
        ("evil@example.com\r\nBcc: x@example.com", "", "", ""),
        ("Team <team@example.com>\u2028Bcc: x@example.com", "bob\x85@example.com", "carl@example.com",
         "carl@example.com"),
    ],
)
def test_unusable_senders_are_passed_over(make_settings: SettingsFactory, reply_to: str, header_from: str,
                                          envelope: str, expected: str) -> None:  # fmt: skip
    assert choose_recipient(make_settings(), reply_to, header_from, envelope) == expected


@pytest.mark.parametrize("secret", ["abc12", "has/slash-1234", "has space 1234", "pct%2Fsecret"])
def test_a_callback_secret_that_cannot_be_a_path_segment_is_refused(make_settings: SettingsFactory,
                                                                      secret: str) -> None:  # fmt: skip
    with pytest.raises(SettingsError, match="^http.callback_secret: FAX_GATEWAY_CALLBACK_SECRET must be"):
        make_settings({}, {"FAX_GATEWAY_CALLBACK_SECRET": secret})
    assert SECRET not in repr(make_settings({}, {"FAX_GATEWAY_CALLBACK_SECRET": SECRET}))


async def test_receipts_left_unapplied_by_a_crash_are_applied_at_start(rig: ReceiptRig) -> None:
    job = await rig.add_job(state=State.SUBMITTING)
    await rig.receipt("R45", "0", 2)
    # The worker recorded the answer, then the daemon died before apply_pending ran.
    await rig.store.run(lambda s: s.transition(job.id, State.SUBMITTED, "accepted", provider_ref="R45"))
    assert (await rig.job(job.id)).state == State.SUBMITTED
    await rig.receipts.start()
    assert (await rig.job(job.id)).state == State.DELIVERED
    assert await notices(rig, job.id) == ["delivered"]


async def test_the_receipt_stage_applies_an_early_receipt_once_woken(make_rig: RigFactory) -> None:
    rig = await make_rig({"delivery": {"poll_seconds": 3600.0}})  # an hour between polls: only the wake-up counts
    await rig.receipts.stop()  # this test runs a stage of its own, to watch the notices it queues
    noticed = asyncio.Event()
    stage = Receipts(rig.settings, rig.store, on_notice=noticed.set)
    job = await rig.add_job(state=State.SUBMITTING)
    assert (await rig.receipt("R650", "0", 2))[0] == 200
    await stage.start()
    try:
        assert not noticed.is_set()  # nothing waits yet: the answer is not recorded
        # What the worker does: record the answer, and wake the receipt stage.
        await rig.store.run(lambda s: s.transition(job.id, State.SUBMITTED, "accepted", expect=[State.SUBMITTING],
                                                   provider_ref="R650"))  # fmt: skip
        stage.wake()
        await asyncio.wait_for(noticed.wait(), 10)
        after = await rig.job(job.id)
        assert (after.state, after.pages_sent) == (State.DELIVERED, 2)
        assert await notices(rig, job.id) == ["delivered"]
        assert await stage.drain() == 0  # applied once
    finally:
        await stage.stop()
        await stage.stop()  # idempotent

