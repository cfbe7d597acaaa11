"""The mails the gateway writes: receipts, notices and admin alerts, in English or French.

In: a notification (kind, detail), the job, its message row, the receipt that
decided it, and the settings. Out: an :class:`email.message.EmailMessage`
with a subject that says it all, a plain-words body, RFC 3834 headers
(``Auto-Submitted: auto-replied``, ``In-Reply-To``/``References`` to the
original mail), a Message-ID stable per (job, outcome), and ``X-Fax-*``
headers a program can parse. Pure: no I/O.

All of a mail is in ``notify.language``, its times included, in
``notify.timezone`` with the zone said (:mod:`gateway.dates`); the provider's
``heure`` is the recipient machine's clock and is said to be. What the sender
should do comes from one table: each :class:`Situation` (and each category of
a failing receipt) has its text per language.

The ``X-Fax-*`` headers, for applications that read receipts by program:

- ``X-Fax-Status``: delivered, failed, delayed, accepted, receipt (a copy of the
  provider's own receipt mail) or alert (administrator mails);
- ``X-Fax-Job``: the job id; ``X-Fax-Number``: the number in E.164 (+33...);
- ``X-Fax-Pages``: pages transmitted when delivered, pages of the document otherwise;
- with a provider receipt: ``X-Fax-Pages-Sent``, ``X-Fax-Code`` (the provider's
  code, 0 = received), ``X-Fax-Category`` (delivered, busy, no answer, wrong
  number, document problem, transmission error, number barred, unknown) and
  ``X-Fax-Received`` (the time on the recipient machine, as reported);
- ``X-Fax-Reason``: why it failed or waits, in words (failed and delayed).
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import enum
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime

from gateway import answers, dates
from gateway.arcodes import Category, ReceiptCode, lookup
from gateway.sender import Row
from gateway.settings import Settings
from gateway.store import Delay, Ending, Job, NoticeKind, State, alert_subject, delay_of, is_ar_mail
from gateway.text import clean, pretty_number

# Status words, What-to-do texts, per language. Keys: category values, plus notice kinds.
_STATUS = {
    "en": {"delivered": "delivered", "failed": "not delivered", "delayed": "delayed", "accepted": "accepted",
           "receipt": "receipt from the provider"},
    "fr": {"delivered": "remis", "failed": "non remis", "delayed": "retardé", "accepted": "accepté",
           "receipt": "accusé de réception du fournisseur"},
}  # fmt: skip


class Situation(enum.StrEnum):
    """Where a job stands when a mail tells of it: each has its own "what to do" text, per language."""

    DELIVERED = "delivered"  # the recipient's machine confirmed (a receipt with code 0)
    CONFIRMED = "confirmed"  # no receipt; the administrator confirmed it from the provider's records
    NOT_SENT = "not-sent"  # refused by the provider, or could not be sent in time: the reason says why
    CANCELLED = "cancelled"  # cancelled by the administrator
    DELAYED_CREDIT = "delayed-credit"  # the fax account needs credit
    DELAYED_RETRY = "delayed-retry"  # the provider or the storage could not be reached yet: retried on a timer
    DELAYED_OPERATOR = "delayed-operator"  # waiting for the administrator (held, left after unclear answers, ...)
    DELAYED = "delayed"  # not final yet for another reason (an unclear answer being checked, waiting its turn)
    ACCEPTED = "accepted"  # notify.accepted_notice
    RECEIPT = "receipt"  # a copy of the provider's own receipt mail


# What to do, per language: by Situation, or by the category of the provider's receipt that failed the fax.
_NEXT: dict[str, dict[str, str]] = {
    "en": {
        Situation.DELIVERED: "Nothing. The recipient's machine confirmed the fax.",
        Situation.CONFIRMED: "Nothing. No receipt came from the recipient's machine, but the fax administrator "
        "confirmed from the provider's records that the fax went through.",
        Situation.NOT_SENT: "The fax was not sent, for the reason above. If it names something to change (the "
        "number, the document), correct it; then send the mail again.",
        Situation.CANCELLED: "Nothing to correct: the fax administrator cancelled this fax, so it was not sent. "
        "Send the mail again if it is still needed.",
        Situation.DELAYED_CREDIT: "Nothing for now. The fax goes out as soon as the fax account is credited again, "
        "and you will get its receipt.",
        Situation.DELAYED_RETRY: "Nothing for now. The gateway tries again on its own; you will get the fax's "
        "receipt, or a mail that says why it could not be sent.",
        Situation.DELAYED_OPERATOR: "Nothing for now, and do not send the mail again: the fax could go out twice. "
        "The fax administrator will send it or tell you why it cannot go; you will get its receipt, or a mail "
        "that says what went wrong.",
        Situation.DELAYED: "Nothing for now. The gateway makes sure the fax is sent once and only once; you will "
        "get its receipt, or a mail that says what went wrong.",
        Situation.ACCEPTED: "Nothing for now. You will get another mail when the recipient's machine answers.",
        Situation.RECEIPT: "The provider's own mail is attached as it came.",
        Category.BUSY: "The line was busy. Send the mail again later.",
        Category.NO_ANSWER: "No fax machine answered. Check with the recipient that the machine is on and that "
        "the number is a fax line, then send the mail again.",
        Category.WRONG_NUMBER: "The number does not reach a fax machine. Check it and send the mail again to the "
        "right <number>@ address.",
        Category.DOCUMENT: "The document could not be converted for faxing. Send it again as a plain PDF "
        "(not encrypted, no forms).",
        Category.TRANSMISSION: "The transmission broke off. Send the mail again; if it fails again, ask the "
        "recipient to check their machine.",
        Category.BARRED: "The number refuses faxes (do-not-call list or EcoFAX). Contact the recipient another way.",
        Category.UNKNOWN: "The provider gave a code the gateway does not know. Ask the fax administrator, "
        "quoting the job id.",
    },
    "fr": {
        Situation.DELIVERED: "Rien. Le fax distant a confirmé la réception.",
        Situation.CONFIRMED: "Rien. Aucun accusé n'est venu du fax distant, mais l'administrateur fax a confirmé, "
        "d'après le relevé du fournisseur, que le fax est bien parti.",
        Situation.NOT_SENT: "Le fax n'a pas été envoyé, pour le motif ci-dessus. S'il désigne quelque chose à "
        "changer (le numéro, le document), corrigez-le, puis renvoyez le message.",
        Situation.CANCELLED: "Rien à corriger : l'administrateur fax a annulé ce fax, il n'a donc pas été envoyé. "
        "Renvoyez le message s'il est toujours nécessaire.",
        Situation.DELAYED_CREDIT: "Rien pour l'instant. Le fax partira dès que le compte fax sera recrédité, et "
        "vous recevrez son accusé de réception.",
        Situation.DELAYED_RETRY: "Rien pour l'instant. La passerelle réessaie d'elle-même ; vous recevrez l'accusé "
        "de réception du fax, ou un message qui dit pourquoi il n'a pas pu partir.",
        Situation.DELAYED_OPERATOR: "Rien pour l'instant, et ne renvoyez pas le message : le fax pourrait partir "
        "deux fois. L'administrateur fax l'enverra ou vous dira pourquoi il ne peut pas partir ; vous recevrez son "
        "accusé de réception, ou un message qui dit ce qui n'a pas marché.",
        Situation.DELAYED: "Rien pour l'instant. La passerelle veille à ce que le fax parte une fois et une seule ; "
        "vous recevrez son accusé de réception, ou un message qui dit ce qui n'a pas marché.",
        Situation.ACCEPTED: "Rien pour l'instant. Vous recevrez un autre message quand le fax distant aura répondu.",
        Situation.RECEIPT: "Le message du fournisseur est joint tel quel.",
        Category.BUSY: "La ligne était occupée. Renvoyez le message plus tard.",
        Category.NO_ANSWER: "Aucun fax n'a répondu. Vérifiez avec le destinataire que son fax est allumé et que "
        "le numéro est bien une ligne de fax, puis renvoyez le message.",
        Category.WRONG_NUMBER: "Ce numéro n'aboutit pas à un fax. Vérifiez-le et renvoyez le message à la bonne "
        "adresse <numéro>@.",
        Category.DOCUMENT: "Le document n'a pas pu être converti pour le fax. Renvoyez-le en PDF simple "
        "(sans mot de passe, sans formulaire).",
        Category.TRANSMISSION: "La transmission a été interrompue. Renvoyez le message ; si l'échec se répète, "
        "demandez au destinataire de vérifier son fax.",
        Category.BARRED: "Ce numéro refuse les fax (liste rouge ou EcoFAX). Contactez le destinataire autrement.",
        Category.UNKNOWN: "Le fournisseur a donné un code inconnu de la passerelle. Contactez l'administrateur "
        "fax en citant le numéro de tâche.",
    },
}

# The reason a "delayed" notice gives, per language.
_DELAY_REASON: dict[str, dict[Delay, str]] = {
    "en": {
        Delay.CREDIT: "the fax service account needs credit; the fax will be sent later",
        Delay.RETRY: "the fax service could not be reached yet; the gateway tries again on its own",
        Delay.OPERATOR: "the fax waits for the fax administrator, who has been alerted",
        Delay.CHECKING: "the fax service's answer was unclear; the gateway checks that the fax did not already go "
        "out before it tries again",
        Delay.WAITING: "the fax waits its turn to be sent",
    },
    "fr": {
        Delay.CREDIT: "le compte fax doit être recrédité ; le fax partira plus tard",
        Delay.RETRY: "le service de fax n'a pas encore pu être joint ; la passerelle réessaie d'elle-même",
        Delay.OPERATOR: "le fax attend l'administrateur fax, qui a été prévenu",
        Delay.CHECKING: "la réponse du service de fax n'était pas claire ; la passerelle vérifie que le fax n'est "
        "pas déjà parti avant de réessayer",
        Delay.WAITING: "le fax attend son tour d'envoi",
    },
}
_DELAY_SITUATION = {Delay.CREDIT: Situation.DELAYED_CREDIT, Delay.RETRY: Situation.DELAYED_RETRY,
                    Delay.OPERATOR: Situation.DELAYED_OPERATOR}  # fmt: skip

_LABEL_KEYS = ("status", "number", "pages", "received", "attempt", "job", "subject", "date", "code", "next",
               "left_out", "in_document", "clock", "recorded", "fitted")  # fmt: skip
_LABELS = {
    "en": dict(zip(_LABEL_KEYS, ("Status", "Fax number", "Pages", "Received at", "Attempt at", "Job", "Your mail",
                                 "Sent on", "Provider code", "What to do", "Left out (cannot be faxed)",
                                 " in the document", "by the recipient machine's clock",
                                 "receipt recorded", "Converted for faxing"), strict=True)),
    "fr": dict(zip(_LABEL_KEYS, ("État", "Numéro de fax", "Pages", "Reçu à", "Tentative à", "Tâche",
                                 "Votre message", "Envoyé le", "Code fournisseur", "Que faire",
                                 "Non faxé (type refusé)", " dans le document", "à l'horloge du fax distant",
                                 "accusé enregistré le", "Converti pour le fax"), strict=True)),
}  # fmt: skip
_MSGID_SAFE = re.compile(r"[^A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]")


@dataclass(frozen=True)
class Facts:
    """What a receipt or notice says about one job."""

    kind: str  # delivered, failed, delayed, accepted, ar-mail:<digest>
    detail: str
    message_id: str  # the notification's stable id
    job: Job
    message: Row
    receipt: Row | None = None
    code: str = ""  # what the notice records of its cause: a provider answer code, a Delay, an Ending




def message_id_header(message_id: str, from_address: str) -> str:
    domain = from_address.rpartition("@")[2] or "localhost"
    return f"<{_MSGID_SAFE.sub('-', message_id)}@{domain}>"


def _status_of(f: Facts) -> tuple[str, str]:
    """(X-Fax-Status value, the key of the status and next-step texts)."""
    if is_ar_mail(f.kind):
        return "receipt", "receipt"
    return f.kind, f.kind


def situation(f: Facts) -> Situation:
    """Where the job of ``f`` stands, for the "what to do" text."""
    if is_ar_mail(f.kind):
        return Situation.RECEIPT
    if f.kind == NoticeKind.DELIVERED:
        return Situation.DELIVERED if f.job.receipt_code else Situation.CONFIRMED
    if f.kind == NoticeKind.FAILED:
        return Situation.CANCELLED if f.job.state == State.CANCELLED else Situation.NOT_SENT
    if f.kind == NoticeKind.DELAYED:
        return _DELAY_SITUATION.get(_delay(f), Situation.DELAYED)
    return Situation.ACCEPTED


def _delay(f: Facts) -> Delay:
    """Why the job of a "delayed" notice waits: as recorded with the notice, else from the job's state."""
    j = f.job
    return Delay(f.code) if f.code in set(Delay) else delay_of(j.state, j.hold_kind, j.next_attempt_at)


