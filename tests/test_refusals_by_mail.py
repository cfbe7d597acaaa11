"""``refusals = "mail"``: a printer's mail that cannot be faxed gets 250, and the person behind it gets the reason.

Printers show the person at the copier "send error" and nothing else, and Postfix's bounce goes to the
printer's own address, which nobody reads. For a network or user with ``refusals = "mail"``, a mail refused
after RCPT for its document (type, size, none at all) is accepted, and the refusal goes as a receipt to the
person behind the sender (``notify.sender_map``, Reply-To, From). Number and relay refusals at RCPT stay
SMTP refusals.
"""

from __future__ import annotations

import asyncio
import email.policy
import smtplib
from email.message import EmailMessage

from gateway.store import State
from tests.support_receipts import Running, StartGateway


def _word_file_mail(sender: str, to: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, "Scan from the copier"
    msg["Message-ID"] = "<scan-1@printer.example.com>"
    msg.set_content("Scanned document attached.\n")
    msg.add_attachment(b"PK\x03\x04" + b"\x00" * 200, maintype="application", subtype="octet-stream",
                       filename="scan.docx")  # fmt: skip
    return msg.as_bytes(policy=email.policy.SMTP)


def _send(r: Running, to: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", r.gw.smtp.port, timeout=10) as client:
        client.ehlo("copier")
        client.mail("copier@example.com")
        code, _ = client.rcpt(to)
        if code != 250:
            return code, b""
        return client.data(_word_file_mail("copier@example.com", to))


MAIL = {"smtp": {"trusted_networks": [{"cidr": "127.0.0.0/8", "refusals": "mail"}]},
        "notify": {"sender_map": {"copier@example.com": "frontdesk@example.com"}}}  # fmt: skip


async def test_a_refused_document_is_answered_250_and_its_reason_mailed(running: StartGateway) -> None:
    r = await running(MAIL)
    code, text = await asyncio.to_thread(_send, r, "0145678900@fax.local")
    (job,) = await r.jobs()
    assert code == 250 and text.decode() == f"2.0.0 OK: not faxed; the reason goes by mail to the sender (job {job.id})"
    assert job.state == State.FAILED and "cannot be faxed as it is" in job.reason and "scan.docx" in job.reason
    await r.gw.notifier.drain()  # the notifier may have sent it already: it was woken at the 250
    (got,) = await r.sink.wait_for(1)
    assert got.rcpt_tos == ["frontdesk@example.com"]
    body = str(got.message.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert "scan.docx" in body and "convert it to PDF" in body and got.message["X-Fax-Status"] == "failed"
    assert not r.sim.requests  # nothing went to the provider


async def test_number_refusals_stay_smtp_refusals(running: StartGateway) -> None:
    r = await running(MAIL)
    code, _ = await asyncio.to_thread(_send, r, "12ab@fax.local")
    assert code == 553 and await r.jobs() == []


async def test_by_default_a_document_refusal_is_an_smtp_refusal(running: StartGateway) -> None:
    r = await running()  # refusals = "smtp"
    code, text = await asyncio.to_thread(_send, r, "0145678900@fax.local")
    assert code == 554 and b"scan.docx" in text and await r.jobs() == []
