"""Settings: one TOML file plus environment variables for secrets.

In: a TOML file (read with tomllib) and ``os.environ``. Out: one frozen, typed
:class:`Settings` object, validated in full at start-up. Every problem is
reported with the key that holds it (``smtp.listen: 'abc' is not host:port``);
unknown keys are errors; secrets print masked.

Each section is a frozen dataclass. The loader walks the dataclass fields and
their type hints, so a key exists in exactly one place: its field here. The
example configuration (``config/fax-gateway.example.toml``) is kept in step with
these fields by a test.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway import dates


class SettingsError(ValueError):
    """A configuration problem; the message names the key."""


class Secret:
    """A string that never prints itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Network:
    """A trusted client network (MFPs, application servers)."""

    cidr: str
    # Envelope senders this network may use (``*@example.com``); empty: any.
    senders: tuple[str, ...] = ()
    # Whether AUTH may be offered in plaintext to clients from this network.
    plaintext_auth: bool = False
    # How a mail that cannot be faxed (its document) is refused: "smtp" (a 5xx reply, which the
    # client or Postfix's bounce reports), or "mail" (accepted with 250, and the reason goes by mail,
    # as a receipt, to the person behind the sender: for printers that only show "send error").
    refusals: Literal["smtp", "mail"] = "smtp"


@dataclass(frozen=True)
class User:
    """An SMTP AUTH user; ``password_hash`` comes from ``fax-gateway hash-password``."""

    name: str
    password_hash: str
    senders: tuple[str, ...] = ()
    # As for a trusted network: "smtp" or "mail".
    refusals: Literal["smtp", "mail"] = "smtp"


# -- SMTP listeners ------------------------------------------------------------

# TLS versions below 1.2: with OpenSSL 3 they need security level 0.
LEGACY_TLS_VERSIONS = frozenset({"TLSv1", "TLSv1.1"})


