"""Log lines: plain or JSON, one per event, the job id carried, every secret redacted."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from gateway.daemon import logs
from gateway.settings import LogSettings, from_mapping

PASSWORD = "Pw+Canary&7=x%"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    root = logging.getLogger()
    level = root.level
    try:
        yield out
    finally:
        for h in [h for h in root.handlers if isinstance(h, logs.LogHandler)]:
            root.removeHandler(h)
        root.setLevel(level)


def _secrets() -> list[str]:
    env = {"FAX_GATEWAY_PROVIDER_PASSWORD": PASSWORD, "FAX_GATEWAY_CALLBACK_SECRET": "cb-Secret-99"}
    settings = from_mapping({}, env)
    return logs.secrets_of(settings)


def test_json_lines_carry_the_job_id(stream: io.StringIO) -> None:
    logs.setup(LogSettings(format="json", level="info"), _secrets(), stream)
    log = logging.getLogger("gateway.worker")
    log.info("job %s: submitted", "abc123", extra={"job_id": "abc123"})
    log.debug("not shown at info")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["job_id"] == "abc123" and entry["message"] == "job abc123: submitted"
    assert entry["level"] == "info" and entry["logger"] == "gateway.worker" and entry["time"].endswith("Z")


def test_plain_lines(stream: io.StringIO) -> None:
    logs.setup(LogSettings(format="plain", level="debug"), (), stream)
    logging.getLogger("gateway.smtp").debug("session %s: EHLO", "s1")
    assert stream.getvalue().rstrip().endswith("DEBUG gateway.smtp: session s1: EHLO")


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_secrets_are_redacted_everywhere(stream: io.StringIO, fmt: str) -> None:
    from urllib.parse import quote

    logs.setup(LogSettings(format=fmt), _secrets(), stream)  # type: ignore[arg-type]
    log = logging.getLogger("gateway.provider")
    url = f"https://www.123-fax.net/http.php?email=a%40b.fr&pass={quote(PASSWORD, safe='')}&fax=0145678900"
    log.warning("request failed: %s", url)
    log.warning("callback at /receipt/cb-Secret-99 refused")
    log.warning("document https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F2026&X-Amz-Signature=deadbeef01&x=1")
    log.warning("sigv2 https://b.s3.amazonaws.com/k?AWSAccessKeyId=AKIA&Signature=c2lnbmF0dXJl&Expires=1")
    try:
        raise ConnectionError(f"Cannot connect to {url}")
    except ConnectionError:
        log.exception("with a traceback")
    out = stream.getvalue()
    for leaked in (PASSWORD, quote(PASSWORD, safe=""), "cb-Secret-99", "deadbeef01", "AKIA%2F2026", "c2lnbmF0dXJl"):
        assert leaked not in out, leaked
    assert "pass=********" in out and "X-Amz-Signature=********" in out and "fax=0145678900" in out


def test_apply_changes_format_and_level_live(stream: io.StringIO) -> None:
    handler = logs.setup(LogSettings(format="plain", level="warning"), (), stream)
    log = logging.getLogger("gateway.daemon")
    log.info("hidden")
    handler.apply(LogSettings(format="json", level="info"), ())
    log.info("shown")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["message"] == "shown"


def test_setup_twice_keeps_one_handler(stream: io.StringIO) -> None:
    logs.setup(LogSettings(), (), stream)
    logs.setup(LogSettings(), (), stream)
    assert sum(isinstance(h, logs.LogHandler) for h in logging.getLogger().handlers) == 1
