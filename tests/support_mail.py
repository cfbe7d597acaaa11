"""Realistic mails for the document tests: one builder per client quirk, and the cases they make.

The documents in them come from ``tests.support_docs``. Every builder returns
the raw bytes a client would send in DATA (CRLF line ends).
"""

from __future__ import annotations

import base64
import email.policy
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

from tests.support_docs import encrypted_pdf, exe, image, pdf, tiff_headers, tiff_pages, tnef

SMTP = email.policy.SMTP

# -- mails ----------------------------------------------------------------------------------


def _headers(msg: EmailMessage, mailer: str, subject: str = "Fax") -> EmailMessage:
    msg["From"] = "Alice Martin <alice@example.com>"
    msg["To"] = "0145678900@fax.local"
    msg["Subject"] = subject
    msg["Date"] = "Mon, 30 Nov 2026 09:00:00 +0100"
    msg["Message-ID"] = make_msgid(domain="example.com")
    msg["X-Mailer"] = mailer
    return msg


def plain_with(attachments: list[tuple[str, str, bytes]], mailer: str = "Thunderbird 115.3") -> bytes:
    """A text body and attachments (name, MIME type, bytes) as most clients send them."""
    msg = _headers(EmailMessage(), mailer)
    msg.set_content("Please fax the attached document.\n\nAlice\n")
    for name, ctype, data in attachments:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes(policy=SMTP)


def outlook_signature_pdf() -> bytes:
    """Outlook: HTML body with its signature logo (image001.png by cid:) plus a PDF attachment."""
    msg = _headers(EmailMessage(), "Microsoft Outlook 16.0")
    msg.set_content("Bonjour,\n\nCi-joint la facture.\n\n-- \nAlice\n")
    msg.add_alternative(
        '<html><body><p>Bonjour,</p><p>Ci-joint la facture.</p>'
        '<p><img width="120" height="40" src="cid:image001.png@01DA2F3B.5C1E2A40"></p></body></html>',
        subtype="html",
    )
    html = _subpart(msg, 1)
    html.add_related(image("PNG", (120, 40)), maintype="image", subtype="png", cid="<image001.png@01DA2F3B.5C1E2A40>",
                     filename="image001.png", disposition="inline")
    msg.add_attachment(pdf(2), maintype="application", subtype="pdf", filename="Facture 2026-113.pdf")
    return msg.as_bytes(policy=SMTP)


def html_logo_outside_related() -> bytes:
    """An HTML body whose logo is a plain attachment referenced by ``cid:``, not inside multipart/related."""
    msg = _headers(EmailMessage(), "Zimbra 9.0")
    msg.set_content('<html><body><p>Devis ci-joint.</p><img src="cid:logo@example.com"></body></html>', subtype="html")
    msg.add_attachment(image("PNG", (200, 80)), maintype="image", subtype="png", filename="logo.png",
                       cid="<logo@example.com>")  # fmt: skip
    msg.add_attachment(pdf(1), maintype="application", subtype="pdf", filename="devis.pdf")
    return msg.as_bytes(policy=SMTP)

def apple_mail_inline_pdf() -> bytes:
    """Apple Mail: alternative > mixed, the PDF inline between two HTML pieces."""
    raw = _mixed_raw(
        "Apple Mail (2.3731.700.6)",
        "multipart/alternative",
        [
            b"Content-Type: text/plain; charset=us-ascii\r\n\r\nSee the contract.\r\n",
            _multipart(
                "multipart/mixed",
                "Apple-Mail=_inner",
                [
                    b"Content-Type: text/html; charset=us-ascii\r\n\r\n<html><body>See the contract.</body></html>\r\n",
                    b"Content-Disposition: inline; filename=Contrat.pdf\r\nContent-Type: application/pdf; "
                    b"x-unix-mode=0644; name=\"Contrat.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                    + _b64_lines(pdf(3)),
                    b"Content-Type: text/html; charset=us-ascii\r\n\r\n<html><body><br></body></html>\r\n",
                ],
            ),
        ],
    )
    return raw


