"""Listeners: plain, STARTTLS and implicit TLS side by side, old TLS versions, certificates reloaded, bad handshakes."""

from __future__ import annotations

import asyncio
import logging
import signal
import smtplib
import ssl
from pathlib import Path
from typing import Any

import pytest

from gateway.daemon.run import run
from gateway.settings import SettingsError, from_mapping
from gateway.smtp import tls
from tests.support_settings import SettingsFactory
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

LOOP = "127.0.0.1:0"


def three(cert: str, key: str, **extra: Any) -> dict[str, Any]:
    listeners = [{"listen": LOOP, "tls": "none", "name": "lan"}, {"listen": LOOP, "tls": "starttls", "name": "submit"},
                 {"listen": LOOP, "tls": "implicit", "name": "smtps"}]  # fmt: skip
    return {"smtp": {"tls_cert": cert, "tls_key": key, "listeners": listeners} | extra}


# -- settings --------------------------------------------------------------------------


def test_the_single_listen_is_one_listener(tmp_path: Path) -> None:
    (plain,) = from_mapping({"smtp": {"listen": "127.0.0.1:25"}}, {}).smtp.effective_listeners()
    assert (str(plain.listen), plain.tls, plain.name, plain.tls_min_version) == ("127.0.0.1:25", "none", "smtp",
                                                                                 "TLSv1.2")  # fmt: skip
    cert, key = make_cert(tmp_path)
    (starttls,) = from_mapping({"smtp": {"tls_cert": cert, "tls_key": key}}, {}).smtp.effective_listeners()
    assert (starttls.tls, starttls.tls_cert, starttls.tls_key) == ("starttls", cert, key)