def _subject(lang: str, f: Facts, status: str, reason: str, pages: int) -> str:
    number = pretty_number(f.job.number)
    word = _STATUS[lang].get(status, status)
    if lang == "fr":
        head = f"Fax vers {number} {word}"
        if status == "delivered":
            return f"{head}, {pages} page{'s' if pages > 1 else ''}"
        return f"{head} : {reason}" if reason and status in ("failed", "delayed") else f"Fax vers {number} : {word}"
    head = f"Fax to {number} {word}"
    if status == "delivered":
        return f"{head}, {pages} page{'s' if pages > 1 else ''}"
    if reason and status in ("failed", "delayed"):
        return f"{head}: {reason}"
    return f"Fax to {number}: {word}" if status == "receipt" else head


def left_out(message: Row) -> str:
    """The attachments skipped under ``documents.unsupported = "skip"``: "notes.txt (text/plain), ..." or ""."""
    try:
        skipped = json.loads(message["skipped"] or "[]")
    except (IndexError, KeyError, ValueError):
        return ""
    return ", ".join(f"{clean(s.get('name', ''), 120)} ({clean(s.get('type', ''), 80)})" for s in skipped)


_FITTED_FR = {"lossless": "compressé sans perte", "fine": "converti en noir et blanc, résolution fine, {pages}",
              "standard": "converti en noir et blanc, résolution standard, {pages}"}  # fmt: skip


