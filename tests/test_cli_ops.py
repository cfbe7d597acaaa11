"""check-config against real parts (simulator, relay sink, moto S3); send and release on the daemon's own store."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest

from gateway.daemon.app import Gateway
from gateway.delivery.simulator import ProviderSimulator
from gateway.ops.demo import free_port, sample_pdf
from gateway.settings import Secret
from gateway.spool import Spool
from gateway.store import SCHEMA_VERSION, PostgreSQL, Store
from tests.support_docs import pdf
from tests.support_mail import plain_with
from tests.support_s3 import BUCKET, S3, S3_ENV
from tests.support_settings import SettingsFactory
from tests.support_simulator import SIM_EMAIL, SIM_PASSWORD, SimFactory, provider_env, provider_table
from tests.support_sink import Sink


async def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FAX_GATEWAY_")} | (env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, env=full_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _config(tmp_path: Path, sim_url: str, relay_port: int, extra: str = "", spool: Path | None = None) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
[spool]
directory = "{spool or tmp_path / "spool"}"
min_free_bytes = 0
[provider]
url = "{sim_url}"
email = "{SIM_EMAIL}"
[http]
public_url = "https://fax.example.com"
[notify]
relay = "127.0.0.1:{relay_port}"
from_address = "fax-gateway@gateway.test"
"""
        + extra
    )
    return path


def _env(password: str = SIM_PASSWORD) -> dict[str, str]:
    """The provider's password and a callback secret (a receipt can then reach the gateway)."""
    return provider_env(password) | {"FAX_GATEWAY_CALLBACK_SECRET": "check-config-callback-secret"}


def _checks(out: str) -> dict[str, dict[str, object]]:
    return {c["name"]: c for c in json.loads(out)["checks"]}


async def test_check_config_all_good(tmp_path: Path, sim_factory: SimFactory, sink: Sink) -> None:
    sim = await sim_factory()
    config = _config(tmp_path, sim.url, sink.port)
    code, out, err = await _cli("check-config", "--config", str(config), "--json", env=_env())
    assert code == 0, out + err
    report = json.loads(out)
    assert {c["name"]: c["ok"] for c in report["checks"]} == {"config": True, "spool": True, "store": True,
                                                               "receipts": True, "storage": True, "provider": True,
                                                               "relay": True}  # fmt: skip
    assert _checks(out)["store"]["detail"] == f"{tmp_path / 'spool' / 'jobs.sqlite3'}: no job store yet; the daemon" \
        " creates it at start"
    provider = next(c for c in report["checks"] if c["name"] == "provider")
    assert "accepted the credentials" in provider["detail"]
    assert report["settings"]["provider"]["password"] == "********"
    assert SIM_PASSWORD not in out + err
    assert not sim.mails and all(r.answer != "113" for r in sim.requests)  # no fax was sent
    code, out, _ = await _cli("check-config", "--config", str(config), env=_env())
    assert code == 0 and "[provider]" in out and 'password = "********"' in out and "ok    relay" in out


async def test_check_config_reports_each_failure(tmp_path: Path, sim_factory: SimFactory) -> None:
    sim = await sim_factory()
    config = _config(tmp_path, sim.url, free_port())
    code, out, err = await _cli("check-config", "--config", str(config), "--json", env=_env("Wrong+Pw&1"))
    assert code == 1
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert checks["spool"]["ok"] and checks["storage"]["ok"]
    assert not checks["provider"]["ok"] and "credentials" in checks["provider"]["detail"]
    assert not checks["relay"]["ok"]
    assert "Wrong+Pw&1" not in out + err and "Wrong%2BPw" not in out + err


