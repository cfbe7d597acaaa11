"""End to end through real parts: a PDF mailed over SMTP, the simulator's real receipt callback
(or its AR mail), and the receipt mail at a real relay (an aiosmtpd sink)."""

from __future__ import annotations

import asyncio
import smtplib
from typing import Any

import pytest

from gateway.settings import HostPort
from gateway.store import State
from tests.support_docs import pdf
from tests.support_mail import plain_with
from tests.support_receipts import Running
from tests.support_s3 import S3
from tests.support_sink import Received

TIMEOUT = 20.0


def _subject(got: Received) -> str:
    return str(got.message["Subject"])


async def test_a_mailed_pdf_comes_back_as_one_receipt_to_the_right_person(running: Any, s3: S3) -> None:
    r: Running = await running(s3.table())
    await r.send(pages=3, reply_to="Alice <alice@example.com>")
    (job,) = await r.settle()
    assert (job.state, job.pages_sent) == (State.DELIVERED, 3)
    (got,) = await r.sink.wait_for(1)
    assert got.rcpt_tos == ["alice@example.com"]
    assert _subject(got) == "Fax to +33 1 45 67 89 00 delivered, 3 pages"
    assert got.message["X-Fax-Job"] == job.id and got.message["X-Fax-Pages"] == "3"
    assert [c.status for c in r.sim.callbacks] == [200]


async def test_each_failure_category_reaches_the_sender(running: Any) -> None:
    codes = {"+33145678901": "31064", "+33145678902": "30129", "+33145678903": "31083", "+33145678904": "25012",
             "+33145678905": "33126", "+33145678906": "70003"}  # fmt: skip
    r: Running = await running()
    r.sim.receipt_codes = dict(codes)
    for number in codes:
        await r.send(f"0{number[3:]}@fax.local", sender="bob@example.com")
    jobs = await r.settle(len(codes))
    assert {j.state for j in jobs} == {State.FAILED}
    got = await r.sink.wait_for(len(codes))
    subjects = sorted(_subject(m) for m in got)
    assert subjects == sorted([
        "Fax to +33 1 45 67 89 01 not delivered: line busy",
        "Fax to +33 1 45 67 89 02 not delivered: no answer",
        "Fax to +33 1 45 67 89 03 not delivered: wrong number",
        "Fax to +33 1 45 67 89 04 not delivered: the document could not be converted",
        "Fax to +33 1 45 67 89 05 not delivered: transmission error",
        "Fax to +33 1 45 67 89 06 not delivered: the number is on a do-not-call list (liste rouge or EcoFAX)",
    ])  # fmt: skip
    assert all(m.rcpt_tos == ["bob@example.com"] for m in got)


@pytest.mark.parametrize("fault", ["early-callback", "duplicate-callback"])
async def test_early_and_duplicate_callbacks_make_one_receipt(running: Any, fault: str) -> None:
    r: Running = await running({"notify": {"language": "fr"}})
    r.sim.set_fault(fault)
    await r.send(pages=1)
    (job,) = await r.settle()
    assert job.state == State.DELIVERED
    await r.gw.notifier.drain()
    (got,) = await r.sink.wait_for(1)
    assert _subject(got) == "Fax vers +33 1 45 67 89 00 remis, 1 page"
    body = got.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    heure = r.sim.callbacks[0].params["heure"]
    for line in ("État : remis", "Pages : 1\r\n", f"Reçu à : {heure}", f"Tâche : {job.id}",
                 "Code fournisseur : 0 (OK reçu)",
                 "Que faire : Rien. Le fax distant a confirmé la réception."):  # fmt: skip
        assert line in body
    assert len(await r.gw.store.run(lambda s: list(s.db.execute("SELECT id FROM receipts")))) == 1


# Loopback may send faxes only from example.com: the provider's AR mail comes from anyone.
_ONLY_EXAMPLE_COM = {"trusted_networks": [{"cidr": "127.0.0.0/8", "senders": ["*@example.com"]}]}


