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