@dataclass(frozen=True)
class Listener:
    """One SMTP listener (``[[smtp.listeners]]``): an address and how TLS is spoken there."""

    listen: HostPort
    # "none": plain SMTP only; "starttls": STARTTLS offered; "implicit": TLS from the
    # first byte (SMTPS, port 465; RFC 8314).
    tls: Literal["none", "starttls", "implicit"] = "starttls"
    # Oldest TLS version accepted; "TLSv1" and "TLSv1.1" (old printers) lower
    # OpenSSL's security level on this listener only, and start-up warns.
    tls_min_version: Literal["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    # Name in logs, check-config and metrics; empty: the address.
    name: str = ""
    # Certificate and key for this listener; empty: smtp.tls_cert and smtp.tls_key.
    tls_cert: str = ""
    tls_key: str = ""

    @property
    def legacy_tls(self) -> bool:
        """Whether TLS versions older than 1.2 are accepted here."""
        return self.tls != "none" and self.tls_min_version in LEGACY_TLS_VERSIONS


@dataclass(frozen=True)
class Admin:
    """A user of the web console (``/admin/``); ``password_hash`` comes from ``fax-gateway hash-password``."""

    name: str
    password_hash: str


@dataclass(frozen=True)
class SmtpSettings:
    # The single listener used when no [[smtp.listeners]] are given.
    listen: HostPort = HostPort("127.0.0.1", 2525)
    hostname: str = "fax-gateway.localdomain"
    # Fax domains: recipients must be <number>@one of these (case-insensitive).
    fax_domains: tuple[str, ...] = ("fax.local",)
    # SIZE advertised in EHLO; larger messages get 552 5.3.4.
    max_message_size: int = 30 * 1024 * 1024
    # Longest line accepted in DATA (legacy mailers put base64 on one line).
    max_line_length: int = 1_048_576
    max_recipients: int = 20
    max_connections: int = 100
    # Connections from one address outside the trusted networks (not counting those that have
    # authenticated); more get 421 4.7.0.
    max_connections_per_address: int = 10
    # Of max_connections, slots only a client from a trusted network, or one that has
    # authenticated, can hold (at most max_connections - 1: others always get at least one).
    reserved_connections: int = 20
    # Seconds without a command that moves the session forward before 421 4.4.2: NOOP, RSET,
    # HELP, VRFY, EXPN, a repeated EHLO/HELO and unknown commands do not count, nor do the bytes
    # of a command line that does not end.
    idle_timeout: float = 120.0
    # Seconds the whole DATA section may take, from the 354 to the end-of-data line.
    data_timeout: float = 600.0
    # Bytes per second DATA must keep up, on average, after its first idle_timeout (0: no minimum).
    data_min_rate: int = 1024
    # MAIL commands refused because the client or sender may not send (530 5.7.0, 550 5.7.1)
    # before 421 4.7.0 and the connection is closed.
    max_refused_mail: int = 3
    # Unrecognised or refused commands before the connection is closed.
    max_errors: int = 20
    # Times one connection may send any one command (MAIL, RCPT, NOOP, ...).
    max_commands: int = 1000
    # On shutdown, how long a message being received or spooled may take to finish.
    shutdown_grace_seconds: float = 30.0
    tls_cert: str = ""
    tls_key: str = ""
    # Failed AUTH attempts from one address before each further try is delayed.
    auth_failures_before_backoff: int = 3
    auth_backoff_seconds: float = 2.0
    # A resent message (same sender, Message-ID and recipient) within this
    # window gets the existing job id instead of a second job.
    dedupe_window_seconds: int = 86400
    trusted_networks: tuple[Network, ...] = (Network("127.0.0.0/8"), Network("::1/128"))
    users: tuple[User, ...] = ()
    # Listeners, each with its own address and TLS mode; empty: one on ``listen``
    # (STARTTLS when tls_cert is set).
    listeners: tuple[Listener, ...] = ()

    def effective_listeners(self) -> tuple[Listener, ...]:
        """The listeners to open, each with its name, certificate and key filled in."""
        given = self.listeners or (Listener(self.listen, "starttls" if self.tls_cert else "none", name="smtp"),)
        return tuple(
            dataclasses.replace(
                li, name=li.name or str(li.listen), tls_cert=li.tls_cert or self.tls_cert,
                tls_key=li.tls_key or self.tls_key,
            )
            for li in given
        )  # fmt: skip


@dataclass(frozen=True)
class NumberSettings:
    default_region: str = "FR"
    # ISO regions a fax may go to; empty means the default region only.
    allowed_regions: tuple[str, ...] = ()
    block_premium_rate: bool = True
    block_shared_cost: bool = True
    block_short_codes: bool = True
    # Number format on the provider's wire: national for the default region
    # and 00+country code otherwise, or E.164 (+33...).
    wire_format: Literal["national", "e164"] = "national"


@dataclass(frozen=True)
class QuotaSettings:
    # Faxes (jobs) per envelope sender per hour; 0 disables.
    per_sender_hourly: int = 200
    # Faxes for the whole gateway per hour; 0 disables.
    global_hourly: int = 5000


@dataclass(frozen=True)
class SpoolSettings:
    directory: str = "/var/lib/fax-gateway"
    # Below this free space, MAIL gets 452 4.3.1.
    min_free_bytes: int = 200 * 1024 * 1024


# The document kinds LibreOffice converts (documents.convert_types, documents.office).
OFFICE_KINDS = ("docx", "doc", "odt", "rtf", "xlsx", "xls", "ods")
CONVERT_KINDS = (*OFFICE_KINDS, "text")


@dataclass(frozen=True)
class DocumentSettings:
    # libmagic kinds that may be faxed.
    accepted_types: tuple[str, ...] = ("pdf", "tiff", "jpeg", "png", "gif")
    # Kinds converted to PDF first, told by content (libmagic) too: the Office kinds (docx, doc, odt,
    # rtf, xlsx, xls, ods) by LibreOffice (see ``office``), and text (plain text, rendered in monospace).
    convert_types: tuple[str, ...] = (*OFFICE_KINDS, "text")
    # What to do with a candidate of another type: refuse the mail, or skip the
    # part and list it in the receipt.
    unsupported: Literal["refuse", "skip"] = "refuse"
    # Largest document sent to the provider (its limit is 1 MB).
    max_fax_bytes: int = 1_048_576
    # Nesting of MIME parts (root 0); at most 200, well inside what the parser can follow.
    max_mime_depth: int = 50
    # MIME parts, counted like email's walk() (multiparts included).
    max_parts: int = 500
    max_decoded_bytes: int = 30 * 1024 * 1024
    max_pdf_pages: int = 200
    # Images smaller than this in both directions are tracking pixels.
    min_image_pixels: int = 16
    page_size: Literal["A4", "Letter"] = "A4"
    # Worker processes that examine messages (0: a thread of the daemon, sharing its GIL).
    processes: int = 1
    # Most worker processes under load (0: twice processes); the ones above processes end when idle.
    processes_max: int = 0
    # Longest a message waits for a free worker before it gets 451 4.3.0 (the client retries).
    queue_seconds: float = 30.0
    # A client address with this many over-bound refusals within penalty_seconds waits behind
    # every other message, and never makes the pool grow (0: never).
    penalty_refusals: int = 3
    penalty_seconds: float = 600.0
    # Making a fax document fit max_fax_bytes (gateway.documents.fit): when it is over the limit,
    # always (every document rendered as black-and-white fax pages), or never (refused as too big).
    fit: Literal["over-limit", "always", "off"] = "over-limit"
    # Time bound of one message's examination and fitting, checked between pages; a worker process
    # still busy a little past it is killed.
    convert_timeout_seconds: float = 60.0
    # Largest fax page rendered, in pixels (1728 wide; an A4 page at fine resolution is 4 million).
    max_page_pixels: int = 12_000_000
    # Bytes all streams of a mail's PDFs may decode to (object and cross-reference streams included),
    # counted in a bounded decode before pikepdf or PDFium opens them.
    max_stream_bytes: int = 256 * 1024 * 1024
    # Largest image decoded, in pixels, one frame (an A4 page at 600 dpi is 35 million), from its header.
    max_image_pixels: int = 40_000_000
    # Pixels of every image and frame of a mail together (200 A4 pages at 300 dpi are 1.74 billion).
    max_total_pixels: int = 2_000_000_000
    # Address space of each worker process (RLIMIT_AS), in bytes; 0: no cap.
    worker_memory_bytes: int = 2 * 1024 * 1024 * 1024
    # Office documents converted to PDF by LibreOffice headless: "auto" (when office_program is found), "off".
    office: Literal["auto", "off"] = "auto"
    # The LibreOffice program (a name looked up on PATH, or a path).
    office_program: str = "soffice"
    # LibreOffice conversions running at once on this machine, over all worker processes.
    office_concurrency: int = 2
    # A cover page before the documents: never, always, or when the body has text beyond a signature
    # ([cover] or [nocover] in the subject decides for one mail).
    cover_page: Literal["off", "always", "when-body"] = "off"
    # A mail with text but no attachment: refused (no document), or its text faxed.
    body_without_attachment: Literal["refuse", "fax"] = "refuse"
    # How long the parts of a split mail (message/partial) wait for the rest of their set, from the first one.
    partial_window_seconds: float = 3600.0
    # Split mails one sender may have waiting for their other parts at once; a part that would open
    # one more is answered 450 4.7.1 (the printer sends it again later).
    partial_max_sets: int = 10


@dataclass(frozen=True)
class StorageSettings:
    backend: Literal["local", "s3"] = "local"
    bucket: str = ""
    prefix: str = "fax/"
    region: str = ""
    endpoint_url: str = ""
    # Presigned GET lifetime (at most 7 days).
    presign_seconds: int = 86400
    # If set, document URLs are <public_base_url>/<key> (a CDN) instead of presigned.
    public_base_url: str = ""
    # Days to keep the object after the job's final state (0: delete at once).
    keep_days: int = 0
    # Connect and read timeout of each S3 call; a call past it is retried later.
    timeout_seconds: float = 30.0


@dataclass(frozen=True)
class StoreSettings:
    # Where the job store lives: "sqlite" (a file in the spool directory: one machine) or
    # "postgresql" (one database several gateways share; needs storage.backend = "s3").
    backend: Literal["sqlite", "postgresql"] = "sqlite"
    # From the environment: FAX_GATEWAY_STORE_DSN (a libpq connection string or postgresql:// URL).
    dsn: Secret = Secret("")


@dataclass(frozen=True)
class ClusterSettings:
    # The name of this gateway among those sharing one PostgreSQL store ([store] backend = "postgresql"):
    # its jobs' leases and its notices' claims carry it, and a second gateway starting under the name of
    # one still alive is refused. Empty: the host name. Each gateway needs its own; unused with SQLite.
    instance: str = ""


def instance_name(settings: Settings) -> str:
    """This gateway's name among those sharing the store: ``cluster.instance``, else the host name."""
    import socket  # local: keeps `import gateway.settings` light

    return settings.cluster.instance or socket.gethostname() or "fax-gateway"


@dataclass(frozen=True)
class ProviderSettings:
    url: str = "https://www.123-fax.net/http.php"
    email: str = ""
    # From the environment: FAX_GATEWAY_PROVIDER_PASSWORD.
    password: Secret = Secret("")
    # Use the built-in simulator instead of the real provider (no fax is sent).
    simulator: bool = False
    connect_timeout: float = 10.0
    total_timeout: float = 60.0
    concurrency: int = 4
    # Copies of receipts by mail: off, sender, address (a fixed archive), or
    # gateway (a per-job address in receipts_domain that the gateway accepts).
    accuse_email: Literal["off", "sender", "address", "gateway"] = "off"
    accuse_email_address: str = ""
    receipts_domain: str = "ar.fax.local"


@dataclass(frozen=True)
class DeliverySettings:
    min_backoff_seconds: float = 60.0
    max_backoff_seconds: float = 3600.0
    max_queue_lifetime_seconds: float = 2 * 86400.0
    # No-credit holds are retried this often.
    credit_retry_seconds: float = 1800.0
    # An ambiguous submission waits this long for a matching receipt.
    ambiguous_grace_seconds: float = 1800.0
    ambiguous_action: Literal["resubmit", "operator"] = "resubmit"
    # Resubmissions of one job after ambiguous answers (each after its grace, with the same reference).
    ambiguous_resubmits: int = 2
    # When the gateway was down for part of the grace period (the job was found mid-submission at
    # start-up, or the daemon stopped meanwhile), a receipt may have been missed: leave the job to an
    # "operator" (the sender is told it is being checked), or "resubmit" all the same.
    ambiguous_unwatched_action: Literal["resubmit", "operator"] = "operator"
    # A job found mid-step at start-up this many times is quarantined.
    max_recoveries: int = 3
    # Automatic resubmission on busy / no answer (0: off).
    busy_retries: int = 0
    busy_retry_delay_seconds: float = 600.0
    # How often the worker looks for work another process (the CLI) queued; retries, grace
    # periods and credit holds fire at their own due time, not at this tick.
    poll_seconds: float = 5.0
    # Accept and spool, but submit nothing (maintenance, benchmarks).
    paused: bool = False
    # A job being stored and submitted is leased to the gateway working on it for this long, renewed every
    # third of it while it works; a lease that ran out (the gateway died or lost the store) lets another
    # gateway take the job over as start-up recovery would (a submission becomes ambiguous, never resent
    # blindly). More than provider.total_timeout + storage.timeout_seconds: one upload and one submission
    # fit in it even with no renewal.
    lease_seconds: float = 300.0


@dataclass(frozen=True)
class HttpSettings:
    listen: HostPort = HostPort("127.0.0.1", 8025)
    # How the provider reaches this listener (receipt callback, local documents).
    public_url: str = "http://127.0.0.1:8025"
    # From the environment: FAX_GATEWAY_CALLBACK_SECRET (part of the callback path).
    callback_secret: Secret = Secret("")
    # Source networks allowed to call the receipt callback; empty: any.
    callback_networks: tuple[str, ...] = ()
    # Source networks allowed to read /healthz and /metrics and to use the console (/admin/); empty: any.
    status_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # Receipts for a reference no job has yet (kept only while a submission to their number is in
    # flight): at most this many kept per minute, and this many on file over two days; past either,
    # the callback answers 503 and keeps nothing.
    unknown_receipts_per_minute: int = 60
    unknown_receipts_max: int = 1000
    # Users of the web console at /admin/ ([[http.admins]]); none: the console is off.
    admins: tuple[Admin, ...] = ()
    # A console session ends after this many seconds without a request.
    admin_session_seconds: float = 3600.0
    # Failed console logins from one address before each further try is refused for a while (doubling).
    login_failures_before_backoff: int = 3
    login_backoff_seconds: float = 2.0


@dataclass(frozen=True)
class NotifySettings:
    relay: HostPort = HostPort("127.0.0.1", 25)
    relay_starttls: bool = False
    relay_username: str = ""
    # From the environment: FAX_GATEWAY_RELAY_PASSWORD.
    relay_password: Secret = Secret("")
    from_address: str = "fax-gateway@localhost"
    # Administrator alerts; empty disables them (they are still logged).
    admin_address: str = ""
    # An alert that stops faxing goes out at once; repeats of a kind, and other alerts, at most once per interval.
    admin_alert_interval_seconds: float = 900.0
    # A job not final this long after its mail came gets one "delayed" notice saying why (0: never).
    delay_notice_seconds: float = 900.0
    language: Literal["en", "fr"] = "en"
    # The zone of the times receipts and alerts give (an IANA name such as "Europe/Paris"; empty: the system's).
    timezone: str = ""
    # Who "the sender" is, first usable wins: reply-to, from, envelope.
    recipient_order: tuple[str, ...] = ("reply-to", "from", "envelope")
    # Scanner address -> person or team that gets its receipts.
    sender_map: Mapping[str, str] = field(default_factory=dict)
    receipts: Literal["all", "failures"] = "all"
    accepted_notice: bool = False
    attach_document: bool = False
    # A notice the relay does not take is retried with backoff (doubling from
    # min to max) until it is this old, then recorded as failed.
    max_retry_seconds: float = 5 * 86400.0
    min_backoff_seconds: float = 60.0
    max_backoff_seconds: float = 3600.0
    # CA file to verify the relay's STARTTLS certificate with (empty: the system's).
    relay_ca_file: str = ""
    relay_timeout: float = 60.0
    # A link to the fax's status page (<http.public_url>/fax/<token>) in every receipt and notice:
    # true, false, or "auto" (on when public_url is not a loopback address).
    status_links: bool | Literal["auto"] = "auto"
    # Days the status page answers after the job's final state (then 410 Gone).
    status_days: int = 30


@dataclass(frozen=True)
class LogSettings:
    format: Literal["plain", "json"] = "plain"
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True)
class Settings:
    smtp: SmtpSettings = SmtpSettings()
    numbers: NumberSettings = NumberSettings()
    quotas: QuotaSettings = QuotaSettings()
    spool: SpoolSettings = SpoolSettings()
    documents: DocumentSettings = DocumentSettings()
    storage: StorageSettings = StorageSettings()
    store: StoreSettings = StoreSettings()
    provider: ProviderSettings = ProviderSettings()
    delivery: DeliverySettings = DeliverySettings()
    cluster: ClusterSettings = ClusterSettings()
    http: HttpSettings = HttpSettings()
    notify: NotifySettings = NotifySettings()
    log: LogSettings = LogSettings()


