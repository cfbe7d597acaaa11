"""Receipts and notices say, in one language, what happened and what to do: one row per situation.

The table (gateway.notify.compose.Situation and the receipt categories) maps
each final or delayed situation of a job to its "what to do" text; each row is
checked here in both languages, through the mail the notifier would send.
"""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any

import pytest

from gateway.answers import ANSWER_CODES, Answer
from gateway.arcodes import Category
from gateway.notify.compose import _DELAY_REASON, _NEXT, Alert, Facts, Situation, compose, compose_alerts, situation
from gateway.settings import Settings
from gateway.store import Delay, Job
from tests.support_settings import SettingsFactory

T0 = 1796371200.0  # Friday 4 December 2026, 09:00 CET


def _job(**changes: Any) -> Job:
    base: dict[str, Any] = dict(
        id="0123456789abcdef", message_id="fedcba9876543210", number="+33145678903", state="failed", reason="",
        created_at=T0, updated_at=T0, next_attempt_at=0.0, attempts=1, provider_ref="R1", submitted_at=T0,
        final_at=T0, recoveries=0, receipt_code="", pages_sent=0, ar_token="", envelope_from="alice@example.com",
        doc_pages=2, upload_key="",
    )  # fmt: skip
    return Job(**(base | changes))


MESSAGE = {"subject": "Facture n°5", "date_header": "Fri, 04 Dec 2026 08:55:00 +0100", "skipped": "[]",
           "message_id_header": "<orig@example.com>"}  # fmt: skip

# kind, the job, the situation it is in.
ROWS: dict[str, tuple[str, dict[str, Any], Situation | Category]] = {
    "delivered with a receipt": ("delivered", {"state": "delivered", "receipt_code": "0", "pages_sent": 2},
                                 Situation.DELIVERED),
    "confirmed by the administrator": ("delivered", {"state": "delivered"}, Situation.CONFIRMED),
    "refused by the provider": ("failed", {}, Situation.NOT_SENT),
    "cancelled by the administrator": ("failed", {"state": "cancelled"}, Situation.CANCELLED),
    "busy": ("failed", {"receipt_code": "31064"}, Category.BUSY),
    "no answer": ("failed", {"receipt_code": "31068"}, Category.NO_ANSWER),
    "wrong number": ("failed", {"receipt_code": "31083"}, Category.WRONG_NUMBER),
    "document problem": ("failed", {"receipt_code": "25011"}, Category.DOCUMENT),
    "transmission error": ("failed", {"receipt_code": "34011"}, Category.TRANSMISSION),
    "number barred": ("failed", {"receipt_code": "70003"}, Category.BARRED),
    "unknown receipt code": ("failed", {"receipt_code": "99999"}, Category.UNKNOWN),
    "waiting for credit": ("delayed", {"state": "held", "hold_kind": "credit"}, Situation.DELAYED_CREDIT),
    "being checked": ("delayed", {"state": "ambiguous", "next_attempt_at": T0 + 1800}, Situation.DELAYED),
    "waiting its turn": ("delayed", {"state": "queued"}, Situation.DELAYED),
    "retried on a timer": ("delayed", {"state": "deferred", "next_attempt_at": T0 + 60}, Situation.DELAYED_RETRY),
    "left for the administrator": ("delayed", {"state": "ambiguous"}, Situation.DELAYED_OPERATOR),
    "held for the configuration": ("delayed", {"state": "held", "hold_kind": "config"}, Situation.DELAYED_OPERATOR),
    "quarantined": ("delayed", {"state": "quarantined"}, Situation.DELAYED_OPERATOR),
    "accepted": ("accepted", {"state": "queued"}, Situation.ACCEPTED),
    "a copy of the provider's mail": ("ar-mail:0123456789abcdef", {"state": "delivered"}, Situation.RECEIPT),
}


