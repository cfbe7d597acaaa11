"""The administrator's job commands: jobs, show, retry, cancel, release, resolve, send.

In: the command line (``--spool DIR`` or ``--config FILE`` to find the job
store: the SQLite file in the spool, or the PostgreSQL database the settings
name). Out: a table that fits the terminal, or ``--json`` for scripts; exit
status 0 when done, 1 when the action does not apply (the message says why).
The actions themselves are :mod:`gateway.ops.actions`, on the daemon's own
store; they are safe while the daemon (or, on PostgreSQL, every gateway) runs.

``send`` faxes a file without a mail: the daemon's own intake code judges
it (number and destination policy, quotas, document checks) and spools it
durably in the job store, with the job id in the reply; the daemon's worker
takes it up at its next pass (``delivery.poll_seconds``), or at its start if
it is not running. Run as root, it gives what it writes to the spool's owner.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import mimetypes
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import phonenumbers

from gateway import settings as settings_mod
from gateway.ops import actions as admin
from gateway.replies import Answer
from gateway.spool import Spool
from gateway.store import AsyncStore, Job, Location, Store, location
from gateway.text import display

DEFAULT_CONFIG = "/etc/fax-gateway/fax-gateway.toml"
# Where `fax-gateway demo` keeps its spool, from the directory it was run in.
DEMO_SPOOL = "fax-gateway-demo/spool"
_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class UsageError(Exception):
    """Bad arguments: the message says what to change."""


def _config_of(args: argparse.Namespace) -> str | None:
    config = getattr(args, "config", None)
    if config is None and os.path.exists(DEFAULT_CONFIG):
        return DEFAULT_CONFIG
    return str(config) if config is not None else None


def spool_dir(args: argparse.Namespace) -> str:
    """``--spool``, else the spool of ``--config`` (or of the default settings file), else the demo's here."""
    if getattr(args, "spool", None):
        return str(args.spool)
    config = _config_of(args)
    if config is not None:
        return settings_mod.load(config).spool.directory
    demo = Path(DEMO_SPOOL)
    if (demo / "jobs.sqlite3").exists():  # `fax-gateway demo` was run in this directory
        return str(demo)
    raise UsageError(f"say where the spool is: --spool DIR or --config FILE (no {DEFAULT_CONFIG}, no ./{DEMO_SPOOL})")


def number_filter(text: str, region: str) -> str:
    """What ``jobs --number`` looks for: a whole number in any spelling RCPT takes, as it is stored (E.164).

    ``01 45 67 89 03``, ``01.45.67.89.03``, ``+33145678903`` and ``0033145678903``
    all find the same jobs; anything that is not a whole number (``+3314567``,
    ``0999``) is looked for as digits within the stored number.
    """
    spelled = re.sub(r"[\s.\-()]", "", text)
    if spelled.startswith("00"):
        spelled = "+" + spelled[2:]
    try:
        parsed = phonenumbers.parse(spelled, region)
    except phonenumbers.NumberParseException:
        return spelled
    if not phonenumbers.is_valid_number(parsed):
        return spelled
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def _region(args: argparse.Namespace) -> str:
    config = None if getattr(args, "spool", None) else _config_of(args)
    return (settings_mod.load(config) if config else settings_mod.Settings()).numbers.default_region


def store_of(args: argparse.Namespace) -> Location:
    """The job store the command acts on: the SQLite file of ``--spool``, else the store ``--config`` names.

    With ``store.backend = "postgresql"`` in the settings, that is the database of
    ``FAX_GATEWAY_STORE_DSN`` (from the environment), which every gateway shares.
    """
    config = None if getattr(args, "spool", None) else _config_of(args)
    if config is not None:
        settings = settings_mod.load(config)
        if settings.store.backend == "postgresql":
            return location(settings.store, Spool(settings.spool.directory).db_path)
    spool = Spool(spool_dir(args))
    if not spool.db_path.exists():
        raise UsageError(f"no job store at {spool.db_path}: is the spool directory right?")
    return spool.db_path


