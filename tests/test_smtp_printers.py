"""What printers' SMTP clients do, byte for byte: AUTH LOGIN and PLAIN every way they send them, and fallbacks.

Each dialogue is the exact lines a printer sends and the exact replies it must
get; the server's AUTH LOGIN prompts are base64 of ``Username:`` and ``Password:``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.support_clock import FakeClock
from tests.support_smtp import (
    PASSWORD,
    TIMEOUT,
    Raw,
    Starter,
    b64,
    client_tls,
    fax_mail,
    make_cert,
    tls10_client,
    transaction,
    users,
)

USERNAME_PROMPT = "334 VXNlcm5hbWU6"  # "Username:"
PASSWORD_PROMPT = "334 UGFzc3dvcmQ6"  # "Password:"
OK = "235 2.7.0 Authentication successful"
NUL = "\0"
PRINTER_LAN = [{"cidr": "127.0.0.0/8", "plaintext_auth": True, "senders": ["*@example.com"]}]

Dialogue = list[tuple[bytes, str]]


def lan_printers(**smtp: Any) -> dict[str, Any]:
    """Users, and a printer network on loopback that may AUTH in plain text."""
    return {"smtp": {"users": users(), "trusted_networks": PRINTER_LAN} | smtp}


async def play(raw: Raw, dialogue: Dialogue) -> list[str]:
    """Send each line as written; the replies heard, to compare with the script."""
    heard = []
    for line, _ in dialogue:
        await raw.send(line)
        heard.append(await raw.reply())
    return heard


def script(*steps: tuple[str, str]) -> Dialogue:
    return [(sent.encode() + b"\r\n", reply) for sent, reply in steps]


def assert_ehlo_offers_auth(ehlo: str) -> None:
    lines = ehlo.splitlines()
    assert "250-AUTH LOGIN PLAIN" in lines and "250-AUTH=LOGIN PLAIN" in lines
    assert lines.index("250-AUTH=LOGIN PLAIN") == lines.index("250-AUTH LOGIN PLAIN") + 1


DIALOGUES = {
    # Most Canon, Ricoh and Sharp firmware: the username on the AUTH line, then the password prompt.
    "login with the username on the line": script(
        (f"AUTH LOGIN {b64('printer')}", PASSWORD_PROMPT), (b64(PASSWORD), OK)
    ),
    # Xerox, older Kyocera: wait for "Username:" before saying anything.
    "login waiting for the prompts": script(
        ("AUTH LOGIN", USERNAME_PROMPT), (b64("printer"), PASSWORD_PROMPT), (b64(PASSWORD), OK)
    ),
    "lower-case login": script(("auth login", USERNAME_PROMPT), (b64("printer"), PASSWORD_PROMPT), (b64(PASSWORD), OK)),
    "mixed-case login with the username": script(
        (f"Auth Login {b64('printer')}", PASSWORD_PROMPT), (b64(PASSWORD), OK)
    ),
    "plain with the initial response": script((f"AUTH PLAIN {b64(NUL + 'printer' + NUL + PASSWORD)}", OK)),
    "lower-case plain": script((f"auth plain {b64(NUL + 'printer' + NUL + PASSWORD)}", OK)),
    "plain waiting for the empty challenge": script(
        ("AUTH PLAIN", "334 "), (b64("\0printer\0" + PASSWORD), OK)
    ),
    "plain with an authorisation identity": script((f"AUTH PLAIN {b64(f'printer{NUL}printer{NUL}{PASSWORD}')}", OK)),
}  # fmt: skip


@pytest.mark.parametrize("name", DIALOGUES)
async def test_a_printer_logs_in_on_a_lan_that_allows_plain_text(smtp_gateway: Starter, name: str) -> None:
    h = await smtp_gateway(lan_printers())
    raw = await Raw.open(h.port)
    assert_ehlo_offers_auth(await raw.cmd("EHLO printer"))
    dialogue = DIALOGUES[name]
    assert await play(raw, dialogue) == [reply for _, reply in dialogue]
    replies = await transaction(raw, "scan@example.com", ["0145678900@fax.local"], fax_mail(sender="scan@example.com"))
    assert replies[-1].startswith("250 2.0.0 OK: queued as ")
    await raw.close()
    job = (await h.jobs())[0]
    assert (await h.run(lambda s: s.message(job.message_id)))["auth_user"] == "printer"


@pytest.mark.parametrize("name", ["login waiting for the prompts", "lower-case plain"])
async def test_the_same_dialogues_over_implicit_tls(smtp_gateway: Starter, tmp_path: Path, name: str) -> None:
    cert, key = make_cert(tmp_path)
    smtps = [{"listen": "127.0.0.1:0", "tls": "implicit", "name": "smtps"}]
    h = await smtp_gateway({"smtp": {"users": users(), "trusted_networks": [{"cidr": "10.0.0.0/8"}],
                                     "tls_cert": cert, "tls_key": key, "listeners": smtps}})  # fmt: skip
    raw = await Raw.open(h.port, tls=client_tls(cert))
    assert_ehlo_offers_auth(await raw.cmd("EHLO printer"))
    dialogue = DIALOGUES[name]
    assert await play(raw, dialogue) == [reply for _, reply in dialogue]
    await raw.close()


async def test_login_answers_the_bad_and_the_aborted_exchanges(smtp_gateway: Starter) -> None:
    h = await smtp_gateway(lan_printers())
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO printer")
    heard = await play(raw, script(
        ("AUTH LOGIN", USERNAME_PROMPT), ("*", "501 5.7.0 Authentication aborted"),
        ("AUTH LOGIN", USERNAME_PROMPT), ("not base64!", "501 5.5.2 Cannot decode the authentication data"),
        (f"AUTH LOGIN {b64('printer')}", PASSWORD_PROMPT),
        (b64("wrong"), "535 5.7.8 Authentication credentials invalid"),
        ("AUTH CRAM-MD5", "504 5.5.4 Unrecognized authentication type"),
        ("auth xoauth2", "504 5.5.4 Unrecognized authentication type"),
    ))  # fmt: skip
    assert heard == [
        USERNAME_PROMPT, "501 5.7.0 Authentication aborted",
        USERNAME_PROMPT, "501 5.5.2 Cannot decode the authentication data",
        PASSWORD_PROMPT, "535 5.7.8 Authentication credentials invalid",
        "504 5.5.4 Unrecognized authentication type", "504 5.5.4 Unrecognized authentication type",
    ]  # fmt: skip
    await raw.close()


async def test_a_flood_of_lower_case_logins_stays_throttled(smtp_gateway: Starter) -> None:
    clock = FakeClock()
    h = await smtp_gateway(lan_printers(auth_failures_before_backoff=2, auth_backoff_seconds=60.0), clock=clock)
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO printer")
    wrong = script(("auth login", USERNAME_PROMPT), (b64("printer"), PASSWORD_PROMPT),
                   (b64("guess"), "535 5.7.8 Authentication credentials invalid"))  # fmt: skip
    for _ in range(2):
        assert await play(raw, wrong) == [reply for _, reply in wrong]
    backoff = "454 4.7.0 Too many failed authentications, try again later"
    for line in ("auth login", f"AUTH LOGIN {b64('printer')}", "Auth Plain"):
        assert await raw.cmd(line) == backoff  # no prompt: nothing more is read as credentials
    clock.now += 61
    right = DIALOGUES["lower-case login"]
    assert await play(raw, right) == [reply for _, reply in right]
    await raw.close()


async def test_plain_text_auth_only_where_the_network_allows_it(smtp_gateway: Starter) -> None:
    h = await smtp_gateway({"smtp": {"users": users(), "trusted_networks": [{"cidr": "127.0.0.0/8"}]}})
    raw = await Raw.open(h.port)
    ehlo = await raw.cmd("EHLO printer")
    assert "AUTH" not in ehlo
    refused = "538 5.7.11 Encryption required for requested authentication mechanism"
    assert await play(raw, script(("auth login", refused), (f"AUTH PLAIN {b64(NUL + 'printer' + NUL + PASSWORD)}",
                                                           refused))) == [refused, refused]  # fmt: skip
    await raw.close()


async def test_a_printer_that_drops_to_plain_text_when_starttls_fails(
    smtp_gateway: Starter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Its TLS is too old or broken: the handshake fails, it connects again and sends in plain text.
    cert, key = make_cert(tmp_path)
    h = await smtp_gateway(lan_printers(tls_cert=cert, tls_key=key))
    with caplog.at_level(logging.INFO, logger="gateway.smtp"):
        first = await Raw.open(h.port)
        assert "250-STARTTLS" in await first.cmd("EHLO printer")
        assert await first.cmd("STARTTLS") == "220 2.0.0 Ready to start TLS"
        with pytest.raises(OSError):  # TLS 1.0 only, against a listener from TLS 1.2 (an alert, or a reset)
            await asyncio.wait_for(first.writer.start_tls(tls10_client(cert), server_hostname="localhost"), TIMEOUT)
        await first.close()
    assert len([r for r in caplog.records if "STARTTLS handshake with" in r.getMessage()]) == 1
    again = await Raw.open(h.port)
    assert_ehlo_offers_auth(await again.cmd("EHLO printer"))
    dialogue = DIALOGUES["login with the username on the line"]
    assert await play(again, dialogue) == [reply for _, reply in dialogue]
    mail = fax_mail(sender="scan@example.com")
    replies = await transaction(again, "scan@example.com", ["0145678900@fax.local"], mail)
    assert replies[-1].startswith("250 2.0.0 OK: queued as ")
    await again.close()


async def test_a_printer_that_goes_on_in_plain_text_when_starttls_is_not_offered(smtp_gateway: Starter) -> None:
    # No certificate: STARTTLS gets 454; the printer carries on in the same session.
    h = await smtp_gateway(lan_printers())
    raw = await Raw.open(h.port)
    heard = await play(raw, script(
        ("EHLO printer", ""), ("STARTTLS", "454 4.7.0 TLS not available"),
        ("AUTH LOGIN", USERNAME_PROMPT), (b64("printer"), PASSWORD_PROMPT), (b64(PASSWORD), OK),
        ("MAIL FROM:<scan@example.com>", "250 2.1.0 Sender OK"),
    ))  # fmt: skip
    assert heard[1:] == ["454 4.7.0 TLS not available", USERNAME_PROMPT, PASSWORD_PROMPT, OK, "250 2.1.0 Sender OK"]
    await raw.close()
