"""Running the daemon: readiness, signals and live reload around :class:`Gateway`.

In: validated settings (and the file they came from, for SIGHUP). Out: a
gateway that runs until SIGTERM or SIGINT, then stops in order (SMTP stops
accepting first; sessions and in-flight submissions finish within their
bounds) and returns, so the process exits 0.

- Readiness: once SMTP and HTTP listen, ``READY=1`` goes to ``$NOTIFY_SOCKET``
  (systemd ``Type=notify``); ``STOPPING=1`` when a stop begins.
- SIGHUP: the file is read again; the log settings (format, level) apply at
  once, and every SMTP listener reads its TLS certificate and key again (a
  renewed certificate at the same path); any other change is logged as
  needing a restart. A file that no longer
  validates is logged and ignored: the daemon keeps its settings.
- ``provider.simulator = true``: the provider simulator runs in-process and
  every submission goes to it. No fax is sent, and the log says so loudly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import secrets
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway import settings as settings_mod
from gateway.daemon.app import Gateway
from gateway.daemon.logs import LogHandler, secrets_of
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.delivery.simulator import ProviderSimulator

log = logging.getLogger("gateway.daemon")

SIMULATOR_BANNER = "PROVIDER SIMULATOR IN USE: NO REAL FAX IS SENT (provider.simulator = true)"


class CredentialsMissing(settings_mod.SettingsError):
    pass


def require_credentials(settings: Settings) -> None:
    """Refuse to run against the real provider without an account: nobody may think a fax went out."""
    if settings.provider.simulator:
        return
    missing = [
        what
        for what, ok in (
            ("provider.email", bool(settings.provider.email)),
            ("FAX_GATEWAY_PROVIDER_PASSWORD (environment)", bool(settings.provider.password)),
        )
        if not ok
    ]
    if missing:
        raise CredentialsMissing(
            f"provider.email: the provider account is not configured ({' and '.join(missing)} missing);"
            " set them, or set provider.simulator = true to run with the simulator (no fax is sent)"
        )


def sd_notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``state`` to systemd's notification socket, if there is one (blocking, tiny)."""
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError as exc:
            log.warning("cannot notify systemd (%s): %s", state, exc)
            return False
    return True


def restart_needed(old: Settings, new: Settings) -> list[str]:
    """The sections whose change only takes effect on restart."""
    names = [f.name for f in dataclasses.fields(Settings) if f.name != "log"]
    return [name for name in names if getattr(old, name) != getattr(new, name)]


def reload(
    config: str | None, current: Settings, handler: LogHandler | None, secrets_in_use: list[str] | None = None
) -> Settings:
    """SIGHUP: re-read the file; apply what can change live; return ``current`` with those changes.

    ``current`` is what was read from the file at start (the daemon's own
    additions, such as the simulator's address, are not compared).
    """
    try:
        new = settings_mod.load(config)
    except settings_mod.SettingsError as exc:
        log.error("SIGHUP: %s; keeping the running settings", exc)
        return current
    if handler is not None:
        handler.apply(new.log, sorted(set(secrets_of(new)) | set(secrets_in_use or [])))
    pending = restart_needed(current, new)
    if pending:
        log.warning("SIGHUP: log settings applied; changes in [%s] need a restart", "], [".join(pending))
    else:
        log.info("SIGHUP: settings re-read; log settings applied")
    return dataclasses.replace(current, log=new.log)


async def run(
    settings: Settings,
    *,
    config: str | None = None,
    handler: LogHandler | None = None,
    on_ready: Callable[[Gateway], None] | None = None,
) -> None:
    """Run the gateway until SIGTERM/SIGINT; return after an orderly stop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    from_file = settings
    simulator = None
    if settings.provider.simulator:
        simulator, settings = await start_simulator(settings)
        if handler is not None:  # the simulator's made-up secrets are masked too
            handler.apply(settings.log, secrets_of(settings))
    gateway = Gateway(settings)
    try:
        await gateway.start()
    except BaseException:
        if simulator is not None:
            await simulator.stop()
        raise
    if simulator is not None:
        simulator.callback_url = callback_url(settings, gateway.http.port)
    settle_memory()

    def on_hup() -> None:
        nonlocal from_file
        from_file = reload(config, from_file, handler, secrets_of(settings))
        gateway.smtp.reload_certificates()  # a renewed certificate at the same path: the next handshake has it

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        listening = ", ".join(f"{li.listen.host} port {gateway.smtp.port_of(li.name)} ({li.name})"
                              for li in settings.smtp.effective_listeners())  # fmt: skip
        log.info("fax-gateway ready: SMTP on %s, HTTP on %s port %s", listening, settings.http.listen.host,
                 gateway.http.port)  # fmt: skip
        if simulator is not None:
            log.warning(SIMULATOR_BANNER)
        if on_ready is not None:
            on_ready(gateway)
        await asyncio.to_thread(sd_notify, "READY=1")
        await stop.wait()
        log.info("stopping: no new mail is accepted; finishing sessions and submissions in flight")
        await asyncio.to_thread(sd_notify, "STOPPING=1")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await gateway.stop()
        if simulator is not None:
            await simulator.stop()
        log.info("fax-gateway stopped")


def settle_memory() -> None:
    """Keep what start-up made out of the garbage collector's full passes.

    Modules, botocore's service models and the settings live as long as the
    process; a full collection would walk all of them each time, stopping the
    event loop for 100-150 ms under load (``benchmarks/``: the loop-lag row).
    """
    gc.collect()
    gc.freeze()


def callback_url(settings: Settings, http_port: int) -> str:
    """The receipt callback on this machine's loopback (for the in-process simulator)."""
    host = settings.http.listen.host
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{http_port}/receipt/{settings.http.callback_secret.reveal()}"


async def start_simulator(settings: Settings) -> tuple[ProviderSimulator, Settings]:
    """Start the provider simulator in-process; return it and settings that point the gateway at it.

    The simulator gets the gateway's account details (made up when none are
    set) and a callback secret; :func:`callback_url` tells it where the
    receipts go once the HTTP listener's port is known.
    """
    from gateway.delivery.simulator import ProviderSimulator

    email = settings.provider.email or "simulator@fax-gateway.invalid"
    password = settings.provider.password or settings_mod.Secret(secrets.token_urlsafe(12))
    sim = ProviderSimulator(email=email, password=password.reveal(), mail_relay=None)
    await sim.start()
    provider = dataclasses.replace(settings.provider, url=sim.url, email=email, password=password)
    http = settings.http
    if not http.callback_secret:
        http = dataclasses.replace(http, callback_secret=settings_mod.Secret(secrets.token_urlsafe(16)))
    return sim, dataclasses.replace(settings, provider=provider, http=http)
