"""``fax-gateway check-config``: is this settings file ready to run?

In: a settings file (and the secrets in the environment). Out: the effective
settings with secrets masked, each SMTP listener (address, TLS mode, oldest
TLS version, certificate), then one line per check (``ok`` / ``warn`` /
``FAIL`` and why): each TLS listener's certificate and key load (a warning for
a listener that accepts TLS older than 1.2), the settings file is readable by the service's user (the
unit runs as a dynamic user; a warning otherwise), the spool is writable (a real file written,
fsync'd and removed), the job store answers (SQLite in the spool, or the
PostgreSQL database, its connection string never shown) at a schema this
code runs, a receipt can reach the gateway (a callback secret, or
the provider's AR mails to the gateway) at a public URL the provider can
reach (not loopback; only a warning with the simulator), the storage backend
answers (S3: the bucket is reachable with the credentials boto3 finds), the
provider accepts the account (a request without number or document: no fax
can be sent), the relay accepts a connection (EHLO, and STARTTLS and AUTH
when set). Exit status 0 when every check passes (warnings included), 1
otherwise. Nothing it prints holds a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import stat
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from gateway import settings as settings_mod
from gateway.networks import parse_address
from gateway.redact import redact, secrets_of
from gateway.settings import Listener, Settings


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # ok, but worth a look (said as "warn")

    def as_json(self) -> dict[str, object]:
        data: dict[str, object] = {"name": self.name, "ok": self.ok, "detail": self.detail}
        return data | {"warning": True} if self.warning else data


class Warn(Exception):
    """A check that passes with a reservation: the message says what to look at."""


_LOOPBACK_HOSTS = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _is_loopback_url(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host in _LOOPBACK_HOSTS or host.endswith(".localhost"):
        return True
    address = parse_address(host)
    return address is not None and address.is_loopback


def check_config_file(path: str) -> str:
    """Blocking: can the service's user read the settings file? (The unit runs as a dynamic user.)

    Only a warning when it cannot: run without the unit, the gateway's own user may well read it.
    """
    file = Path(path).resolve()
    mode = file.stat().st_mode
    if not mode & stat.S_IROTH:
        raise Warn(
            f"{file} is not readable by other users (mode {stat.filemode(mode)}), so the service's dynamic user"
            f" cannot read it: chmod 0644 {file} (it holds no secrets; they come from the environment)"
        )
    for parent in file.parents:
        if not parent.stat().st_mode & stat.S_IXOTH:
            raise Warn(f"{parent} cannot be entered by other users, so the service's dynamic user cannot reach"
                       f" {file}: chmod o+x {parent}")  # fmt: skip
    return f"{file} is readable by the service's user"


def check_receipts(settings: Settings) -> str:
    """Can a receipt reach the gateway at all, and can the provider reach the URLs it is given?"""
    http, provider = settings.http, settings.provider
    by_callback, by_mail = bool(http.callback_secret), provider.accuse_email == "gateway"
    if not by_callback and not by_mail:
        raise OSError(
            "no receipt can ever reach the gateway, so every fax would stay 'submitted': set"
            " FAX_GATEWAY_CALLBACK_SECRET and give the provider <http.public_url>/receipt/<secret> as the receipt"
            ' (AR) URL, or set provider.accuse_email = "gateway" (the provider mails its receipts to the gateway)'
        )
    needs_url = by_callback or settings.storage.backend == "local"
    if needs_url and _is_loopback_url(http.public_url):
        uses = " and ".join(
            what for what, used in (("the receipt callback", by_callback),
                                    ("documents served by the gateway", settings.storage.backend == "local"))
            if used
        )  # fmt: skip
        why = (
            f"http.public_url ({http.public_url}) is a loopback address, which the provider cannot reach for {uses}:"
            " set it to the address the provider reaches (your reverse proxy)"
        )
        if provider.simulator:
            raise Warn(why + "; fine with the simulator, which runs on this machine")
        raise OSError(why)
    ways = [w for w, on in (("the callback", by_callback), ("mail to the gateway", by_mail)) if on]
    return "receipts arrive by " + " and ".join(ways)


def _can(path: Path, uid: int, gid: int, need: int) -> bool:
    """Whether ``uid``/``gid`` may do ``need`` (an ``os.W_OK | os.X_OK`` mask) to ``path``, by its mode bits."""
    st = path.stat()
    shift = 6 if st.st_uid == uid else 3 if st.st_gid == gid else 0
    return (st.st_mode >> shift) & need == need


def check_spool(settings: Settings) -> str:
    """Blocking: create the spool if needed, write and fsync a file in it, remove it.

    Run as root on a spool some other user owns (under systemd, the service's dynamic user), it also
    checks, by their modes, that this owner may write the spool and the job store and its journal: a
    file root left there (a daemon once started by hand as root) would stop the service.
    """
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
        owner = root.stat()
        stat = os.statvfs(root)
    except OSError as exc:
        raise OSError(f"cannot write in {root}: {exc.strerror or exc}") from None
    who = ""
    if os.geteuid() == 0 and owner.st_uid != 0:
        uid, gid = owner.st_uid, owner.st_gid
        who = f" as its owner (uid {uid})"
        paths = [(root, os.W_OK | os.X_OK)] + [
            (root / n, os.W_OK) for n in ("jobs.sqlite3", "jobs.sqlite3-wal", "jobs.sqlite3-shm", "messages", "tmp")
        ]  # fmt: skip
        stuck = [str(p) for p, need in paths if p.exists() and not _can(p, uid, gid, need)]
        if stuck:
            raise OSError(f"the spool's owner (uid {uid}) cannot write {', '.join(stuck)}: the files there must"
                          f" belong to it (chown -R {uid}:{gid} {root})")  # fmt: skip
    free = stat.f_bavail * stat.f_frsize
    if free < settings.spool.min_free_bytes:
        raise OSError(f"only {free} bytes free, below spool.min_free_bytes ({settings.spool.min_free_bytes})")
    return f"{root} is writable{who}, {free // (1024 * 1024)} MiB free"


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


def check_store(settings: Settings) -> str:
    """Blocking: does the job store answer, at a schema this code runs? Nothing is created or migrated.

    SQLite: the file in the spool (none yet is fine: the daemon creates it). PostgreSQL: a connection to
    the database of FAX_GATEWAY_STORE_DSN, whose text (and password) no line shows.
    """
    from gateway.spool import Spool
    from gateway.store import location
    from gateway.store.copy import describe

    return describe(location(settings.store, Spool(settings.spool.directory).db_path))


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


def listener_lines(settings: Settings) -> list[str]:
    """Each SMTP listener in one line: name, address, TLS mode, oldest TLS version, certificate."""
    from gateway.smtp import tls

    lines = [tls.describe(li) for li in settings.smtp.effective_listeners()]
    if settings.smtp.listeners and settings.smtp.listen != settings_mod.SmtpSettings().listen:
        lines.append(f"(smtp.listen = {settings.smtp.listen} is not used: [[smtp.listeners]] are given)")
    return lines


def check_listener_tls(listener: Listener) -> str:
    """Blocking: does this listener's certificate and key load, as the server loads them?"""
    import ssl

    from gateway.smtp import tls

    try:
        context = tls.server_context(listener)
    except (OSError, ssl.SSLError) as exc:
        raise OSError(f"{listener.tls_cert} / {listener.tls_key} do not load: {exc}") from None
    del context
    detail = f"{listener.listen} ({listener.tls}): certificate {listener.tls_cert} loads"
    if listener.legacy_tls:
        raise Warn(f"{detail}; {tls.legacy_warning(listener)}")
    return detail


async def run_checks(settings: Settings, config: str | None = None) -> list[Check]:
    async def spool() -> str:
        return await asyncio.to_thread(check_spool, settings)

    async def receipts() -> str:
        return check_receipts(settings)

    steps: list[tuple[str, Callable[[], Awaitable[str]]]] = []
    if config is not None:
        steps.append(("config", lambda: asyncio.to_thread(check_config_file, config)))
    def tls_check(listener: Listener) -> Callable[[], Awaitable[str]]:
        return lambda: asyncio.to_thread(check_listener_tls, listener)

    steps += [(f"tls {li.name}", tls_check(li)) for li in settings.smtp.effective_listeners() if li.tls != "none"]
    steps += [
        ("spool", spool),
        ("store", lambda: asyncio.to_thread(check_store, settings)),
        ("receipts", receipts),
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
        except Warn as exc:
            results.append(Check(name, True, redact(str(exc), hidden), warning=True))
        except Exception as exc:  # every failure is a finding to print, not a crash
            why = getattr(exc, "reason", None) or str(exc) or "an unexpected error"
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
    results = asyncio.run(run_checks(settings, args.config))
    listeners = listener_lines(settings)
    if args.json:
        report = {"settings": described, "listeners": listeners, "checks": [r.as_json() for r in results]}
        print(json.dumps(report, indent=2))
    else:
        print(f"# Effective settings of {args.config} (secrets masked)")
        print("\n".join(_toml_lines(described)))
        print("# SMTP listeners")
        print("\n".join(f"listener  {line}" for line in listeners))
        print()
        for r in results:
            print(f"{'FAIL' if not r.ok else 'warn' if r.warning else 'ok  '}  {r.name:<9} {r.detail}")
    return 0 if all(r.ok for r in results) else 1
