"""Logging: one line per event on stderr (journald), plain or JSON, secrets redacted.

In: records from every ``gateway.*`` logger; a job's records carry its id in
the text and in ``extra={"job_id": ...}``. Out: one line per record on the
stream, as ``plain`` text or a ``json`` object (a setting). Every line passes
through :func:`redact`: the configured secrets (provider password, callback
secret, relay password) and the values of ``pass=``, ``X-Amz-Signature=``,
``X-Amz-Credential=`` and ``Signature=`` never reach the log, whoever wrote
the line (aiohttp puts whole request URLs in its exception texts).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import TextIO

from gateway.redact import redact, secrets_of
from gateway.settings import LogSettings

__all__ = ["JsonFormatter", "LogHandler", "PlainFormatter", "redact", "secrets_of", "setup"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _Redacting(logging.Formatter):
    def __init__(self, fmt: str | None, secrets: Iterable[str]) -> None:
        super().__init__(fmt)
        self.secrets = list(secrets)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.secrets).replace("\n", "\n ")


class PlainFormatter(_Redacting):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", secrets)


class JsonFormatter(_Redacting):
    """One JSON object per line: time, level, logger, message, job_id (when known), exception."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(None, secrets)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage(), self.secrets),
        }
        job_id = getattr(record, "job_id", None)
        if job_id:
            entry["job_id"] = str(job_id)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info), self.secrets)
        return json.dumps(entry, ensure_ascii=False)


class LogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The gateway's one handler; :meth:`apply` changes format, level and secrets live (SIGHUP)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream if stream is not None else sys.stderr)

    def apply(self, log: LogSettings, secrets: Iterable[str]) -> None:
        self.setFormatter(JsonFormatter(secrets) if log.format == "json" else PlainFormatter(secrets))
        logging.getLogger().setLevel(_LEVELS[log.level])


def setup(log: LogSettings, secrets: Iterable[str] = (), stream: TextIO | None = None) -> LogHandler:
    """Install the one root handler (replacing any earlier one) and return it."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, LogHandler)]:
        root.removeHandler(old)
    handler = LogHandler(stream)
    handler.apply(log, secrets)
    root.addHandler(handler)
    # Libraries log at their own levels; keep their chatter out of info.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "mail.log", "pikepdf"):
        logging.getLogger(noisy).setLevel(max(_LEVELS[log.level], logging.WARNING))
    return handler
