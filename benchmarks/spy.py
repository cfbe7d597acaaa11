"""Profile the gateway under one load with py-spy (``pip install py-spy``; not a project dependency).

    python3 benchmarks/spy.py intake --sessions 20 --mails 300
    python3 benchmarks/spy.py drain --mails 300

py-spy samples the gateway process (every thread, idle time left out) while
the load runs; the script prints where the samples fall (inclusive share per
function, the event-loop thread separately) and keeps the collapsed stacks and
a flame graph in the scratch directory it names.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mailgen  # noqa: E402
import scenarios  # noqa: E402
from harness import free_port, running, smtp_source  # noqa: E402


async def _pyspy(pid: int, out: Path, fmt: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "py-spy", "record", "--pid", str(pid), "--rate", "200", "--threads", "--format", fmt, "-o", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def _stop(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(2)  # SIGINT: py-spy writes its output and exits
    async with asyncio.timeout(60):
        await proc.wait()


async def profile(args: argparse.Namespace, bench: scenarios.Bench) -> Path:
    where = bench.fresh(args.what)
    raw = where / "stacks.txt"
    if args.what == "intake":
        port = free_port()
        config = scenarios.gateway_config(where, smtp_port=port, http_port=free_port(), paused=True)
        gateway = scenarios.gateway_child(bench, where, config)
        async with running(gateway):
            spy = await _pyspy(gateway.pid, raw, "raw")
            seconds = await smtp_source(port, bench.mail, sessions=args.sessions, count=args.mails)
            await _stop(spy)
        print(
            f"intake: {args.mails / seconds:.1f} mails/s; largest loop lag {gateway.done.get('max_lag_ms', 0):.0f} ms"
        )
        return raw
    backend = await scenarios.start_backend(bench)
    try:
        port = free_port()
        paused = scenarios.gateway_child(bench, where, scenarios.backend_config(bench, where, backend, smtp_port=port,
                                                                                paused=True))  # fmt: skip
        async with running(paused):
            await smtp_source(port, bench.mail, sessions=20, count=args.mails)
        wanted = set(scenarios.job_ids(where / "spool"))
        gateway = scenarios.gateway_child(bench, where, scenarios.backend_config(bench, where, backend, smtp_port=port,
                                                                                 paused=False))  # fmt: skip
        async with running(gateway):
            spy = await _pyspy(gateway.pid, raw, "raw")
            await backend.sim.wait_for(lambda: wanted <= {ref for _, ref in backend.sim.requests}, timeout=300)
            await _stop(spy)
        print(f"drain: largest loop lag {gateway.done.get('max_lag_ms', 0):.0f} ms")
    finally:
        await scenarios.stop_backend(backend)
    return raw


def summarise(raw: Path, top: int) -> None:
    """Inclusive samples per function, over all threads and over the event-loop (main) thread."""
    total = collections.Counter[str]()
    main_thread = collections.Counter[str]()
    n_all = n_main = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        is_main = "MainThread" in frames[0] or "main" in frames[0].lower() and "thread" in frames[0].lower()
        n_all += n
        n_main += n if is_main else 0
        for f in set(frames[1:]):
            total[f] += n
            if is_main:
                main_thread[f] += n
    for title, counter, n in (("all threads", total, n_all), ("event-loop thread", main_thread, n_main)):
        print(f"\n-- {title}: {n} samples; inclusive share --")
        for frame, c in counter.most_common(top):
            print(f"{100 * c / max(n, 1):5.1f}%  {frame}")


def main() -> None:
    p = argparse.ArgumentParser(description="profile the gateway with py-spy")
    p.add_argument("what", choices=["intake", "drain"])
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--mails", type=int, default=300)
    p.add_argument("--top", type=int, default=40)
    args = p.parse_args()
    if not 1 <= args.mails <= 5000 or not 1 <= args.sessions <= 95:
        p.error("--mails must be 1..5000 and --sessions 1..95")
    if shutil.which("py-spy") is None:
        p.error("py-spy is not installed: pip install py-spy")
    root = Path(tempfile.mkdtemp(prefix="fax-gateway-profile-", dir="/var/tmp"))
    root.chmod(0o755)
    mail = root / "mail-140k.eml"
    mail.write_bytes(mailgen.make_mail(mailgen.make_pdf(102_400)))
    bench = scenarios.Bench(root, mail, mail)
    raw = asyncio.run(profile(args, bench))
    summarise(raw, args.top)
    print(f"\ncollapsed stacks: {raw}")


if __name__ == "__main__":
    main()
