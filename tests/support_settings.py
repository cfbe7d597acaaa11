"""Settings for the tests on a temporary spool, and the whole gateway started on loopback.

Fixtures: ``make_settings`` (a factory of :class:`~gateway.settings.Settings`) and
``gateway`` (a started :class:`~gateway.daemon.app.Gateway` with the default test settings).
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.daemon.app import Gateway
from gateway.settings import Settings, from_mapping

SettingsFactory = Callable[..., Settings]


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Settings for a test: loopback, port 0, a spool under tmp_path; ``table`` overrides (TOML shape)."""

    def factory(table: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Settings:
        base: dict[str, Any] = {
            "smtp": {"listen": "127.0.0.1:0", "hostname": "fax-gateway.test"},
            "spool": {"directory": str(tmp_path / "spool"), "min_free_bytes": 0},
            "http": {"listen": "127.0.0.1:0"},
            # Never the real provider: a closed loopback port unless a test points it at the simulator.
            "provider": {"url": "http://127.0.0.1:9/http.php"},
            # A zone of its own, so that the times in mails read the same on every machine.
            "notify": {"from_address": "fax-gateway@gateway.test", "timezone": "Europe/Paris"},
        }
        return from_mapping(deep_merge(base, table or {}), env or {})

    return factory


@pytest.fixture
async def gateway(make_settings: SettingsFactory) -> AsyncIterator[Gateway]:
    """The gateway with default test settings, started on loopback."""
    gw = Gateway(make_settings())
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()