def fitted(message: Row, lang: str) -> str:
    """What the gateway did to make the document fit the provider's limit ("" if nothing), in ``lang``."""
    try:
        documents = json.loads(message["documents"] or "[]")
    except (IndexError, KeyError, ValueError):
        return ""
    first = next((d for d in documents if isinstance(d, dict) and d.get("fitted")), None)
    if first is None:
        return ""
    if lang == "fr" and first.get("fit") in _FITTED_FR:
        pages = sum(int(d.get("pages", 0)) for d in documents)
        return _FITTED_FR[first["fit"]].format(pages=f"{pages} page{'s' if pages > 1 else ''}")
    return clean(first["fitted"], 200)


@dataclass(frozen=True)
class _Outcome:
    """What one mail reports, worked out once for its subject, body and headers."""

    status: str  # the X-Fax-Status value
    key: str  # the key of the status word and the next-step text
    code: ReceiptCode | None  # the provider's receipt that decided a delivered / failed job
    reason: str
    next_step: str
    pages: int
    heure: str  # the recipient machine's clock, as the provider reports it

    @property
    def delivered(self) -> bool:
        return self.status == "delivered"


def _outcome(lang: str, f: Facts) -> _Outcome:
    status, key = _status_of(f)
    code = lookup(f.job.receipt_code) if f.job.receipt_code and status in ("delivered", "failed") else None
    if code is not None:
        reason = code.french if lang == "fr" else code.english
        next_step = _NEXT[lang][Situation.DELIVERED if code.delivered else code.category]
    else:
        where = situation(f)
        answer = answers.lookup(f.code) if f.code else None
        if f.kind == NoticeKind.DELAYED and f.code in set(Delay):  # the cause recorded, in the mail's language
            reason = _DELAY_REASON[lang][Delay(f.code)]
        elif f.kind == NoticeKind.FAILED and (ending := _ending_reason(lang, f)) is not None:
            reason = ending
        elif answer is not None and where is Situation.NOT_SENT:  # the provider's answer, in the mail's language
            reason = answer.reason(lang)
        else:
            reason = clean(f.detail, 200)
        next_step = _NEXT[lang][where]
    delivered = status == "delivered"
    pages = f.job.pages_sent if delivered and f.job.pages_sent else int(f.job.doc_pages or 0)
    heure = clean(f.receipt["heure"], 40) if f.receipt is not None else ""
    return _Outcome(status, key, code, reason, next_step, pages, heure)