# Secrets never live in the file: (section, field) -> environment variable.
SECRET_ENV = {
    ("provider", "password"): "FAX_GATEWAY_PROVIDER_PASSWORD",
    ("http", "callback_secret"): "FAX_GATEWAY_CALLBACK_SECRET",
    ("notify", "relay_password"): "FAX_GATEWAY_RELAY_PASSWORD",
    ("store", "dsn"): "FAX_GATEWAY_STORE_DSN",
}

_HOSTPORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.\-]+)):(?P<port>\d{1,5})$")
_ATEXT = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~\-]*"
_SENDER_PATTERN = re.compile(rf"^{_ATEXT}\*?{_ATEXT}@(\*\.)?[A-Za-z0-9.\-]+$")
_ADDRESS = re.compile(r"^[^@\s<>]+@[A-Za-z0-9.\-]+$")


def parse_hostport(key: str, value: object) -> HostPort:
    if not isinstance(value, str) or not (m := _HOSTPORT.match(value)) or not 0 <= int(m["port"]) <= 65535:
        raise SettingsError(f"{key}: {value!r} is not host:port")
    host = m["v6"] or m["host"]
    if m["v6"]:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise SettingsError(f"{key}: {value!r} is not host:port") from None
    return HostPort(host, int(m["port"]))