def _mail(settings: Settings, kind: str, job: Job, receipt: dict[str, Any] | None = None) -> tuple[EmailMessage, str]:
    facts = Facts(kind, "the reason in the notice", f"{job.id}.{kind}", job, MESSAGE, receipt)
    msg = compose(settings, facts, "alice@example.com", now=T0)
    part = msg.get_body(("plain",))
    assert part is not None
    return msg, str(part.get_content())


def test_every_situation_has_a_text_in_every_language() -> None:
    keys = set(Situation) | (set(Category) - {Category.DELIVERED})
    for lang, texts in _NEXT.items():
        assert set(texts) == keys, lang


@pytest.mark.parametrize("lang", ["en", "fr"])
@pytest.mark.parametrize("row", list(ROWS))
def test_each_situation_says_its_own_text(make_settings: SettingsFactory, row: str, lang: str) -> None:
    kind, changes, expected = ROWS[row]
    settings = make_settings({"notify": {"language": lang}})
    job = _job(**changes)
    receipt = {"heure": "09:01", "received_at": T0 + 120} if job.receipt_code else None
    _, body = _mail(settings, kind, job, receipt)
    what = "Que faire : " if lang == "fr" else "What to do: "
    assert f"{what}{_NEXT[lang][expected]}" in body
    if not job.receipt_code:
        assert situation(Facts(kind, "", "", job, MESSAGE)) == expected
    others = {text for key, text in _NEXT["en" if lang == "fr" else "fr"].items()}
    assert not any(text in body for text in others)  # one language at a time


def test_a_french_receipt_gives_its_dates_in_french_with_the_zone(make_settings: SettingsFactory) -> None:
    settings = make_settings({"notify": {"language": "fr", "timezone": "Europe/Paris"}})
    job = _job(state="delivered", receipt_code="0", pages_sent=2)
    _, body = _mail(settings, "delivered", job, {"heure": "09:01", "received_at": T0 + 120})
    assert "Envoyé le : vendredi 4 décembre 2026 à 08:55 CET (UTC+01:00)" in body
    assert "Reçu à : 09:01 (à l'horloge du fax distant, accusé enregistré le vendredi 4 décembre 2026 à 09:02" in body


def test_times_follow_notify_timezone(make_settings: SettingsFactory) -> None:
    settings = make_settings({"notify": {"timezone": "America/New_York"}})
    job = _job(state="delivered", receipt_code="0", pages_sent=2)
    _, body = _mail(settings, "delivered", job, {"heure": "09:01", "received_at": T0 + 120})
    assert "Sent on: Friday 4 December 2026, 02:55 EST (UTC-05:00)" in body
    assert "receipt recorded Friday 4 December 2026, 03:02 EST (UTC-05:00)" in body
    alert = compose_alerts(settings, [Alert("alert:config", job.id, "held", T0)], "m1", T0)
    assert "Friday 4 December 2026, 03:00 EST (UTC-05:00)  alert:config" in str(alert.get_content())


def test_an_unknown_time_zone_is_refused_by_name(make_settings: SettingsFactory) -> None:
    from gateway.settings import SettingsError

    with pytest.raises(SettingsError, match="notify.timezone: unknown time zone 'Europe/Pariss'"):
        make_settings({"notify": {"timezone": "Europe/Pariss"}})


@pytest.mark.parametrize("code", [c for c, a in ANSWER_CODES.items() if a.answer in (Answer.FAILED, Answer.FAILED_BUG)])
def test_a_french_receipt_gives_the_provider_answer_in_french(make_settings: SettingsFactory, code: int) -> None:
    entry = ANSWER_CODES[code]
    english = f"{entry.english} (code {code})"
    job = _job(reason=english)
    for lang, said, unsaid in (("fr", entry.french, entry.english), ("en", entry.english, entry.french)):
        settings = make_settings({"notify": {"language": lang}})
        facts = Facts("failed", english, f"{job.id}.failed", job, MESSAGE, code=str(code))
        msg = compose(settings, facts, "alice@example.com", now=T0)
        body = str(msg.get_body(("plain",)).get_content())  # type: ignore[union-attr]
        assert f"{said} (code {code})" in body and f"{said} (code {code})" in msg["Subject"]
        assert unsaid not in body and unsaid not in msg["Subject"], lang