async def test_check_config_tries_the_s3_bucket(
    tmp_path: Path,
    sim_factory: SimFactory,
    sink: Sink,
    s3: S3,
) -> None:
    sim = await sim_factory()
    storage = "".join(f"{k} = {json.dumps(v)}\n" for k, v in s3.table()["storage"].items())
    config = _config(tmp_path, sim.url, sink.port, "[storage]\n" + storage)
    code, out, err = await _cli("check-config", "--config", str(config), "--json", env=_env())
    assert code == 0, out + err
    assert _checks(out)["storage"] == {"name": "storage", "ok": True,
                                       "detail": f"s3: bucket '{BUCKET}' reachable at {s3.endpoint}"}  # fmt: skip
    assert S3_ENV["AWS_SECRET_ACCESS_KEY"] not in out + err

    s3.client.delete_bucket(Bucket=BUCKET)
    code, out, _ = await _cli("check-config", "--config", str(config), "--json", env=_env())
    storage_check = _checks(out)["storage"]
    assert code == 1 and not storage_check["ok"] and "S3 check failed" in str(storage_check["detail"])
    assert "404" in str(storage_check["detail"])

    s3.relay.mode = "refuse"  # S3 down
    code, out, _ = await _cli("check-config", "--config", str(config), "--json", env=_env())
    storage_check = _checks(out)["storage"]
    assert code == 1 and not storage_check["ok"] and "S3 check failed" in str(storage_check["detail"])
    assert {name: c["ok"] for name, c in _checks(out).items() if name != "storage"} == {
        "config": True, "spool": True, "store": True, "receipts": True, "provider": True, "relay": True}  # fmt: skip


async def test_check_config_reaches_the_postgresql_store(
    tmp_path: Path, sim_factory: SimFactory, sink: Sink, s3: S3, postgres_dsn: str
) -> None:
    sim = await sim_factory()
    storage = "".join(f"{k} = {json.dumps(v)}\n" for k, v in s3.table()["storage"].items())
    config = _config(tmp_path, sim.url, sink.port, '[store]\nbackend = "postgresql"\n[storage]\n' + storage)
    env = _env() | {"FAX_GATEWAY_STORE_DSN": postgres_dsn}
    code, out, err = await _cli("check-config", "--config", str(config), "--json", env=env)
    assert code == 0, out + err
    dbname = postgres_dsn.split("dbname=")[1].split()[0]
    port = postgres_dsn.split("port=")[1].split()[0]
    detail = (f"PostgreSQL database {dbname!r} on '127.0.0.1' port {port} answers, no tables yet:"
              " the daemon creates them at start")  # fmt: skip
    assert _checks(out)["store"] == {"name": "store", "ok": True, "detail": detail}
    Store(PostgreSQL(Secret(postgres_dsn))).close()  # as the daemon leaves it
    code, out, _ = await _cli("check-config", "--config", str(config), env=env)
    assert code == 0 and f"schema version {SCHEMA_VERSION} (current)" in out and "ok    store" in out

    password = postgres_dsn.split("password=")[1].split()[0]
    closed = postgres_dsn.replace(f"port={postgres_dsn.split('port=')[1].split()[0]}", f"port={free_port()}")
    code, out, err = await _cli("check-config", "--config", str(config), "--json", env=env | {
        "FAX_GATEWAY_STORE_DSN": closed})  # fmt: skip
    store = _checks(out)["store"]
    assert code == 1 and not store["ok"] and "cannot connect" in str(store["detail"])
    assert password not in out + err and closed not in out + err



async def test_check_config_names_an_unwritable_spool_and_a_dead_relay(tmp_path: Path, sim_factory: SimFactory) -> None:
    sim = await sim_factory()
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    relay_port = free_port()
    config = _config(tmp_path, sim.url, relay_port, spool=blocker / "spool")
    code, out, _ = await _cli("check-config", "--config", str(config), "--json", env=_env())
    checks = _checks(out)
    assert code == 1 and checks["provider"]["ok"]
    assert not checks["spool"]["ok"] and f"cannot write in {blocker / 'spool'}" in str(checks["spool"]["detail"])
    assert not checks["relay"]["ok"] and f"relay 127.0.0.1:{relay_port}" in str(checks["relay"]["detail"])
    code, out, _ = await _cli("check-config", "--config", str(config), env=_env())
    assert code == 1 and "FAIL  spool" in out and "FAIL  relay" in out