@contextmanager
def open_store(args: argparse.Namespace) -> Iterator[Store]:
    store = Store(store_of(args))
    try:
        yield store
    finally:
        store.close()


def parse_since(text: str, now: float) -> float:
    """``2h``, ``3d``, ``45m`` ago, or an ISO date/time (local time)."""
    if m := _DURATION.match(text.strip()):
        return now - int(m[1]) * _UNITS[m[2]]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise UsageError(f"--since: {text!r} is neither a duration like 2h or 3d nor a date like 2026-01-31") from None


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _fit(value: object, width: int) -> str:
    text = str(value).replace("\n", " ")
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def job_table(jobs: Sequence[Job], width: int | None = None) -> str:
    """Jobs as a table no wider than ``width`` (the terminal's); the sender goes first when space is short."""
    width = width or shutil.get_terminal_size((120, 24)).columns
    cols: list[tuple[str, int, Callable[[Job], object]]] = [
        ("JOB", 16, lambda j: j.id),
        ("STATE", 11, lambda j: j.state),
        ("NUMBER", 13, lambda j: j.number),
        ("CREATED", 11, lambda j: datetime.fromtimestamp(j.created_at).strftime("%m-%d %H:%M")),
        ("TRIES", 5, lambda j: j.attempts),
    ]
    remaining = width - sum(w + 2 for _, w, _ in cols)
    if remaining >= 40:
        sender_w = min(30, remaining // 2 - 1)
        cols.append(("SENDER", sender_w, lambda j: j.envelope_from))
        remaining -= sender_w + 2
    cols.append(("REASON", max(10, remaining), lambda j: j.reason))
    lines = ["  ".join(name.ljust(w) for name, w, _ in cols).rstrip()]
    for j in jobs:
        lines.append("  ".join(_fit(get(j), w).ljust(w) for _, w, get in cols).rstrip())
    return "\n".join(lines)


def _print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def _print_job(job: Job, args: argparse.Namespace, what: str) -> None:
    if args.json:
        _print_json(admin.job_dict(job))
    else:
        print(f"{what}: job {job.id} is now {job.state}")


def cmd_jobs(args: argparse.Namespace) -> int:
    states = [s for item in args.state or [] for s in item.split(",") if s]
    since = parse_since(args.since, time.time()) if args.since else None
    with open_store(args) as store:
        admin.check_states(states)
        number = number_filter(args.number, _region(args)) if args.number else None
        jobs = store.list_jobs(states=states, since=since, number=number, sender=args.sender, limit=args.limit)
        counts = admin.summary(store)
    if args.json:
        _print_json([admin.job_dict(j) for j in jobs])
        return 0
    print(job_table(jobs))
    print(f"{len(jobs)} shown; in the store: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    return 0


def upload_line(msg: dict[str, Any]) -> str:
    """Where the document was stored for the provider to fetch, and whether it is gone since."""
    if not msg.get("upload_key"):
        return "not uploaded yet"
    if not msg.get("uploaded_at"):
        return f"{msg['upload_key']} (upload not finished)"
    line = f"{msg['upload_key']} stored {when(msg['uploaded_at'])}"
    if msg.get("object_deleted_at"):
        line += f", removed {when(msg['object_deleted_at'])}"
    return line


def render_show(info: dict[str, Any]) -> str:
    job, msg = info["job"], info["message"]
    out = [f"Job {job['id']}: {job['state']}" + (f" ({job['reason']})" if job["reason"] else "")]
    fields = [
        ("number", job["number"]),
        ("created", when(job["created_at"])),
        ("attempts", job["attempts"]),
        ("provider ref", job["provider_ref"] or "-"),
        ("submitted", when(job["submitted_at"])),
        ("final", when(job["final_at"])),
        ("receipt code", job["receipt_code"] or "-"),
        ("pages sent", job["pages_sent"]),
        ("message", job["message_id"]),
        ("envelope from", msg.get("envelope_from", "")),
        ("From", display(msg.get("header_from", ""))),
        ("Reply-To", display(msg.get("reply_to", ""))),
        ("Subject", display(msg.get("subject", ""))),
        ("Message-ID", msg.get("message_id_header", "")),
        ("client", msg.get("client_addr", "") + (f" (user {msg['auth_user']})" if msg.get("auth_user") else "")),
        ("document", f"{msg.get('doc_type', '')}, {msg.get('doc_pages', 0)} pages, {msg.get('doc_bytes', 0)} bytes"),
        ("upload", upload_line(msg)),
    ]
    if info["siblings"]:
        fields.append(("same message", ", ".join(info["siblings"])))
    for doc in msg.get("documents") or []:
        fields.append(("  part", ", ".join(f"{k}={v}" for k, v in doc.items())))
    for doc in msg.get("skipped") or []:
        fields.append(("  skipped", ", ".join(f"{k}={v}" for k, v in doc.items())))
    out += [f"  {k:<14}{v}" for k, v in fields if str(v).strip()]
    out.append("Timeline")
    out += [f"  {when(e['at'])}  {e['kind']:<24} {e['detail']}".rstrip() for e in info["timeline"]] or ["  (none)"]
    out.append("Receipts")
    out += [
        f"  {when(r['received_at'])}  code {r['etat_e']} via {r['source']}, {r['nb_page']} pages at {r['heure']}"
        for r in info["receipts"]
    ] or ["  (none)"]
    out.append("Notifications")
    out += [
        f"  {when(n['created_at'])}  {n['kind']:<12} to {n['recipient'] or '-'}: {n['state']}"
        + (f", sent {when(n['sent_at'])}" if n["sent_at"] else "")
        + (f", last error: {n['last_error']}" if n["last_error"] else "")
        for n in info["notifications"]
    ] or ["  (none)"]
    return "\n".join(out)


def cmd_show(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        info = admin.show(store, args.job)
    if args.json:
        _print_json(info)
    else:
        print(render_show(info))
    return 0


def _single(action: Callable[[Store, str], Job], what: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with open_store(args) as store:
            job = action(store, args.job)
        _print_job(job, args, what)
        return 0

    return run


def cmd_release(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        jobs = admin.release(store, args.jobs)
    if args.json:
        _print_json([admin.job_dict(j) for j in jobs])
    else:
        print(f"released {len(jobs)} held job(s)" + (": " + ", ".join(j.id for j in jobs) if jobs else ""))
    return 0


def cmd_resolve(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        job = admin.resolve(store, args.job, sent=args.sent)
    _print_job(job, args, "resolved")
    return 0


def build_mail(sender: str, rcpt: str, path: Path, subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = rcpt
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain="fax-gateway.send")
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(f"Sent with 'fax-gateway send': {path.name}\n")
    ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    maintype, subtype = ctype.split("/", 1)
    msg.add_attachment(path.read_bytes(), maintype=maintype, subtype=subtype, filename=path.name)
    return msg


class OwnedSpool(Spool):
    """The spool as root writes in it for the daemon's user: each message is given to the spool's owner.

    The chown comes before the job rows are committed, so the daemon never
    sees a job whose files it cannot read (they are 0640, in 0750 directories).
    """

    def write(self, message_id: str, files: Mapping[str, bytes]) -> Path:
        final = super().write(message_id, files)
        owner = self.root.stat()
        if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (0, 0):
            for path in (final, *final.iterdir()):
                os.chown(path, owner.st_uid, owner.st_gid)
        return final


async def spool_local(settings: settings_mod.Settings, sender: str, rcpt: str, raw: bytes) -> Answer:
    """Hand one message to the daemon's own intake code on this machine; its answer (``jobs``: the job ids)."""
    from gateway.documents.examiner import Examiner
    from gateway.smtp.access import AuthThrottle
    from gateway.smtp.intake import Handler

    spool = OwnedSpool(settings.spool.directory)
    store = AsyncStore(location(settings.store, spool.db_path))
    await store.open()
    try:
        # One message: examined in a thread of this command, no worker processes.
        handler = Handler(settings, store, spool, on_spooled=lambda: None, clock=time.time,
                          throttle=AuthThrottle(0, 0.0, time.time),
                          examiner=Examiner(settings.documents, processes=0))  # fmt: skip
        return await handler.take_local(sender, rcpt, raw)
    finally:
        await store.close()


def cmd_send(args: argparse.Namespace) -> int:
    config = args.config if args.config else (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    settings = settings_mod.load(config)
    sender = args.sender or settings.notify.admin_address
    if not sender:
        raise UsageError("--from: say who gets the receipt (no notify.admin_address to default to)")
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{args.file}: no such file")
    spool = Spool(settings.spool.directory)
    if settings.store.backend == "sqlite" and not spool.db_path.exists():
        raise UsageError(f"no job store at {spool.db_path}: is the spool directory right? (serve creates it)")
    # Spaces cannot be in an address; the rest of the number is the intake's to judge.
    rcpt = f"{''.join(args.to.split())}@{settings.smtp.fax_domains[0]}"
    raw = build_mail(sender, rcpt, path, args.subject or f"Fax of {path.name}").as_bytes()
    if not args.verbose:  # the intake's log lines are for the daemon's journal; the reply says it all here
        logging.getLogger("gateway").setLevel(logging.WARNING)
    answer = asyncio.run(spool_local(settings, sender, rcpt, raw))
    reply, jobs = str(answer), list(answer.jobs)
    if not jobs:  # said once, by the error (with --json, as JSON too)
        raise admin.AdminError(f"the gateway refused the fax: {reply}")
    if args.json:
        _print_json({"reply": reply, "jobs": jobs})
    else:
        print(reply)
    return 0


def store_options(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--spool", metavar="DIR", help="the spool directory (holds jobs.sqlite3)")
    where.add_argument(
        "--config", "-c", metavar="FILE", help=f"settings file naming the store (default {DEFAULT_CONFIG})"
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def add_parsers(sub: Any) -> None:
    """Register the job commands on the ``fax-gateway`` parser's subparsers."""
    p = sub.add_parser("jobs", help="list jobs (newest first)")
    store_options(p)
    p.add_argument("--state", action="append", help="only these states (repeat, or comma-separated)")
    p.add_argument("--since", help="created since: 2h, 3d, or a date like 2026-01-31")
    p.add_argument("--number", help="fax number contains")
    p.add_argument("--sender", help="envelope sender contains")
    p.add_argument("--limit", type=int, default=200)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("show", help="one job's whole story: message, timeline, receipts, notices")
    store_options(p)
    p.add_argument("job")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("retry", help="queue a failed, held, deferred or quarantined job again now")
    store_options(p)
    p.add_argument("job")
    p.set_defaults(func=_single(admin.retry, "retried"))

    p = sub.add_parser("cancel", help="give up on a job the provider does not have; the sender is told")
    store_options(p)
    p.add_argument("job")
    p.set_defaults(func=_single(admin.cancel, "cancelled"))

    p = sub.add_parser("release", help="queue held jobs again after a configuration or credit fix")
    store_options(p)
    p.add_argument("jobs", nargs="*", metavar="JOB", help="only these jobs (default: every held job)")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("resolve", help="settle an ambiguous job from the provider's records")
    store_options(p)
    p.add_argument("job")
    choice = p.add_mutually_exclusive_group(required=True)
    choice.add_argument("--sent", dest="sent", action="store_true", help="the provider's account shows it was sent")
    choice.add_argument("--not-sent", dest="sent", action="store_false", help="it was not: submit it once more")
    p.set_defaults(func=cmd_resolve)

    p = sub.add_parser("send", help="fax a file without mail, through the daemon's own intake checks and spool")
    p.add_argument("--config", "-c", metavar="FILE", help=f"the daemon's settings file (default {DEFAULT_CONFIG})")
    p.add_argument("--to", required=True, metavar="NUMBER", help="the fax number, as in <number>@fax-domain")
    p.add_argument(
        "--from", dest="sender", metavar="ADDRESS", help="who gets the receipt (default notify.admin_address)"
    )
    p.add_argument("--subject", help="the subject, shown in the receipt")
    p.add_argument("-v", "--verbose", action="store_true", help="also print the intake's log lines")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("file")
    p.set_defaults(func=cmd_send)