# Why a job failed when neither a provider answer nor a receipt says it (the cause recorded with the notice).
_ENDING_REASON: dict[str, dict[Ending, str]] = {
    "en": {
        Ending.EXPIRED: "the fax service could not be reached in the time allowed; the fax was not sent",
        Ending.CANCELLED: "cancelled by the fax administrator; the fax was not sent",
    },
    "fr": {
        Ending.EXPIRED: "le service de fax n'a pas pu être joint dans le délai prévu ; le fax n'a pas été envoyé",
        Ending.CANCELLED: "annulé par l'administrateur fax ; le fax n'a pas été envoyé",
    },
}
# A mail refused for its document but answered 250 (refusals = "mail"), by the documents stage's reason. In
# English the refusal's own words are given (they name the file); these are the French ones.
_REFUSED_FR = {
    "no-document": "aucun document à faxer : joignez le document en pièce jointe (PDF, TIFF, JPEG, PNG ou GIF)",
    "type": "la pièce jointe n'est pas d'un type qui se faxe : envoyez-la en PDF (ou TIFF, JPEG, PNG, GIF)",
    "empty": "la pièce jointe est vide : joignez le document à nouveau",
    "encoding": "la pièce jointe est arrivée abîmée : envoyez-la à nouveau",
    "corrupt": "la pièce jointe ne peut pas être lue : envoyez une copie intacte",
    "encrypted": "le document est protégé par un mot de passe : envoyez-le sans mot de passe",
    "limits": "le message est trop complexe : envoyez le document seul, pas des messages transférés",
    "too-big": "le document reste trop lourd pour le fax même converti : envoyez moins de pages par message",
    "partial": "le copieur a envoyé ce scan en plusieurs mails, qui ne sont pas tous arrivés : numérisez-le à nouveau",
}
_REFUSED_FR_ANY = "le message ne peut pas être faxé tel quel"


