"""check-config against real parts (simulator, relay sink), and send through a running gateway's SMTP intake."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.demo import free_port, sample_pdf
from tests.conftest import SettingsFactory
from tests.support_simulator import SIM_EMAIL, SIM_PASSWORD, SimFactory, provider_env, provider_table
from tests.support_sink import Sink, sink  # noqa: F401


async def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FAX_GATEWAY_")} | (env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, env=full_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _config(tmp_path: Path, sim_url: str, relay_port: int) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
[spool]
directory = "{tmp_path / "spool"}"
min_free_bytes = 0
[provider]
url = "{sim_url}"
email = "{SIM_EMAIL}"
[notify]
relay = "127.0.0.1:{relay_port}"
from_address = "fax-gateway@gateway.test"
"""
    )
    return path


async def test_check_config_all_good(tmp_path: Path, sim_factory: SimFactory, sink: Sink) -> None:  # noqa: F811
    sim = await sim_factory()
    config = _config(tmp_path, sim.url, sink.port)
    code, out, err = await _cli("check-config", "--config", str(config), "--json", env=provider_env())
    assert code == 0, out + err
    report = json.loads(out)
    assert {c["name"]: c["ok"] for c in report["checks"]} == {"spool": True, "storage": True, "provider": True,
                                                               "relay": True}  # fmt: skip
    provider = next(c for c in report["checks"] if c["name"] == "provider")
    assert "accepted the credentials" in provider["detail"]
    assert report["settings"]["provider"]["password"] == "********"
    assert SIM_PASSWORD not in out + err
    assert not sim.mails and all(r.answer != "113" for r in sim.requests)  # no fax was sent
    code, out, _ = await _cli("check-config", "--config", str(config), env=provider_env())
    assert code == 0 and "[provider]" in out and 'password = "********"' in out and "ok    relay" in out


async def test_check_config_reports_each_failure(tmp_path: Path, sim_factory: SimFactory) -> None:
    sim = await sim_factory()
    config = _config(tmp_path, sim.url, free_port())
    code, out, err = await _cli("check-config", "--config", str(config), "--json", env=provider_env("Wrong+Pw&1"))
    assert code == 1
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert checks["spool"]["ok"] and checks["storage"]["ok"]
    assert not checks["provider"]["ok"] and "credentials" in checks["provider"]["detail"]
    assert not checks["relay"]["ok"]
    assert "Wrong+Pw&1" not in out + err and "Wrong%2BPw" not in out + err


async def test_check_config_refuses_a_bad_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[smtp]\nlisten = "nowhere"\n')
    code, _, err = await _cli("check-config", "--config", str(config))
    assert code == 2 and "smtp.listen: 'nowhere' is not host:port" in err


@pytest.fixture
async def running(make_settings: SettingsFactory, sim_factory: SimFactory) -> AsyncIterator[Gateway]:
    sim = await sim_factory()
    gw = Gateway(make_settings(provider_table(sim), env=provider_env()))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


async def test_send_goes_through_smtp_intake(tmp_path: Path, running: Gateway) -> None:
    document = tmp_path / "letter.pdf"
    document.write_bytes(sample_pdf())
    config = tmp_path / "gateway.toml"
    config.write_text(f'[smtp]\nlisten = "127.0.0.1:{running.smtp.port}"\n')
    code, out, err = await _cli("send", "--config", str(config), "--to", "01 45 67 89 00", "--from", "ops@example.com",
                                "--json", str(document))  # fmt: skip
    assert code == 0, err
    sent = json.loads(out)
    assert sent["reply"].startswith("250 2.0.0") and len(sent["jobs"]) == 1
    job = await running.store.run(lambda s: s.get_job(sent["jobs"][0]))
    assert job is not None and job.number == "+33145678900" and job.envelope_from == "ops@example.com"

    code, out, err = await _cli("send", "--config", str(config), "--to", "12ab", "--from", "ops@example.com",
                                str(document))  # fmt: skip
    assert code == 1 and "553 5.1.3" in out + err

    code, _, err = await _cli("send", "--smtp", f"127.0.0.1:{free_port()}", "--to", "0145678900", "--from",
                              "ops@example.com", str(document))  # fmt: skip
    assert code == 1 and "is fax-gateway running?" in err