def _convert(key: str, hint: Any, value: object) -> Any:
    """Turn a TOML value into the field's type, or raise naming the key."""
    origin = typing.get_origin(hint)
    if hint is HostPort:
        return parse_hostport(key, value)
    if origin in (typing.Union, types.UnionType):  # the first type that takes the value
        for arm in typing.get_args(hint):
            try:
                return _convert(key, arm, value)
            except SettingsError:
                pass
        raise SettingsError(f"{key}: {value!r} is not {' or '.join(_words(arm) for arm in typing.get_args(hint))}")
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise SettingsError(f"{key}: expected a table, got {type(value).__name__}")
        return _build(key, hint, value)
    if origin is Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(repr(a) for a in typing.get_args(hint))
            raise SettingsError(f"{key}: {value!r} is not one of {choices}")
        return value
    if origin is tuple:
        (item,) = typing.get_args(hint)[:1]
        if not isinstance(value, list):
            raise SettingsError(f"{key}: expected a list, got {type(value).__name__}")
        return tuple(_convert(f"{key}[{i}]", item, v) for i, v in enumerate(value))
    if origin in (Mapping, dict):
        if not isinstance(value, dict):
            raise SettingsError(f"{key}: expected a table, got {type(value).__name__}")
        return types.MappingProxyType({str(k): _convert(f"{key}.{k}", str, v) for k, v in value.items()})
    if hint is Secret:
        raise SettingsError(f"{key}: secrets are not read from the file; set the environment variable")
    return _scalar(key, hint, value)


