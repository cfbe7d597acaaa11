"""SMTP session limits and protocol edges, over raw sockets where a client library would refuse."""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil

import pytest

from tests.support_docs import pdf as make_pdf
from tests.support_smtp import Door, Raw, Starter, fax_mail, transaction


def crlf(message: bytes) -> bytes:
    return message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


async def test_ehlo_advertises_size_8bitmime_pipelining_and_no_smtputf8(smtp_gateway: Starter) -> None:
    h = await smtp_gateway()
    raw = await Raw.open(h.port)
    lines = (await raw.cmd("EHLO mfp")).splitlines()
    await raw.close()
    assert lines[0] == "250-fax-gateway.test"
    assert {"250-SIZE 31457280", "250-8BITMIME", "250-PIPELINING"} <= set(lines)
    assert not any("SMTPUTF8" in line or "STARTTLS" in line or "AUTH" in line for line in lines)


async def test_pipelined_commands_are_answered_in_order(smtp_gateway: Starter, door: Door) -> None:
    h = await smtp_gateway(door.table())
    raw = await door.open(h.port)
    await raw.cmd("EHLO mfp")
    await raw.send(
        b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<0145678900@fax.local>\r\n"
        b"RCPT TO:<0145678900@evil.example>\r\nDATA\r\n"
    )
    assert [await raw.reply() for _ in range(4)] == [
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK: fax to +33145678900",
        "550 5.7.1 Relaying denied: only <number>@fax.local recipients are accepted",
        "354 End data with <CR><LF>.<CR><LF>",
    ]
    await raw.send(crlf(fax_mail()) + b".\r\n")
    assert (await raw.reply()).startswith("250 2.0.0 OK: queued as ")
    await raw.close()
    assert len(await h.jobs()) == 1