def test_listeners_take_names_certificates_and_versions(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    other_cert, other_key = make_cert(tmp_path, "old")
    table = three(cert, key)
    table["smtp"]["listeners"].append({"listen": "[::1]:2465", "tls": "implicit", "tls_min_version": "TLSv1",
                                       "tls_cert": other_cert, "tls_key": other_key})  # fmt: skip
    got = from_mapping(table, {}).smtp.effective_listeners()
    assert [(li.name, li.tls, li.tls_cert, li.legacy_tls) for li in got] == [
        ("lan", "none", cert, False), ("submit", "starttls", cert, False), ("smtps", "implicit", cert, False),
        ("[::1]:2465", "implicit", other_cert, True),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("listener", "error"),
    [
        ({"listen": LOOP, "tls": "implicit"}, r"smtp.listeners\[0\].tls: 'implicit' needs a certificate"),
        ({"listen": LOOP}, r"smtp.listeners\[0\].tls: 'starttls' needs a certificate"),
        ({"listen": LOOP, "tls": "tls"}, r"smtp.listeners\[0\].tls: 'tls' is not one of 'none'"),
        ({"listen": LOOP, "tls": "none", "tls_min_version": "SSLv3"}, r"tls_min_version: 'SSLv3' is not one of"),
        ({"tls": "none"}, r"smtp.listeners\[0\].listen: required"),
        ({"listen": LOOP, "tls": "none", "tls_cert": "/nonexistent"}, r"tls_cert and tls_key go together"),
    ],
)
def test_listener_mistakes_name_the_key(listener: dict[str, Any], error: str) -> None:
    with pytest.raises(SettingsError, match=error):
        from_mapping({"smtp": {"listeners": [listener]}}, {})


def test_two_listeners_cannot_share_a_name() -> None:
    same = [{"listen": LOOP, "tls": "none"}, {"listen": LOOP, "tls": "none"}]
    with pytest.raises(SettingsError, match=r"smtp.listeners\[1\].name: '127.0.0.1:0' is the name of another"):
        from_mapping({"smtp": {"listeners": same}}, {})


# -- side by side ----------------------------------------------------------------------


async def test_three_listeners_each_speak_their_way(smtp_gateway: Starter, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    h = await smtp_gateway(three(cert, key))
    ports = h.server.ports
    assert set(ports) == {"lan", "submit", "smtps"} and len(set(ports.values())) == 3 and 0 not in ports.values()
    assert h.server.port == ports["lan"] == h.server.port_of("lan") and h.server.listening

    lan = await Raw.open(ports["lan"])
    ehlo = await lan.cmd("EHLO mfp")
    assert "STARTTLS" not in ehlo and "AUTH" not in ehlo
    assert await lan.cmd("STARTTLS") == "454 4.7.0 TLS not available"
    await lan.close()

    submit = await Raw.open(ports["submit"])
    await submit.starttls(client_tls(cert))
    assert "STARTTLS" not in await submit.cmd("EHLO mfp")
    await submit.close()

    smtps = await Raw.open(ports["smtps"], tls=client_tls(cert))
    ehlo = await smtps.cmd("EHLO mfp")
    assert "STARTTLS" not in ehlo
    replies = await transaction(smtps, "alice@example.com", ["0145678900@fax.local"], fax_mail())
    assert replies[-1].startswith("250 2.0.0 OK: queued as ")
    await smtps.close()
    assert len(await h.jobs()) == 1


async def test_auth_on_implicit_tls_needs_no_starttls(smtp_gateway: Starter, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    h = await smtp_gateway(three(cert, key, users=users(), trusted_networks=[{"cidr": "10.0.0.0/8"}]))
    smtps = await Raw.open(h.server.port_of("smtps"), tls=client_tls(cert))
    assert "250-AUTH LOGIN PLAIN" in await smtps.cmd("EHLO mfp")
    assert await smtps.cmd("MAIL FROM:<alice@example.com>") == "530 5.7.0 Authentication required"
    assert await smtps.cmd("AUTH PLAIN " + b64("\0scanner\0" + PASSWORD)) == "235 2.7.0 Authentication successful"
    assert await smtps.cmd("MAIL FROM:<alice@example.com>") == "250 2.1.0 Sender OK"
    await smtps.close()
    # No TLS at all on this listener: AUTH would not help, so the untrusted client hears 550.
    lan = await Raw.open(h.server.port_of("lan"))
    await lan.cmd("EHLO mfp")
    assert await lan.cmd("MAIL FROM:<alice@example.com>") == "550 5.7.1 Client 127.0.0.1 is not permitted to send faxes"
    await lan.close()


# -- TLS 1.0 for old printers ------------------------------------------------------------


async def test_a_tls10_printer_on_a_legacy_listener(
    smtp_gateway: Starter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = make_cert(tmp_path)
    listeners = [{"listen": LOOP, "tls": "implicit", "name": "modern"},
                 {"listen": LOOP, "tls": "implicit", "name": "old", "tls_min_version": "TLSv1"}]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="gateway.smtp"):
        h = await smtp_gateway({"smtp": {"tls_cert": cert, "tls_key": key, "listeners": listeners}})
    (warning,) = [r.getMessage() for r in caplog.records if "security level 0" in r.getMessage()]
    assert warning.startswith("SMTP listener old: TLS from TLSv1 accepted") and "@SECLEVEL=0" in warning

    def send(port: int) -> tuple[str, str]:
        with smtplib.SMTP_SSL("127.0.0.1", port, context=tls10_client(cert), timeout=TIMEOUT) as client:
            client.ehlo("printer")
            version = client.sock.version()  # type: ignore[union-attr]
            refused = client.sendmail("alice@example.com", ["0145678900@fax.local"], fax_mail())
            assert refused == {}
            return str(version), "sent"

    assert await asyncio.to_thread(send, h.server.port_of("old")) == ("TLSv1", "sent")
    with pytest.raises(ssl.SSLError):
        await asyncio.to_thread(send, h.server.port_of("modern"))
    assert len(await h.jobs()) == 1


def test_only_a_legacy_listener_lowers_the_security_level(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    table = {"smtp": {"tls_cert": cert, "tls_key": key, "listeners": [
        {"listen": LOOP, "tls": "implicit", "name": "a"},
        {"listen": LOOP, "tls": "starttls", "name": "b", "tls_min_version": "TLSv1.1"},
        {"listen": LOOP, "tls": "starttls", "name": "c", "tls_min_version": "TLSv1.3"}]}}  # fmt: skip
    a, b, c = (tls.server_context(li) for li in from_mapping(table, {}).smtp.effective_listeners())
    assert a.minimum_version == ssl.TLSVersion.TLSv1_2 and b.minimum_version == ssl.TLSVersion.TLSv1_1
    assert c.minimum_version == ssl.TLSVersion.TLSv1_3
    assert a.security_level >= 1 and b.security_level == 0 and c.security_level >= 1  # type: ignore[attr-defined]


# -- certificates reloaded -------------------------------------------------------------


async def test_reloaded_certificates_are_presented_to_the_next_handshake(
    smtp_gateway: Starter, tmp_path: Path
) -> None:
    cert, key = make_cert(tmp_path)
    h = await smtp_gateway(three(cert, key))
    first = await Raw.open(h.server.port_of("smtps"), tls=client_tls(cert))
    old = first.peer_certificate()
    make_cert(tmp_path)  # renewed, same paths
    assert h.server.reload_certificates()
    renewed = client_tls(cert)
    second = await Raw.open(h.server.port_of("smtps"), tls=renewed)
    assert second.peer_certificate() != old
    submit = await Raw.open(h.server.port_of("submit"))
    await submit.starttls(renewed)
    assert submit.peer_certificate() == second.peer_certificate()
    assert (await first.cmd("NOOP")).startswith("250")  # a session already open keeps its connection
    for raw in (first, second, submit):
        await raw.close()


async def test_a_broken_certificate_on_reload_keeps_the_running_one(
    smtp_gateway: Starter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = make_cert(tmp_path)
    h = await smtp_gateway(three(cert, key))
    first = await Raw.open(h.server.port_of("smtps"), tls=client_tls(cert))
    before = first.peer_certificate()
    await first.close()
    Path(key).write_text("not a key\n")
    with caplog.at_level(logging.ERROR, logger="gateway.smtp"):
        assert not h.server.reload_certificates()
    assert "TLS certificates not reloaded, the running ones stay" in caplog.text
    after = await Raw.open(h.server.port_of("smtps"), tls=client_tls(cert))
    assert after.peer_certificate() == before
    await after.close()


async def test_sighup_reloads_the_certificates(make_settings: SettingsFactory, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    config = tmp_path / "gateway.toml"
    config.write_text(f'[smtp]\ntls_cert = "{cert}"\ntls_key = "{key}"\n')
    settings = make_settings({"smtp": {"tls_cert": cert, "tls_key": key}})
    ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    daemon = asyncio.ensure_future(run(settings, config=str(config), on_ready=ready.set_result))
    try:
        gw = await asyncio.wait_for(asyncio.shield(ready), TIMEOUT)
        reloaded = asyncio.Event()
        original = gw.smtp.reload_certificates

        def reload_and_tell() -> bool:
            done: bool = original()
            reloaded.set()
            return done

        gw.smtp.reload_certificates = reload_and_tell
        raw = await Raw.open(gw.smtp.port)
        await raw.starttls(client_tls(cert))
        old = raw.peer_certificate()
        await raw.close()
        make_cert(tmp_path)
        signal.raise_signal(signal.SIGHUP)
        await asyncio.wait_for(reloaded.wait(), TIMEOUT)
        raw = await Raw.open(gw.smtp.port)
        await raw.starttls(client_tls(cert))
        assert raw.peer_certificate() != old
        await raw.close()
    finally:
        if ready.done() and not daemon.done():  # its SIGTERM handler is installed: the orderly stop
            signal.raise_signal(signal.SIGTERM)
            await asyncio.wait_for(daemon, 60)
        else:  # it never got ready (the test fails on that): just end it
            daemon.cancel()
            await asyncio.wait_for(asyncio.gather(daemon, return_exceptions=True), 60)


# -- handshakes that fail or stall ---------------------------------------------------------


def handshake_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The gateway's log lines about TLS handshakes."""
    return [r.getMessage() for r in caplog.records if r.name == "gateway.smtp" and " handshake with " in r.getMessage()]


async def test_a_client_that_speaks_plain_smtp_to_implicit_tls_is_closed_and_logged_once(
    smtp_gateway: Starter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = make_cert(tmp_path)
    h = await smtp_gateway(three(cert, key))
    with caplog.at_level(logging.INFO):
        raw = await Raw.open(h.server.port_of("smtps"), greet=False)
        await raw.send(b"EHLO printer\r\n")
        assert await raw.closed()
        await raw.close()
        (line,) = handshake_lines(caplog)
    assert line.startswith("listener smtps: TLS handshake with 127.0.0.1 failed, connection closed: ")
    assert not h.server.handshakes and not h.server.sessions


async def test_a_stalled_handshake_is_closed_within_the_idle_timeout(
    smtp_gateway: Starter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = make_cert(tmp_path)
    h = await smtp_gateway(three(cert, key, idle_timeout=0.3))
    with caplog.at_level(logging.INFO):
        silent = await Raw.open(h.server.port_of("smtps"), greet=False)
        started = asyncio.get_running_loop().time()
        assert await silent.closed()
        assert asyncio.get_running_loop().time() - started < TIMEOUT
        await silent.close()
        lines = handshake_lines(caplog)
    assert len(lines) == 1 and lines[0].endswith("no handshake within 0.3 s (smtp.idle_timeout)"), lines


async def test_a_stalled_starttls_handshake_is_closed_within_the_idle_timeout(
    smtp_gateway: Starter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = make_cert(tmp_path)
    h = await smtp_gateway(three(cert, key, idle_timeout=0.3))
    with caplog.at_level(logging.INFO, logger="gateway.smtp"):
        raw = await Raw.open(h.server.port_of("submit"))
        await raw.cmd("EHLO printer")
        assert await raw.cmd("STARTTLS") == "220 2.0.0 Ready to start TLS"
        assert await raw.closed()  # no ClientHello ever comes
        await raw.close()
        (line,) = handshake_lines(caplog)
    assert "STARTTLS handshake with 127.0.0.1 failed, connection closed: no handshake (idle for 0.3 s)" in line


async def test_a_garbled_starttls_handshake_is_closed_and_logged_once(
    smtp_gateway: Starter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = make_cert(tmp_path)
    h = await smtp_gateway(three(cert, key))
    with caplog.at_level(logging.INFO):
        raw = await Raw.open(h.server.port_of("submit"))
        await raw.cmd("EHLO printer")
        assert await raw.cmd("STARTTLS") == "220 2.0.0 Ready to start TLS"
        await raw.send(b"EHLO printer\r\nMAIL FROM:<alice@example.com>\r\n")
        assert await raw.closed()
        await raw.close()
        lines = handshake_lines(caplog)
    assert len(lines) == 1, lines
    assert lines[0].startswith("session ") and "STARTTLS handshake with 127.0.0.1 failed" in lines[0]


async def test_stalled_handshakes_count_against_max_connections(
    smtp_gateway: Starter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = make_cert(tmp_path)
    h = await smtp_gateway(three(cert, key, max_connections=2))
    first = await Raw.open(h.server.port_of("smtps"), greet=False)
    second = await Raw.open(h.server.port_of("smtps"), greet=False)
    with caplog.at_level(logging.WARNING, logger="gateway.smtp"):
        third = await Raw.open(h.server.port_of("smtps"), greet=False)
        assert await third.closed()
    assert "TLS connection refused, 2 connections open" in caplog.text
    for raw in (first, second, third):
        await raw.close()
