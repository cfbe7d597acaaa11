"""The measured scenarios. Each starts what it needs on 127.0.0.1, measures, and stops it all.

- intake: smtp-source sends N mails over S sessions to the gateway (delivery
  paused), to a bare aiosmtpd server, and to a throwaway Postfix.
- end to end: the gateway with moto S3 and the provider simulator; mails are
  offered at a fixed rate (open loop); latency from the end of DATA to the
  provider's request for that job (matched by the job id in the 250 reply).
- drain: N mails spooled with delivery paused, then the gateway restarted with
  delivery on; time from its worker let go (the daemon ready) to the provider's
  request of the last job.
- cluster drain: the same on PostgreSQL (a private server, pg_ref.py) and the S3
  bucket: N mails taken by one paused instance, then 1, 2 or 3 instances
  started, their workers let go together; jobs/s, CPU per job of every process,
  and each instance's share of the jobs and of the time it had one in hand.
- memory: peak RSS of the gateway idle, then while S sessions each send a 1 MiB
  document (the bare aiosmtpd server is measured the same way, as reference).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import signal
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import client
from harness import BenchError, Child, free_port, peak_pss_kb, peak_rss_kb, percentile, running, smtp_source
from mailgen import RECIPIENT, SENDER
from pg_ref import PostgresReference
from postfix_ref import PostfixReference

EMAIL = "bench@gateway.test"
BUCKET = "fax-bench"


@dataclass
class Bench:
    """Where a benchmark run keeps its files, and what it learned along the way."""

    root: Path
    mail: Path  # ~140 KB mail (LF line ends, for smtp-source -F)
    big_mail: Path  # mail with a ~1 MiB document
    lags_ms: dict[str, float] = field(default_factory=dict)  # scenario -> largest gateway loop lag
    lag_cpu_ms: dict[str, float] = field(default_factory=dict)  # the loop thread's CPU time in that interval
    gc_ms: dict[str, float] = field(default_factory=dict)  # scenario -> longest garbage collection
    drain_template: Path | None = None  # a spool of queued jobs, copied for each drain run
    concurrency: int = 0  # provider.concurrency for end to end and drain (0: the gateway's default)
    _n: int = 0

    def fresh(self, name: str) -> Path:
        self._n += 1
        path = self.root / f"{self._n:03d}-{name}"
        path.mkdir(parents=True)
        return path

    def note_lag(self, scenario: str, done: dict[str, Any]) -> None:
        lag = float(done.get("max_lag_ms", 0.0))
        if lag >= self.lags_ms.get(scenario, 0.0):
            self.lags_ms[scenario] = lag
            self.lag_cpu_ms[scenario] = float(done.get("lag_cpu_ms", 0.0))
        self.gc_ms[scenario] = max(self.gc_ms.get(scenario, 0.0), float(done.get("max_gc_ms", 0.0)))

    def env(self) -> dict[str, str]:
        return {
            "FAX_GATEWAY_PROVIDER_PASSWORD": self.password,
            "FAX_GATEWAY_CALLBACK_SECRET": self.callback_secret,
            "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
        }  # fmt: skip

    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    callback_secret: str = field(default_factory=lambda: secrets.token_urlsafe(16))


def gateway_config(
    where: Path,
    *,
    smtp_port: int,
    http_port: int,
    paused: bool,
    provider_url: str = "http://127.0.0.1:9/http.php",
    s3_port: int = 0,
    relay_port: int = 9,
    concurrency: int = 0,
    instance: str = "",
) -> Path:
    """A settings file for a benchmark gateway: loopback only, quotas off (the load is one sender).

    ``instance``: one of a cluster, on the PostgreSQL store of ``FAX_GATEWAY_STORE_DSN`` (the environment).
    """
    storage = (
        f'backend = "s3"\nbucket = "{BUCKET}"\nendpoint_url = "http://127.0.0.1:{s3_port}"\nregion = "us-east-1"\n'
        if s3_port
        else 'backend = "local"\n'
    )
    extra = f"concurrency = {concurrency}\n" if concurrency else ""
    text = f"""\
[smtp]
listen = "127.0.0.1:{smtp_port}"
hostname = "fax-gateway.bench"

[quotas]
per_sender_hourly = 0
global_hourly = 0

[spool]
directory = "{where / "spool"}"

[storage]
{storage}
[provider]
url = "{provider_url}"
email = "{EMAIL}"
{extra}
[delivery]
paused = {str(paused).lower()}