async def test_check_config_logs_in_to_the_relay(tmp_path: Path, sim_factory: SimFactory, sink: Sink) -> None:
    sim = await sim_factory()
    sink.users = {"fax-gateway": "Relay-Pw-right-1"}
    config = _config(tmp_path, sim.url, sink.port, 'relay_username = "fax-gateway"\n')  # in [notify]
    wrong = _env() | {"FAX_GATEWAY_RELAY_PASSWORD": "Relay-Pw-wrong-2"}
    code, out, err = await _cli("check-config", "--config", str(config), "--json", env=wrong)
    relay = _checks(out)["relay"]
    assert code == 1 and not relay["ok"], out + err
    assert f"relay 127.0.0.1:{sink.port} refused after EHLO" in str(relay["detail"]) and "535" in str(relay["detail"])
    assert "Relay-Pw-wrong-2" not in out + err
    right = _env() | {"FAX_GATEWAY_RELAY_PASSWORD": "Relay-Pw-right-1"}
    code, out, err = await _cli("check-config", "--config", str(config), "--json", env=right)
    assert code == 0 and "EHLO, AUTH as fax-gateway" in str(_checks(out)["relay"]["detail"]), out + err
    assert "Relay-Pw-right-1" not in out + err


async def test_check_config_refuses_a_bad_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[smtp]\nlisten = "nowhere"\n')
    code, _, err = await _cli("check-config", "--config", str(config))
    assert code == 2 and "smtp.listen: 'nowhere' is not host:port" in err


