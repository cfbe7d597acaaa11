"""``fax-gateway serve`` as a process: credentials, readiness, SIGHUP, SIGTERM during traffic."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest

from gateway.ops import cli
from gateway.spool import Spool
from gateway.store import Store
from tests.support_docs import pdf
from tests.support_mail import plain_with
from tests.support_proc import Daemon

SIMULATOR = "[provider]\nsimulator = true\n"


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(tmp_path, SIMULATOR)
    try:
        yield d
    finally:
        await d.close()


async def _send(port: int, n: int = 0) -> str:
    raw = plain_with([("invoice.pdf", "application/pdf", pdf(1))])
    raw = raw.replace(b"Message-ID: <", f"Message-ID: <{n}.".encode())  # each its own message
    errors, reply = await aiosmtplib.send(raw, sender="alice@example.com", recipients=["0145678900@fax.local"],
                                          hostname="127.0.0.1", port=port, timeout=30)  # fmt: skip
    assert not errors
    return reply


def test_serve_refuses_without_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[spool]\ndirectory = "{tmp_path / "spool"}"\n')
    assert cli.main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "provider.email" in err and "FAX_GATEWAY_PROVIDER_PASSWORD" in err and "provider.simulator = true" in err
    assert not (tmp_path / "spool").exists()


async def test_ready_sighup_and_sigterm(daemon: Daemon) -> None:
    await daemon.start()
    assert await daemon.ready() == "READY=1"
    assert "NO REAL FAX IS SENT" in daemon.stderr()

    reply = await _send(daemon.smtp_port)
    (job_id,) = re.findall(r"[0-9a-f]{16}", reply)
    await daemon.until(lambda: any(j.id == job_id and j.state == "delivered" for j in daemon.jobs()), "delivery")

    # SIGHUP: the log format changes live; a changed SMTP setting is reported as needing a restart.
    daemon.write_config(SIMULATOR + "[quotas]\nglobal_hourly = 10\n", log_format="json")
    daemon.signal(signal.SIGHUP)
    line = await daemon.until(
        lambda: next((ln for ln in daemon.stderr().splitlines() if "SIGHUP" in ln), None), "the SIGHUP log line"
    )
    assert json.loads(line)["message"].endswith("changes in [quotas] need a restart")

    daemon.signal(signal.SIGTERM)
    assert await daemon.next_notification() == "STOPPING=1"
    assert await daemon.wait() == 0
    assert "fax-gateway stopped" in daemon.stderr()


async def test_sigterm_during_traffic_loses_nothing(daemon: Daemon) -> None:
    await daemon.start()
    await daemon.ready()
    first = asyncio.Event()

    async def one(n: int) -> str | BaseException:
        try:
            reply = await _send(daemon.smtp_port, n)
        except (aiosmtplib.SMTPException, OSError) as exc:
            return exc
        first.set()
        return reply

    tasks = [asyncio.ensure_future(one(n)) for n in range(24)]
    await asyncio.wait_for(first.wait(), 60)
    daemon.signal(signal.SIGTERM)
    results = await asyncio.wait_for(asyncio.gather(*tasks), 90)
    assert await daemon.wait() == 0, daemon.stderr()[-4000:]

    accepted = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if not isinstance(r, str)]
    assert accepted, results
    for exc in refused:  # never a permanent refusal for our own shutdown
        code = getattr(exc, "code", 0)
        assert not 500 <= code < 600, f"{exc}\n{daemon.stderr()[-4000:]}"
    promised = {job for reply in accepted for job in re.findall(r"[0-9a-f]{16}", reply)}
    stored = {j.id: j for j in daemon.jobs()}
    assert promised <= set(stored), f"a job answered 250 is missing from the store\n{daemon.stderr()[-4000:]}"
    # In-flight submissions finished before the exit: none is left half-way for the next start to guess.
    assert not [j.id for j in stored.values() if j.state in ("uploading", "submitting")], daemon.stderr()[-4000:]
    store = Store(Spool(daemon.spool).db_path)
    try:
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for job_id in promised:
            assert [e["kind"] for e in store.timeline(job_id)][0] == "accepted"
            assert (Spool(daemon.spool).messages / stored[job_id].message_id).is_dir()
    finally:
        store.close()


def test_reload_keeps_running_settings_when_the_file_breaks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from gateway.daemon import run as daemon
    from gateway.settings import Settings, load

    config = tmp_path / "gateway.toml"
    config.write_text('[log]\nlevel = "debug"\n[smtp]\nmax_recipients = 5\n')
    current = Settings()
    changed = daemon.reload(str(config), current, None)
    assert changed.log.level == "debug" and changed.smtp == current.smtp  # SMTP waits for a restart
    assert "changes in [smtp] need a restart" in caplog.text
    config.write_text('[smtp]\nlisten = "nowhere"\n')
    assert daemon.reload(str(config), changed, None) is changed
    assert "smtp.listen: 'nowhere' is not host:port; keeping the running settings" in caplog.text
    assert daemon.restart_needed(current, load(None, env={})) == []