def gmail_pdf() -> bytes:
    """Gmail: mixed > alternative (text, html), attachment with X-Attachment-Id."""
    msg = _headers(EmailMessage(), "", subject="Bon de commande")
    del msg["X-Mailer"]
    msg.set_content("Voici le bon.\n")
    msg.add_alternative('<div dir="ltr">Voici le bon.</div>', subtype="html")
    msg.add_attachment(pdf(1), maintype="application", subtype="pdf", filename="bon.pdf")
    _subpart(msg, -1)["X-Attachment-Id"] = "f_lp3k2x0a0"
    return msg.as_bytes(policy=SMTP)


def mfp_scan_tiff(pages: int = 2) -> bytes:
    """A multifunction printer's scan-to-mail job: short text, a multi-page TIFF, no X-Mailer."""
    msg = EmailMessage()
    msg["From"] = "scanner@example.com"
    msg["To"] = "0145678900@fax.local"
    msg["Subject"] = "Scanned from MFP-3F [00:26:73:AB:CD:EF]"
    msg["Message-ID"] = "<20261130090000.000001@mfp-3f.example.com>"
    msg.set_content("Scanned image from MFP-3F\nDevice Name: MFP-3F\nNumber of Images: 2\n")
    msg.add_attachment(tiff_pages(pages), maintype="image", subtype="tiff", filename="20261130090000.tif")
    return msg.as_bytes(policy=SMTP)


def legacy_no_disposition() -> bytes:
    """A legacy application: no Content-Disposition, octet-stream, the base64 on one line."""
    return _mixed_raw(
        "InvoiceRunner/2.1 (PHP/5.3)",
        "multipart/mixed",
        [
            b"Content-Type: text/plain\r\n\r\nInvoice attached.\r\n",
            b"Content-Type: application/octet-stream; name=INV0042.PDF\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.b64encode(pdf(1))
            + b"\r\n",
        ],
    )


def named(header_value: bytes, data: bytes, ctype: bytes = b"application/pdf") -> bytes:
    """One attachment whose Content-Disposition is given raw (RFC 2231 / RFC 2047 names)."""
    return _mixed_raw(
        "Mutt/2.2.9",
        "multipart/mixed",
        [
            b"Content-Type: text/plain; charset=utf-8\r\n\r\nHere.\r\n",
            b"Content-Type: " + ctype + b"\r\nContent-Disposition: attachment; " + header_value
            + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + _b64_lines(data),
        ],
    )


def forwarded(inner: bytes) -> bytes:
    """Thunderbird's "Forward as attachment": the original mail as message/rfc822."""
    msg = _headers(EmailMessage(), "Thunderbird 115.3", subject="Fwd: Facture")
    msg.set_content("Please fax the forwarded invoice.\n")
    original = email.message_from_bytes(inner, policy=email.policy.default)
    msg.add_attachment(original, filename="Facture.eml")
    return msg.as_bytes(policy=SMTP)


def outlook_tnef(attachments: list[tuple[str, bytes]]) -> bytes:
    """Outlook in Rich Text mode: everything inside winmail.dat."""
    return plain_with([("winmail.dat", "application/ms-tnef", tnef(attachments))], mailer="Microsoft Outlook 14.0")


def outlook_signed_pdf() -> bytes:
    """Outlook S/MIME signed: multipart/signed around the mail, a pkcs7-signature part last."""
    inner = plain_with([("Devis.pdf", "application/pdf", pdf(1))])
    body = inner.split(b"\r\n\r\n", 1)
    ctype = [h for h in body[0].split(b"\r\n") if h.lower().startswith(b"content-type")][0]
    signed_part = ctype + b"\r\n\r\n" + body[1]
    return _mixed_raw(
        "Microsoft Outlook 16.0",
        'multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256',
        [
            signed_part,
            b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\nContent-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=smime.p7s\r\n\r\n" + _b64_lines(b"0\x82\x05\x00" + bytes(200)),
        ],
    )


def bad_base64() -> bytes:
    """A PDF whose base64 stops mid-quantum (a truncated transfer)."""
    text = base64.b64encode(pdf(1))[:-3]
    return _mixed_raw(
        "Thunderbird 115.3",
        "multipart/mixed",
        [
            b"Content-Type: text/plain\r\n\r\nHere.\r\n",
            b"Content-Type: application/pdf; name=cut.pdf\r\nContent-Disposition: attachment; filename=cut.pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + text + b"\r\n",
        ],
    )


