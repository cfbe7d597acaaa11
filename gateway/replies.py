"""Every SMTP reply the gateway gives, as one table.

Each reply is a named constant with its basic code, its enhanced status code
(RFC 3463) and its text; it knows its own name (``QUEUED.name == "QUEUED"``:
the metrics count refusals by it). What is sent is an :class:`Answer`: the
table entry, its text with the ``{placeholders}`` filled in (by
:meth:`Reply.format`, or :meth:`Reply.answer` for a text without any), and what
it reports (the job ids of QUEUED, from :func:`queued`); ``str()`` of an answer
is the reply line as sent. Whatever is filled in is stripped of control
characters first, so nothing a client sent can break the reply line, and the
line is ASCII (anything else becomes ``?``). Code that decides on an answer
reads its entry and code (``answer.reply``, ``answer.ok``), never its text.

The answer to EHLO and HELO is not in the table (its lines carry no enhanced
code): it is a :class:`Hello`, sent as built. A test checks that every
enhanced code's class matches its basic code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.text import clean


@dataclass(frozen=True)
class Reply:
    """One entry of the table; ``name`` is set for every entry when this module loads."""

    code: int
    enhanced: str
    text: str
    name: str = field(default="", compare=False)

    def format(self, **values: object) -> Answer:
        """This reply with its placeholders filled in."""
        text = self.text.format(**{k: clean(v) for k, v in values.items()})
        return Answer(self, text.encode("ascii", "replace").decode("ascii"))

    def answer(self) -> Answer:
        """This reply as it stands (a text without placeholders)."""
        return self.format()

    def __str__(self) -> str:
        return self.line(self.text)

    def line(self, text: str) -> str:
        """The reply line for ``text``."""
        # RFC 2034: no enhanced code on the greeting and the 354 go-ahead.
        return f"{self.code} {self.enhanced} {text}" if self.enhanced else f"{self.code} {text}"

    def __reduce__(self) -> str | tuple[Any, ...]:
        # A table entry unpickles as itself (DocumentRefused comes back from a worker process).
        if self.name and globals().get(self.name) is self:
            return self.name
        return Reply, (self.code, self.enhanced, self.text, self.name)


@dataclass(frozen=True)
class Answer:
    """One reply as sent: the entry it comes from, its filled text, and the job ids it names (QUEUED)."""

    reply: Reply
    text: str
    jobs: tuple[str, ...] = ()

    @property
    def code(self) -> int:
        return self.reply.code

    @property
    def ok(self) -> bool:
        """A positive reply (2xx, 3xx): the command was taken."""
        return self.reply.code < 400

    @property
    def refused(self) -> bool:
        """A negative reply (4xx, 5xx)."""
        return self.reply.code >= 400

    def __str__(self) -> str:
        return self.reply.line(self.text)


@dataclass(frozen=True)
class Hello:
    """The answer to EHLO or HELO, line by line: sent as built (the last line without a ``-``)."""

    lines: tuple[str, ...]

    def __str__(self) -> str:
        return "\r\n".join(self.lines)


# -- success -------------------------------------------------------------------
GREETING = Reply(220, "", "{hostname} fax-gateway ESMTP")
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
OK = Reply(250, "2.0.0", "OK")
BYE = Reply(221, "2.0.0", "Bye")
TLS_READY = Reply(220, "2.0.0", "Ready to start TLS")
HELP = Reply(250, "2.0.0", "Supported commands: {commands}")
HELP_SYNTAX = Reply(250, "2.0.0", "Syntax: {usage}")
CANNOT_VRFY = Reply(252, "2.0.0", "Cannot verify the address; send the mail and the reply will tell")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK: fax to {number}")
QUEUED = Reply(250, "2.0.0", "OK: queued as {jobs}")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
RECEIPT_ACCEPTED = Reply(250, "2.0.0", "OK: receipt recorded")
RECEIPT_RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK: receipt address")
REFUSED_BY_MAIL = Reply(250, "2.0.0", "OK: not faxed; the reason goes by mail to the sender (job {jobs})")
PART_KEPT = Reply(250, "2.0.0", "OK: part {part} of message {id} kept; the fax goes once all parts have arrived")

# -- transient: our side, try again later -------------------------------------
ERROR = Reply(451, "4.3.0", "Internal error, please try again later")
EXAMINE_BUSY = Reply(451, "4.3.0", "Busy examining other mail, please try again later")
STORE_UNAVAILABLE = Reply(451, "4.3.0", "The job store is unavailable, please try again later")
STORAGE_UNAVAILABLE = Reply(451, "4.3.0", "The document storage is unavailable, please try again later")
LOW_SPACE = Reply(452, "4.3.1", "Insufficient system storage, please try again later")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients (at most {limit} per message)")
QUOTA_SENDER = Reply(450, "4.7.1", "Hourly limit of {limit} faxes reached for {sender}, try again later")
QUOTA_GLOBAL = Reply(450, "4.7.1", "Hourly fax limit of the gateway reached, try again later")
PARTS_WAITING = Reply(
    450, "4.7.1", "Too many split mails from {sender} wait for their other parts (at most {limit}): send those first"
)
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_FROM_ADDRESS = Reply(421, "4.7.0", "Too many connections from {client}, try again later")
AUTH_BACKOFF = Reply(454, "4.7.0", "Too many failed authentications, try again later")
TLS_UNAVAILABLE = Reply(454, "4.7.0", "TLS not available")
IDLE_TIMEOUT = Reply(421, "4.4.2", "Connection idle for too long, closing")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_COMMANDS = Reply(421, "4.7.0", "{command} sent too many times, closing connection")
TOO_MANY_REFUSALS = Reply(421, "4.7.0", "Too many refused senders, closing connection")
COMMAND_TIMEOUT = Reply(421, "4.4.2", "Command line not completed in time, closing connection")
DATA_TIMEOUT = Reply(421, "4.4.2", "Message not received within {seconds} seconds, closing connection")
DATA_TOO_SLOW = Reply(421, "4.4.2", "Message arriving slower than {rate} bytes per second, closing connection")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
MIXED_RECIPIENTS = Reply(452, "4.5.3", "Fax and receipt recipients cannot share a message: send this one separately")

# -- permanent: the client must change something ------------------------------
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
ENCRYPTION_REQUIRED = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
NOT_PERMITTED = Reply(550, "5.7.1", "Client {client} is not permitted to send faxes")
SENDER_NOT_PERMITTED = Reply(550, "5.7.1", "Sender {sender} is not permitted to send faxes from here")
NULL_SENDER = Reply(550, "5.7.1", "A null sender cannot send faxes: nobody could be told the outcome")
FAX_DOMAIN_SENDER = Reply(550, "5.7.1", "Senders in a fax domain are refused ({sender})")
RELAY_DENIED = Reply(550, "5.7.1", "Relaying denied: only <number>@{domain} recipients are accepted")
BAD_NUMBER_SYNTAX = Reply(553, "5.1.3", "'{local}' is not a fax number: use digits, dots, dashes, a leading + or 00")
UNKNOWN_RECEIPT_ADDRESS = Reply(550, "5.1.1", "No such receipt address")
INVALID_NUMBER = Reply(550, "5.1.1", "{local} is not a valid fax number: {reason}")
DESTINATION_DENIED = Reply(550, "5.7.1", "Destination not permitted: {number} ({reason})")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds the limit of {limit} bytes")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long (at most {limit} octets)")
BAD_SYNTAX = Reply(501, "5.5.4", "Syntax error in parameters: {detail}")
# Protocol errors (aiosmtpd's own answers, translated in gateway.smtp.library).
BAD_SENDER_SYNTAX = Reply(553, "5.1.7", "Malformed sender address")
COMMAND_SYNTAX = Reply(501, "5.5.4", "Syntax: {usage}")
UNKNOWN_COMMAND = Reply(500, "5.5.1", "Command not recognized")
HELP_UNKNOWN = Reply(501, "5.5.4", "No such command; supported commands: {commands}")
BAD_COMMAND = Reply(500, "5.5.2", "Syntax error: command unrecognizable or too long")
TOO_MANY_UNKNOWN = Reply(502, "5.5.1", "Too many unrecognized commands, closing connection")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
NEED_HELO = Reply(503, "5.5.1", "Send EHLO or HELO first")
NEED_MAIL = Reply(503, "5.5.1", "Send MAIL FROM first")
NEED_RCPT = Reply(503, "5.5.1", "Send RCPT TO first")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already given (send RSET to start over)")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
AUTH_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_ABORTED = Reply(501, "5.7.0", "Authentication aborted")
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode the authentication data")
PARAMETERS_UNKNOWN = Reply(555, "5.5.4", "Parameters not recognized or not implemented")
BAD_BODY = Reply(501, "5.5.4", "BODY can only be 7BIT or 8BITMIME")
SMTPUTF8_UNSUPPORTED = Reply(555, "5.5.4", "SMTPUTF8 is not supported: write addresses in ASCII")

# -- documents (filled in by gateway.documents.policy) --------------------------------
NO_DOCUMENT = Reply(554, "5.6.0", "No document to fax: attach it as a file ({accepted}); the mail text is not faxed")
DOC_TYPE = Reply(554, "5.6.1", "{name}: type {found} cannot be faxed (accepted: {accepted}); convert it to {target}")
DOC_EMPTY = Reply(554, "5.6.0", "{name}: the file is empty (0 bytes); attach the document again")
DOC_ENCODING = Reply(554, "5.6.5", "{name}: the attachment's encoding is damaged (truncated?); send it again")
DOC_CORRUPT = Reply(554, "5.6.5", "{name}: the {found} file cannot be read ({reason}); send an intact copy")
DOC_ENCRYPTED = Reply(554, "5.6.5", "{name}: the {found} document is encrypted ({reason}); send it without a password")
DOC_LIMITS = Reply(554, "5.6.0", "Message too complex to process: {reason}")
DOC_TNEF = Reply(
    554,
    "5.6.1",
    "winmail.dat holds nothing that can be faxed ({accepted}): send the file in plain format"
    " (in Outlook, use HTML or plain text instead of Rich Text)",
)
DOC_TOO_BIG = Reply(
    552, "5.3.4", "{name}: the fax document is {size} bytes{what}, over the limit of {limit} bytes: {advice}"
)

DOC_TOO_BIG_FITTED = Reply(
    552,
    "5.3.4",
    "{name}: {pages} pages are still {size} bytes as a black-and-white fax at standard resolution,"
    " over the limit of {limit} bytes: {advice}",
)
DOC_FIT_TIMEOUT = Reply(
    552,
    "5.3.4",
    "{name}: converting {pages} pages to fit the fax limit of {limit} bytes took longer than {seconds} s"
    " (documents.convert_timeout_seconds): send fewer pages per mail",
)

# -- documents: what to change, said to the person at the copier ----------------
# A file named .pdf whose content is something else (a renamed file, a scanner's TIFF).
DOC_NOT_PDF = Reply(
    554,
    "5.6.1",
    "{name}: type {found} cannot be faxed: the name says .pdf but the content is not a PDF (accepted: {accepted});"
    " save or export it as PDF again, renaming the file does not convert it",
)
# Office documents and text (gateway.documents.office, gateway.documents.textpages).
DOC_OFFICE_OFF = Reply(
    554,
    "5.6.1",
    "{name}: the gateway faxes a file of this type ({found}) only once it converts it with LibreOffice,"
    " and {why}; convert it to PDF and send it again",
)
DOC_OFFICE_ENCRYPTED = Reply(
    554,
    "5.6.1",
    "{name}: the {found} is protected by a password, which the gateway cannot open; save it without"
    " a password, or as PDF, and send it again",
)
DOC_OFFICE_CORRUPT = Reply(
    554, "5.6.1", "{name}: the {found} cannot be opened ({reason}); save it again, or as PDF, and send it again"
)


def queued(jobs: Sequence[str]) -> Answer:
    """QUEUED for these job ids (in the text, and in ``Answer.jobs``)."""
    return replace(QUEUED.format(jobs=" ".join(jobs)), jobs=tuple(jobs))


def all_replies() -> dict[str, Reply]:
    """The table, by name (for the table test and the troubleshooting docs)."""
    return {name: value for name, value in globals().items() if isinstance(value, Reply)}


def _name_entries() -> None:
    for name, entry in all_replies().items():
        if entry.name:
            raise RuntimeError(f"reply {entry.name} is in the table twice (also as {name})")
        object.__setattr__(entry, "name", name)  # frozen: the name is given once, here


_name_entries()
