"""The reply table, and the receipt-mail route of the SMTP front door."""

from __future__ import annotations

import pickle
import re

import pytest

from gateway import replies
from gateway.store import NewMessage
from tests.support_smtp import Harness, Raw, Starter, fax_mail, transaction

# Every refusal the SMTP front door promises (code, enhanced code).
CONTRACT = {
    "ERROR": (451, "4.3.0"),
    "LOW_SPACE": (452, "4.3.1"),
    "TOO_MANY_RECIPIENTS": (452, "4.5.3"),
    "QUOTA_SENDER": (450, "4.7.1"),
    "QUOTA_GLOBAL": (450, "4.7.1"),
    "TOO_MANY_CONNECTIONS": (421, "4.7.0"),
    "TOO_MANY_ERRORS": (421, "4.7.0"),
    "IDLE_TIMEOUT": (421, "4.4.2"),
    "AUTH_BACKOFF": (454, "4.7.0"),
    "AUTH_REQUIRED": (530, "5.7.0"),
    "ENCRYPTION_REQUIRED": (538, "5.7.11"),
    "AUTH_FAILED": (535, "5.7.8"),
    "NOT_PERMITTED": (550, "5.7.1"),
    "SENDER_NOT_PERMITTED": (550, "5.7.1"),
    "NULL_SENDER": (550, "5.7.1"),
    "FAX_DOMAIN_SENDER": (550, "5.7.1"),
    "RELAY_DENIED": (550, "5.7.1"),
    "BAD_NUMBER_SYNTAX": (553, "5.1.3"),
    "INVALID_NUMBER": (550, "5.1.1"),
    "DESTINATION_DENIED": (550, "5.7.1"),
    "MESSAGE_TOO_BIG": (552, "5.3.4"),
    "QUEUED": (250, "2.0.0"),
}


# RFC 2034: the greeting and the 354 go-ahead carry no enhanced code.
WITHOUT_ENHANCED = {"GREETING": 220, "START_DATA": 354}


@pytest.mark.parametrize(("name", "reply"), sorted(replies.all_replies().items()))
def test_every_reply_is_well_formed(name: str, reply: replies.Reply) -> None:
    assert 200 <= reply.code < 600
    assert reply.text and reply.text.isascii() and "\n" not in reply.text and "\r" not in reply.text
    if name in WITHOUT_ENHANCED:
        assert (reply.code, reply.enhanced) == (WITHOUT_ENHANCED[name], "")
        assert str(reply) == f"{reply.code} {reply.text}"
        return
    assert re.fullmatch(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}", reply.enhanced), name
    assert reply.enhanced[0] == str(reply.code)[0], f"{name}: class of {reply.enhanced} differs from {reply.code}"
    assert str(reply) == f"{reply.code} {reply.enhanced} {reply.text}"


def test_the_contract_is_in_the_table() -> None:
    table = replies.all_replies()
    assert {name: (table[name].code, table[name].enhanced) for name in CONTRACT if name in table} == CONTRACT


def test_values_put_in_a_reply_cannot_break_the_line() -> None:
    line = str(replies.SENDER_NOT_PERMITTED.format(sender="a\r\n250 OK\x00@example.com"))
    assert "\r" not in line and "\n" not in line and "\x00" not in line


def test_every_entry_knows_its_name_and_unpickles_as_itself() -> None:
    for name, reply in replies.all_replies().items():
        assert reply.name == name
        assert pickle.loads(pickle.dumps(reply)) is reply
    assert replies.QUEUED.name == "QUEUED"


def test_an_answer_is_its_entry_its_text_and_the_jobs_it_names() -> None:
    answer = replies.queued(["0123456789abcdef", "fedcba9876543210"])
    assert answer.reply is replies.QUEUED and answer.jobs == ("0123456789abcdef", "fedcba9876543210")
    assert str(answer) == "250 2.0.0 OK: queued as 0123456789abcdef fedcba9876543210"
    assert (answer.code, answer.ok, answer.refused) == (250, True, False)
    refusal = replies.TOO_MANY_RECIPIENTS.format(limit=5)
    assert str(refusal) == "452 4.5.3 Too many recipients (at most 5 per message)"
    assert (refusal.reply.name, refusal.ok, refusal.refused, refusal.jobs) == ("TOO_MANY_RECIPIENTS", False, True, ())
    assert str(replies.START_DATA.answer()) == "354 End data with <CR><LF>.<CR><LF>" and replies.START_DATA.answer().ok
    assert str(replies.OK.answer()) == str(replies.OK) == "250 2.0.0 OK"
    with pytest.raises(KeyError):
        replies.QUEUED.answer()  # a text with placeholders needs its values


def test_an_answer_is_ascii_whatever_was_filled_in() -> None:
    answer = replies.SENDER_NOT_PERMITTED.format(sender="jos\u00e9@example.com")
    assert answer.text == "Sender jos?@example.com is not permitted to send faxes from here"
    assert str(answer).isascii()


def test_the_ehlo_answer_is_its_lines() -> None:
    assert str(replies.Hello(("250-fax.test", "250 HELP"))) == "250-fax.test\r\n250 HELP"


