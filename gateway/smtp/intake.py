"""SMTP intake decisions: the aiosmtpd handler hooks behind :mod:`gateway.smtp.server`.

In: one SMTP transaction (client, sender, recipients, message). Out: a
message spooled durably with one job per distinct fax number, or the reply
that says what to change. Nothing here talks to the provider; in a cluster
(the PostgreSQL store) the spool is the shared S3 bucket
(:class:`~gateway.spool.ObjectSpool`): the mail and its fax document are put
there before the commit, the document recorded as stored.

- MAIL: 550 5.7.1 null sender or fax-domain sender; 530 5.7.0 / 550 5.7.1
  client not allowed; 550 5.7.1 sender not on the allow-list; 452 4.3.1 low
  spool space; 555 5.5.4 SMTPUTF8.
- RCPT: see :mod:`gateway.smtp.recipients`; 452 4.5.3 too many recipients or
  fax and receipt addresses mixed; 450 4.7.1 hourly quotas (counted in faxes).
- DATA: 552 5.3.4 too big; the documents stage's refusal (examined by
  :mod:`gateway.documents.examiner`); 451 4.3.0 when anything fails before the
  job rows are committed (the spooled files are removed), also when the
  process examining the message dies; STORE_UNAVAILABLE when the PostgreSQL
  store cannot be reached, STORAGE_UNAVAILABLE when the cluster's bucket
  cannot; 451 4.3.0 EXAMINE_BUSY when no document
  worker is free within ``documents.queue_seconds``; else ``250 2.0.0 OK: queued as <job
  ids>`` (the answer also carries the ids, ``Answer.jobs``), also for a resent
  message (same sender, Message-ID and number within the dedupe window; a
  resend that arrives while the first copy is still being spooled waits for it,
  and one committed at the same time by another gateway sharing the store gets
  the first copy's job: the key is unique in the store). The hourly quotas are
  counted again in the transaction that adds the jobs, under a lock per sender
  (PostgreSQL), so gateways taking mail at once never pass them together: 450
  4.7.1 at DATA when they would.
- AUTH: 454 4.7.0 while an address is backing off after failed attempts.

Every hook returns an :class:`~gateway.replies.Answer` (EHLO and HELO: a
:class:`~gateway.replies.Hello`), which aiosmtpd hands to the server's
``push`` unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from aiosmtpd.smtp import MISSING, Envelope

from gateway import replies
from gateway.documents import outcomes, partial
from gateway.documents.examiner import Busy, Examiner
from gateway.documents.headers import Headers, read_headers
from gateway.replies import Answer, Hello
from gateway.settings import Network, Settings, User
from gateway.smtp.access import AuthThrottle, sender_allowed
from gateway.smtp.recipients import Domains, FaxRecipient, ReceiptRecipient, classify
from gateway.spool import FAX_NAME, RAW_NAME, Spool, StorageUnavailable
from gateway.store import (
    AsyncStore,
    NewMessage,
    NewPart,
    Part,
    PartTaken,
    Quota,
    QuotaReached,
    Store,
    new_id,
    unreachable_errors,
)
from gateway.text import clean

log = logging.getLogger("gateway.smtp")
T = TypeVar("T")

ReceiptCallback = Callable[[str, bytes], Awaitable[None]]
# Run in the transaction that commits a message or its refusal (a split mail's set marked finished).
Settle = Callable[[Store], object]
QUOTA_WINDOW_SECONDS = 3600.0
# A sender we can write back to: local@domain, no spaces, brackets or quotes.
_SENDER = re.compile(r"[^@\s<>\"]+@[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?")


@dataclass
class Connection:
    """What intake knows of one client connection."""

    id: str
    ip: str = ""
    network: Network | None = None
    user: User | None = None
    # Whether AUTH can be used on this connection (TLS, or a network that allows plaintext AUTH).
    tls_possible: bool = False
    listener: str = ""  # its name
    tls: bool = False  # encrypted now (implicit TLS, or after STARTTLS)


class FaxEnvelope(Envelope):
    """aiosmtpd's envelope plus what RCPT decided."""

    def __init__(self) -> None:
        super().__init__()
        self.sender_given = False
        # Why fax recipients are refused for this sender (None: they are not);
        # kept for RCPT when receipt mail from anyone must still get in.
        self.sender_refusal: Answer | None = None
        self.numbers: list[str] = []
        self.receipt_jobs: list[str] = []


