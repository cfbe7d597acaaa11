"""``fax-gateway demo`` as a newcomer runs it: the printed command sends a fax, the receipt lands in the mailbox."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

from gateway.ops.demo import sample_pdf
from tests.support_proc import poll_until


async def _line(stream: asyncio.StreamReader, pattern: str, seen: list[str]) -> re.Match[str]:
    while True:
        raw = await stream.readline()
        if not raw:
            raise AssertionError("demo exited early:\n" + "".join(seen))
        line = raw.decode()
        seen.append(line)
        if m := re.search(pattern, line):
            return m


async def test_demo_end_to_end(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "demo", "--dir", str(directory), "--smtp-port", "0", "--http-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        ready = await asyncio.wait_for(
            _line(proc.stdout, r"demo ready: smtp=127\.0\.0\.1:(\d+) http=127\.0\.0\.1:(\d+) mailbox=(.+)$", seen), 60
        )
        banner = "".join(seen)
        assert "NO REAL FAX IS SENT" in banner and "swaks --server 127.0.0.1:" in banner
        mailbox = Path(ready[3].strip())
        one_liner = next(ln.strip() for ln in seen if ln.strip().startswith("python3 -c "))
        # The reader keeps draining the demo's output so it never blocks on a full pipe.
        drain = asyncio.ensure_future(_line(proc.stdout, r"^\Z-never", seen))

        sent = await asyncio.to_thread(
            subprocess.run, one_liner.replace("python3", sys.executable, 1), shell=True, capture_output=True,
            text=True, timeout=60,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert (directory / "test-fax.pdf").read_bytes()[:5] == b"%PDF-"

        receipt_file = await poll_until(lambda: sorted(mailbox.glob("*.eml")), "a receipt in the mailbox")
        assert isinstance(receipt_file, list)
        receipt = email.message_from_bytes(receipt_file[0].read_bytes(), policy=email.policy.default)
        assert receipt["To"] and "you@example.com" in str(receipt["To"])
        assert "delivered" in str(receipt["Subject"]).lower()

        spool = str(directory / "spool")
        jobs = json.loads(subprocess.run([sys.executable, "-m", "gateway", "jobs", "--spool", spool, "--json"],
                                         capture_output=True, text=True, timeout=60, check=True).stdout)  # fmt: skip
        assert [j["state"] for j in jobs] == ["delivered"]
        shown = subprocess.run([sys.executable, "-m", "gateway", "show", "--spool", spool, jobs[0]["id"]],
                               capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
        job = jobs[0]["id"]
        story = [  # the whole story, in order: reply, upload, provider answer, receipt, notice
            f"reply: 250 2.0.0 OK: queued as {job}",
            "upload        ",
            "submitted                accepted by the provider (code 113",
            "delivered                delivered, 1 page(s)",
            "notice sent              delivered to you@example.com",
            "code 0 via callback, 1 pages",
            "delivered    to you@example.com: sent",
        ]
        at = [shown.find(step) for step in story]
        assert -1 not in at, shown
        assert at[2:5] == sorted(at[2:5]), shown
        assert re.search(r"upload        [0-9a-f]{32}\.pdf stored ", shown), shown

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        drain.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_sample_pdf_is_one_page() -> None:
    import pikepdf

    with pikepdf.open(__import__("io").BytesIO(sample_pdf())) as doc:
        assert len(doc.pages) == 1