async def test_the_handler_answers_reach_the_server_as_objects(smtp_gateway: Starter) -> None:
    h = await smtp_gateway()
    seen: list[replies.Answer] = []
    told = h.server.on_reply
    h.server.on_reply = lambda answer: (seen.append(answer), told(answer))[-1]
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO mfp")
    assert await raw.cmd("DATA") == "503 5.5.1 Send RCPT TO first"  # pushed by the gateway as the table entry
    out = await transaction(raw, "alice@example.com", ["0145678900@fax.local", "0612345678@fax.local"], fax_mail())
    assert await raw.cmd("NOOP") == "250 2.0.0 OK"  # aiosmtpd's own "250 OK", translated
    assert await raw.cmd("XYZZY") == "500 5.5.1 Command not recognized"
    await raw.close()
    assert [a.reply.name for a in seen] == [
        "GREETING", "NEED_RCPT", "SENDER_OK", "RECIPIENT_OK", "RECIPIENT_OK", "START_DATA", "QUEUED", "OK",
        "UNKNOWN_COMMAND",
    ]  # fmt: skip
    assert [str(a) for a in seen[2:7]] == out
    jobs = await h.jobs()
    assert sorted(seen[6].jobs) == sorted(j.id for j in jobs) and len(jobs) == 2
    assert all(a.reply is replies.all_replies()[a.reply.name] for a in seen)


async def test_helo_is_answered_with_the_hostname_and_opens_the_session(smtp_gateway: Starter) -> None:
    h = await smtp_gateway()
    raw = await Raw.open(h.port)
    assert await raw.cmd("HELO mfp") == "250 fax-gateway.test"
    assert await raw.cmd("MAIL FROM:<alice@example.com>") == "250 2.1.0 Sender OK"
    await raw.close()


GATEWAY_RECEIPTS = {"provider": {"accuse_email": "gateway"}, "smtp": {"trusted_networks": [{"cidr": "10.0.0.0/8"}]}}


async def queued_job_token(h: Harness) -> tuple[str, str]:
    """A queued job in the store: (job id, the token of its receipt address)."""
    msg = NewMessage("m1", "alice@example.com", "", "", "", "", "", "10.1.2.3", "", "pdf", 1, 10)
    await h.run(lambda s: s.add_message(msg, [("job1", "+33145678900", "")], "test"))
    job = await h.run(lambda s: s.get_job("job1"))
    return job.id, job.ar_token


async def test_a_receipt_mail_from_anyone_reaches_the_callback(smtp_gateway: Starter) -> None:
    h = await smtp_gateway(GATEWAY_RECEIPTS, receipts=True)
    job_id, token = await queued_job_token(h)
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO provider.example")
    report = b"Subject: AR\r\n\r\nFax delivered.\r\n"
    out = await transaction(raw, "", [f"ar-{token}@ar.fax.local"], report)
    await raw.close()
    assert out == [
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK: receipt address",
        "354 End data with <CR><LF>.<CR><LF>",
        "250 2.0.0 OK: receipt recorded",
    ]
    assert h.receipts == [(job_id, report)]


async def test_receipt_addresses_are_checked_and_never_mixed_with_faxes(smtp_gateway: Starter) -> None:
    h = await smtp_gateway(GATEWAY_RECEIPTS, receipts=True)
    _, token = await queued_job_token(h)
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO provider.example")
    assert (await raw.cmd("MAIL FROM:<ar@provider.example>")).startswith("250")
    assert await raw.cmd(f"RCPT TO:<ar-{'f' * 32}@ar.fax.local>") == "550 5.1.1 No such receipt address"
    # The sender may mail receipts, not faxes: this client is not trusted.
    assert await raw.cmd("RCPT TO:<0145678900@fax.local>") == (
        "550 5.7.1 Client 127.0.0.1 is not permitted to send faxes"
    )
    assert (await raw.cmd(f"RCPT TO:<ar-{token}@ar.fax.local>")).startswith("250")
    await raw.cmd("RSET")
    await raw.close()
    assert h.receipts == []


async def test_a_trusted_client_cannot_mix_receipt_and_fax_recipients(smtp_gateway: Starter) -> None:
    h = await smtp_gateway({"provider": {"accuse_email": "gateway"}}, receipts=True)
    _, token = await queued_job_token(h)
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO mfp")
    await raw.cmd("MAIL FROM:<alice@example.com>")
    assert (await raw.cmd("RCPT TO:<0145678900@fax.local>")).startswith("250")
    assert await raw.cmd(f"RCPT TO:<ar-{token}@ar.fax.local>") == (
        "452 4.5.3 Fax and receipt recipients cannot share a message: send this one separately"
    )
    await raw.close()


async def test_a_null_sender_may_not_send_a_fax_even_when_receipts_come_by_mail(smtp_gateway: Starter) -> None:
    h = await smtp_gateway({"provider": {"accuse_email": "gateway"}}, receipts=True)
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO mfp")
    assert (await raw.cmd("MAIL FROM:<>")).startswith("250")
    assert await raw.cmd("RCPT TO:<0145678900@fax.local>") == (
        "550 5.7.1 A null sender cannot send faxes: nobody could be told the outcome"
    )
    await raw.close()


async def test_a_failing_receipt_callback_answers_451(smtp_gateway: Starter) -> None:
    h = await smtp_gateway(GATEWAY_RECEIPTS, receipts=True, receipt_error=OSError("disk full"))
    _, token = await queued_job_token(h)
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO provider.example")
    out = await transaction(raw, "ar@provider.example", [f"ar-{token}@ar.fax.local"], b"Subject: AR\r\n\r\nok\r\n")
    await raw.close()
    assert out[-1] == "451 4.3.0 Internal error, please try again later"


async def test_without_the_receipt_route_receipt_addresses_are_not_ours(smtp_gateway: Starter) -> None:
    h = await smtp_gateway({"provider": {"accuse_email": "gateway"}})
    _, token = await queued_job_token(h)
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO mfp")
    await raw.cmd("MAIL FROM:<alice@example.com>")
    assert (await raw.cmd(f"RCPT TO:<ar-{token}@ar.fax.local>")).startswith("550 5.7.1 Relaying denied")
    await raw.close()