@pytest.mark.parametrize("ending", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r"])
async def test_smuggled_endings_do_not_end_data(smtp_gateway: Starter, door: Door, ending: bytes) -> None:
    h = await smtp_gateway(door.table())
    message = crlf(fax_mail(body="before SMUGGLE after"))
    smuggled = (
        ending + b"MAIL FROM:<mallory@example.com>\r\nRCPT TO:<0612345678@fax.local>\r\nDATA\r\n"
        + crlf(fax_mail(sender="mallory@example.com", to="0612345678@fax.local")) + b"\r\n.\r\n"
    )  # fmt: skip
    # The smuggled part holds a complete "\r\n.\r\n": put it where it stays inside the text part.
    payload = message.replace(b"SMUGGLE", smuggled.replace(b"\r\n.\r\n", b"\r\n..\r\n"))
    raw = await door.open(h.port)
    await raw.cmd("EHLO mfp")
    assert (await raw.cmd("MAIL FROM:<alice@example.com>")).startswith("250")
    assert (await raw.cmd("RCPT TO:<0145678900@fax.local>")).startswith("250")
    assert (await raw.cmd("DATA")).startswith("354")
    await raw.send(payload + b".\r\n")
    assert (await raw.reply()).startswith("250 2.0.0 OK: queued as ")
    assert await raw.cmd("NOOP") == "250 2.0.0 OK"  # nothing else was answered in between
    await raw.close()
    jobs = await h.jobs()
    assert [(j.number, j.envelope_from) for j in jobs] == [("+33145678900", "alice@example.com")]
    raw_spooled = h.spool.read(jobs[0].message_id, "message.eml")
    assert b"mallory@example.com" in raw_spooled  # it stayed message text


async def test_a_base64_attachment_on_one_long_line_is_accepted(smtp_gateway: Starter) -> None:
    h = await smtp_gateway()
    pdf = make_pdf(pages=30)
    encoded = base64.b64encode(pdf)
    assert len(encoded) > 1000  # RFC 5321 lines stop at 1000 octets
    message = (
        b"From: alice@example.com\r\nTo: 0145678900@fax.local\r\nSubject: scan\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: application/pdf\r\n'
        b'Content-Disposition: attachment; filename="scan.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        + encoded + b"\r\n--b--\r\n"
    )  # fmt: skip
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO mfp")
    replies = await transaction(raw, "alice@example.com", ["0145678900@fax.local"], message)
    await raw.close()
    assert replies[-1].startswith("250 2.0.0 OK: queued as ")
    job = (await h.jobs())[0]
    assert h.spool.read(job.message_id, "fax.pdf") == pdf


async def test_a_line_over_the_limit_is_refused_after_the_data(smtp_gateway: Starter, door: Door) -> None:
    h = await smtp_gateway(door.table({"smtp": {"max_line_length": 5000}}))
    raw = await door.open(h.port)
    await raw.cmd("EHLO mfp")
    message = fax_mail().replace(b"Subject: Invoice", b"Subject: " + b"z" * 8000)
    replies = await transaction(raw, "alice@example.com", ["0145678900@fax.local"], message)
    assert replies[-1] == "500 5.5.2 Line too long (at most 5000 octets)"
    assert await raw.cmd("NOOP") == "250 2.0.0 OK"
    await raw.close()
    assert await h.jobs() == []


async def test_connections_past_the_limit_get_421(smtp_gateway: Starter) -> None:
    h = await smtp_gateway({"smtp": {"max_connections": 2}})
    first, second = await Raw.open(h.port), await Raw.open(h.port)
    third = await Raw.open(h.port, greet=False)
    assert await third.reply() == "421 4.7.0 Too many connections, try again later"
    assert await third.closed()
    await third.close()
    assert (await first.cmd("QUIT")).startswith("221")
    assert await first.closed()
    await first.close()
    fourth = await Raw.open(h.port)  # a slot is free again
    assert (await fourth.cmd("NOOP")).startswith("250")
    for raw in (second, fourth):
        await raw.close()


async def test_too_many_errors_close_the_session_and_buffered_commands_never_run(smtp_gateway: Starter) -> None:
    h = await smtp_gateway({"smtp": {"max_errors": 2}})
    raw = await Raw.open(h.port)
    await raw.send(b"DATA\r\nRCPT TO:<0145678900@fax.local>\r\nEHLO x\r\nMAIL FROM:<alice@example.com>\r\n")
    rest = await asyncio.wait_for(raw.reader.read(), 10)
    await raw.close()
    assert rest.decode().splitlines() == [
        "503 5.5.1 Send EHLO or HELO first",
        "503 5.5.1 Send EHLO or HELO first",
        "421 4.7.0 Too many errors, closing connection",
    ]


async def test_a_command_sent_too_often_closes_the_session(smtp_gateway: Starter) -> None:
    h = await smtp_gateway({"smtp": {"max_commands": 3}})
    raw = await Raw.open(h.port)
    for _ in range(3):
        assert await raw.cmd("NOOP") == "250 2.0.0 OK"
    assert await raw.cmd("NOOP") == "421 4.7.0 NOOP sent too many times, closing connection"
    assert await raw.closed()
    await raw.close()


async def test_an_idle_client_gets_421_and_is_closed(smtp_gateway: Starter) -> None:
    h = await smtp_gateway({"smtp": {"idle_timeout": 0.2}})
    raw = await Raw.open(h.port)
    assert await raw.reply() == "421 4.4.2 Connection idle for too long, closing"
    assert await raw.closed()
    await raw.close()


async def test_unknown_commands_and_sequence_errors_use_the_reply_table(smtp_gateway: Starter) -> None:
    h = await smtp_gateway()
    raw = await Raw.open(h.port)
    assert await raw.cmd("FOO") == "500 5.5.1 Command not recognized"
    assert await raw.cmd("EHLO") == "501 5.5.4 Syntax: EHLO hostname"
    await raw.cmd("EHLO mfp")
    assert await raw.cmd("RCPT TO:<0145678900@fax.local>") == "503 5.5.1 Send MAIL FROM first"
    assert await raw.cmd("DATA") == "503 5.5.1 Send RCPT TO first"
    assert await raw.cmd("MAIL FROM:<alice@example.com>") == "250 2.1.0 Sender OK"
    assert await raw.cmd("MAIL FROM:<alice@example.com>") == "503 5.5.1 Sender already given (send RSET to start over)"
    assert await raw.cmd("RSET") == "250 2.0.0 OK"
    assert await raw.cmd("MAIL FROM:<alice@example.com> SMTPUTF8") == (
        "555 5.5.4 SMTPUTF8 is not supported: write addresses in ASCII"
    )
    assert await raw.cmd("MAIL FROM:<not an address>") == "553 5.1.7 Malformed sender address"
    assert await raw.cmd("EXPN staff") == "502 5.5.1 Command not implemented"
    await raw.close()


async def test_an_unexpected_error_is_451_and_never_shows_the_exception(
    smtp_gateway: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    h = await smtp_gateway({"spool": {"min_free_bytes": 1}})
    shutil.rmtree(h.spool.root)  # statvfs at MAIL now fails
    with caplog.at_level(logging.INFO, logger="gateway.smtp"):
        raw = await Raw.open(h.port)
        await raw.cmd("EHLO mfp")
        assert await raw.cmd("MAIL FROM:<alice@example.com>") == "451 4.3.0 Internal error, please try again later"
        assert (await raw.cmd("NOOP")).startswith("250")  # the session goes on
        await raw.close()
    # The details are in the log, under the session's id.
    (connected,) = [r.getMessage() for r in caplog.records if "connection from 127.0.0.1" in r.getMessage()]
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error.getMessage() == connected.replace("connection from 127.0.0.1", "unexpected error: 451")
    assert error.exc_info is not None and isinstance(error.exc_info[1], FileNotFoundError)


async def test_stop_lets_a_message_in_data_finish_and_closes_idle_sessions(smtp_gateway: Starter) -> None:
    h = await smtp_gateway()
    idle = await Raw.open(h.port)
    busy = await Raw.open(h.port)
    await busy.cmd("EHLO mfp")
    await busy.cmd("MAIL FROM:<alice@example.com>")
    await busy.cmd("RCPT TO:<0145678900@fax.local>")
    assert (await busy.cmd("DATA")).startswith("354")
    message = crlf(fax_mail())
    await busy.send(message[:100])
    stopping = asyncio.ensure_future(h.server.stop())
    assert await idle.reply() == "421 4.3.2 Service shutting down, try again later"
    assert not stopping.done()
    await busy.send(message[100:] + b".\r\n")
    assert (await busy.reply()).startswith("250 2.0.0 OK: queued as ")
    assert await busy.reply() == "421 4.3.2 Service shutting down, try again later"
    await asyncio.wait_for(stopping, 10)
    await h.server.stop()  # idempotent
    assert len(await h.jobs()) == 1
    with pytest.raises(OSError):
        await Raw.open(h.port)
    for raw in (idle, busy):
        await raw.close()


async def test_start_raises_when_the_port_is_taken(smtp_gateway: Starter) -> None:
    h = await smtp_gateway()
    with pytest.raises(OSError):
        await smtp_gateway({"smtp": {"listen": f"127.0.0.1:{h.port}"}})


async def test_help_lists_the_commands(smtp_gateway: Starter) -> None:
    h = await smtp_gateway()
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO mfp")
    commands = (await raw.cmd("HELP")).split(": ", 1)[1].split()
    assert {"MAIL", "RCPT", "DATA", "EHLO", "QUIT"} <= set(commands)
    assert await raw.cmd("HELP RCPT") == "250 2.0.0 Syntax: RCPT TO: <address> [SP <mail-parameters>]"
    await raw.close()