[http]
listen = "127.0.0.1:{http_port}"
public_url = "http://127.0.0.1:{http_port}"

[notify]
relay = "127.0.0.1:{relay_port}"
from_address = "fax-gateway@bench.example"
"""
    if instance:
        text += f'\n[store]\nbackend = "postgresql"\n\n[cluster]\ninstance = "{instance}"\n'
    path = where / "gateway.toml"
    path.write_text(text)
    return path


def gateway_child(bench: Bench, where: Path, config: Path, env: dict[str, str] | None = None) -> Child:
    return Child("gateway", str(config), log=where / "gateway.log", env={**bench.env(), **(env or {})})


def job_ids(spool: Path) -> list[str]:
    db = sqlite3.connect(spool / "jobs.sqlite3")
    try:
        return [str(r[0]) for r in db.execute("SELECT id FROM jobs")]
    finally:
        db.close()


# -- intake -------------------------------------------------------------------


@dataclass(frozen=True)
class Intake:
    rate: float  # mails/s
    cpu_ms: float  # CPU time used by the server per mail (all its threads / processes)


async def intake_gateway(bench: Bench, sessions: int, count: int) -> Intake:
    where = bench.fresh(f"intake-gateway-{sessions}")
    smtp_port = free_port()
    child = gateway_child(bench, where, gateway_config(where, smtp_port=smtp_port, http_port=free_port(), paused=True))
    async with running(child):
        cpu = child.cpu()
        seconds = await smtp_source(smtp_port, bench.mail, sessions=sessions, count=count)
        cpu = child.cpu() - cpu
    bench.note_lag("intake", child.done)
    spooled = len(job_ids(where / "spool"))
    if spooled != count:
        raise BenchError(f"gateway intake: {spooled} jobs spooled for {count} mails answered 250")
    shutil.rmtree(where / "spool", ignore_errors=True)
    return Intake(count / seconds, cpu * 1000 / count)


async def intake_sink(bench: Bench, sessions: int, count: int, variant: str = "") -> Intake:
    """Bare aiosmtpd answering 250; ``variant="chunked"``: with the gateway's DATA reader."""
    where = bench.fresh(f"intake-sink{variant}-{sessions}")
    port = free_port()
    child = Child("sink", f"{port}:{variant}", log=where / "sink.log")
    async with running(child):
        cpu = child.cpu()
        seconds = await smtp_source(port, bench.mail, sessions=sessions, count=count)
        cpu = child.cpu() - cpu
    bench.note_lag("reference", child.done)
    if child.done.get("accepted") != count:
        raise BenchError(f"bare aiosmtpd: {child.done.get('accepted')} mails taken for {count} sent")
    return Intake(count / seconds, cpu * 1000 / count)


async def intake_sink_chunked(bench: Bench, sessions: int, count: int) -> Intake:
    return await intake_sink(bench, sessions, count, "chunked")


async def intake_postfix(bench: Bench, sessions: int, count: int) -> Intake:
    where = bench.fresh(f"intake-postfix-{sessions}")
    port = free_port()
    postfix = PostfixReference(where, port)
    await asyncio.to_thread(postfix.start)
    try:
        cpu = postfix.cpu()
        seconds = await smtp_source(port, bench.mail, sessions=sessions, count=count)
        cpu = postfix.cpu() - cpu
        queued = await asyncio.to_thread(postfix.queued)
    finally:
        await asyncio.to_thread(postfix.stop)
    if queued != count:
        raise BenchError(f"postfix: {queued} mails queued for {count} sent")
    shutil.rmtree(where / "queue", ignore_errors=True)
    return Intake(count / seconds, cpu * 1000 / count)


# -- the back end: moto S3, the simulator, a relay for receipts ----------------


@dataclass
class Backend:
    moto: Child
    sim: Child
    relay: Child
    s3_port: int
    http_port: int  # the gateway's HTTP port (the simulator's callbacks go there)

    def cpu(self, gateway: Child) -> dict[str, float]:
        """CPU seconds used so far by each process of the rig."""
        children = {"gateway": gateway, "moto S3": self.moto, "simulator": self.sim, "relay": self.relay}
        return {name: child.cpu() for name, child in children.items()}

    @property
    def sim_url(self) -> str:
        return str(self.sim.ready["url"])

    @property
    def relay_port(self) -> int:
        return int(self.relay.ready["smtp_port"])