def dedupe_key(sender: str, message_id: str, number: str) -> str:
    return hashlib.sha256(f"{sender.lower()}\0{message_id}\0{number}".encode("utf-8", "surrogateescape")).hexdigest()


class Handler:
    def __init__(
        self,
        settings: Settings,
        store: AsyncStore,
        spool: Spool,
        *,
        on_spooled: Callable[[], None],
        clock: Callable[[], float],
        throttle: AuthThrottle | None = None,
        on_receipt_mail: ReceiptCallback | None = None,
        examiner: Examiner | None = None,
    ) -> None:
        self.settings = settings
        # Where messages are examined (documents.processes); whoever runs the
        # handler starts and stops it (the daemon: gateway.daemon.app).
        self.examiner = examiner if examiner is not None else Examiner(settings.documents)
        self.store = store
        self.spool = spool
        self.on_spooled = on_spooled
        self.clock = clock
        smtp = settings.smtp
        # Failed AUTH per client address: the server counts them, MAIL and AUTH look them up.
        self.throttle = throttle or AuthThrottle(smtp.auth_failures_before_backoff, smtp.auth_backoff_seconds, clock)
        self.on_receipt_mail = on_receipt_mail
        self.receipt_mode = settings.provider.accuse_email == "gateway" and on_receipt_mail is not None
        receipts_domain = settings.provider.receipts_domain if self.receipt_mode else ""
        self.domains = Domains(settings.smtp.fax_domains, receipts_domain)
        self.own_domains = {d.lower() for d in settings.smtp.fax_domains} | {settings.provider.receipts_domain.lower()}
        # Messages being spooled: they finish even if their client goes away.
        self.inflight: set[asyncio.Task[Answer]] = set()
        # Dedupe keys being spooled -> (session, set when done): a resend waits for them.
        self._spooling: dict[str, tuple[str, asyncio.Event]] = {}
        # Split mails are put together, or refused, one set at a time.
        self._sets_lock = asyncio.Lock()

    # -- hooks (aiosmtpd calls them by name: every one has a wire-level test) --

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[Hello]:
        session.host_name = hostname
        # SMTPUTF8 is not offered (addresses are ASCII); PIPELINING is supported;
        # every reply carries an enhanced status code (RFC 2034).
        out = []
        for line in responses:
            if line not in ("250-SMTPUTF8", "250 HELP"):
                out.append(line)
            if line.startswith("250-AUTH "):  # very old clients look for the draft form, "AUTH=LOGIN"
                out.append("250-AUTH=" + line.removeprefix("250-AUTH "))
        return [Hello((*out, "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250 HELP"))]

    async def handle_HELO(self, server: Any, session: Any, envelope: Any, hostname: str) -> Hello:
        session.host_name = hostname
        return Hello((f"250 {server.hostname}",))

    async def handle_AUTH(self, server: Any, session: Any, envelope: Any, args: list[str]) -> Any:
        conn: Connection = server.conn
        if self.throttle.blocked(conn.ip):
            log.warning("session %s: AUTH from %s refused while backing off", conn.id, conn.ip)
            return replies.AUTH_BACKOFF.answer()
        return MISSING

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: FaxEnvelope, address: str, options: list[str]
    ) -> Answer:
        conn: Connection = server.conn
        if "SMTPUTF8" in options or not address.isascii():
            return replies.SMTPUTF8_UNSUPPORTED.answer()
        if address and not _SENDER.fullmatch(address):
            return replies.BAD_SENDER_SYNTAX.answer()
        if address and address.rpartition("@")[2].lower().rstrip(".") in self.own_domains:
            return replies.FAX_DOMAIN_SENDER.format(sender=address)
        refusal = self._sender_refusal(conn, session, address)
        if refusal is not None and not self.receipt_mode:
            log.info("session %s: sender %s refused: %s", conn.id, clean(address), refusal)
            return refusal
        minimum = self.settings.spool.min_free_bytes
        if minimum and await asyncio.to_thread(self.spool.free_bytes) < minimum:
            log.warning("session %s: spool free space below %d bytes: 452", conn.id, minimum)
            return replies.LOW_SPACE.answer()
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.sender_given = True
        envelope.sender_refusal = refusal
        return replies.SENDER_OK.answer()

    def _sender_refusal(self, conn: Connection, session: Any, address: str) -> Answer | None:
        if not address:
            return replies.NULL_SENDER.answer()
        if session.authenticated and conn.user is not None:
            patterns = conn.user.senders
        elif conn.network is not None:
            patterns = conn.network.senders
        elif self.settings.smtp.users and conn.tls_possible:
            return replies.AUTH_REQUIRED.answer()
        else:
            return replies.NOT_PERMITTED.format(client=conn.ip)
        if not sender_allowed(address, patterns):
            return replies.SENDER_NOT_PERMITTED.format(sender=address)
        return None

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: FaxEnvelope, address: str, options: list[str]
    ) -> Answer:
        conn: Connection = server.conn
        result = classify(address, self.domains, self.settings.numbers)
        if isinstance(result, Answer):
            log.info("session %s: recipient %s refused: %s", conn.id, clean(address), result)
            return result
        if isinstance(result, ReceiptRecipient):
            return await self._receipt_recipient(envelope, address, result)
        return await self._fax_recipient(conn, envelope, address, result)

    async def _receipt_recipient(self, envelope: FaxEnvelope, address: str, rcpt: ReceiptRecipient) -> Answer:
        if envelope.numbers:
            return replies.MIXED_RECIPIENTS.answer()
        job_id = await self.store.run(lambda s: s.job_by_ar_token(rcpt.token))
        if job_id is None:
            return replies.UNKNOWN_RECEIPT_ADDRESS.answer()
        if job_id not in envelope.receipt_jobs:
            envelope.receipt_jobs.append(job_id)
        envelope.rcpt_tos.append(address)
        return replies.RECEIPT_RECIPIENT_OK.answer()

    async def _fax_recipient(self, conn: Connection, envelope: FaxEnvelope, address: str, rcpt: FaxRecipient) -> Answer:
        if envelope.sender_refusal is not None:
            return envelope.sender_refusal
        if envelope.receipt_jobs:
            return replies.MIXED_RECIPIENTS.answer()
        if rcpt.number not in envelope.numbers:  # the same number twice is one fax
            if len(envelope.numbers) >= self.settings.smtp.max_recipients:
                return replies.TOO_MANY_RECIPIENTS.format(limit=self.settings.smtp.max_recipients)
            refusal = await self._quota(envelope.mail_from or "", len(envelope.numbers) + 1)
            if refusal is not None:
                log.warning("session %s: quota reached for %s: %s", conn.id, clean(envelope.mail_from), refusal)
                return refusal
            envelope.numbers.append(rcpt.number)
        envelope.rcpt_tos.append(address)
        return replies.RECIPIENT_OK.format(number=rcpt.number)

    async def _quota(self, sender: str, pending: int) -> Answer | None:
        quotas = self.settings.quotas
        if not quotas.per_sender_hourly and not quotas.global_hourly:
            return None
        since = self.clock() - QUOTA_WINDOW_SECONDS

        def counts(s: Store) -> tuple[int, int]:
            mine = s.count_recent_jobs(since, sender) if quotas.per_sender_hourly else 0
            everyone = s.count_recent_jobs(since) if quotas.global_hourly else 0
            return mine, everyone

        mine, everyone = await self.store.run(counts)
        if quotas.per_sender_hourly and mine + pending > quotas.per_sender_hourly:
            return replies.QUOTA_SENDER.format(limit=quotas.per_sender_hourly, sender=sender)
        if quotas.global_hourly and everyone + pending > quotas.global_hourly:
            return replies.QUOTA_GLOBAL.answer()
        return None

    async def handle_DATA(self, server: Any, session: Any, envelope: FaxEnvelope) -> Answer:
        conn: Connection = server.conn
        raw: bytes = envelope.original_content or b""
        if len(raw) > self.settings.smtp.max_message_size:
            return replies.MESSAGE_TOO_BIG.format(limit=self.settings.smtp.max_message_size)
        if envelope.receipt_jobs:
            return await self._deliver_receipt(conn, envelope.receipt_jobs, raw)
        sender, numbers = envelope.mail_from or "", list(envelope.numbers)
        fragment = partial.fragment_of(raw)
        if fragment is not None:  # one mail of a split scan: kept until its set is whole
            task = asyncio.ensure_future(self._take_part(conn, sender, numbers, raw, fragment))
        else:
            task = asyncio.ensure_future(self._accept(conn, sender, numbers, raw))
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)
        # Shielded: a client that hangs up mid-spool does not leave half a job;
        # if it resends, the dedupe answers with the job made here.
        return await asyncio.shield(task)

    # -- the work behind DATA ------------------------------------------------

    async def _deliver_receipt(self, conn: Connection, job_ids: list[str], raw: bytes) -> Answer:
        callback = self.on_receipt_mail
        if callback is None:  # pragma: no cover - RCPT refuses these without a callback
            return replies.UNKNOWN_RECEIPT_ADDRESS.answer()
        try:
            for job_id in job_ids:
                await callback(job_id, raw)
        except Exception as exc:
            return fault_reply(exc, f"session {conn.id}: receipt mail for {' '.join(job_ids)} could not be stored")
        log.info("session %s: receipt mail for %s stored", conn.id, " ".join(job_ids))
        return replies.RECEIPT_ACCEPTED.answer()

    async def _accept(
        self, conn: Connection, sender: str, numbers: list[str], raw: bytes, settle: Settle | None = None
    ) -> Answer:
        """Examine, spool and commit one mail; ``settle``: a split mail's whole (its refusal always goes by mail)."""
        try:
            notify = self.settings.notify  # a cover page speaks the receipts' language, in their zone
            context = outcomes.Envelope(tuple(numbers), self.clock(), notify.language, notify.timezone)
            extraction, headers = await self.examiner.examine(raw, conn.ip, context)
        except outcomes.DocumentRefused as exc:
            log.info("session %s: message from %s refused: %s", conn.id, clean(sender), exc.reason)
            if _refusals(conn) != "mail" and settle is None:
                return exc.reply
            try:
                return await self._refuse_by_mail(conn, sender, numbers, raw, exc.reply, exc.reason, settle)
            except Exception as exc:
                return fault_reply(exc, f"session {conn.id}: the refusal could not be recorded to go by mail")
        except Busy:
            log.warning("session %s: no document worker free within documents.queue_seconds: 451", conn.id)
            return replies.EXAMINE_BUSY.answer()
        except BrokenProcessPool:
            log.error("session %s: the process examining the message died (a crash, or out of memory): 451", conn.id)
            return replies.ERROR.answer()
        except Exception:
            log.exception("session %s: unexpected error while reading the message", conn.id)
            return replies.ERROR.answer()
        keys = {n: dedupe_key(sender, headers.message_id, n) if headers.message_id else "" for n in numbers}
        # A client that gave up waiting may resend while the first copy is still
        # being spooled: it waits for that copy and then gets its job ids.
        await self._wait_for_copies(conn, keys.values())
        done = asyncio.Event()
        claimed = [k for k in keys.values() if k]
        self._spooling.update((k, (conn.id, done)) for k in claimed)
        try:
            return await self._spool(conn, sender, keys, raw, extraction, headers, settle)
        except Exception as exc:
            return fault_reply(exc, f"session {conn.id}: message could not be spooled")
        finally:
            for k in claimed:
                self._spooling.pop(k, None)
            done.set()

    async def _wait_for_copies(self, conn: Connection, keys: Iterable[str]) -> None:
        while busy := [self._spooling[k] for k in keys if k in self._spooling]:
            other, done = busy[0]
            log.info("session %s: the same message is being spooled by session %s: waiting for it", conn.id, other)
            await done.wait()

    async def _spool(
        self,
        conn: Connection,
        sender: str,
        keys: dict[str, str],
        raw: bytes,
        extraction: outcomes.Extraction,
        headers: Headers,
        settle: Settle | None = None,
    ) -> Answer:
        """Spool the message and commit one job per number (``keys``: number -> dedupe key) not yet queued."""
        numbers = list(keys)
        since = self.clock() - self.settings.smtp.dedupe_window_seconds

        def duplicates(s: Store) -> dict[str, str]:
            found = {n: s.find_duplicate(k, since) for n, k in keys.items() if k}
            return {n: j for n, j in found.items() if j is not None}

        existing = await self.store.run(duplicates)
        jobs = [(new_id(), n, keys[n]) for n in numbers if n not in existing]
        new = {n: job_id for job_id, n, _ in jobs}
        ids = [existing.get(n) or new[n] for n in numbers]
        reply = replies.queued(ids)
        late: dict[str, str] = {}  # number -> the job another copy, taken in meanwhile (another gateway), made
        if jobs:
            message_id = new_id()
            # In a cluster the fax document is stored in S3 here, before the 250, and recorded as stored.
            files = {RAW_NAME: raw, FAX_NAME: extraction.document}
            upload_key = await asyncio.to_thread(self.spool.keep, message_id, files)
            msg = NewMessage(
                id=message_id, envelope_from=sender, header_from=headers.header_from, reply_to=headers.reply_to,
                message_id_header=headers.message_id, subject=headers.subject, date_header=headers.date,
                client_addr=conn.ip, auth_user=conn.user.name if conn.user else "", doc_type=extraction.doc_type,
                doc_pages=extraction.pages, doc_bytes=len(extraction.document), documents=extraction.documents,
                skipped=extraction.skipped, upload_key=upload_key,
            )  # fmt: skip
            via = _via(conn)
            dedupe_since, quota = since, self._commit_quota()

            def detail(taken: Mapping[str, str]) -> str:
                # The reply goes in the timeline: `fax-gateway show` tells what the sender was answered.
                said = replies.queued([taken.get(n) or i for n, i in zip(numbers, ids, strict=True)])
                return f"from {sender} via {via}, {extraction.pages} page(s); reply: {said}"

            def commit(s: Store) -> dict[str, str]:
                with s.transaction():
                    taken = s.add_message(msg, jobs, detail, dedupe_since=dedupe_since, quota=quota)
                    if settle is not None:
                        settle(s)
                return taken

            try:
                late = await self._commit_or_unspool(message_id, commit)
            except QuotaReached as exc:
                log.warning("session %s: quota reached for %s while committing: %s", conn.id, clean(sender), exc)
                if exc.per_sender:
                    return replies.QUOTA_SENDER.format(limit=self.settings.quotas.per_sender_hourly, sender=sender)
                return replies.QUOTA_GLOBAL.answer()
            if len(late) == len(jobs):  # every job made by a copy taken in meanwhile: this one's files go
                await asyncio.to_thread(self.spool.remove, message_id)
            else:
                self.on_spooled()
            if late:
                ids = [late.get(n) or i for n, i in zip(numbers, ids, strict=True)]
                reply = replies.queued(ids)
        elif settle is not None:  # every number already queued from the same mail: the set is done all the same
            await self.store.run(settle)
        for number, job_id in zip(numbers, ids, strict=True):
            what = "accepted" if number in new and number not in late else "resent, already queued"
            log.info("job %s: %s for %s from %s (session %s)", job_id, what, number, clean(sender), conn.id,
                     extra={"job_id": job_id})  # fmt: skip
        return reply

    def _commit_quota(self) -> Quota | None:
        """The hourly quotas, counted again in the transaction that adds the jobs (RCPT counted them before the
        DATA: gateways sharing the store may have taken mail from the same sender meanwhile)."""
        quotas = self.settings.quotas
        if not quotas.per_sender_hourly and not quotas.global_hourly:
            return None
        return Quota(self.clock() - QUOTA_WINDOW_SECONDS, quotas.per_sender_hourly, quotas.global_hourly)

    async def _commit_or_unspool(self, spool_id: str, commit: Callable[[Store], T]) -> T:
        """Commit the store rows of files just spooled under ``spool_id``; if that fails, remove the files.

        Nothing was promised for them (no 250 yet), and a file with no row would only be found at start-up.
        """
        try:
            return await self.store.run(commit)
        except BaseException:
            try:
                await asyncio.to_thread(self.spool.remove, spool_id)
            except OSError as exc:  # S3 as well as the store: the bucket's lifecycle rule takes them
                log.warning("spool: files %s written but never committed could not be removed: %s", spool_id, exc)
            raise

    async def _refuse_by_mail(
        self,
        conn: Connection,
        sender: str,
        numbers: list[str],
        raw: bytes,
        refusal: Answer,
        why: str,
        settle: Settle | None = None,
    ) -> Answer:
        """``refusals = "mail"``: 250, and the refusal goes to the person behind the sender as a receipt.

        For printers, which show the person at the copier "send error" and nothing else. The message
        is spooled and committed like any other, its jobs already failed with the refusal's words,
        each with the "failed" notice the notifier sends (to whom :mod:`gateway.sender` picks).
        """
        jobs = [(new_id(), number) for number in numbers]
        ids = tuple(job_id for job_id, _ in jobs)
        reply = replace(replies.REFUSED_BY_MAIL.format(jobs=" ".join(ids)), jobs=ids)
        detail = f"cannot be faxed: {refusal}; reply: {reply}"
        reason = f"the mail cannot be faxed as it is: {refusal.text}"
        await self._commit_refusal(conn, sender, jobs, raw, detail, reason, why, settle)
        return reply

    async def _commit_refusal(
        self,
        conn: Connection,
        sender: str,
        jobs: list[tuple[str, str]],
        raw: bytes,
        detail: str,
        reason: str,
        why: str,
        settle: Settle | None,
    ) -> None:
        """Spool ``raw``, commit its ``jobs`` (job id, number) failed with ``reason``, each with its notice."""
        headers = await asyncio.to_thread(read_headers, raw)
        message_id = new_id()
        await asyncio.to_thread(self.spool.keep, message_id, {RAW_NAME: raw})
        msg = NewMessage(
            id=message_id, envelope_from=sender, header_from=headers.header_from, reply_to=headers.reply_to,
            message_id_header=headers.message_id, subject=headers.subject, date_header=headers.date,
            client_addr=conn.ip, auth_user=conn.user.name if conn.user else "", doc_type="", doc_pages=0, doc_bytes=0,
        )  # fmt: skip
        via = _via(conn)

        def commit(s: Store) -> None:
            with s.transaction():
                s.add_refused_message(msg, jobs, f"from {sender} via {via}; {detail}", reason, why=why)
                if settle is not None:
                    settle(s)

        await self._commit_or_unspool(message_id, commit)
        self.on_spooled()  # wakes the notifier
        for job_id, number in jobs:
            log.info("job %s: refused for %s from %s, the reason goes by mail (session %s)", job_id, number,
                     clean(sender), conn.id, extra={"job_id": job_id})  # fmt: skip

    # -- split mails (message/partial, RFC 2046 5.2.2) ------------------------

    async def _take_part(
        self, conn: Connection, sender: str, numbers: list[str], raw: bytes, fragment: partial.Fragment
    ) -> Answer:
        """Keep one mail of a split scan (spool, then store); the one that makes its set whole sends the whole on.

        The 250 of a part says it is kept; the last part's answer is the whole's (queued, or refused by
        mail). A 451 after the part was kept is safe: the part sent again finds its copy and the set again.
        """
        part = NewPart(sender=sender.lower(), set_id=fragment.id, number=fragment.number, total=fragment.total or 0,
                       spool_id=new_id(), numbers=numbers, client_addr=conn.ip,
                       auth_user=conn.user.name if conn.user else "", size=len(raw))  # fmt: skip
        bounds = {"max_sets": self.settings.documents.partial_max_sets,
                  "max_bytes": self.settings.smtp.max_message_size}  # fmt: skip
        try:
            await asyncio.to_thread(self.spool.keep, part.spool_id, {RAW_NAME: raw})
            taken = await self._commit_or_unspool(part.spool_id, lambda s: s.add_partial_part(part, **bounds))
            if taken is not PartTaken.KEPT:
                await asyncio.to_thread(self.spool.remove, part.spool_id)
            of = f" of {fragment.total}" if fragment.total else ""
            log.info("session %s: part %d%s of split mail %s from %s: %s", conn.id, fragment.number, of,
                     clean(fragment.id), clean(sender), taken)  # fmt: skip
            if taken is PartTaken.TOO_MANY_SETS:
                return replies.PARTS_WAITING.format(sender=sender, limit=self.settings.documents.partial_max_sets)
            if taken is PartTaken.TOO_BIG:  # the whole would be over the message size: as for one mail
                return replies.MESSAGE_TOO_BIG.format(limit=self.settings.smtp.max_message_size)
            answer = None
            if taken is not PartTaken.FINISHED:
                answer = await self._complete(conn, part.sender, part.set_id, sender)
        except Exception as exc:
            return fault_reply(exc, f"session {conn.id}: part of a split mail could not be kept")
        if answer is not None:
            return answer
        return replies.PART_KEPT.format(part=f"{fragment.number}{of}", id=fragment.id)

    async def _complete(self, conn: Connection, key: str, set_id: str, sender: str) -> Answer | None:
        """If the set (``key``: the sender, lower case) is whole, the answer to its reassembled mail; else None."""
        async with self._sets_lock:
            parts = await self._parts(key, set_id)
            total = max((p.total for p in parts), default=0)
            have = {p.number: p for p in parts}
            if not total or any(n not in have for n in range(1, total + 1)):
                return None
            ordered = [have[n] for n in range(1, total + 1)]

            def whole() -> bytes:
                return partial.reassemble([self.spool.read(p.spool_id, RAW_NAME) for p in ordered])

            raw = await asyncio.to_thread(whole)
            numbers = _numbers(parts)
            log.info("session %s: split mail %s from %s is whole (%d parts, %d bytes)", conn.id, clean(set_id),
                     clean(sender), total, len(raw))  # fmt: skip

            def settle(s: Store) -> None:
                s.finish_partial_set(key, set_id)

            limit = self.settings.smtp.max_message_size
            if len(raw) > limit:
                refusal = replies.MESSAGE_TOO_BIG.format(limit=limit)
                answer = await self._refuse_by_mail(conn, sender, numbers, raw, refusal, "too-big", settle)
            else:
                answer = await self._accept(conn, sender, numbers, raw, settle)
            if answer.ok:
                await self._remove_parts(parts)
            return answer

    async def _parts(self, key: str, set_id: str) -> list[Part]:
        return await self.store.run(lambda s: s.partial_set(key, set_id))

    async def _remove_parts(self, parts: Iterable[Part]) -> None:
        def remove() -> None:
            for p in parts:
                self.spool.remove(p.spool_id)

        await asyncio.to_thread(remove)

    async def expire_partials(self, limit: int = 100) -> int:
        """Send on the split mails that are whole, refuse those past ``documents.partial_window_seconds``.

        A whole set still here is one whose last part got a 451 (and was not sent again). An
        incomplete set past the window becomes one failed job per number, each with the failure
        receipt naming the parts that never came. At most ``limit`` sets per call; how many were ended.
        """
        window = self.settings.documents.partial_window_seconds
        now = self.clock()
        ended = 0
        for open_set in await self.store.run(lambda s: s.open_partial_sets(limit)):
            try:
                parts = await self._parts(open_set.sender, open_set.set_id)
                if not parts:
                    continue
                conn = Connection(id=new_id(), ip=parts[-1].client_addr)
                answer = await self._complete(conn, open_set.sender, open_set.set_id, open_set.sender)
                if answer is None and open_set.first_at + window <= now:
                    await self._expire(conn, open_set.sender, open_set.set_id)
                    ended += 1
                elif answer is not None and answer.ok:
                    ended += 1
            except Exception:
                log.exception("split mail %s from %s could not be ended", clean(open_set.set_id),
                              clean(open_set.sender))  # fmt: skip
        await self.store.run(lambda s: s.forget_partial_sets(now - window))
        return ended

    async def _expire(self, conn: Connection, key: str, set_id: str) -> None:
        async with self._sets_lock:
            parts = await self._parts(key, set_id)
            if not parts:
                return
            total = max(p.total for p in parts)
            have = {p.number for p in parts}
            window = self.settings.documents.partial_window_seconds
            reason = _missing(have, total, window)
            first = parts[0]

            def first_raw() -> bytes:
                raw = self.spool.read(first.spool_id, RAW_NAME)
                return partial.reassemble([raw]) if first.number == 1 else raw

            raw = await asyncio.to_thread(first_raw)
            jobs = [(new_id(), number) for number in _numbers(parts)]
            detail = f"split mail {set_id} incomplete: {reason}"

            def settle(s: Store) -> None:
                s.finish_partial_set(key, set_id)

            missing = ",".join(str(n) for n in range(1, total + 1) if n not in have)
            # The missing parts as data, so that a receipt in any language can name them.
            await self._commit_refusal(conn, key, jobs, raw, detail, reason, f"partial:{missing}:{total}", settle)
            await self._remove_parts(parts)

    # -- a file handed over on this machine -----------------------------------

    async def take_local(self, sender: str, address: str, raw: bytes) -> Answer:
        """Judge and spool one message given on this machine (``fax-gateway send``); the answer (its ``jobs``).

        The MAIL, RCPT and DATA hooks themselves judge it, as for a client on a
        trusted network that may use any sender: the sender's form, the number
        and destination policy, the quotas, the spool's space, the size and
        document checks, the durable spool. Whoever can write the job store
        administers the gateway, so who may send is not asked.
        """
        server = _LocalServer(Connection(id=new_id(), ip="local", network=_LOCAL))
        session = _LocalSession()
        envelope = FaxEnvelope()
        reply = await self.handle_MAIL(server, session, envelope, sender, [])
        if reply.ok:
            reply = await self.handle_RCPT(server, session, envelope, address, [])
        if reply.ok and envelope.numbers:
            envelope.original_content = raw
            reply = await self.handle_DATA(server, session, envelope)
        elif reply.ok:  # a receipt address: not a fax
            reply = replies.RELAY_DENIED.format(domain=self.domains.fax[0])
        return reply


