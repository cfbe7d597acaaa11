"""Each process imports only what it uses: the daemon not the document checks, a document worker not the store."""

from __future__ import annotations

import subprocess
import sys

CHECKS = ("pikepdf", "PIL", "pypdfium2", "numpy", "img2pdf", "magic", "tnefparse")


def imported_by(code: str) -> set[str]:
    """The top-level packages a fresh interpreter holds after running ``code``."""
    probe = code + "\nimport sys\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    return set(done.stdout.split())


def test_the_daemon_side_of_the_document_checks_loads_none_of_them() -> None:
    held = imported_by(
        "import gateway.daemon.run, gateway.daemon.app, gateway.smtp.intake, gateway.documents.examiner\n"
        "from gateway.documents.examiner import Examiner"
    )
    assert "gateway" in held
    assert held.isdisjoint(CHECKS), sorted(held & set(CHECKS))


def test_the_program_module_a_document_worker_imports_loads_no_store_nor_network_client() -> None:
    # multiprocessing imports the program's main module (the fax-gateway command) in each worker.
    held = imported_by("import gateway.ops.cli")
    assert held.isdisjoint({"psycopg", "boto3", "botocore", "aiohttp", "aiosmtplib", "aiosmtpd", *CHECKS})


def test_the_daemon_on_sqlite_loads_no_postgresql_client() -> None:
    # The store, its wake-ups, intake and the notifier loaded, a SQLite store opened (its schema written).
    held = imported_by(
        "import tempfile, pathlib\n"
        "import gateway.daemon.run, gateway.daemon.app, gateway.smtp.intake, gateway.notify.notifier\n"
        "from gateway.store import Store, database_errors\n"
        "store = Store(pathlib.Path(tempfile.mkdtemp()) / 'jobs.db')\n"
        "assert database_errors()\n"
    )
    assert "gateway" in held
    assert "psycopg" not in held and "psycopg_binary" not in held


def _maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


def test_the_forkserver_loads_none_of_the_document_checks_and_the_worker_all_of_them() -> None:
    # Loaded in the forkserver too, the checks' pages would be counted in it and again in each worker.
    probe = (
        "import asyncio, multiprocessing, os\n"
        "from gateway.documents.examiner import Examiner\n"
        "from gateway.settings import DocumentSettings\n"
        "async def main():\n"
        "    examiner = Examiner(DocumentSettings(), processes=1)\n"
        "    await examiner.start()\n"
        "    try:\n"
        "        print(' '.join(map(str, examiner.pids)))\n"
        "        input()\n"
        "    finally:\n"
        "        await examiner.stop()\n"
        "asyncio.run(main())\n"
    )
    with subprocess.Popen([sys.executable, "-c", probe], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as p:
        assert p.stdin is not None and p.stdout is not None
        workers = [int(w) for w in p.stdout.readline().split()]
        try:
            assert len(workers) == 1
            with open(f"/proc/{workers[0]}/stat") as f:
                server = int(f.read().rpartition(")")[2].split()[1])  # the worker's parent
            with open(f"/proc/{server}/cmdline") as f:
                assert "multiprocessing.forkserver" in f.read()
            assert "pikepdf" not in _maps(server)
            assert "pikepdf" in _maps(workers[0])
        finally:
            p.stdin.write("\n")
            p.stdin.close()
            assert p.wait(60) == 0
