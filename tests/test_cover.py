"""Cover pages and the mail's own text as a fax: through the real SMTP server, and the page's words."""

from __future__ import annotations

import email
import email.policy
import io
import json
from email.message import EmailMessage
from typing import Any

import pikepdf

from gateway.documents import cover
from gateway.documents.cover import Envelope
from tests.support_clock import FakeClock
from tests.support_docs import pdf
from tests.support_smtp import Starter, send_async, spooled_fax

BODY = ("Bonjour,\n\nVoici la facture de novembre.\nMerci de la régler avant le 15.\n\n"
        "Le lun. 30 nov. 2026 à 08:00, Léa a écrit :\n> Pouvez-vous m'envoyer la facture ?\n"
        "-- \nAlice Martin\nTél. 01 23 45 67 89\n")  # fmt: skip
HTML = ("<html><head><style>p {color: red}</style></head><body><p>Commande n&deg; 42</p>"
        "<p>Livrer <b>lundi</b> matin.<br>Quai 3</p><blockquote>old reply</blockquote></body></html>")  # fmt: skip
NOV_30_9H_PARIS = 1796025600.0  # Mon 30 Nov 2026 08:00 UTC


def mail(body: str, *, subject: str = "Facture", attach: int = 0, html: str = "") -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice Martin <alice@example.com>"
    msg["To"] = '"Cabinet Martin" <0145678900@fax.local>'
    msg["Subject"] = subject
    msg["Message-ID"] = email.utils.make_msgid(domain="example.com")
    msg.set_content(body)
    if html:
        msg.add_alternative(html, subtype="html")
    if attach:
        msg.add_attachment(pdf(attach), maintype="application", subtype="pdf", filename="facture.pdf")
    return msg.as_bytes(policy=email.policy.SMTP)


def pages_of(document: bytes) -> int:
    with pikepdf.open(io.BytesIO(document)) as doc:
        return len(doc.pages)


def test_the_cover_says_who_what_when_and_how_many_pages_in_french() -> None:
    msg = email.message_from_bytes(mail(BODY, attach=2), policy=email.policy.default)
    env = Envelope(("0145678900",), NOV_30_9H_PARIS, "fr", "Europe/Paris")
    body = cover.body_text(msg)
    assert body == "Bonjour,\n\nVoici la facture de novembre.\nMerci de la régler avant le 15."
    text = [line.text for line in cover.lines(env, msg, "Facture", body, 3, 80)]
    assert text[0] == "TÉLÉCOPIE"
    assert "À : Cabinet Martin (0145678900)" in text
    assert "De : Alice Martin <alice@example.com>" in text
    assert "Date : lundi 30 novembre 2026 à 09:00 CET (UTC+01:00)" in text
    assert "Objet : Facture" in text and "Pages : 3 (celle-ci comprise)" in text
    assert text[-1] == "Merci de la régler avant le 15." and not any("Alice Martin" == t for t in text)
    english = [line.text for line in cover.lines(Envelope(("0145678900",), NOV_30_9H_PARIS, "en", "Europe/Paris"),
                                                 msg, "Facture", body, 3, 80)]  # fmt: skip
    assert "FAX" == english[0] and "To: Cabinet Martin (0145678900)" in english
    assert "Pages: 3 (this page included)" in english


def test_html_is_read_as_text_and_keywords_decide() -> None:
    assert cover.html_text(HTML) == "Commande n° 42\n\nLivrer lundi matin.\nQuai 3"
    assert cover.keyword("Facture [COVER]") is True and cover.keyword("[nocover] Facture") is False
    assert cover.keyword("Facture") is None and cover.without_keywords("Facture [Cover] ") == "Facture"


async def test_a_cover_page_comes_first_when_the_body_has_text(smtp_gateway: Starter) -> None:
    harness = await smtp_gateway({"documents": {"cover_page": "when-body"}, "notify": {"language": "fr"}},
                                 clock=FakeClock(NOV_30_9H_PARIS))  # fmt: skip
    assert (await send_async(harness.port, mail(BODY, attach=2)))[0] == 250
    document, row = await spooled_fax(harness)
    listed = json.loads(row["documents"])
    assert [(d["name"], d["type"], d["pages"]) for d in listed] == [("cover page", "cover", 1),
                                                                    ("facture.pdf", "pdf", 2)]  # fmt: skip
    assert pages_of(document) == row["doc_pages"] == 3


async def faxed(harness_start: Starter, table: dict[str, object], raw: bytes) -> tuple[bytes, Any]:
    harness = await harness_start(table)
    code, text = await send_async(harness.port, raw)
    assert code == 250, text
    return await spooled_fax(harness)


async def test_only_a_signature_gets_no_cover(smtp_gateway: Starter) -> None:
    document, _ = await faxed(smtp_gateway, {"documents": {"cover_page": "when-body"}}, mail("-- \nAlice\n", attach=1))
    assert pages_of(document) == 1


async def test_nocover_in_the_subject_overrides_always(smtp_gateway: Starter) -> None:
    raw = mail(BODY, subject="Facture [nocover]", attach=1)
    document, row = await faxed(smtp_gateway, {"documents": {"cover_page": "always"}}, raw)
    assert pages_of(document) == 1 and row["subject"] == "Facture"  # the keyword is not in receipts


async def test_cover_in_the_subject_asks_for_one(smtp_gateway: Starter) -> None:
    document, row = await faxed(smtp_gateway, {}, mail("", subject="[Cover] Facture", attach=1))
    assert pages_of(document) == 2 and row["subject"] == "Facture"
    assert json.loads(row["documents"])[0]["type"] == "cover"


async def test_a_body_without_attachment_is_refused_by_default(smtp_gateway: Starter) -> None:
    harness = await smtp_gateway()
    code, text = await send_async(harness.port, mail(BODY))
    assert code == 554 and "the mail text is not faxed" in text


async def test_a_plain_body_without_attachment_is_faxed(smtp_gateway: Starter) -> None:
    document, row = await faxed(smtp_gateway, {"documents": {"body_without_attachment": "fax"}}, mail(BODY))
    assert json.loads(row["documents"])[0]["type"] == "text" and pages_of(document) == 1


async def test_an_html_body_without_attachment_is_faxed_on_its_cover(smtp_gateway: Starter) -> None:
    html_only = mail("", html=HTML).replace(b"Content-Type: text/plain", b"Content-Type: text/x-none")
    table = {"documents": {"body_without_attachment": "fax", "cover_page": "when-body"}}
    document, row = await faxed(smtp_gateway, table, html_only)
    assert json.loads(row["documents"])[0]["type"] == "cover" and pages_of(document) == 1
