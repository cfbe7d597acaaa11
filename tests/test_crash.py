"""Crash safety: a real daemon (``python3 -m gateway serve``) killed with SIGKILL at each step.

The daemon is frozen at a step by honest means, with no test hook in the
product: S3 behind a black-hole relay holds a job in ``uploading``; the
simulator's ``hang`` fault holds one in ``submitting``; answer 103 holds one
for configuration. After each kill the daemon is started again on the same
spool. In the end every mail is a job in a readable state, no job was
accepted by the provider twice, and the canary password is nowhere on disk
or in the log.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import smtplib
import sqlite3
import sys
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

from gateway.delivery.simulator import ProviderSimulator
from gateway.store import State, Store
from tests.support_net import free_port
from tests.support_s3 import S3, S3_ENV
from tests.support_simulator import SIM_EMAIL, SIM_PASSWORD, SimFactory
from tests.support_smtp import fax_mail

ROOT = Path(__file__).resolve().parent.parent
WAIT = 20.0


class Daemon:
    """One ``fax-gateway serve`` process; its stderr lines are kept and can be awaited."""

    def __init__(self, config: Path, env: dict[str, str], log_file: Path) -> None:
        self.config, self.env, self.log_file = config, env, log_file
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.lines = []
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--config", str(self.config),
            cwd=ROOT, env=self.env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read(self.proc))
        await self.wait_for(r"fax-gateway ready")

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        with self.log_file.open("a") as out:
            while line := await proc.stderr.readline():
                text = line.decode(errors="replace")
                out.write(text)
                async with self._changed:
                    self.lines.append(text)
                    self._changed.notify_all()

    async def wait_for(self, pattern: str) -> str:
        """The first log line (of this run) matching ``pattern``; fails after WAIT seconds."""
        regex = re.compile(pattern)

        def found() -> str | None:
            return next((line for line in self.lines if regex.search(line)), None)

        try:
            async with asyncio.timeout(WAIT), self._changed:
                await self._changed.wait_for(lambda: found() is not None)
        except TimeoutError:
            raise AssertionError(f"no log line matching {pattern!r}; got:\n{''.join(self.lines)}") from None
        line = found()
        assert line is not None
        return line

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self._end()

    async def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await self._end()

    async def _end(self) -> int:
        assert self.proc is not None and self._reader is not None
        code = await asyncio.wait_for(self.proc.wait(), WAIT)
        await asyncio.wait_for(self._reader, WAIT)
        return code


def _send(port: int) -> str:
    """Mail a PDF to 0145678900@fax.local over SMTP; return the job id from the 250 reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as client:
        client.ehlo("scanner.example.com")
        client.mail("alice@example.com")
        client.rcpt("0145678900@fax.local")
        code, reply = client.data(fax_mail())
    assert code == 250, reply
    match = re.search(rb"queued as ([0-9a-f]+)", reply)
    assert match, reply
    return match.group(1).decode()


async def send(port: int) -> str:
    return await asyncio.to_thread(_send, port)


def check_after_restart(spool: Path, sim: ProviderSimulator, sent: list[str]) -> None:
    """Every mail that got 250 so far is a job in a state a person can read; none was accepted twice."""
    with closing(sqlite3.connect(f"file:{spool / 'jobs.sqlite3'}?mode=ro", uri=True)) as db:
        states = dict(db.execute("SELECT id, state FROM jobs").fetchall())
    assert set(sent) <= set(states), f"lost: {set(sent) - set(states)}"
    unreadable = {j: states[j] for j in sent if states[j] not in {str(s) for s in State}}
    assert not unreadable, unreadable
    accepted = Counter(r.params["ref"] for r in sim.requests if r.answer.startswith("113"))
    assert all(n == 1 for n in accepted.values()), accepted


def _config(tmp_path: Path, s3: S3, sim: ProviderSimulator) -> tuple[Path, int]:
    smtp_port, http_port = free_port(), free_port()
    text = f"""
[smtp]
listen = "127.0.0.1:{smtp_port}"
hostname = "fax-gateway.test"
[spool]
directory = "{tmp_path / 'spool'}"
min_free_bytes = 0
[http]
listen = "127.0.0.1:{http_port}"
public_url = "http://127.0.0.1:{http_port}"
[storage]
backend = "s3"
bucket = "fax-documents"
region = "eu-west-3"
endpoint_url = "{s3.endpoint}"
timeout_seconds = 30.0
[provider]
url = "{sim.url}"
email = "{SIM_EMAIL}"
total_timeout = 60.0
[delivery]
poll_seconds = 0.2
ambiguous_grace_seconds = 3600.0
ambiguous_action = "operator"
[notify]
from_address = "fax-gateway@gateway.test"
"""
    path = tmp_path / "fax-gateway.toml"
    path.write_text(text)
    return path, smtp_port