def nested(depth: int) -> bytes:
    """Multiparts nested ``depth`` deep with one PDF at the bottom."""
    out = [b"From: alice@example.com\r\nTo: 0145678900@fax.local\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"]
    for i in range(depth):
        out.append(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i))
    out.append(b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n" + _b64_lines(pdf(1)))
    out.extend(b"--b%d--\r\n" % i for i in reversed(range(depth)))
    return b"".join(out)


def many_parts(count: int) -> bytes:
    """One multipart/mixed with ``count`` small parts."""
    part = b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n"
    head = b'From: alice@example.com\r\nTo: 0145678900@fax.local\r\nSubject: parts\r\nMIME-Version: 1.0\r\n'
    return head + b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n' + part * count + b"--B--\r\n"


def message_partial() -> bytes:
    """One fragment of a message/partial set (RFC 2046 5.2.2): the documents stage alone finds no document in it.

    Over SMTP it is kept as part 1 of 3 (gateway.smtp.intake), and faxed only with the other two.
    """
    fragment = b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n" + _b64_lines(pdf(1))[:200]
    return (
        b"From: alice@example.com\r\nTo: 0145678900@fax.local\r\nSubject: part 1/3\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: message/partial; id="abc@example.com"; number=1; total=3\r\n\r\n' + fragment + b"\r\n"
    )


def split_mail(
    inner: bytes,
    total: int,
    *,
    set_id: str = "scan-42@printer.example.com",
    sender: str = "alice@example.com",
    to: str = "0145678900@fax.local",
) -> list[bytes]:
    """``inner`` (a whole mail) as ``total`` message/partial mails, as a printer splits a scan (RFC 2046 5.2.2.1).

    Each has its own outer headers (its own Subject and Message-ID); the first part's body starts with
    ``inner``'s header block; ``inner`` is cut at line ends into slices of about the same size.
    """
    lines = inner.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").splitlines(keepends=True)
    size = -(-len(lines) // total)
    out = []
    for n in range(1, total + 1):
        head = (f"From: {sender}\r\nTo: {to}\r\nSubject: Scan ({n}/{total})\r\n"
                f"Message-ID: <part{n}.{set_id}>\r\nMIME-Version: 1.0\r\n"
                f'Content-Type: message/partial; id="{set_id}"; number={n}; total={total}\r\n\r\n')  # fmt: skip
        chunk = b"".join(lines[(n - 1) * size : n * size])
        assert chunk, "too few lines to split in that many parts"
        out.append(head.encode() + chunk)
    return out


def uuencoded_body() -> bytes:
    """A uuencoded file inside a plain text body: body text, not a document."""
    import binascii

    data = pdf(1)
    lines = [binascii.b2a_uu(data[i : i + 45]) for i in range(0, len(data), 45)]
    encoded = b"".join(x.rstrip(b"\n") + b"\r\n" for x in lines)
    body = b"Here it is:\r\n\r\nbegin 644 doc.pdf\r\n" + encoded + b"`\r\nend\r\n"
    return b"From: alice@example.com\r\nTo: 0145678900@fax.local\r\nSubject: uu\r\nMIME-Version: 1.0\r\n\r\n" + body



def external_body() -> bytes:
    """A document given by URL (RFC 2046 5.2.3): never fetched, so nothing to fax."""
    return (
        b"From: alice@example.com\r\nTo: 0145678900@fax.local\r\nSubject: link\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: message/external-body; access-type=URL; URL="http://127.0.0.1:9/doc.pdf"\r\n\r\n'
        b"Content-Type: application/pdf\r\n\r\n"
    )

def with_parts_never_documents() -> bytes:
    """A PDF among parts that are never documents: invitation, vCard, keys, signature, report, tracking pixel."""
    return _mixed_raw(
        "Microsoft Outlook 16.0",
        "multipart/mixed",
        [
            b"Content-Type: text/plain; charset=utf-8\r\n\r\nHere is the contract, and my card.\r\n",
            b"Content-Type: image/gif; name=t.gif\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + _b64_lines(image("GIF", (1, 1))),
            b"Content-Type: text/calendar; method=REQUEST; name=invite.ics\r\n"
            b"Content-Disposition: attachment; filename=invite.ics\r\n\r\n"
            b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n",
            b"Content-Type: text/vcard; name=alice.vcf\r\nContent-Disposition: attachment; filename=alice.vcf\r\n\r\n"
            b"BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Alice Martin\r\nEND:VCARD\r\n",
            b"Content-Type: application/pdf; name=contrat.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + _b64_lines(pdf(2)),
            b"Content-Type: application/pgp-keys; name=key.asc\r\n\r\n-----BEGIN PGP PUBLIC KEY BLOCK-----\r\n",
            b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.com\r\n\r\n"
            b"Final-Recipient: rfc822; bob@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n",
            b"Content-Type: application/pgp-signature; name=signature.asc\r\n\r\n"
            b"-----BEGIN PGP SIGNATURE-----\r\niQEzBAEBCAAdFiEE\r\n-----END PGP SIGNATURE-----\r\n",
        ],
    )


# -- raw MIME helpers ---------------------------------------------------------------------


def _subpart(msg: EmailMessage, index: int) -> EmailMessage:
    payload = msg.get_payload()
    assert isinstance(payload, list)
    part = payload[index]
    assert isinstance(part, EmailMessage)
    return part



def _b64_lines(data: bytes) -> bytes:
    text = base64.b64encode(data)
    return b"".join(text[i : i + 76] + b"\r\n" for i in range(0, len(text), 76))


def _multipart(ctype: str, boundary: str, parts: list[bytes]) -> bytes:
    b = boundary.encode()
    body = b"".join(b"--" + b + b"\r\n" + p + (b"" if p.endswith(b"\r\n") else b"\r\n") for p in parts)
    return f'Content-Type: {ctype}; boundary="{boundary}"\r\n\r\n'.encode() + body + b"--" + b + b"--\r\n"


def _mixed_raw(mailer: str, ctype: str, parts: list[bytes]) -> bytes:
    head = (
        "From: Alice Martin <alice@example.com>\r\nTo: 0145678900@fax.local\r\nSubject: Fax\r\n"
        f"Date: Mon, 30 Nov 2026 09:00:00 +0100\r\nMessage-ID: {make_msgid(domain='example.com')}\r\n"
        f"X-Mailer: {mailer}\r\nMIME-Version: 1.0\r\n"
    ).encode()
    return head + _multipart(ctype, "=_outer_0042", parts)


# -- the cases every level is tested with -------------------------------------------------------


@dataclass(frozen=True)
class MailCase:
    id: str
    build: Callable[[], bytes]
    # "fax:<pages>:<types>" or "refuse:<reason>"
    expect: str
    # Reply start and words the reply must hold (refusals only).
    reply: str = ""
    words: tuple[str, ...] = ()
    # Display names of the documents faxed (when the case is about names).
    names: tuple[str, ...] = ()
    # The [documents] settings the case is judged with (TOML shape), over the defaults.
    documents: tuple[tuple[str, Any], ...] = ()


CASES = [
    MailCase("outlook-signature-logo", outlook_signature_pdf, "fax:2:pdf", names=("Facture 2026-113.pdf",)),
    MailCase("html-logo-by-cid", html_logo_outside_related, "fax:1:pdf", names=("devis.pdf",)),
    MailCase("apple-mail-inline-pdf", apple_mail_inline_pdf, "fax:3:pdf"),
    MailCase("gmail", gmail_pdf, "fax:1:pdf"),
    MailCase("mfp-scan-tiff", mfp_scan_tiff, "fax:2:tiff"),
    MailCase("legacy-no-disposition", legacy_no_disposition, "fax:1:pdf", names=("INV0042.PDF",)),
    MailCase("rfc2231-name", lambda: named(b"filename*=utf-8''Relev%C3%A9%20de%20compte.pdf", pdf(1)), "fax:1:pdf",
             names=("Relev\u00e9 de compte.pdf",)),
    MailCase("rfc2047-name", lambda: named(b'filename="=?utf-8?B?UmVsZXbDqSBkZSBjb21wdGUucGRm?="', pdf(1)),
             "fax:1:pdf", names=("Relev\u00e9 de compte.pdf",)),
    MailCase("forwarded", lambda: forwarded(gmail_pdf()), "fax:1:pdf"),
    MailCase("tnef-pdf", lambda: outlook_tnef([("Facture.pdf", pdf(2))]), "fax:2:pdf", names=("Facture.pdf",)),
    MailCase("signed-outlook", outlook_signed_pdf, "fax:1:pdf"),
    MailCase("parts-never-documents", with_parts_never_documents, "fax:2:pdf", names=("contrat.pdf",)),
    MailCase("hostile-name",
             lambda: named('filename="../../etc/\u202etxt.exe\x07 facture.pdf"'.encode(), pdf(1)), "fax:1:pdf",
             names=("txt.exe facture.pdf",)),
    MailCase("tiff-frame-too-large", lambda: plain_with([("scan.tif", "image/tiff", tiff_headers(1, 9000, 9000))]),
             "refuse:limits", "554 5.6.0", ("9000x9000 pixels is too large",)),
    MailCase("tiff-frames-too-many-pixels",
             lambda: plain_with([("scan.tif", "image/tiff", tiff_headers(32, 8000, 8000))]), "refuse:limits",
             "554 5.6.0", ("more than 2000000000 pixels in all its frames",)),
    MailCase("pages-201", lambda: plain_with([("long.pdf", "application/pdf", pdf(201))]), "refuse:limits",
             "554 5.6.0", ("more than 200 pages",)),
    MailCase("two-pdfs-and-photo",
             lambda: plain_with([("a.pdf", "application/pdf", pdf(2, (612, 792))),
                                 ("b.pdf", "application/pdf", pdf(1, (500, 500))),
                                 ("photo.jpg", "image/jpeg", image("JPEG", (1200, 900), 72))]),
             "fax:4:pdf,pdf,jpeg", names=("a.pdf", "b.pdf", "photo.jpg")),
    MailCase("tnef-nothing-faxable", lambda: outlook_tnef([]), "refuse:no-document", "554 5.6.1",
             ("winmail.dat", "send the file in plain format", "instead of Rich Text")),
    MailCase("exe-renamed-pdf", lambda: plain_with([("invoice.pdf", "application/pdf", exe())]), "refuse:type",
             "554 5.6.1", ("invoice.pdf", "application/x-dosexec", "PDF, TIFF, JPEG, PNG, GIF")),
    MailCase("html-page-not-pdf",
             lambda: plain_with([("bill.pdf", "application/pdf", b"<!DOCTYPE html>\n<html><body>" + pdf(1))]),
             "refuse:type", "554 5.6.1", ("bill.pdf", "text/html")),
    MailCase("bad-base64", bad_base64, "refuse:encoding", "554 5.6.5", ("cut.pdf",)),
    MailCase("nested-2000", lambda: nested(2000), "refuse:limits", "554 5.6.0", ("nested more than 50",)),
    MailCase("parts-20000", lambda: many_parts(20000), "refuse:limits", "554 5.6.0", ("more than 500",)),
    MailCase("encrypted-pdf", lambda: plain_with([("secret.pdf", "application/pdf", encrypted_pdf())]),
             "refuse:encrypted", "554 5.6.5", ("secret.pdf", "password")),
    MailCase("empty-attachment", lambda: plain_with([("blank.pdf", "application/pdf", b"")]), "refuse:empty",
             "554 5.6.0", ("blank.pdf",)),
    MailCase("text-attachment", lambda: plain_with([("a.pdf", "application/pdf", pdf(1)),
                                                   ("notes.txt", "text/plain", b"call me\n")]),
             "refuse:type", "554 5.6.1", ("notes.txt", "text/plain"), documents=(("convert_types", []),)),
    MailCase("text-attachment-faxed", lambda: plain_with([("a.pdf", "application/pdf", pdf(1)),
                                                         ("notes.txt", "text/plain", b"call me\n")]),
             "fax:2:pdf,text", names=("a.pdf", "notes.txt")),
    MailCase("no-attachment", lambda: plain_with([]), "refuse:no-document", "554 5.6.0",
             ("No document to fax", "PDF, TIFF, JPEG, PNG, GIF", "the mail text is not faxed")),
    MailCase("message-partial", message_partial, "refuse:no-document", "554 5.6.0"),
    MailCase("uuencode-in-body", uuencoded_body, "refuse:no-document", "554 5.6.0"),
    MailCase("external-body", external_body, "refuse:no-document", "554 5.6.0"),
    MailCase("word-document",
             lambda: plain_with([("Lettre.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml"
                                  ".document", b"PK\x03\x04" + bytes(60))]),
             "refuse:type", "554 5.6.1", ("Lettre.docx",)),
]