async def test_gateway_ar_mail_mode_without_a_callback(running: Any) -> None:
    r: Running = await running({"provider": {"accuse_email": "gateway"}, "smtp": _ONLY_EXAMPLE_COM})
    r.sim.callback_url = None  # an account without a callback URL: receipts come by mail only
    r.sim.mail_relay = HostPort("127.0.0.1", r.gw.smtp.port)  # the provider mails the gateway itself
    await r.send(pages=2, sender="carol@example.com")
    await asyncio.wait_for(r.gw.worker.drain(), TIMEOUT)
    (request,) = r.sim.requests
    job = await r.gw.store.run(lambda s: s.get_job(request.params["ref"]))
    assert job is not None and request.params["accuse_email"] == f"ar-{job.ar_token}@ar.fax.local"
    await r.sim.wait_mails(1)
    final = await r.gw.store.run(lambda s: s.get_job(job.id))
    assert final is not None and (final.state, final.pages_sent) == (State.DELIVERED, 2)
    await r.gw.notifier.drain()
    (got,) = await r.sink.wait_for(1)
    assert got.rcpt_tos == ["carol@example.com"]
    assert _subject(got) == "Fax to +33 1 45 67 89 00 delivered, 2 pages"
    (attached,) = list(got.message.iter_attachments())
    assert attached.get_content_type() == "message/rfc822"
    assert "Accusé de réception" in str(attached.get_content()["Subject"])

    def fax_from_the_provider_address() -> None:  # everything else stays relay-denied
        with smtplib.SMTP("127.0.0.1", r.gw.smtp.port, timeout=10) as client:
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail("accuse@123-fax.net", ["0145678900@fax.local"], b"Subject: x\r\n\r\nx")

    await asyncio.to_thread(fax_from_the_provider_address)
    assert len(await r.jobs()) == 1


async def test_a_forged_receipt_address_is_refused(running: Any) -> None:
    r: Running = await running({"provider": {"accuse_email": "gateway"}})

    def forge() -> None:
        with smtplib.SMTP("127.0.0.1", r.gw.smtp.port, timeout=10) as client:
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                forged = "ar-0123456789abcdef0123456789abcdef@ar.fax.local"
                client.sendmail("x@example.com", [forged], b"Subject: x\r\n\r\nx")

    await asyncio.to_thread(forge)
    assert await r.gw.store.run(lambda s: list(s.db.execute("SELECT id FROM notifications"))) == []


async def test_busy_is_resubmitted_once_then_reported(running: Any) -> None:
    r: Running = await running({"delivery": {"busy_retries": 1, "busy_retry_delay_seconds": 0.0}})
    r.sim.receipt_code = "31064"
    await r.send(pages=1, sender="dan@example.com")
    (job,) = await r.settle()
    assert job.state == State.FAILED and "after 1 resubmissions" in job.reason
    assert len(r.sim.requests) == 2
    (got,) = await r.sink.wait_for(1)
    assert _subject(got) == "Fax to +33 1 45 67 89 00 not delivered: line busy"


def _send_raw(port: int, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("alice@example.com", ["0145678900@fax.local"], raw)


async def test_the_receipt_lists_the_attachments_left_out(running: Any) -> None:
    r: Running = await running({"documents": {"unsupported": "skip", "convert_types": []}})
    raw = plain_with([("notes.txt", "text/plain", b"call me\n"), ("contrat.pdf", "application/pdf", pdf(2)),
                      ("photos.zip", "application/zip", b"PK\x05\x06" + bytes(18))])  # fmt: skip
    await asyncio.to_thread(_send_raw, r.gw.smtp.port, raw)
    (job,) = await r.settle()
    assert (job.state, job.pages_sent) == (State.DELIVERED, 2)
    (got,) = await r.sink.wait_for(1)
    assert _subject(got) == "Fax to +33 1 45 67 89 00 delivered, 2 pages"
    body = got.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Left out (cannot be faxed): notes.txt (text/plain), photos.zip (application/zip)" in body
