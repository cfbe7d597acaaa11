"""check-config lists every SMTP listener and loads each TLS listener's certificate as the server would."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from gateway.ops import checks
from tests.support_smtp import make_cert


def config_file(tmp_path: Path, listeners: str) -> Path:
    cert, key = make_cert(tmp_path)
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
[smtp]
tls_cert = "{cert}"
tls_key = "{key}"
{listeners}
[spool]
directory = "{tmp_path / "spool"}"
min_free_bytes = 0
[provider]
url = "http://127.0.0.1:9/http.php"
[notify]
relay = "127.0.0.1:9"
from_address = "fax-gateway@gateway.test"
"""
    )
    return path


def check_config(path: Path, capsys: pytest.CaptureFixture[str], *, as_json: bool) -> str:
    checks.main(argparse.Namespace(config=str(path), json=as_json))
    return capsys.readouterr().out


LISTENERS = """
[[smtp.listeners]]
listen = "0.0.0.0:25"
tls = "none"
name = "lan"
[[smtp.listeners]]
listen = "0.0.0.0:587"
name = "submit"
[[smtp.listeners]]
listen = "[::]:465"
tls = "implicit"
tls_min_version = "TLSv1"
name = "old-printers"
"""


def test_check_config_names_each_listener_and_loads_each_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_file(tmp_path, LISTENERS)
    report = json.loads(check_config(path, capsys, as_json=True))
    cert = str(tmp_path / "cert.pem")
    assert report["listeners"] == [
        "lan: 0.0.0.0:25, plain SMTP, no TLS",
        f"submit: 0.0.0.0:587, STARTTLS from TLSv1.2, certificate {cert}",
        f"old-printers: [::]:465, implicit TLS from TLSv1, certificate {cert}",
    ]
    found = {c["name"]: c for c in report["checks"]}
    assert "tls lan" not in found
    assert found["tls submit"] == {"name": "tls submit", "ok": True,
                                   "detail": f"0.0.0.0:587 (starttls): certificate {cert} loads"}  # fmt: skip
    old = found["tls old-printers"]
    assert old["ok"] and old["warning"] and "security level 0" in str(old["detail"])
    text = check_config(path, capsys, as_json=False)
    assert "listener  lan: 0.0.0.0:25, plain SMTP, no TLS" in text
    assert "ok    tls submit" in text and "warn  tls old-printers" in text


def test_a_certificate_that_does_not_load_fails_its_listener(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_file(tmp_path, LISTENERS)
    (tmp_path / "key.pem").write_text("not a key\n")
    report = json.loads(check_config(path, capsys, as_json=True))
    found = {c["name"]: c for c in report["checks"]}
    assert not found["tls submit"]["ok"] and "do not load" in str(found["tls submit"]["detail"])


def test_the_single_listen_is_listed_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = json.loads(check_config(config_file(tmp_path, ""), capsys, as_json=True))
    assert "not used" not in " ".join(report["listeners"])
    assert report["listeners"] == [f"smtp: 127.0.0.1:2525, STARTTLS from TLSv1.2, certificate {tmp_path / 'cert.pem'}"]
    assert {c["name"] for c in report["checks"]} >= {"tls smtp"}


def test_a_listen_that_listeners_replace_is_said_to_be_unused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_file(tmp_path, 'listen = "0.0.0.0:2525"\n' + LISTENERS)
    report = json.loads(check_config(path, capsys, as_json=True))
    assert report["listeners"][-1] == "(smtp.listen = 0.0.0.0:2525 is not used: [[smtp.listeners]] are given)"