def _missing_parts_fr(parts: str) -> str:
    missing, _, total = parts.partition(":")
    numbers = [n for n in missing.split(",") if n.isdigit()]
    if not numbers or not total.isdigit():
        return _REFUSED_FR["partial"]
    said = numbers[0] if len(numbers) == 1 else ", ".join(numbers[:-1]) + " et " + numbers[-1]
    which = f"la partie {said} n'est pas arrivée" if len(numbers) == 1 else f"les parties {said} ne sont pas arrivées"
    return f"le copieur a envoyé ce scan en {total} mails, et {which} : numérisez-le à nouveau"


def _ending_reason(lang: str, f: Facts) -> str | None:
    """The reason of a failure the gateway itself decided, in ``lang``; None when the notice records none."""
    cause, _, why = f.code.partition(":")
    if cause == Ending.REFUSED:
        if lang == "en":
            return clean(f.detail, 300)
        kind, _, parts = why.partition(":")
        if kind == "partial" and parts:  # "partial:<missing numbers>:<total>"
            return _missing_parts_fr(parts)
        return _REFUSED_FR.get(kind, _REFUSED_FR_ANY)
    if cause in set(Ending):
        return _ENDING_REASON[lang][Ending(cause)]
    return None


def _body(lang: str, f: Facts, o: _Outcome, tz: dt.tzinfo) -> str:
    label = _LABELS[lang]
    colon = " : " if lang == "fr" else ": "  # French typography: a space before the colon
    word = _STATUS[lang].get(o.key, o.key)
    lines = [
        f"{label['status']}{colon}{word}" + (f" ({o.reason})" if o.reason and not o.delivered else ""),
        f"{label['number']}{colon}{pretty_number(f.job.number)}",
        f"{label['pages']}{colon}{o.pages}{'' if o.delivered else label['in_document']}",
    ]
    if skipped := left_out(f.message):  # the sender must know a part of the mail was not faxed
        lines.append(f"{label['left_out']}{colon}{skipped}")
    if converted := fitted(f.message, lang):
        lines.append(f"{label['fitted']}{colon}{converted}")
    if o.heure:  # the provider's time is the recipient machine's clock: said so, beside when it was recorded
        recorded = f.receipt["received_at"] if f.receipt is not None else 0
        when = f", {label['recorded']} {dates.at(recorded, lang, tz)}" if recorded else ""
        lines.append(f"{label['received' if o.delivered else 'attempt']}{colon}{o.heure} ({label['clock']}{when})")
    lines.append(f"{label['job']}{colon}{f.job.id}")
    lines.append(f'{label["subject"]}{colon}"{clean(f.message["subject"], 200)}"')
    if f.message["date_header"]:
        sent = dates.header_date(f.message["date_header"], lang, tz) or clean(f.message["date_header"], 80)
        lines.append(f"{label['date']}{colon}{sent}")
    if o.code is not None:
        meaning = o.code.french if lang == "fr" else o.code.english
        lines.append(f"{label['code']}{colon}{clean(o.code.code, 12)} ({meaning})")
    lines += ["", f"{label['next']}{colon}{o.next_step}", ""] if o.next_step else [""]
    return "\n".join(lines)