def fault_reply(exc: Exception, what: str) -> Answer:
    """The 451 for a fault of ours before the 250, logged with ``what`` (a session, its job ids).

    The PostgreSQL store or the cluster's S3 bucket being unavailable is said as such (the log says why,
    never with a connection string: the log handler masks it); anything else is an internal error, logged
    with its traceback, which the client never sees.
    """
    if isinstance(exc, unreachable_errors()):
        why = clean(str(exc).strip().partition("\n")[0], 300) or type(exc).__name__
        log.error("%s: the job store is unavailable (%s): 451", what, why)
        return replies.STORE_UNAVAILABLE.answer()
    if isinstance(exc, StorageUnavailable):
        log.error("%s: the document storage is unavailable (%s): 451", what, exc.reason)
        return replies.STORAGE_UNAVAILABLE.answer()
    log.error("%s: 451", what, exc_info=exc)
    return replies.ERROR.answer()


def _numbers(parts: Iterable[Part]) -> list[str]:
    """The fax numbers of a split mail: every number its parts were sent to, in the order they came."""
    out: list[str] = []
    for p in parts:
        out += [n for n in p.numbers if n not in out]
    return out


def _missing(have: set[int], total: int, window: float) -> str:
    """Why an incomplete split mail is not faxed, naming the parts that never came."""
    if total:
        missing = [n for n in range(1, total + 1) if n not in have]
        of = f" of {total}"
    else:  # the last part, which gives the total, is among the missing
        missing = [n for n in range(1, max(have) + 1) if n not in have]
        of = ""
    said = ", ".join(str(n) for n in missing)
    if not total:
        said = f"{said} and the last" if said else "the last"
    what = "part" if len(missing) == 1 and total else "parts"
    minutes = max(1, round(window / 60))
    return (f"the printer split the scan into several mails and {what} {said}{of} did not arrive within"
            f" {minutes} minutes: scan the document again")  # fmt: skip


def _via(conn: Connection) -> str:
    """How the client came, for the timeline: its address, and its user if it logged in."""
    return f"{conn.ip} as {conn.user.name}" if conn.user else conn.ip


def _refusals(conn: Connection) -> str:
    """How the documents stage's refusals reach the client: its user's setting, else its network's."""
    if conn.user is not None:
        return conn.user.refusals
    return conn.network.refusals if conn.network is not None else "smtp"


_LOCAL = Network(cidr="127.0.0.1/32")


@dataclass
class _LocalServer:
    conn: Connection


@dataclass
class _LocalSession:
    authenticated: bool = False