async def start_backend(bench: Bench) -> Backend:
    where = bench.fresh("backend")
    s3_port, http_port = free_port(), free_port()
    moto = Child("moto", str(s3_port), log=where / "moto.log", env=bench.env())
    callback = f"http://127.0.0.1:{http_port}/receipt/{bench.callback_secret}"
    sim = Child("simulator", EMAIL, log=where / "simulator.log", env={**bench.env(), "BENCH_CALLBACK_URL": callback})
    relay = Child("sink", "0", log=where / "relay.log")
    started: list[Child] = []
    try:
        for child in (moto, sim, relay):
            await child.start()
            started.append(child)
        await asyncio.to_thread(_create_bucket, s3_port)
    except BaseException:
        for child in reversed(started):
            await child.stop()
        raise
    return Backend(moto, sim, relay, s3_port, http_port)


async def stop_backend(backend: Backend) -> None:
    for child in (backend.relay, backend.sim, backend.moto):
        await child.stop()


def _create_bucket(port: int) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                      aws_access_key_id="bench", aws_secret_access_key="bench")  # fmt: skip
    try:
        s3.create_bucket(Bucket=BUCKET)
    finally:
        s3.close()


def backend_config(bench: Bench, where: Path, backend: Backend, *, smtp_port: int, paused: bool,
                   http_port: int = 0, instance: str = "") -> Path:  # fmt: skip
    return gateway_config(
        where,
        smtp_port=smtp_port,
        http_port=http_port or backend.http_port,
        paused=paused,
        provider_url=backend.sim_url,
        s3_port=backend.s3_port,
        relay_port=backend.relay_port,
        concurrency=bench.concurrency,
        instance=instance,
    )


# -- end to end -----------------------------------------------------------------


def cpu_per_job(before: dict[str, float], after: dict[str, float], jobs: int) -> dict[str, float]:
    return {name: (after[name] - before[name]) * 1000 / max(jobs, 1) for name in before}


@dataclass(frozen=True)
class EndToEnd:
    cpu_ms: dict[str, float]  # CPU per job, by process
    p50_ms: float
    p99_ms: float
    accept_p50_ms: float  # end of DATA -> 250
    accept_p99_ms: float
    offered: int
    submitted: int


async def end_to_end(bench: Bench, backend: Backend, rate: float, seconds: float) -> EndToEnd:
    where = bench.fresh("end-to-end")
    smtp_port = free_port()
    gateway = gateway_child(bench, where, backend_config(bench, where, backend, smtp_port=smtp_port, paused=False))
    stuffed = client.dot_stuff(bench.mail.read_bytes().replace(b"\n", b"\r\n"))
    total = int(rate * seconds)
    async with running(gateway):
        cpu = backend.cpu(gateway)
        t0 = time.monotonic() + 0.2

        async def one(i: int) -> client.Sent:
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            return await client.send("127.0.0.1", smtp_port, SENDER, RECIPIENT, stuffed)

        sent = await asyncio.gather(*(one(i) for i in range(total)), return_exceptions=True)
        ok = [s for s in sent if isinstance(s, client.Sent) and s.job_id]
        wanted = {s.job_id for s in ok}
        arrived = lambda: wanted <= {ref for _, ref in backend.sim.requests}  # noqa: E731
        try:
            await backend.sim.wait_for(arrived, timeout=60.0)
        except TimeoutError:
            pass  # reported as fewer submitted than offered
        cpu = cpu_per_job(cpu, backend.cpu(gateway), len(ok))
    bench.note_lag("end to end", gateway.done)
    first_arrival: dict[str, float] = {}
    for t, ref in backend.sim.requests:
        first_arrival.setdefault(ref, t)
    latencies = [first_arrival[s.job_id] - s.end_of_data for s in ok if s.job_id in first_arrival]
    accept = [s.replied - s.end_of_data for s in ok]
    errors = [s for s in sent if not isinstance(s, client.Sent)]
    if errors:
        (where / "errors.txt").write_text("\n".join(repr(e) for e in errors))
    shutil.rmtree(where / "spool", ignore_errors=True)
    return EndToEnd(cpu, percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000,
                    percentile(accept, 50) * 1000, percentile(accept, 99) * 1000, total, len(latencies))  # fmt: skip


# -- drain ------------------------------------------------------------------------


