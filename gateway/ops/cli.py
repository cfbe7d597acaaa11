"""The ``fax-gateway`` command: the parser and the commands that are not about jobs.

``serve`` runs the daemon (gateway/daemon/run.py), ``demo`` the whole thing on
this machine (gateway/ops/demo.py), ``check-config`` checks a settings file and
what it points at (gateway/ops/checks.py), ``migrate-store`` moves a SQLite
site to PostgreSQL (gateway/ops/migrate.py); the job commands (``jobs``, ``show``,
``retry``, ``cancel``, ``release``, ``resolve``, ``send``) are in
gateway/ops/jobs.py. Exit statuses are one table for every command
(:data:`EXIT_STATUSES`); with ``--json`` an error is JSON on stdout too.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from gateway import settings as settings_mod
from gateway.daemon import logs
from gateway.delivery.faults import FAULT_HELP, is_fault

log = logging.getLogger("gateway")

Command = Callable[[argparse.Namespace], int]

# Exit statuses, the same for every command (``--help`` and the README show this table).
DONE, NOT_DONE, USAGE, UNREACHABLE = 0, 1, 2, 3
EXIT_STATUSES = {
    DONE: "done",
    NOT_DONE: "not done: no such job, the action does not apply to it, a check failed, or the fax was refused",
    USAGE: "usage or configuration error (the message says what to change)",
    UNREACHABLE: "the job store's PostgreSQL server cannot be reached (the message says where): try again once it is",
}
EXIT_HELP = "exit status: " + "; ".join(f"{code} {words}" for code, words in EXIT_STATUSES.items())


def _load(args: argparse.Namespace) -> settings_mod.Settings:
    return settings_mod.load(getattr(args, "config", None))


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.daemon import run as daemon

    settings = _load(args)
    daemon.require_credentials(settings)
    handler = logs.setup(settings.log, logs.secrets_of(settings))
    asyncio.run(daemon.run(settings, config=args.config, handler=handler))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.ops import demo

    return demo.main(args)


def cmd_check_config(args: argparse.Namespace) -> int:
    from gateway.ops import checks

    return checks.main(args)


def cmd_migrate_store(args: argparse.Namespace) -> int:
    from gateway.ops import migrate

    return migrate.main(args)


def cmd_simulate_provider(args: argparse.Namespace) -> int:
    from gateway.delivery import simulator

    return simulator.main(args)


def read_new_password(stdin: TextIO = sys.stdin) -> str:
    """The password to hash: asked twice without echo on a terminal, else the first line of stdin."""
    if stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            from gateway.ops.jobs import UsageError

            raise UsageError("the two passwords differ")
        return first
    return stdin.readline().rstrip("\r\n")


def cmd_hash_password(args: argparse.Namespace) -> int:
    from gateway import passwords as auth
    from gateway.ops.jobs import UsageError

    password = read_new_password()
    if not password:
        raise UsageError("empty password")
    print(auth.hash_password(password))
    return 0


def _fault(name: str) -> str:
    if not is_fault(name):
        raise argparse.ArgumentTypeError(f"unknown fault {name!r}: one of {', '.join(FAULT_HELP)}")
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fax-gateway", description="Email-to-fax gateway for 123-fax.net",
                                     epilog=EXIT_HELP)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the daemon")
    p.add_argument("--config", "-c", help="settings file (TOML)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="everything on this machine, nothing configured: no real fax is sent")
    p.add_argument("--dir", default="fax-gateway-demo", help="working directory (default ./fax-gateway-demo)")
    p.add_argument("--smtp-port", type=int, default=2525, help="SMTP port (default 2525; 0: any free port)")
    p.add_argument("--http-port", type=int, default=8025, help="HTTP port (default 8025; 0: any free port)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("check-config", help="validate settings and try the spool, storage, provider and relay")
    p.add_argument("--config", "-c", required=True, help="settings file (TOML)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser(
        "migrate-store", help="copy this site's SQLite job store into the PostgreSQL store the settings name",
        description="Copy the SQLite job store of spool.directory into the PostgreSQL database of"
        " FAX_GATEWAY_STORE_DSN (read from the environment only), and put in the S3 bucket, as cluster intake"
        " does, the mails and documents the store still needs (jobs not final, notices not sent, split mails"
        " waiting for parts). The service must be stopped; the database must be empty.",
    )  # fmt: skip
    p.add_argument("--config", "-c", required=True, help='settings file with store.backend = "postgresql" (TOML)')
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=cmd_migrate_store)

    p = sub.add_parser("hash-password", help="read a password (no echo) and print its hash for [[smtp.users]]")
    p.set_defaults(func=cmd_hash_password)

    faults = "\n".join(f"  {name:<20}{what}" for name, what in FAULT_HELP.items())
    p = sub.add_parser(
        "simulate-provider", help="run the 123-fax.net simulator (no fax is sent)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the 123-fax.net simulator: the same endpoint and answers, no fax is sent.\n\n"
        "Fault modes: --fault NAME at start, or while it runs POST /_sim/fault with\n"
        '{"fault": "NAME", "once": true} ({"fault": null} turns it off):\n' + faults,
    )  # fmt: skip
    p.add_argument("--listen", default="127.0.0.1:8080", help="host:port (port 0: any free port)")
    p.add_argument("--email", help="account e-mail (default: any)")
    p.add_argument("--password", help="account password (default: $FAX_GATEWAY_PROVIDER_PASSWORD, else any)")
    p.add_argument("--callback-url", help="receipt (AR) callback URL")
    p.add_argument("--callback-delay", type=float, default=0.05, help="seconds before the callback")
    p.add_argument("--receipt-code", default="0", help="receipt code for every fax (0: received)")
    p.add_argument("--mail-relay", help="host:port of an SMTP relay for receipt copies (accuse_email)")
    p.add_argument("--balance", type=int, help="faxes the account can pay for (default: unlimited)")
    p.add_argument("--fault", metavar="NAME", type=_fault, help="answer every request with this fault mode (above)")
    p.set_defaults(func=cmd_simulate_provider)

    from gateway.ops import jobs as commands

    commands.add_parsers(sub)
    for choice in sub.choices.values():
        choice.epilog = EXIT_HELP
    return parser


def _fail(args: argparse.Namespace, status: int, message: str) -> int:
    """Say why a command did not do its work: a line on stderr, and with ``--json`` JSON on stdout too."""
    if getattr(args, "json", False):
        print(json.dumps({"error": message, "exit_status": status}, ensure_ascii=False))
    print(f"fax-gateway: {message}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    # The job commands and the store load here, not on import: a document worker imports the
    # program's main module (multiprocessing does) and needs none of them.
    from gateway.ops import jobs as commands
    from gateway.ops.actions import AdminError
    from gateway.spool import SpoolLockedError
    from gateway.store import StoreError, StoreUnreachable

    logs.setup(settings_mod.LogSettings())
    args = build_parser().parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except settings_mod.SettingsError as exc:
        return _fail(args, USAGE, f"configuration error: {exc}")
    except commands.UsageError as exc:
        return _fail(args, USAGE, str(exc))
    except StoreUnreachable as exc:
        return _fail(args, UNREACHABLE, f"the job store cannot be reached: {exc}")
    except (AdminError, SpoolLockedError, StoreError) as exc:
        return _fail(args, NOT_DONE, str(exc))
