"""The processes a benchmark runs, one per role, each in its own interpreter.

    python3 benchmarks/procs.py gateway CONFIG.toml   the daemon (gateway.daemon.run), as `serve` runs it
    python3 benchmarks/procs.py sink PORT             a bare aiosmtpd server whose handler only answers 250
    python3 benchmarks/procs.py simulator EMAIL       the provider simulator (password from the environment)
    python3 benchmarks/procs.py moto PORT             moto's S3 server

Each listens on 127.0.0.1 only and writes JSON lines on stdout: ``ready`` (with
its ports and ``time.monotonic()``, which is system-wide on Linux, so times
compare across processes), events while it runs (the simulator reports each
provider request as it arrives), and ``done`` after SIGTERM or SIGINT. The
gateway and the sink run a loop-lag probe beside their work and report the
largest lag seen and the process's peak RSS.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROBE_INTERVAL = 0.005


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    sys.stdout.flush()


def peak_rss_kb() -> int:
    """VmHWM: the process's peak resident set size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class LagProbe:
    """Sleeps PROBE_INTERVAL again and again; how late each wake-up is, is the loop's lag.

    Also kept: the loop thread's own CPU time in the interval of the largest
    lag (near the lag: the loop was busy; far below it: the thread was not
    running, as when the machine has more busy processes than cores or another
    thread holds the GIL), and the longest garbage collection.
    """

    def __init__(self) -> None:
        self.max_lag = 0.0
        self.cpu_at_max = 0.0
        self.max_gc = 0.0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None
        self._gc_start = 0.0

    def start(self) -> None:
        gc.callbacks.append(self._gc)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.max_gc = max(self.max_gc, time.perf_counter() - self._gc_start)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before, cpu = loop.time(), time.thread_time()
            await asyncio.sleep(PROBE_INTERVAL)
            lag = loop.time() - before - PROBE_INTERVAL
            self.samples += 1
            if lag > self.max_lag:
                self.max_lag, self.cpu_at_max = lag, time.thread_time() - cpu

    def figures(self) -> dict[str, float]:
        seconds = {"max_lag_ms": self.max_lag, "lag_cpu_ms": self.cpu_at_max, "max_gc_ms": self.max_gc}
        return {k: v * 1000 for k, v in seconds.items()}

    async def stop(self) -> None:
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


# -- the gateway --------------------------------------------------------------


async def run_gateway(config: str) -> None:
    from gateway import settings as settings_mod
    from gateway.daemon import logs
    from gateway.daemon import run as daemon

    settings = settings_mod.load(config)
    if os.environ.get("BENCH_EXAMINE_SLOTS"):  # experiment: at most N messages examined at once
        _limit_examine(int(os.environ["BENCH_EXAMINE_SLOTS"]))
    if os.environ.get("BENCH_READ_CHUNK"):  # experiment: bytes read per wake-up of an SMTP connection
        _limit_reads(int(os.environ["BENCH_READ_CHUNK"]))
    if os.environ.get("BENCH_JOB_EVENTS"):  # the cluster drain: when this instance works on which job
        _report_jobs()
    handler = logs.setup(settings.log, logs.secrets_of(settings))
    probe = LagProbe()
    if os.environ.get("BENCH_SLOW_CALLBACKS"):  # diagnosis: asyncio logs each callback slower than this (s)
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = float(os.environ["BENCH_SLOW_CALLBACKS"])
        logging.getLogger("asyncio").setLevel(logging.WARNING)

    def on_ready(gw: Any) -> None:
        probe.start()  # lag while serving; start-up (imports, store migration) is not a run
        emit("ready", smtp_port=gw.smtp.port, http_port=gw.http.port, pid=os.getpid(), rss_kb=peak_rss_kb())

    emit("starting", pid=os.getpid())
    try:
        await daemon.run(settings, config=config, handler=handler, on_ready=on_ready)
    finally:
        await probe.stop()
        emit("done", **probe.figures(), probes=probe.samples, peak_rss_kb=peak_rss_kb())


def _limit_examine(slots: int) -> None:
    from gateway.documents.examiner import Examiner

    gate = asyncio.Semaphore(slots)  # bound to the daemon's loop at its first use
    examine = Examiner.examine

    async def limited(self: Examiner, raw: bytes) -> Any:
        async with gate:
            return await examine(self, raw)

    Examiner.examine = limited  # type: ignore[method-assign]