# Scalar types: (accepts the TOML value, words for the error, conversion).
_SCALARS: dict[Any, tuple[Callable[[object], bool], str, Callable[[Any], Any]]] = {
    bool: (lambda v: isinstance(v, bool), "true or false", bool),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer", int),
    float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number", float),
    str: (lambda v: isinstance(v, str), "a string", str),
}


def _words(hint: Any) -> str:
    """What a value of type ``hint`` is, for an error message."""
    if typing.get_origin(hint) is Literal:
        return ", ".join(repr(a) for a in typing.get_args(hint))
    return _SCALARS[hint][1] if hint in _SCALARS else getattr(hint, "__name__", str(hint))


def _scalar(key: str, hint: Any, value: object) -> Any:
    if hint not in _SCALARS:
        raise SettingsError(f"{key}: unsupported setting type {hint!r}")  # pragma: no cover
    accepts, words, convert = _SCALARS[hint]
    if not accepts(value):
        raise SettingsError(f"{key}: expected {words}, got {value!r}")
    return convert(value)


def _build(prefix: str, cls: type, table: Mapping[str, object]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in table:
        if k not in names:
            raise SettingsError(f"{prefix + '.' if prefix else ''}{k}: unknown setting")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in table:
            kwargs[f.name] = _convert(key, hints[f.name], table[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SettingsError(f"{key}: required")
    return cls(**kwargs)


def _positive(key: str, value: float, *, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        raise SettingsError(f"{key}: must be {'zero or more' if zero_ok else 'more than zero'}, got {value!r}")


def _check_address(key: str, value: str, *, empty_ok: bool = True) -> None:
    if (value or not empty_ok) and not _ADDRESS.match(value):
        raise SettingsError(f"{key}: {value!r} is not an e-mail address")


def _validate_documents(d: DocumentSettings) -> None:
    if not d.accepted_types:
        raise SettingsError("documents.accepted_types: at least one type is needed")
    for key in ("max_fax_bytes", "max_mime_depth", "max_parts", "max_decoded_bytes", "max_pdf_pages"):
        _positive(f"documents.{key}", getattr(d, key))
    for i, t in enumerate(d.accepted_types):
        if t not in ("pdf", "tiff", "jpeg", "png", "gif"):
            raise SettingsError(f"documents.accepted_types[{i}]: {t!r} is not one of pdf, tiff, jpeg, png, gif"
                                + (" (it is converted first: list it in documents.convert_types)"
                                   if t in CONVERT_KINDS else ""))  # fmt: skip
    _validate_conversion(d)
    if d.max_mime_depth > 200:
        raise SettingsError(f"documents.max_mime_depth: {d.max_mime_depth} is over 200")
    _positive("documents.min_image_pixels", d.min_image_pixels, zero_ok=True)
    _positive("documents.processes", d.processes, zero_ok=True)
    if d.processes > 64:
        raise SettingsError(f"documents.processes: {d.processes} is over 64")
    if not 0 < d.convert_timeout_seconds <= 3600:
        raise SettingsError(f"documents.convert_timeout_seconds: {d.convert_timeout_seconds!r} is not in (0, 3600]")
    if not 1_000_000 <= d.max_page_pixels <= 100_000_000:
        raise SettingsError(f"documents.max_page_pixels: {d.max_page_pixels} is not between 1000000 and 100000000")
    if d.processes_max and not d.processes <= d.processes_max <= 64:
        raise SettingsError(f"documents.processes_max: {d.processes_max} is not between processes ({d.processes}) "
                            "and 64 (0: twice processes)")  # fmt: skip
    _positive("documents.processes_max", d.processes_max, zero_ok=True)
    if not 0 < d.queue_seconds <= 600:
        raise SettingsError(f"documents.queue_seconds: {d.queue_seconds!r} is not in (0, 600]")
    _positive("documents.penalty_refusals", d.penalty_refusals, zero_ok=True)
    _positive("documents.penalty_seconds", d.penalty_seconds)
    _positive("documents.partial_max_sets", d.partial_max_sets)
    if not 0 < d.partial_window_seconds <= 7 * 86400:
        raise SettingsError(f"documents.partial_window_seconds: {d.partial_window_seconds!r} is not in (0, 604800]")
    for key in ("max_stream_bytes", "max_image_pixels", "max_total_pixels"):
        _positive(f"documents.{key}", getattr(d, key))
    if d.max_image_pixels > 89_000_000:  # Pillow's own decompression-bomb threshold warns past it
        raise SettingsError(f"documents.max_image_pixels: {d.max_image_pixels} is over 89000000")
    if d.worker_memory_bytes and d.worker_memory_bytes < 256 * 1024 * 1024:
        raise SettingsError(f"documents.worker_memory_bytes: {d.worker_memory_bytes} is under 268435456 (0: no cap)")


def _validate_conversion(d: DocumentSettings) -> None:
    for i, t in enumerate(d.convert_types):
        if t not in CONVERT_KINDS:
            raise SettingsError(f"documents.convert_types[{i}]: {t!r} is not one of {', '.join(CONVERT_KINDS)}")
    if not 1 <= d.office_concurrency <= 64:
        raise SettingsError(f"documents.office_concurrency: {d.office_concurrency} is not between 1 and 64")
    if not d.office_program.strip():
        raise SettingsError("documents.office_program: empty (the default is 'soffice')")


def _check_cidr(key: str, cidr: str) -> None:
    try:
        ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise SettingsError(f"{key}: {cidr!r} is not a CIDR network") from None


def _check_url(key: str, url: str) -> None:
    if not re.match(r"^https?://[^\s?#]+$", url):
        raise SettingsError(f"{key}: {url!r} is not an http(s) URL")


_ADMIN_NAME = re.compile(r"[A-Za-z0-9._@\-]{1,64}")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"(?=.{{1,253}}$)({_LABEL}\.)*{_LABEL}")


def _validate_access(smtp: SmtpSettings) -> None:
    from gateway import passwords as auth

    for i, net in enumerate(smtp.trusted_networks):
        _check_cidr(f"smtp.trusted_networks[{i}].cidr", net.cidr)
    lists = [(f"smtp.trusted_networks[{i}]", n.senders) for i, n in enumerate(smtp.trusted_networks)]
    lists += [(f"smtp.users[{i}]", u.senders) for i, u in enumerate(smtp.users)]
    for where, senders in lists:
        for j, pat in enumerate(senders):
            if not _SENDER_PATTERN.match(pat):
                raise SettingsError(f"{where}.senders[{j}]: {pat!r} is not a sender pattern like '*@example.com'")
    for i, u in enumerate(smtp.users):
        if not auth.is_hash(u.password_hash):
            raise SettingsError(f"smtp.users[{i}].password_hash: not a hash made by 'fax-gateway hash-password'")
    if len({u.name for u in smtp.users}) != len(smtp.users):
        raise SettingsError("smtp.users: a user name appears twice")


def _validate_smtp(smtp: SmtpSettings) -> None:
    _validate_access(smtp)
    if not smtp.fax_domains:
        raise SettingsError("smtp.fax_domains: at least one fax domain is needed")
    for i, d in enumerate(smtp.fax_domains):
        if not _DOMAIN.fullmatch(d):
            raise SettingsError(f"smtp.fax_domains[{i}]: {d!r} is not a domain name")
    if bool(smtp.tls_cert) != bool(smtp.tls_key):
        raise SettingsError("smtp.tls_cert: tls_cert and tls_key go together")
    for key in ("tls_cert", "tls_key"):
        path = getattr(smtp, key)
        if path and not Path(path).is_file():
            raise SettingsError(f"smtp.{key}: {path!r} does not exist")
    _validate_listeners(smtp)
    for key in ("max_message_size", "max_line_length", "max_recipients", "max_connections", "max_errors"):
        _positive(f"smtp.{key}", getattr(smtp, key))
    for key in ("max_commands", "idle_timeout", "shutdown_grace_seconds", "data_timeout", "max_refused_mail"):
        _positive(f"smtp.{key}", getattr(smtp, key))
    _positive("smtp.max_connections_per_address", smtp.max_connections_per_address)
    _positive("smtp.reserved_connections", smtp.reserved_connections, zero_ok=True)
    _positive("smtp.data_min_rate", smtp.data_min_rate, zero_ok=True)
    if smtp.max_line_length < 1000:
        raise SettingsError(f"smtp.max_line_length: must be at least 1000 (RFC 5321), got {smtp.max_line_length}")


def _validate_listeners(smtp: SmtpSettings) -> None:
    names: set[str] = set()
    for i, (given, li) in enumerate(zip(smtp.listeners, smtp.effective_listeners(), strict=False)):
        key = f"smtp.listeners[{i}]"
        if li.name in names:
            raise SettingsError(f"{key}.name: {li.name!r} is the name of another listener: give each its own name")
        names.add(li.name)
        if bool(given.tls_cert) != bool(given.tls_key):
            raise SettingsError(f"{key}.tls_cert: tls_cert and tls_key go together")
        for field_name in ("tls_cert", "tls_key"):
            path = getattr(given, field_name)
            if path and not Path(path).is_file():
                raise SettingsError(f"{key}.{field_name}: {path!r} does not exist")
        if li.tls != "none" and not li.tls_cert:
            raise SettingsError(
                f"{key}.tls: {li.tls!r} needs a certificate: set smtp.tls_cert and smtp.tls_key"
                f" (or this listener's tls_cert and tls_key), or tls = \"none\""
            )


def _validate_numbers(numbers: NumberSettings) -> None:
    import phonenumbers  # local: keeps `import gateway.settings` light

    regions = phonenumbers.SUPPORTED_REGIONS
    if numbers.default_region not in regions:
        raise SettingsError(f"numbers.default_region: {numbers.default_region!r} is not a region code like 'FR'")
    for i, r in enumerate(numbers.allowed_regions):
        if r not in regions:
            raise SettingsError(f"numbers.allowed_regions[{i}]: {r!r} is not a region code like 'FR'")


def _validate_http(http: HttpSettings) -> None:
    for i, cidr in enumerate(http.status_networks):
        _check_cidr(f"http.status_networks[{i}]", cidr)
    for i, cidr in enumerate(http.callback_networks):
        _check_cidr(f"http.callback_networks[{i}]", cidr)
    # The secret is one path segment of the callback URL (/receipt/<secret>).
    if http.callback_secret and not re.fullmatch(r"[A-Za-z0-9._~\-]{8,200}", http.callback_secret.reveal()):
        raise SettingsError(
            "http.callback_secret: FAX_GATEWAY_CALLBACK_SECRET must be 8 to 200 letters, digits or . _ ~ -"
        )
    _check_url("http.public_url", http.public_url)
    for key in ("unknown_receipts_per_minute", "unknown_receipts_max"):
        _positive(f"http.{key}", getattr(http, key), zero_ok=True)
    from gateway import passwords

    for i, admin in enumerate(http.admins):
        if not _ADMIN_NAME.fullmatch(admin.name):
            raise SettingsError(f"http.admins[{i}].name: {admin.name!r} is not 1 to 64 letters, digits or . _ @ -")
        if not passwords.is_hash(admin.password_hash):
            raise SettingsError(f"http.admins[{i}].password_hash: not a hash made by 'fax-gateway hash-password'")
    if len({a.name for a in http.admins}) != len(http.admins):
        raise SettingsError("http.admins: a name appears twice")
    _positive("http.admin_session_seconds", http.admin_session_seconds)
    _positive("http.login_failures_before_backoff", http.login_failures_before_backoff)
    _positive("http.login_backoff_seconds", http.login_backoff_seconds)


def _validate_storage(storage: StorageSettings) -> None:
    if not 1 <= storage.presign_seconds <= 7 * 86400:
        raise SettingsError(f"storage.presign_seconds: {storage.presign_seconds} is not between 1 and 604800 (7 days)")
    if storage.backend == "s3" and not storage.bucket:
        raise SettingsError("storage.bucket: required with backend = 's3'")
    _positive("storage.keep_days", storage.keep_days, zero_ok=True)
    _positive("storage.timeout_seconds", storage.timeout_seconds)
    if storage.endpoint_url and not re.match(r"^https?://", storage.endpoint_url):
        raise SettingsError(f"storage.endpoint_url: {storage.endpoint_url!r} is not an http(s) URL")


def _validate_store(store: StoreSettings, storage: StorageSettings) -> None:
    if store.backend == "sqlite":
        return  # the DSN, if set, is unused
    if not store.dsn:
        raise SettingsError("store.dsn: store.backend = 'postgresql' needs FAX_GATEWAY_STORE_DSN (never the file)")
    import psycopg  # local: keeps `import gateway.settings` light

    try:
        psycopg.conninfo.conninfo_to_dict(store.dsn.reveal())
    except psycopg.Error:
        # Never the parser's words: they quote the string, password and all.
        raise SettingsError(
            "store.dsn: FAX_GATEWAY_STORE_DSN is not a PostgreSQL connection string"
            " ('host=... dbname=... user=...' or 'postgresql://user@host/dbname')"
        ) from None
    if storage.backend != "s3":
        raise SettingsError(
            f"store.backend: 'postgresql' needs storage.backend = 's3' (it is {storage.backend!r}): with more"
            " than one machine, what a gateway accepted must not live on its own disk"
        )


def _validate_provider(provider: ProviderSettings) -> None:
    _check_url("provider.url", provider.url)
    _check_address("provider.email", provider.email)
    for key in ("concurrency", "connect_timeout", "total_timeout"):
        _positive(f"provider.{key}", getattr(provider, key))
    if provider.accuse_email == "address":
        _check_address("provider.accuse_email_address", provider.accuse_email_address, empty_ok=False)


def _validate_notify(notify: NotifySettings) -> None:
    _check_address("notify.from_address", notify.from_address, empty_ok=False)
    _check_address("notify.admin_address", notify.admin_address)
    for i, who in enumerate(notify.recipient_order):
        if who not in ("reply-to", "from", "envelope"):
            raise SettingsError(f"notify.recipient_order[{i}]: {who!r} is not one of 'reply-to', 'from', 'envelope'")
    for k, v in notify.sender_map.items():
        _check_address(f"notify.sender_map.{k}", v, empty_ok=False)
    for key in ("max_retry_seconds", "min_backoff_seconds", "max_backoff_seconds", "relay_timeout"):
        _positive(f"notify.{key}", getattr(notify, key))
    _positive("notify.delay_notice_seconds", notify.delay_notice_seconds, zero_ok=True)
    if notify.min_backoff_seconds > notify.max_backoff_seconds:
        raise SettingsError("notify.min_backoff_seconds: larger than notify.max_backoff_seconds")
    if notify.relay_ca_file and not Path(notify.relay_ca_file).is_file():
        raise SettingsError(f"notify.relay_ca_file: {notify.relay_ca_file!r} does not exist")
    _positive("notify.status_days", notify.status_days)
    try:
        dates.zone(notify.timezone)
    except ValueError as exc:
        raise SettingsError(f"notify.timezone: {exc}") from None


def _validate_delivery(delivery: DeliverySettings) -> None:
    for key in ("min_backoff_seconds", "max_backoff_seconds", "max_queue_lifetime_seconds"):
        _positive(f"delivery.{key}", getattr(delivery, key))
    for key in ("credit_retry_seconds", "poll_seconds"):
        _positive(f"delivery.{key}", getattr(delivery, key))
    _positive("delivery.ambiguous_resubmits", delivery.ambiguous_resubmits, zero_ok=True)
    if delivery.min_backoff_seconds > delivery.max_backoff_seconds:
        raise SettingsError("delivery.min_backoff_seconds: larger than delivery.max_backoff_seconds")


def _validate_cluster(s: Settings) -> None:
    if s.cluster.instance and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}", s.cluster.instance):
        raise SettingsError(f"cluster.instance: {s.cluster.instance!r} is not 1 to 64 letters, digits or . _ -")
    _positive("delivery.lease_seconds", s.delivery.lease_seconds)
    needed = s.provider.total_timeout + s.storage.timeout_seconds
    if s.delivery.lease_seconds <= needed:
        raise SettingsError(
            f"delivery.lease_seconds: {s.delivery.lease_seconds!r} must be more than provider.total_timeout"
            f" + storage.timeout_seconds ({needed!r}): a submission must fit in one lease"
        )


def validate(s: Settings) -> None:
    """Value and cross-field checks that a type alone cannot express, section by section."""
    _validate_smtp(s.smtp)
    _validate_numbers(s.numbers)
    _positive("quotas.per_sender_hourly", s.quotas.per_sender_hourly, zero_ok=True)
    _positive("quotas.global_hourly", s.quotas.global_hourly, zero_ok=True)
    _validate_documents(s.documents)
    _validate_storage(s.storage)
    _validate_store(s.store, s.storage)
    _validate_provider(s.provider)
    _validate_http(s.http)
    _validate_notify(s.notify)
    _validate_delivery(s.delivery)
    _validate_cluster(s)


def status_links_on(settings: Settings) -> bool:
    """Whether receipts and notices carry the status page's link (``notify.status_links``)."""
    if settings.notify.status_links != "auto":
        return bool(settings.notify.status_links)
    host = urllib.parse.urlsplit(settings.http.public_url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a name: a public one, or at least not this machine's loopback


def from_mapping(table: Mapping[str, object], env: Mapping[str, str] | None = None) -> Settings:
    """Build and validate settings from a parsed TOML table and an environment."""
    env = os.environ if env is None else env
    settings: Settings = _build("", Settings, table)
    for (section, name), var in SECRET_ENV.items():
        if env.get(var):
            sect = getattr(settings, section)
            settings = dataclasses.replace(settings, **{section: dataclasses.replace(sect, **{name: Secret(env[var])})})
    validate(settings)
    return settings


def load(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file at ``path`` (None: embedded defaults) and validate."""
    table: dict[str, object] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                table = tomllib.load(f)
        except OSError as exc:
            raise SettingsError(f"{path}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {toml_advice(str(exc))}") from None
    return from_mapping(table, env)


# What tomllib's messages mean for someone editing the settings file, and how to fix it.
_TOML_ADVICE: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"Cannot mutate immutable namespace \((?P<name>[^)]*)\)"),
        "{table} is written both as a key (an array or inline table) and as a [[table]] or [table] section:"
        " keep one, e.g. delete the line '{key} = ...' and keep the [[{table}]] sections",
    ),
    (
        re.compile(r"Cannot declare \((?P<name>[^)]*)\) twice"),
        "the section [{table}] appears twice: merge the two into one",
    ),
    (re.compile(r"Cannot overwrite a value"), "a key is set twice in the same section: keep one"),
    (
        re.compile(r"Expected newline or end of document after a statement|Invalid value"),
        'a value is not written as TOML: quote text, e.g. listen = "127.0.0.1:25"',
    ),
)


def toml_advice(message: str) -> str:
    """tomllib's message (which names the line) and, where it is a known mistake, what to change."""
    for pattern, advice in _TOML_ADVICE:
        if m := pattern.search(message):
            parts = [p.strip(" '\",") for p in (m.groupdict().get("name") or "").split(",") if p.strip(" '\",")]
            table = ".".join(parts)
            return f"{message}: {advice.format(table=table, key=parts[-1] if parts else '')}"
    return message


# Values that are not secrets the gateway uses, but would help whoever reads them guess one.
MASKED_FIELDS = frozenset({"password_hash"})


def describe(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, secrets and password hashes masked (for check-config)."""

    def plain(v: Any) -> Any:
        if isinstance(v, Secret):
            return "********" if v else ""
        if isinstance(v, HostPort):
            return str(v)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            values = {f.name: getattr(v, f.name) for f in dataclasses.fields(v)}
            return {k: ("********" if x else "") if k in MASKED_FIELDS else plain(x) for k, x in values.items()}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        return v

    result: dict[str, Any] = plain(settings)
    return result