def _http() -> dict[str, str]:
    """Local storage: the simulator fetches the document at http.public_url."""
    port = free_port()
    return {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"}


@pytest.fixture
async def sim(sim_factory: SimFactory) -> ProviderSimulator:
    return await sim_factory()


@pytest.fixture
async def running(make_settings: SettingsFactory, sim: ProviderSimulator) -> AsyncIterator[Gateway]:
    gw = Gateway(make_settings({**provider_table(sim), "http": _http()}, env=provider_env()))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


async def test_commands_act_on_the_running_daemons_store(running: Gateway, sim: ProviderSimulator) -> None:
    sim.set_fault("code:103")  # the provider refuses the account: the job is held, submissions paused
    raw = plain_with([("invoice.pdf", "application/pdf", pdf(1))])
    await aiosmtplib.send(raw, sender="alice@example.com", recipients=["0145678900@fax.local"], hostname="127.0.0.1",
                          port=running.smtp.port, timeout=30)  # fmt: skip
    await asyncio.wait_for(running.worker.drain(), 30)
    spool = running.settings.spool.directory
    code, out, err = await _cli("jobs", "--spool", spool, "--state", "held", "--json")
    assert code == 0, err
    (held,) = json.loads(out)

    sim.set_fault(None)  # the account is fixed
    code, out, err = await _cli("release", "--spool", spool, "--json")  # while the daemon holds the store
    assert code == 0 and [j["id"] for j in json.loads(out)] == [held["id"]], err
    await asyncio.wait_for(running.worker.drain(), 30)
    job = await running.store.run(lambda s: s.get_job(held["id"]))
    assert job is not None and job.state in ("submitted", "delivered") and job.attempts == 2
    code, out, _ = await _cli("show", "--spool", spool, held["id"])
    assert code == 0 and "operator: release" in out and "code 113" in out


async def test_send_spools_for_the_running_daemon(tmp_path: Path, running: Gateway, sim: ProviderSimulator) -> None:
    document = tmp_path / "letter.pdf"
    document.write_bytes(sample_pdf())
    config = tmp_path / "gateway.toml"
    config.write_text(f'[spool]\ndirectory = "{running.settings.spool.directory}"\n')
    code, out, err = await _cli("send", "--config", str(config), "--to", "01 45 67 89 00", "--from", "ops@example.com",
                                "--json", str(document))  # fmt: skip
    assert code == 0, err
    sent = json.loads(out)
    assert sent["reply"] == f"250 2.0.0 OK: queued as {sent['jobs'][0]}" and len(sent["jobs"]) == 1
    await asyncio.wait_for(running.worker.drain(), 30)  # the daemon's worker takes it from the store
    job = await running.store.run(lambda s: s.get_job(sent["jobs"][0]))
    assert job is not None and job.number == "+33145678900" and job.envelope_from == "ops@example.com"
    assert job.state == "submitted" and [r.answer[:3] for r in sim.requests] == ["113"]

    # The daemon's own checks refuse what they refuse over SMTP, with the same replies.
    code, out, err = await _cli("send", "--config", str(config), "--to", "12ab", "--from", "ops@example.com",
                                str(document))  # fmt: skip
    assert code == 1 and "553 5.1.3" in out + err
    code, out, err = await _cli("send", "--config", str(config), "--to", "0899123456", "--from", "ops@example.com",
                                str(document))  # fmt: skip
    assert code == 1 and "550 5.7.1 Destination not permitted" in out + err
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    code, out, err = await _cli("send", "--config", str(config), "--to", "0145678900", "--from", "ops@example.com",
                                str(empty))  # fmt: skip
    assert code == 1 and "554 5.6.0" in out + err
    assert len(await running.store.run(lambda s: s.list_jobs())) == 1


async def test_send_without_a_running_daemon(tmp_path: Path, make_settings: SettingsFactory,
                                             sim: ProviderSimulator) -> None:  # fmt: skip
    document = tmp_path / "letter.pdf"
    document.write_bytes(sample_pdf())
    spool = tmp_path / "spool"
    config = tmp_path / "gateway.toml"
    config.write_text(f'[spool]\ndirectory = "{spool}"\n')
    code, _, err = await _cli("send", "--config", str(config), "--to", "0145678900", "--from", "ops@example.com",
                              str(document))  # fmt: skip
    assert code == 2 and "no job store" in err  # never a store the daemon did not make

    Spool(spool).create()
    Store(Spool(spool).db_path).close()  # the store as the daemon's first start leaves it
    if os.geteuid() == 0:  # root acts as the spool's owner (under systemd, the daemon's dynamic user)
        for path in (spool, spool / "messages", spool / "tmp", spool / "jobs.sqlite3"):
            os.chown(path, 4242, 4242)
    code, out, err = await _cli("send", "--config", str(config), "--to", "0145678900", "--from", "ops@example.com",
                                "--json", str(document))  # fmt: skip
    assert code == 0, err
    (job_id,) = json.loads(out)["jobs"]
    store = Store(Spool(spool).db_path)
    try:
        job = store.get_job(job_id)
        assert job is not None and job.state == "queued"
        message_dir = Spool(spool).messages / job.message_id
    finally:
        store.close()
    if os.geteuid() == 0:
        assert {message_dir.stat().st_uid, (message_dir / "fax.pdf").stat().st_uid} == {4242}

    for path in (spool, *spool.rglob("*")):  # the daemon starts and takes it up
        os.chown(path, os.getuid(), os.getgid())
    gw = Gateway(make_settings({**provider_table(sim), "http": _http()}, env=provider_env()))
    await gw.start()
    try:
        await asyncio.wait_for(gw.worker.drain(), 30)
        job = await gw.store.run(lambda s: s.get_job(job_id))
        assert job is not None and job.state == "submitted"
    finally:
        await gw.stop()


async def test_check_config_fails_when_no_receipt_can_arrive(
    tmp_path: Path, sim_factory: SimFactory, sink: Sink
) -> None:
    sim = await sim_factory()
    config = _config(tmp_path, sim.url, sink.port)
    code, out, _ = await _cli("check-config", "--config", str(config), "--json", env=provider_env())  # no secret
    receipts = _checks(out)["receipts"]
    assert code == 1 and not receipts["ok"]
    assert "no receipt can ever reach the gateway" in str(receipts["detail"])
    detail = str(receipts["detail"])
    assert "FAX_GATEWAY_CALLBACK_SECRET" in detail and 'accuse_email = "gateway"' in detail
    by_mail = tmp_path / "by-mail.toml"
    by_mail.write_text(config.read_text().replace("[provider]\n", '[provider]\naccuse_email = "gateway"\n', 1))
    code, out, _ = await _cli("check-config", "--config", str(by_mail), "--json", env=provider_env())
    assert code == 0 and _checks(out)["receipts"]["detail"] == "receipts arrive by mail to the gateway", out


async def test_check_config_fails_on_a_loopback_public_url_for_a_real_provider(
    tmp_path: Path, sim_factory: SimFactory, sink: Sink
) -> None:
    sim = await sim_factory()
    config = _config(tmp_path, sim.url, sink.port)
    loopback = config.read_text().replace('public_url = "https://fax.example.com"', 'public_url = "http://localhost:8025"')
    config.write_text(loopback)
    code, out, _ = await _cli("check-config", "--config", str(config), "--json", env=_env())
    receipts = _checks(out)["receipts"]
    assert code == 1 and not receipts["ok"] and "loopback" in str(receipts["detail"])
    assert "the receipt callback" in str(receipts["detail"])
    simulated = tmp_path / "simulated.toml"
    simulated.write_text(config.read_text().replace("[provider]\n", "[provider]\nsimulator = true\n", 1))
    code, out, _ = await _cli("check-config", "--config", str(simulated), "--json", env=_env())
    receipts = _checks(out)["receipts"]
    assert code == 0 and receipts["ok"] and receipts.get("warning") is True and "simulator" in str(receipts["detail"])
    code, out, _ = await _cli("check-config", "--config", str(simulated), env=_env())
    assert "warn  receipts" in out


async def test_check_config_masks_password_hashes_and_warns_of_an_unreadable_file(
    tmp_path: Path, sim_factory: SimFactory, sink: Sink
) -> None:
    from gateway.passwords import hash_password

    sim = await sim_factory()
    hashed = hash_password("copier secret")
    user = f'[[smtp.users]]\nname = "scanner"\npassword_hash = "{hashed}"\n'
    config = _config(tmp_path, sim.url, sink.port, user)
    config.chmod(0o600)
    code, out, err = await _cli("check-config", "--config", str(config), env=_env())
    assert hashed not in out + err and hashed.split("$")[-1] not in out + err
    assert '"password_hash": "********"' in out
    assert code == 0 and "warn  config" in out and "chmod 0644" in out
    # In a directory anyone may enter, a file anyone may read: no warning.
    shared = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        shared.chmod(0o755)
        readable = shared / "fax-gateway.toml"
        readable.write_text(config.read_text())
        readable.chmod(0o644)
        code, out, _ = await _cli("check-config", "--config", str(readable), "--json", env=_env())
        assert code == 0 and _checks(out)["config"] == {
            "name": "config", "ok": True, "detail": f"{readable} is readable by the service's user"}  # fmt: skip
    finally:
        shutil.rmtree(shared)


async def test_send_says_a_refusal_once_and_logs_only_with_verbose(tmp_path: Path, running: Gateway) -> None:
    document = tmp_path / "letter.pdf"
    document.write_bytes(sample_pdf())
    config = tmp_path / "gateway.toml"
    config.write_text(f'[spool]\ndirectory = "{running.settings.spool.directory}"\n')
    base = ("send", "--config", str(config), "--from", "ops@example.com")
    code, out, err = await _cli(*base, "--to", "12ab", str(document))
    assert code == 1 and (out + err).count("553 5.1.3") == 1, out + err
    assert " INFO " not in out + err
    code, out, err = await _cli(*base, "--to", "0145678900", str(document))
    assert code == 0 and out.startswith("250 2.0.0 OK: queued as ") and " INFO " not in out + err
    code, out, err = await _cli(*base, "--to", "0145678900", "-v", "--subject", "again", str(document))
    assert code == 0 and " INFO " in err, err


@pytest.mark.skipif(os.geteuid() != 0, reason="checking as the spool's owner needs root (as under systemd)")
async def test_check_config_judges_the_spool_as_its_owner_would(
    tmp_path: Path, sim_factory: SimFactory, sink: Sink
) -> None:
    sim = await sim_factory()
    spool = tmp_path / "spool"
    spool.mkdir()
    store = spool / "jobs.sqlite3"
    store.write_bytes(b"")
    store.chmod(0o640)  # left by a daemon once started by hand as root
    os.chown(spool, 4242, 4242)
    config = _config(tmp_path, sim.url, sink.port, spool=spool)
    code, out, _ = await _cli("check-config", "--config", str(config), "--json", env=_env())
    check = _checks(out)["spool"]
    assert code == 1 and not check["ok"], out
    assert f"the spool's owner (uid 4242) cannot write {store}" in str(check["detail"])
    assert f"chown -R 4242:4242 {spool}" in str(check["detail"])
    os.chown(store, 4242, 4242)
    code, out, _ = await _cli("check-config", "--config", str(config), "--json", env=_env())
    assert _checks(out)["spool"]["ok"] and "writable as its owner (uid 4242)" in str(_checks(out)["spool"]["detail"])