async def test_kill_9_at_every_step_loses_nothing_and_never_submits_twice(
    tmp_path: Path, s3: S3, sim_factory: SimFactory
) -> None:
    sim = await sim_factory()
    config, smtp = _config(tmp_path, s3, sim)
    env = {**os.environ, **S3_ENV, "FAX_GATEWAY_PROVIDER_PASSWORD": SIM_PASSWORD, "PYTHONUNBUFFERED": "1"}
    log_file = tmp_path / "daemon.log"
    daemon = Daemon(config, env, log_file)
    spool = tmp_path / "spool"

    # 1. Frozen while storing the document (S3 is a black hole), then killed.
    s3.relay.mode = "hang"
    await daemon.start()
    a = await send(smtp)
    await daemon.wait_for(rf"job {a}: uploading")
    await daemon.kill()

    # 2. S3 is back: the upload is redone and A goes out once. Then frozen while submitting B.
    s3.relay.mode = "forward"
    await daemon.start()
    await daemon.wait_for(rf"job {a}: recovered at start-up: interrupted while storing")
    await daemon.wait_for(rf"job {a}: submitted")
    check_after_restart(spool, sim, [a])
    sim.set_fault("hang")
    b = await send(smtp)
    await sim.wait_requests(2, timeout=WAIT)
    await daemon.kill()

    # 3. B may have reached the provider: ambiguous, not sent again. C is killed once submitted.
    sim.set_fault(None)
    await daemon.start()
    await daemon.wait_for(rf"job {b}: recovered at start-up: interrupted during submission")
    check_after_restart(spool, sim, [a, b])
    c = await send(smtp)
    await daemon.wait_for(rf"job {c}: submitted")
    await daemon.kill()

    # 4. A configuration answer (103) holds D; killed while held.
    sim.set_fault("code:103")
    await daemon.start()
    check_after_restart(spool, sim, [a, b, c])
    d = await send(smtp)
    await daemon.wait_for(rf"job {d}: held")
    await daemon.kill()

    # 5. The restart applies the fixed configuration: D is released and sent. E is killed right after its 250.
    sim.set_fault(None)
    await daemon.start()
    await daemon.wait_for(rf"job {d}: submitted")
    check_after_restart(spool, sim, [a, b, c, d])
    e = await send(smtp)
    await daemon.kill()

    # 6. E goes out after the restart; an orderly stop ends the run.
    await daemon.start()
    await daemon.wait_for(rf"job {e}: submitted")
    check_after_restart(spool, sim, [a, b, c, d, e])
    assert await daemon.terminate() == 0

    store = Store(tmp_path / "spool" / "jobs.sqlite3")
    try:
        jobs: dict[str, Any] = {j: store.get_job(j) for j in (a, b, c, d, e)}
        states = {j: job.state for j, job in jobs.items()}
        assert states == {a: State.SUBMITTED, b: State.AMBIGUOUS, c: State.SUBMITTED, d: State.SUBMITTED,
                          e: State.SUBMITTED}  # fmt: skip
        assert jobs[a].recoveries == 1 and jobs[b].recoveries == 1
        assert "interrupted during submission" in jobs[b].reason
        assert [r["kind"] for r in store.timeline(b)].count("recovered") == 1
    finally:
        store.close()

    requests = Counter(r.params["ref"] for r in sim.requests)
    accepted = Counter(r.params["ref"] for r in sim.requests if r.answer.startswith("113"))
    assert requests == {a: 1, b: 1, c: 1, d: 2, e: 1}  # D: refused once with 103 (nothing sent), then sent
    assert all(n == 1 for n in accepted.values()) and set(accepted) == {a, c, d, e}

    # The canary password: nowhere in the log, the store or the spool.
    canary = SIM_PASSWORD.encode()
    assert log_file.read_bytes() and canary not in log_file.read_bytes()
    for path in (tmp_path / "spool").rglob("*"):
        if path.is_file():
            assert canary not in path.read_bytes(), path
