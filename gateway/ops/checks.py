"""``fax-gateway check-config``: is this settings file ready to run?

In: a settings file (and the secrets in the environment). Out: the effective
settings with secrets masked, then one line per check (``ok`` / ``FAIL`` and
why): the spool is writable (a real file written, fsync'd and removed), the
storage backend answers (S3: the bucket is reachable with the credentials
boto3 finds), the provider accepts the account (a request without number or
document: no fax can be sent), the relay accepts a connection (EHLO, and
STARTTLS and AUTH when set). Exit status 0 when every check passes, 1
otherwise. Nothing it prints holds a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from gateway import settings as settings_mod
from gateway.redact import redact, secrets_of
from gateway.settings import Settings


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def check_spool(settings: Settings) -> str:
    """Blocking: create the spool if needed, write and fsync a file in it, remove it."""
    root = Path(settings.spool.directory)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".check-", dir=root)
        try:
            os.write(fd, b"check-config\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
        stat = os.statvfs(root)
    except OSError as exc:
        raise OSError(f"cannot write in {root}: {exc.strerror or exc}") from None
    free = stat.f_bavail * stat.f_frsize
    if free < settings.spool.min_free_bytes:
        raise OSError(f"only {free} bytes free, below spool.min_free_bytes ({settings.spool.min_free_bytes})")
    return f"{root} is writable, {free // (1024 * 1024)} MiB free"


async def check_storage(settings: Settings) -> str:
    from gateway.delivery.storage import build_storage
    from gateway.spool import Spool
    from gateway.store import AsyncStore

    spool = Spool(settings.spool.directory)
    store = AsyncStore(spool.db_path)  # never opened: the check needs no job
    storage = build_storage(settings, store, spool)
    try:
        await storage.start()
        try:
            return await storage.check()
        finally:
            await storage.stop()
    finally:
        await store.close()


async def check_provider(settings: Settings) -> str:
    if settings.provider.simulator:
        return "provider.simulator = true: the simulator is used, no fax is sent"
    from gateway.delivery.provider import ProviderClient

    client = ProviderClient(settings)
    await client.start()
    try:
        return await client.probe()
    finally:
        await client.stop()


async def check_relay(settings: Settings) -> str:
    import aiosmtplib

    n = settings.notify
    smtp = aiosmtplib.SMTP(hostname=n.relay.host, port=n.relay.port, timeout=15, start_tls=False)
    try:
        await smtp.connect()
    except (OSError, aiosmtplib.SMTPException) as exc:
        raise OSError(f"relay {n.relay}: cannot connect ({exc})") from None
    done: list[str] = []
    try:
        await smtp.ehlo()
        done.append("EHLO")
        if n.relay_starttls:
            await smtp.starttls()
            done.append("STARTTLS")
        if n.relay_username:
            await smtp.login(n.relay_username, n.relay_password.reveal())
            done.append(f"AUTH as {n.relay_username}")
        return f"relay {n.relay} accepted {', '.join(done)}"
    except aiosmtplib.SMTPException as exc:
        after = f" after {', '.join(done)}" if done else ""
        raise OSError(f"relay {n.relay} refused{after}: {exc}") from None
    finally:
        try:
            await smtp.quit()
        except aiosmtplib.SMTPException:
            pass


async def run_checks(settings: Settings) -> list[Check]:
    async def spool() -> str:
        return await asyncio.to_thread(check_spool, settings)

    steps: list[tuple[str, Callable[[], Awaitable[str]]]] = [
        ("spool", spool),
        ("storage", lambda: check_storage(settings)),
        ("provider", lambda: check_provider(settings)),
        ("relay", lambda: check_relay(settings)),
    ]
    hidden = secrets_of(settings)
    results = []
    for name, step in steps:
        try:
            detail = await asyncio.wait_for(step(), 60)
            results.append(Check(name, True, redact(detail, hidden)))
        except Exception as exc:  # every failure is a finding to print, not a crash
            why = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            results.append(Check(name, False, redact(f"{why}", hidden)))
    return results


def _toml_lines(data: dict[str, object], prefix: str = "") -> list[str]:
    lines: list[str] = []
    for section, values in data.items():
        if not isinstance(values, dict):
            continue
        lines.append(f"[{prefix}{section}]")
        for key, value in values.items():
            if not isinstance(value, dict):
                lines.append(f"{key} = {json.dumps(value, ensure_ascii=False)}")
        for key, value in values.items():
            if isinstance(value, dict):
                lines.append(f"[{prefix}{section}.{key}]")
                lines += [f"{json.dumps(k)} = {json.dumps(v, ensure_ascii=False)}" for k, v in value.items()]
        lines.append("")
    return lines


def main(args: argparse.Namespace) -> int:
    settings = settings_mod.load(args.config)
    described = settings_mod.describe(settings)
    results = asyncio.run(run_checks(settings))
    if args.json:
        print(json.dumps({"settings": described, "checks": [r.__dict__ for r in results]}, indent=2))
    else:
        print(f"# Effective settings of {args.config} (secrets masked)")
        print("\n".join(_toml_lines(described)))
        for r in results:
            print(f"{'ok  ' if r.ok else 'FAIL'}  {r.name:<9} {r.detail}")
    return 0 if all(r.ok for r in results) else 1