async def spool_for_drain(bench: Bench, backend: Backend, count: int) -> Path:
    """A spool holding ``count`` queued jobs, made once by the paused gateway and copied for each run."""
    if bench.drain_template is None:
        where = bench.fresh("drain-spool")
        smtp_port = free_port()
        config = backend_config(bench, where, backend, smtp_port=smtp_port, paused=True)
        paused = gateway_child(bench, where, config)
        async with running(paused):
            await smtp_source(smtp_port, bench.mail, sessions=20, count=count)
        bench.note_lag("intake", paused.done)
        bench.drain_template = where / "spool"
    return bench.drain_template


@dataclass(frozen=True)
class Drain:
    seconds: float
    jobs: int
    cpu_ms: dict[str, float]  # CPU per job, by process
    # Per instance (one here; 1 to 3 in a cluster drain): the jobs its worker took, and the share of the
    # drain's time during which it had at least one job in hand (claimed, its outcome not yet recorded).
    jobs_per_instance: list[int] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)
    instances: int = 1
    store: str = "sqlite"

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds


# A drain's gateways wait for SIGUSR2 before their worker's first look at the store, and report each job
# they work on (benchmarks/procs.py).
JOB_EVENTS = {"BENCH_JOB_EVENTS": "1"}


def release(*gateways: Child) -> float:
    """Let the ready gateways' workers go, at once; when."""
    t = time.monotonic()
    for gateway in gateways:
        gateway.signal(signal.SIGUSR2)
    return t


def busy_share(gateway: Child, start: float, end: float) -> tuple[int, float]:
    """The jobs ``gateway`` worked on, and the share of [start, end] in which it had at least one in hand."""
    spans = sorted((max(e["start"], start), min(e["t"], end)) for e in gateway.events if e.get("event") == "job")
    covered, reach = 0.0, start
    for a, b in spans:
        if b > reach:
            covered += b - max(a, reach)
            reach = b
    return len(spans), covered / (end - start) if end > start else float("nan")


async def drain(bench: Bench, backend: Backend, count: int) -> Drain:
    """Seconds from the ready gateway's worker let go to the provider's request of the last of ``count`` spooled
    jobs."""
    template = await spool_for_drain(bench, backend, count)
    where = bench.fresh("drain")
    await asyncio.to_thread(shutil.copytree, template, where / "spool")
    wanted = set(job_ids(where / "spool"))
    if len(wanted) != count:
        raise BenchError(f"drain: {len(wanted)} jobs spooled for {count} mails")
    config = backend_config(bench, where, backend, smtp_port=free_port(), paused=False)
    gateway = gateway_child(bench, where, config, JOB_EVENTS)
    seen: dict[str, float] = {}
    scanned = len(backend.sim.requests)  # earlier runs used the same job ids: only new requests count
    async with running(gateway):
        cpu = backend.cpu(gateway)
        released = release(gateway)

        def done() -> bool:
            nonlocal scanned
            requests = backend.sim.requests
            for t, ref in requests[scanned:]:
                if ref in wanted:
                    seen.setdefault(ref, t)
            scanned = len(requests)
            return len(seen) == len(wanted)

        try:
            await backend.sim.wait_for(done, timeout=300.0)
        except TimeoutError:
            pass
        cpu = cpu_per_job(cpu, backend.cpu(gateway), len(seen))
    bench.note_lag("drain", gateway.done)
    shutil.rmtree(where / "spool", ignore_errors=True)
    if not seen:
        raise BenchError("drain: no spooled job reached the provider")
    # The clock starts when the ready daemon's worker is let go (start-up is not part of the drain).
    end = max(seen.values())
    jobs, busy = busy_share(gateway, released, end)
    return Drain(end - released, len(seen), cpu, [jobs], [busy])


# -- cluster drain ------------------------------------------------------------------


async def spool_for_cluster(bench: Bench, backend: Backend, pg: PostgresReference, count: int) -> str:
    """A new database holding ``count`` queued jobs, their mails and documents in the bucket, as one paused
    instance's intake left them; its connection string (the gateways get it in their environment)."""
    dsn = await asyncio.to_thread(pg.create)
    try:
        where = bench.fresh("cluster-spool")
        smtp_port = free_port()
        config = backend_config(bench, where, backend, smtp_port=smtp_port, paused=True, http_port=free_port(),
                                instance="bench-intake")  # fmt: skip
        paused = gateway_child(bench, where, config, {"FAX_GATEWAY_STORE_DSN": dsn})
        async with running(paused):
            await smtp_source(smtp_port, bench.mail, sessions=20, count=count)
        bench.note_lag("intake", paused.done)
    except BaseException:
        await asyncio.to_thread(pg.drop, dsn)
        raise
    return dsn