def _set_fax_headers(msg: EmailMessage, f: Facts, o: _Outcome) -> None:
    """The ``X-Fax-*`` headers (see the module docstring)."""
    msg["X-Fax-Status"] = o.status
    msg["X-Fax-Job"] = f.job.id
    msg["X-Fax-Number"] = clean(f.job.number, 30)
    msg["X-Fax-Pages"] = str(o.pages)
    if o.code is not None:
        msg["X-Fax-Pages-Sent"] = str(f.job.pages_sent)
        msg["X-Fax-Code"] = clean(o.code.code, 12)
        msg["X-Fax-Category"] = str(o.code.category)
    if o.reason and o.status in ("failed", "delayed"):
        msg["X-Fax-Reason"] = o.reason
    if o.heure:
        msg["X-Fax-Received"] = o.heure


# The line with the link to the sender's status page (notify.status_links), after the body.
_FOLLOW = {"en": "Where the fax is now", "fr": "Où en est le fax"}


def compose(settings: Settings, f: Facts, recipient: str, *, document: bytes | None = None,
            source: bytes = b"", now: float = 0.0, status_url: str = "") -> EmailMessage:  # fmt: skip
    """The mail that tells ``recipient`` about ``f`` (a receipt, a notice, or an AR copy), with ``status_url``."""
    lang = settings.notify.language
    o = _outcome(lang, f)
    msg = EmailMessage()
    msg["From"] = settings.notify.from_address
    msg["To"] = recipient
    msg["Subject"] = _subject(lang, f, o.key, o.reason, o.pages)
    msg["Date"] = format_datetime(dt.datetime.fromtimestamp(now or f.job.updated_at, dt.UTC))
    msg["Message-ID"] = message_id_header(f.message_id, settings.notify.from_address)
    original = clean(f.message["message_id_header"], 250).strip()
    if original.startswith("<") and original.endswith(">"):  # RFC 3834 3.3.1.2, RFC 5322 3.6.4
        msg["In-Reply-To"] = original
        msg["References"] = original
    msg["Auto-Submitted"] = "auto-replied"  # RFC 3834 5
    msg["X-Auto-Response-Suppress"] = "All"  # no out-of-office answers to a receipt
    _set_fax_headers(msg, f, o)
    body = _body(lang, f, o, dates.zone(settings.notify.timezone))
    if status_url:
        body += f"{_FOLLOW[lang]}{' : ' if lang == 'fr' else ': '}{status_url}\n"
    msg.set_content(body, charset="utf-8", cte="quoted-printable")
    if source:
        # message/rfc822 is never base64 (RFC 2046 5.2.1): the mail goes in whole, 7bit or 8bit as it came.
        msg.add_attachment(email.message_from_bytes(source, policy=email.policy.default), filename="receipt.eml")
    if document is not None:
        msg.add_attachment(document, maintype="application", subtype="pdf", filename=f"fax-{f.job.id}.pdf")
    return msg


@dataclass(frozen=True)
class Alert:
    kind: str
    job_id: str
    detail: str
    at: float


def compose_alerts(settings: Settings, alerts: Sequence[Alert], message_id: str, now: float) -> EmailMessage:
    """One mail to the administrator for the alerts due together (they are rate-limited)."""
    kinds = sorted({alert_subject(a.kind) for a in alerts})
    msg = EmailMessage()
    msg["From"] = settings.notify.from_address
    msg["To"] = settings.notify.admin_address
    count = f" ({len(alerts)} alerts)" if len(alerts) > 1 else ""
    msg["Subject"] = f"fax-gateway alert: {', '.join(kinds)}{count}"
    msg["Date"] = format_datetime(dt.datetime.fromtimestamp(now, dt.UTC))
    msg["Message-ID"] = message_id_header(message_id, settings.notify.from_address)
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Fax-Status"] = "alert"
    msg["X-Fax-Alert"] = ", ".join(kinds)
    tz = dates.zone(settings.notify.timezone)
    body = [f"{dates.at(a.at, 'en', tz)}  {a.kind}  job {a.job_id or '-'}: {clean(a.detail, 500)}" for a in alerts]
    body += ["", "Details of a job: fax-gateway show <job>. Held jobs: fax-gateway jobs --state held.", ""]
    msg.set_content("\n".join(body), charset="utf-8", cte="quoted-printable")
    return msg
