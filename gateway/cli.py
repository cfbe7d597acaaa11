"""The ``fax-gateway`` command: the daemon and the administrator's tools."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from . import settings as settings_mod
from .app import Gateway
from .spool import SpoolLockedError

log = logging.getLogger("gateway")

Command = Callable[[argparse.Namespace], int]


def _load(args: argparse.Namespace) -> settings_mod.Settings:
    return settings_mod.load(getattr(args, "config", None))


async def _serve(settings: settings_mod.Settings) -> None:
    gateway = Gateway(settings)
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("fax-gateway ready: SMTP on %s", settings.smtp.listen)
    try:
        await stop.wait()
    finally:
        await gateway.stop()


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _load(args)
    asyncio.run(_serve(settings))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fax-gateway", description="Email-to-fax gateway for 123-fax.net")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the daemon")
    p.add_argument("--config", "-c", help="settings file (TOML)")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except settings_mod.SettingsError as exc:
        print(f"fax-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    except SpoolLockedError as exc:
        print(f"fax-gateway: {exc}", file=sys.stderr)
        return 1
