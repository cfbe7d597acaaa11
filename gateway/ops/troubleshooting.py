"""The README's troubleshooting tables, generated from the decision tables themselves.

``python3 -m gateway.ops.troubleshooting`` prints the Markdown that goes between the
``<!-- troubleshooting:start -->`` and ``<!-- troubleshooting:end -->``
markers of README.md: every SMTP reply (gateway/replies.py), every provider
answer code (gateway/delivery/provider.py) and every receipt code (gateway/arcodes.py),
each with what to do. A test fails when the README is not what this prints,
so a new reply cannot go undocumented.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway import arcodes, replies
from gateway.delivery import provider

START = "<!-- troubleshooting:start -->"
END = "<!-- troubleshooting:end -->"

_CLIENT_BUG = "The client broke the SMTP protocol; update or reconfigure the sending software."
_RETRY = "Nothing: the client retries later by itself."

# What the sender (or the administrator) does about each reply, by name.
ADVICE: dict[str, str] = {
    "GREETING": "Nothing: the gateway is ready.",
    "START_DATA": "Nothing: the client sends the message now.",
    "OK": "Nothing.",
    "BYE": "Nothing.",
    "TLS_READY": "Nothing: the session goes on encrypted.",
    "HELP": "Nothing.",
    "HELP_SYNTAX": "Nothing.",
    "HELP_UNKNOWN": "Ask HELP about one of the commands listed.",
    "CANNOT_VRFY": "Nothing: addresses are not confirmed ahead; the answer to RCPT TO says whether a number is taken.",
    "SENDER_OK": "Nothing.",
    "RECIPIENT_OK": "Nothing.",
    "QUEUED": "Nothing: the fax is queued; the receipt comes by mail. `fax-gateway show JOB` follows it.",
    "REFUSED_BY_MAIL": "Nothing at the device: the mail cannot be faxed as it is (its network or user has"
    " `refusals = \"mail\"`); the sender gets a mail that says why and what to change.",
    "AUTH_OK": "Nothing.",
    "RECEIPT_ACCEPTED": "Nothing: a provider receipt copy was recorded.",
    "RECEIPT_RECIPIENT_OK": "Nothing.",
    "ERROR": "A fault of the gateway: the log has the details (search the session id). The client retries.",
    "STORE_UNAVAILABLE": _RETRY + " Administrator: the PostgreSQL server of `store.backend = \"postgresql\"` is"
    " down or unreachable; `/healthz` says so and the log says why. Nothing was kept of the mail.",
    "STORAGE_UNAVAILABLE": _RETRY + " Administrator: the S3 bucket (`storage.bucket`) did not take the mail before"
    " the 250 (down, refusing the credentials, too slow); the log says why. Nothing was kept of the mail.",
    "LOW_SPACE": "Administrator: free space in the spool directory (`spool.min_free_bytes`).",
    "TOO_MANY_RECIPIENTS": "The client sends the rest in another message (most do so by themselves).",
    "QUOTA_SENDER": "Wait for the next hour, or raise `quotas.per_sender_hourly`.",
    "PARTS_WAITING": "Nothing: the printer sends the part again later. If it lasts, its earlier split mails lack"
    " parts: scan them again, or raise `documents.partial_max_sets`.",
    "QUOTA_GLOBAL": "Wait for the next hour, or raise `quotas.global_hourly`.",
    "TOO_MANY_CONNECTIONS": _RETRY + " If it lasts, raise `smtp.max_connections`; a client outside the trusted"
    " networks gets no slot of `smtp.reserved_connections`.",
    "TOO_MANY_FROM_ADDRESS": _RETRY + " One address outside the trusted networks holds"
    " `smtp.max_connections_per_address` connections: close idle ones, or trust its network.",
    "AUTH_BACKOFF": "Fix the password in the sending device; attempts from that address are slowed down.",
    "TLS_UNAVAILABLE": "Administrator: set `smtp.tls_cert` and `smtp.tls_key`, or turn STARTTLS off in the client.",
    "IDLE_TIMEOUT": _RETRY,
    "TOO_MANY_ERRORS": _CLIENT_BUG,
    "TOO_MANY_COMMANDS": _CLIENT_BUG,
    "TOO_MANY_REFUSALS": "The client may not send (see the 530 or 550 before it): give it a user, or add its"
    " network to `smtp.trusted_networks`. Closed after `smtp.max_refused_mail` refusals.",
    "COMMAND_TIMEOUT": "The client sent part of a command and stopped: a network or client fault"
    " (`smtp.idle_timeout`).",
    "DATA_TIMEOUT": "The message came too slowly: check the link, send a smaller mail, or raise"
    " `smtp.data_timeout`.",
    "DATA_TOO_SLOW": "The message came too slowly: check the link, or lower `smtp.data_min_rate`.",
    "SHUTTING_DOWN": _RETRY + " The gateway is restarting.",
    "MIXED_RECIPIENTS": "Send faxes and receipt copies in separate messages.",
    "AUTH_REQUIRED": "Log in (SMTP AUTH) in the sending device, or add its network to `smtp.trusted_networks`.",
    "ENCRYPTION_REQUIRED": "Turn on STARTTLS in the device, or allow `plaintext_auth` for its trusted network.",
    "AUTH_FAILED": "Check the user name and password (`fax-gateway hash-password` makes a new hash).",
    "NOT_PERMITTED": "Administrator: add the client's network to `smtp.trusted_networks`, or give it a user.",
    "SENDER_NOT_PERMITTED": "Use an allowed sender address, or widen `senders` for that network or user.",
    "NULL_SENDER": "Send from a real address: the receipt has to go somewhere.",
    "FAX_DOMAIN_SENDER": "Send from a real mailbox, not from an address in a fax domain.",
    "RELAY_DENIED": "Address the mail to the fax number at a fax domain (`smtp.fax_domains`); nothing else is relayed.",
    "BAD_NUMBER_SYNTAX": "Write the number with digits only (dots, dashes, a leading + or 00 are fine).",
    "UNKNOWN_RECEIPT_ADDRESS": "Nothing: a receipt address that no job has (an old or forged one).",
    "INVALID_NUMBER": "Check the number: the reason says what is wrong with it.",
    "DESTINATION_DENIED": "That destination is blocked (premium-rate, abroad ...): see `[numbers]`.",
    "NO_VALID_RECIPIENTS": "Fix the recipients refused earlier in the same session.",
    "MESSAGE_TOO_BIG": "Send a smaller mail (fewer pages, lower scan resolution), or raise `smtp.max_message_size`.",
    "LINE_TOO_LONG": "The mailer writes over-long lines; raise `smtp.max_line_length` or fix the mailer.",
    "BAD_SYNTAX": _CLIENT_BUG,
    "BAD_SENDER_SYNTAX": "Fix the sender address in the sending device.",
    "COMMAND_SYNTAX": _CLIENT_BUG,
    "UNKNOWN_COMMAND": _CLIENT_BUG,
    "BAD_COMMAND": _CLIENT_BUG,
    "TOO_MANY_UNKNOWN": _CLIENT_BUG,
    "NOT_IMPLEMENTED": _CLIENT_BUG,
    "NEED_HELO": _CLIENT_BUG,
    "NEED_MAIL": _CLIENT_BUG,
    "NEED_RCPT": _CLIENT_BUG,
    "NESTED_MAIL": _CLIENT_BUG,
    "ALREADY_AUTHENTICATED": _CLIENT_BUG,
    "AUTH_MECHANISM": "Use AUTH PLAIN or LOGIN.",
    "AUTH_ABORTED": "Nothing: the client gave up the login.",
    "AUTH_BAD_BASE64": _CLIENT_BUG,
    "PARAMETERS_UNKNOWN": _CLIENT_BUG,
    "BAD_BODY": _CLIENT_BUG,
    "SMTPUTF8_UNSUPPORTED": "Use ASCII addresses.",
    "PART_KEPT": "Nothing: the printer split the scan into several mails (message/partial); the fax goes once"
    " the last one has come. A set still missing parts after `documents.partial_window_seconds` gets a failure"
    " receipt naming them.",
    "NO_DOCUMENT": "Attach the document as a file; the text of the mail is not faxed.",
    "DOC_TYPE": "Convert the attachment to PDF (or TIFF, JPEG, PNG, GIF) and send again.",
    "DOC_EMPTY": "Attach the document again: the file arrived empty.",
    "DOC_ENCODING": "Send again: the attachment was damaged on the way.",
    "DOC_CORRUPT": "Send an intact copy of the file (open it first to check).",
    "DOC_ENCRYPTED": "Remove the password from the PDF and send again.",
    "EXAMINE_BUSY": "Nothing: the client retries later by itself. If it is frequent, raise"
    " `documents.processes_max` (more workers under load) or `documents.queue_seconds`.",
    "DOC_LIMITS": "Send a simpler mail: the document alone, not forwarded mails nested in mails. When the reply"
    " names a setting (`documents.max_stream_bytes`, `max_image_pixels`, `max_total_pixels`,"
    " `worker_memory_bytes`, `convert_timeout_seconds`), the file decodes to more than it allows: send a"
    " lighter scan (black and white, 200-300 dpi), or raise that setting if such files are expected.",
    "DOC_TNEF": "In Outlook, send as HTML or plain text instead of Rich Text.",
    "DOC_TOO_BIG": "Send fewer pages or a lighter scan (black and white, 200 dpi): the provider takes 1 MB."
    " Given only with `documents.fit = \"off\"`; otherwise the gateway shrinks the document first.",
    "DOC_TOO_BIG_FITTED": "Send the pages in several mails, at most as many per mail as the reply says; or scan"
    " in black and white at 200 dpi. The gateway already converted them to fax pages and it was not enough.",
    "DOC_FIT_TIMEOUT": "Send fewer pages per mail, or raise `documents.convert_timeout_seconds`"
    " (each page takes a fraction of a second; a very complex page takes longer).",
    "DOC_NOT_PDF": "Save or export the document as PDF from the program that made it (or scan to PDF); a file"
    " renamed to .pdf is still what it was.",
    "DOC_OFFICE_OFF": "Send the document as PDF; or, administrator: install LibreOffice (Debian packages"
    " `libreoffice-writer-nogui libreoffice-calc-nogui`) and set `documents.office = \"auto\"`.",
    "DOC_OFFICE_ENCRYPTED": "Save the document without its password (in Word: File > Info > Protect Document >"
    " Encrypt with Password, cleared; in Excel, the same under Protect Workbook), or export it as PDF.",
    "DOC_OFFICE_CORRUPT": "Open the file where it was made and save it again, or export it as PDF; the gateway's"
    " log (gateway.documents) has what LibreOffice said.",
}

_PROVIDER_ACTION = {
    provider.Answer.ACCEPTED: "submitted; the receipt settles it",
    provider.Answer.FAILED: "job failed; the sender is told why",
    provider.Answer.FAILED_BUG: "job failed; the sender is told; the administrator gets a bug alert",
    provider.Answer.HOLD_CONFIG: "job held, submissions paused, administrator alerted; fix, then `fax-gateway release`",
    provider.Answer.HOLD_URL: "job held, administrator alerted; fix storage, then `fax-gateway release`",
    provider.Answer.HOLD_CREDIT: "job held and retried every `delivery.credit_retry_seconds`; the sender is told once",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    head = list(header)
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def troubleshooting() -> str:
    all_replies = replies.all_replies()
    missing = sorted(set(all_replies) - set(ADVICE))
    if missing:
        where = "gateway/ops/troubleshooting.py ADVICE"
        raise KeyError(f"no advice for replies: {', '.join(missing)} (add them to {where})")
    lines = ["### SMTP replies", ""]
    lines += _table(
        ["Reply", "Name", "Text", "What to do"],
        (
            [f"`{r.code} {r.enhanced}`".replace(" `", "`"), name, r.text, ADVICE[name]]
            for name, r in sorted(all_replies.items(), key=lambda kv: (kv[1].code, kv[1].enhanced, kv[0]))
        ),
    )
    lines += ["", "### Provider answers (123-fax.net)", ""]
    lines += _table(
        ["Code", "Meaning", "What the gateway does"],
        ([str(code), text, _PROVIDER_ACTION[kind]] for code, (kind, text) in sorted(provider.ANSWERS.items())),
    )
    lines += [
        "",
        "Without a usable answer (timeout after sending, an HTML page, an empty body, a 5xx, a connection cut",
        "mid-answer) the job is **ambiguous**: the provider may have it. It waits for a matching receipt for",
        "`delivery.ambiguous_grace_seconds`, then is resubmitted (at most `delivery.ambiguous_resubmits` times,",
        "only if the gateway listened for the whole grace period) or left to you (`delivery.ambiguous_action`,",
        "`delivery.ambiguous_unwatched_action`): check the provider's account, then `fax-gateway resolve JOB",
        "--sent` or `--not-sent`.",
        "",
        "### Receipt codes",
        "",
    ]
    lines += _table(
        ["Code", "Provider's text", "Meaning", "Category"],
        ([rc.code, rc.french, rc.english, str(rc.category)] for rc in sorted(arcodes.CODES.values(), key=_code_key)),
    )
    lines += [
        "",
        "Busy and no answer can be retried automatically (`delivery.busy_retries`); other failures are final.",
    ]
    return "\n".join(lines)


def _code_key(rc: arcodes.ReceiptCode) -> int:
    return int(rc.code)


if __name__ == "__main__":
    print(troubleshooting())