def test_every_provider_answer_has_a_text_in_both_languages() -> None:
    for code, entry in ANSWER_CODES.items():
        assert entry.english and entry.french and entry.english != entry.french, code


@pytest.mark.parametrize("delay", list(Delay))
def test_a_delayed_notice_says_why_in_its_own_language(make_settings: SettingsFactory, delay: Delay) -> None:
    job = _job(state="ambiguous", next_attempt_at=T0 + 60)
    english_detail = "not sent after 15 minutes: waiting for an operator"
    for lang in ("en", "fr"):
        settings = make_settings({"notify": {"language": lang}})
        facts = Facts("delayed", english_detail, f"{job.id}.delayed", job, MESSAGE, code=str(delay))
        msg = compose(settings, facts, "alice@example.com", now=T0)
        body = str(msg.get_body(("plain",)).get_content())  # type: ignore[union-attr]
        reason = _DELAY_REASON[lang][delay]
        assert reason in body and reason in msg["Subject"] and msg["X-Fax-Reason"] == reason
        assert english_detail not in body


@pytest.mark.parametrize(
    ("code", "detail", "english", "french"),
    [
        ("cancelled", "cancelled by the gateway's administrator; the fax was not sent",
         "cancelled by the fax administrator; the fax was not sent",
         "annulé par l'administrateur fax ; le fax n'a pas été envoyé"),
        ("expired", "could not be sent within 5 days; last error: timeout",
         "the fax service could not be reached in the time allowed",
         "le service de fax n'a pas pu être joint dans le délai prévu"),
        ("refused:type", "the mail cannot be faxed as it is: scan.docx: type Word document cannot be faxed",
         "scan.docx: type Word document cannot be faxed",
         "la pièce jointe n'est pas d'un type qui se faxe : envoyez-la en PDF"),
    ],
)
def test_a_failure_the_gateway_decided_is_said_in_the_mail_s_language(
    make_settings: SettingsFactory, code: str, detail: str, english: str, french: str
) -> None:
    job = _job(state="cancelled" if code == "cancelled" else "failed")
    for lang, words, other in (("en", english, french), ("fr", french, english)):
        facts = Facts("failed", detail, f"{job.id}.failed", job, MESSAGE, None, code)
        msg = compose(make_settings({"notify": {"language": lang}}), facts, "alice@example.com", now=T0)
        body = str(msg.get_body(("plain",)).get_content())  # type: ignore[union-attr]
        status = body.splitlines()[0]
        assert words in status and other not in body, (lang, status)
        if lang == "fr":
            assert detail not in body  # no English reason left in a French receipt


@pytest.mark.parametrize(
    ("code", "french"),
    [
        ("refused:partial:2:3", "le copieur a envoyé ce scan en 3 mails, et la partie 2 n'est pas arrivée"),
        ("refused:partial:2,4:5", "le copieur a envoyé ce scan en 5 mails, et les parties 2 et 4 ne sont pas arrivées"),
    ],
)
def test_an_incomplete_split_mail_names_its_missing_parts_in_french(
    make_settings: SettingsFactory, code: str, french: str
) -> None:
    job = _job()
    facts = Facts("failed", "part 2 of 3 did not arrive within 1 hour", f"{job.id}.failed", job, MESSAGE, None, code)
    msg = compose(make_settings({"notify": {"language": "fr"}}), facts, "alice@example.com", now=T0)
    status = str(msg.get_body(("plain",)).get_content()).splitlines()[0]  # type: ignore[union-attr]
    assert french in status and "did not arrive" not in status
