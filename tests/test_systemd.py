"""The systemd unit: hardened, notify-type, and clean under ``systemd-analyze verify``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support_tools import need_program

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "fax-gateway.service"


def _directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("Restart", "on-failure"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "fax-gateway"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("SystemCallFilter", "@system-service"),
        ("EnvironmentFile", "-/etc/fax-gateway/secrets.env"),
    ],
)
def test_unit_sets(key: str, value: str) -> None:
    assert value in _directives().get(key, [])


def test_unit_runs_the_daemon_with_the_config_in_etc() -> None:
    (exec_start,) = _directives()["ExecStart"]
    assert exec_start.endswith("fax-gateway serve --config /etc/fax-gateway/fax-gateway.toml")
    families = _directives()["RestrictAddressFamilies"][0].split()
    # AF_UNIX carries the readiness notification to systemd.
    assert set(families) == {"AF_INET", "AF_INET6", "AF_UNIX"}


def test_stop_timeout_outlasts_an_orderly_stop() -> None:
    """systemd must not kill a stop that is still within the daemon's own bounds (SIGKILL loses the clean state)."""
    from gateway.settings import Settings

    settings = Settings()
    (timeout,) = _directives()["TimeoutStopSec"]
    assert timeout.endswith("s")
    assert float(timeout[:-1]) > settings.smtp.shutdown_grace_seconds + settings.provider.total_timeout + 5 + 30


def test_state_directory_is_the_default_spool() -> None:
    from gateway.settings import SpoolSettings

    assert SpoolSettings().directory == "/var/lib/" + _directives()["StateDirectory"][0]


def _runnable_unit(tmp_path: Path) -> Path:
    # systemd-analyze insists that ExecStart's binary exists: point it at this Python.
    unit = tmp_path / "fax-gateway.service"
    text = UNIT.read_text().replace("ExecStart=/usr/local/bin/fax-gateway", f"ExecStart={sys.executable} -m gateway")
    unit.write_text(text)
    return unit


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    analyze = need_program("systemd-analyze", "systemd")
    unit = _runnable_unit(tmp_path)
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    ours = [line for line in (done.stdout + done.stderr).splitlines() if "fax-gateway" in line]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr


def test_systemd_analyze_security_exposure_is_at_most_2(tmp_path: Path) -> None:
    analyze = need_program("systemd-analyze", "systemd")
    unit = _runnable_unit(tmp_path)
    done = subprocess.run(
        [analyze, "security", "--offline=yes", str(unit)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    m = re.search(r"Overall exposure level for fax-gateway\.service: (\d+\.\d+)", done.stdout)
    assert m is not None, done.stdout + done.stderr
    assert float(m[1]) <= 2.0, done.stdout


def test_the_install_steps_let_the_dynamic_user_read_the_settings() -> None:
    # The unit runs as DynamicUser: a settings file only root may read stops the service at start.
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for text in (readme, UNIT.read_text()):
        directory = re.search(r"install -d -m (0[0-7]{3}) /etc/fax-gateway\b", text)
        settings = re.search(r"install -m (0[0-7]{3}) config/fax-gateway\.example\.toml /etc/fax-gateway/", text)
        secrets = re.search(r"install -m (0[0-7]{3}) /dev/null /etc/fax-gateway/secrets\.env", text)
        assert directory and settings and secrets
        assert int(directory[1], 8) & 0o005 == 0o005 and int(settings[1], 8) & 0o004
        assert int(secrets[1], 8) & 0o077 == 0  # read by systemd as root, before the service starts
