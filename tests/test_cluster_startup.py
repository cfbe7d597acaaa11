"""``fax-gateway serve`` with the PostgreSQL store unreachable: it says where the store is, and exits 3."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.ops import cli
from tests.support_net import free_port


def test_serve_with_postgresql_down_names_the_store_and_exits_unreachable(tmp_path: Path) -> None:
    """The real command against a closed port: where the store is (host, port, database), never the password."""
    port = free_port()
    password = "Pg-Canary-5ecret"
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[smtp]
listen = "127.0.0.1:0"
[spool]
directory = "{tmp_path / 'spool'}"
min_free_bytes = 0
[http]
listen = "127.0.0.1:0"
[store]
backend = "postgresql"
[storage]
backend = "s3"
bucket = "fax-documents"
endpoint_url = "http://127.0.0.1:9"
[provider]
simulator = true
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAX_GATEWAY_")}
    env["FAX_GATEWAY_STORE_DSN"] = f"host=127.0.0.1 port={port} dbname=faxes user=gateway password={password}"
    binary = Path(sys.executable).with_name("fax-gateway")
    done = subprocess.run([str(binary), "serve", "--config", str(config)], env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == cli.UNREACHABLE, done.stderr
    assert f"PostgreSQL database 'faxes' on '127.0.0.1' port {port}: cannot connect" in done.stderr
    assert done.stderr.startswith("fax-gateway: the job store cannot be reached: ")
    assert password not in done.stderr + done.stdout and "Traceback" not in done.stderr