def _report_jobs() -> None:
    """A ``job`` event per job the worker took (``start``: claimed, ``t``: its outcome recorded); and the
    worker's first look at the store waits for SIGUSR2, so that the benchmark releases every instance
    at one moment, once each is ready (start-up is not part of a drain)."""
    from gateway.delivery.worker import Worker

    process, run = Worker._process, Worker._run

    async def gated(self: Worker) -> None:
        go = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, go.set)
        await go.wait()
        emit("released")
        await run(self)

    Worker._run = gated  # type: ignore[method-assign]

    async def reported(self: Worker, job: Any) -> None:
        start = time.monotonic()
        try:
            await process(self, job)
        finally:
            emit("job", job=job.id, start=start)

    Worker._process = reported  # type: ignore[method-assign]


def _limit_reads(size: int) -> None:
    """Bytes read per wake-up of an SMTP connection, in place of ``gateway.smtp.server.READ_SIZE`` (64 KiB)."""
    from gateway.smtp import server as smtp

    smtp.READ_SIZE = size


# -- the bare SMTP server -----------------------------------------------------


class Answer250:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 2.0.0 Ok"


def _chunked_smtp() -> type[Any]:
    """aiosmtpd with the gateway's DATA reader (gateway.smtp.data) in place of its line-by-line one."""
    from aiosmtpd.smtp import SMTP, syntax

    from gateway.smtp.data import read_data

    class ChunkedSMTP(SMTP):
        @syntax("DATA")
        async def smtp_DATA(self, arg: str) -> None:
            assert self.envelope is not None
            if not self.envelope.rcpt_tos:
                await self.push("503 Error: need RCPT command")
                return
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            limit = self.data_size_limit or 0
            data = await read_data(self._reader, max_size=limit, max_line=self.line_length_limit)
            self.envelope.content = self.envelope.original_content = data.content
            status = await self._call_handler_hook("DATA") if not data.problem else "552 5.3.4 Too big"
            self.envelope = self._create_envelope()
            await self.push(status)

    return ChunkedSMTP


async def run_sink(arg: str) -> None:
    """``PORT`` (aiosmtpd as it is) or ``PORT:chunked`` (with the gateway's DATA reader)."""
    from aiosmtpd.smtp import SMTP

    port, _, variant = arg.partition(":")
    smtp_class = _chunked_smtp() if variant == "chunked" else SMTP
    handler = Answer250()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: smtp_class(handler, hostname="sink.localdomain", data_size_limit=20 * 1024 * 1024),
        "127.0.0.1",
        int(port),
    )
    probe = LagProbe()
    probe.start()
    emit("ready", smtp_port=server.sockets[0].getsockname()[1], pid=os.getpid(), rss_kb=peak_rss_kb())
    try:
        await wait_for_signal()
    finally:
        server.close()
        await probe.stop()
        emit("done", accepted=handler.count, **probe.figures(), peak_rss_kb=peak_rss_kb())


# -- the provider simulator ---------------------------------------------------


async def run_simulator(email: str) -> None:
    from aiohttp import web

    from gateway.delivery.simulator import ProviderSimulator

    class TimedSimulator(ProviderSimulator):
        """Reports each provider request the moment it arrives (before any check)."""

        async def _http_php(self, request: web.Request) -> web.StreamResponse:
            emit("request", ref=request.query.get("ref", ""))
            return await super()._http_php(request)

    sim = TimedSimulator("127.0.0.1", 0, email=email, password=os.environ["FAX_GATEWAY_PROVIDER_PASSWORD"])
    sim.callback_url = os.environ.get("BENCH_CALLBACK_URL") or None
    await sim.start()
    emit("ready", url=sim.url, pid=os.getpid())
    try:
        await wait_for_signal()
    finally:
        await sim.stop()
        answers: dict[str, int] = {}
        for r in sim.requests:
            code = r.answer.split("-", 1)[0]
            answers[code] = answers.get(code, 0) + 1
        emit("done", requests=len(sim.requests), answers=answers, callbacks=len(sim.callbacks))


def run_moto(port: int) -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    emit("ready", port=port, pid=os.getpid())
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.stop()
    emit("done")


def main(argv: list[str]) -> None:
    role, arg = argv[0], argv[1]
    if role == "moto":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        run_moto(int(arg))
        return
    runners = {"gateway": lambda: run_gateway(arg), "sink": lambda: run_sink(arg),
               "simulator": lambda: run_simulator(arg)}  # fmt: skip
    asyncio.run(runners[role]())


if __name__ == "__main__":
    main(sys.argv[1:])