async def cluster_drain(bench: Bench, backend: Backend, pg: PostgresReference, count: int, instances: int) -> Drain:
    """``instances`` gateways on one PostgreSQL database, on ``count`` queued jobs: seconds from the moment
    their workers are let go together (each gateway ready) to the provider's request of the last job."""
    dsn = await spool_for_cluster(bench, backend, pg, count)
    env = {"FAX_GATEWAY_STORE_DSN": dsn, **JOB_EVENTS}
    gateways = []
    for i in range(1, instances + 1):
        where = bench.fresh(f"cluster-{instances}-{i}")
        # The simulator calls the first instance back; the receipts go to the shared store all the same.
        config = backend_config(bench, where, backend, smtp_port=free_port(), paused=False, instance=f"bench-{i}",
                                http_port=backend.http_port if i == 1 else free_port())  # fmt: skip
        gateways.append(gateway_child(bench, where, config, env))
    refs = {"PostgreSQL": pg.cpu, "moto S3": backend.moto.cpu, "simulator": backend.sim.cpu, "relay": backend.relay.cpu}
    seen: dict[str, float] = {}
    scanned = len(backend.sim.requests)  # only this run's requests count (its jobs are new ones)

    def done() -> bool:
        nonlocal scanned
        requests = backend.sim.requests
        for t, ref in requests[scanned:]:
            seen.setdefault(ref, t)
        scanned = len(requests)
        return len(seen) >= count

    try:
        await asyncio.gather(*(g.start() for g in gateways))
        gateway_before = [g.cpu() for g in gateways]
        before = {name: cpu() for name, cpu in refs.items()}
        released = release(*gateways)
        try:
            await backend.sim.wait_for(done, timeout=300.0)
        except TimeoutError:
            pass
        used = sum(g.cpu() - b for g, b in zip(gateways, gateway_before, strict=True))
        after = {name: cpu() for name, cpu in refs.items()}
    finally:
        await asyncio.gather(*(g.stop() for g in gateways))
        await asyncio.to_thread(pg.drop, dsn)
    for g in gateways:
        bench.note_lag("cluster drain", g.done)
    if not seen:
        raise BenchError("cluster drain: no queued job reached the provider")
    jobs = max(len(seen), 1)
    cpu = {"gateway": used * 1000 / jobs, **{n: (after[n] - before[n]) * 1000 / jobs for n in refs}}
    end = max(seen.values())
    shares = [busy_share(g, released, end) for g in gateways]
    return Drain(end - released, len(seen), cpu, [n for n, _ in shares], [b for _, b in shares], instances,
                 "postgresql")  # fmt: skip


# -- memory -----------------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    """Peak RSS in KiB: idle, and while the sessions send their 1 MiB documents."""

    idle_kb: int
    loaded_kb: int
    ref_idle_kb: int
    ref_loaded_kb: int
    pss_kb: int  # the gateway's largest PSS total (daemon + workers), sampled every 50 ms under the load


async def memory(bench: Bench, sessions: int, idle_seconds: float = 2.0) -> Memory:
    """The gateway (delivery paused) and, as reference, the bare aiosmtpd server."""
    where = bench.fresh("memory")
    smtp_port = free_port()
    gateway = gateway_child(
        bench, where, gateway_config(where, smtp_port=smtp_port, http_port=free_port(), paused=True)
    )
    async with running(gateway):
        await asyncio.sleep(idle_seconds)  # let start-up settle: this is the idle figure
        idle = peak_rss_kb(gateway.pid)
        done = asyncio.Event()
        sampler = asyncio.ensure_future(peak_pss_kb(gateway.pid, done))
        try:
            await smtp_source(smtp_port, bench.big_mail, sessions=sessions, count=sessions)
        finally:
            done.set()
            pss = await sampler
        loaded = peak_rss_kb(gateway.pid)
    bench.note_lag("memory", gateway.done)
    sink_port = free_port()
    sink = Child("sink", str(sink_port), log=where / "sink.log")
    async with running(sink):
        await asyncio.sleep(idle_seconds)
        ref_idle = peak_rss_kb(sink.pid)
        await smtp_source(sink_port, bench.big_mail, sessions=sessions, count=sessions)
        ref_loaded = peak_rss_kb(sink.pid)
    bench.note_lag("reference", sink.done)
    shutil.rmtree(where / "spool", ignore_errors=True)
    return Memory(idle, loaded, ref_idle, ref_loaded, pss)
