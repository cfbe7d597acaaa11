"""STARTTLS, AUTH and who may send: real TLS with a certificate made now, real clients."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from gateway import passwords as auth
from gateway.settings import SettingsError, from_mapping
from tests.support_clock import FakeClock
from tests.support_smtp import Raw, Starter, client_tls, fax_mail, make_cert

PASSWORD = "correct horse battery staple"
HASH = auth.hash_password(PASSWORD)
UNTRUSTED = [{"cidr": "10.0.0.0/8"}]


def plain(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


def settings_with_users(tmp_path: Path, *, tls: bool = True, **smtp: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "users": [
            {"name": "scanner", "password_hash": HASH},
            {"name": "billing", "password_hash": HASH, "senders": ["*@billing.example.com"]},
        ],
        "trusted_networks": UNTRUSTED,
    }
    if tls:
        table["tls_cert"], table["tls_key"] = make_cert(tmp_path)
    return {"smtp": table | smtp}


def test_password_hashes() -> None:
    assert HASH.startswith("scrypt$") and auth.is_hash(HASH)
    assert auth.hash_password(PASSWORD) != HASH  # salted
    assert auth.verify_password(PASSWORD.encode(), HASH)
    assert not auth.verify_password(b"wrong", HASH)
    assert not auth.verify_password(PASSWORD.encode(), None)
    assert not auth.verify_password(PASSWORD.encode(), "scrypt$garbage")
    assert not auth.is_hash("scrypt$1$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAA==")


def test_settings_refuse_a_password_that_is_not_a_hash() -> None:
    with pytest.raises(SettingsError, match=r"smtp.users\[0\].password_hash"):
        from_mapping({"smtp": {"users": [{"name": "a", "password_hash": "scrypt$plain-text"}]}}, {})


def test_the_hash_password_command_reads_stdin_and_prints_a_hash() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "hash-password"], input=PASSWORD + "\n", capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    printed = done.stdout.strip()
    assert auth.is_hash(printed) and auth.verify_password(PASSWORD.encode(), printed)
    assert PASSWORD not in done.stdout + done.stderr


async def test_auth_only_after_starttls_then_mail_goes_through(smtp_gateway: Starter, tmp_path: Path) -> None:
    table = settings_with_users(tmp_path)
    h = await smtp_gateway(table)
    raw = await Raw.open(h.port)
    ehlo = await raw.cmd("EHLO mfp")
    assert "250-STARTTLS" in ehlo and "AUTH" not in ehlo
    assert await raw.cmd("AUTH PLAIN " + plain("scanner", PASSWORD).decode()) == (
        "538 5.7.11 Encryption required for requested authentication mechanism"
    )
    assert await raw.cmd("MAIL FROM:<alice@example.com>") == "530 5.7.0 Authentication required"
    await raw.close()

    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=h.port, tls_context=client_tls(table["smtp"]["tls_cert"]))
    await client.connect(start_tls=True)
    await client.ehlo()
    try:
        assert "AUTH LOGIN PLAIN" in (await client.ehlo()).message
        bad = await client.execute_command(b"AUTH", b"PLAIN", plain("scanner", "nope"))
        assert (bad.code, bad.message) == (535, "5.7.8 Authentication credentials invalid")
        await client.auth_login("scanner", PASSWORD)
        errors, reply = await client.sendmail("alice@example.com", ["0145678900@fax.local"], fax_mail())
        assert errors == {} and reply.startswith("2.0.0 OK: queued as ")
    finally:
        await client.quit()
    job = (await h.jobs())[0]
    message = await h.run(lambda s: s.message(job.message_id))
    assert message["auth_user"] == "scanner"


async def test_a_users_sender_allow_list(smtp_gateway: Starter, tmp_path: Path) -> None:
    table = settings_with_users(tmp_path)
    h = await smtp_gateway(table)
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=h.port, tls_context=client_tls(table["smtp"]["tls_cert"]))
    await client.connect(start_tls=True)
    await client.ehlo()
    try:
        await client.auth_plain("billing", PASSWORD)
        refused = await client.execute_command(b"MAIL", b"FROM:<alice@example.com>")
        assert (refused.code, refused.message) == (
            550, "5.7.1 Sender alice@example.com is not permitted to send faxes from here"
        )  # fmt: skip
        assert (await client.execute_command(b"MAIL", b"FROM:<ap@billing.example.com>")).code == 250
    finally:
        await client.quit()


async def test_failed_auth_backs_off_per_address(smtp_gateway: Starter, tmp_path: Path) -> None:
    clock = FakeClock()
    table = settings_with_users(tmp_path, auth_failures_before_backoff=2, auth_backoff_seconds=60.0)
    h = await smtp_gateway(table, clock=clock)
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=h.port, tls_context=client_tls(table["smtp"]["tls_cert"]))
    await client.connect(start_tls=True)
    await client.ehlo()

    async def attempt(password: str) -> int:
        return (await client.execute_command(b"AUTH", b"PLAIN", plain("scanner", password))).code

    try:
        assert [await attempt("a"), await attempt("b")] == [535, 535]
        assert await attempt(PASSWORD) == 454  # even the right password waits
        clock.now += 61
        assert await attempt("c") == 535
        clock.now += 61  # the pause doubled
        assert await attempt(PASSWORD) == 454
        clock.now += 60
        assert await attempt(PASSWORD) == 235
    finally:
        await client.quit()


async def test_plaintext_auth_for_a_trusted_network_that_allows_it(smtp_gateway: Starter, tmp_path: Path) -> None:
    table = settings_with_users(tmp_path, tls=False, trusted_networks=[{"cidr": "127.0.0.0/8", "plaintext_auth": True}])
    h = await smtp_gateway(table)
    raw = await Raw.open(h.port)
    assert "250-AUTH LOGIN PLAIN" in await raw.cmd("EHLO mfp")
    assert await raw.cmd("AUTH PLAIN " + plain("billing", PASSWORD).decode()) == "235 2.7.0 Authentication successful"
    assert (await raw.cmd("MAIL FROM:<alice@example.com>")).startswith("550 5.7.1 Sender alice@example.com")
    await raw.close()


async def test_without_tls_an_untrusted_client_is_told_550_not_530(smtp_gateway: Starter, tmp_path: Path) -> None:
    h = await smtp_gateway(settings_with_users(tmp_path, tls=False))
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO mfp")
    assert await raw.cmd("STARTTLS") == "454 4.7.0 TLS not available"
    assert await raw.cmd("MAIL FROM:<alice@example.com>") == "550 5.7.1 Client 127.0.0.1 is not permitted to send faxes"
    await raw.close()


async def test_a_command_injected_with_starttls_is_discarded(smtp_gateway: Starter, tmp_path: Path) -> None:
    table = settings_with_users(tmp_path, trusted_networks=[{"cidr": "127.0.0.0/8"}])
    h = await smtp_gateway(table)
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO mfp")
    await raw.send(b"STARTTLS\r\nEHLO injected\r\nMAIL FROM:<mallory@example.com>\r\n")
    assert await raw.reply() == "220 2.0.0 Ready to start TLS"
    await asyncio.wait_for(
        raw.writer.start_tls(client_tls(table["smtp"]["tls_cert"]), server_hostname="localhost"), 10
    )  # fmt: skip
    # Had the injected EHLO run, MAIL would be accepted now.
    assert await raw.cmd("MAIL FROM:<alice@example.com>") == "503 5.5.1 Send EHLO or HELO first"
    assert (await raw.cmd("EHLO mfp")).startswith("250-fax-gateway.test")
    assert await raw.cmd("MAIL FROM:<alice@example.com>") == "250 2.1.0 Sender OK"
    await raw.close()
