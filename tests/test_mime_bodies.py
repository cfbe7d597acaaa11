"""Large base64 bodies decoded from the raw bytes give what the email package gives, and stay bounded.

:func:`gateway.documents.mime.parse` leaves long runs of base64 lines out of what the stdlib
parser reads (``raw_body_min``). Each mail here is parsed both ways: with every run left in the
raw bytes (``raw_body_min=1``) and with none (the email package holds every body), and every part
must decode to the same bytes, clean or not, in the same tree.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import email
import email.policy
import random
from email.message import Message
from itertools import pairwise

import pytest

from gateway import replies
from gateway.documents import mime
from gateway.documents.policy import DocumentRefused, extract
from gateway.settings import DocumentSettings
from tests.support_bombs import pdf_object_stream_bomb
from tests.support_docs import pdf
from tests.support_mail import CASES, MailCase, nested, plain_with

DEFAULT = DocumentSettings()
DATA = bytes(range(256)) * 7 + b"tail"  # 1,796 bytes: 2,396 base64 characters, one "=" of padding
TEXT = base64.b64encode(DATA)
HEAD = b"From: alice@example.com\r\nTo: 0145678900@fax.local\r\nSubject: Fax\r\nMIME-Version: 1.0\r\n"
CUTS = [0, 3, 90, 91, 500, 1900, len(TEXT)]  # ragged line lengths
PDF_PART = b"Content-Type: application/pdf; name=a.pdf\r\nContent-Transfer-Encoding: base64\r\n"


def lines(text: bytes, width: int, end: bytes = b"\r\n") -> bytes:
    return b"".join(text[i : i + width] + end for i in range(0, len(text), width))


def mixed(*parts: bytes, end: bytes = b"\r\n", close: bool = True, boundary: bytes = b"B") -> bytes:
    """A multipart/mixed of raw parts (each its headers, a blank line and its body), lines ended by ``end``."""
    body = b"".join(b"--" + boundary + end + part for part in parts)
    tail = b"--" + boundary + b"--" + end if close else b""
    head = (HEAD + b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n').replace(b"\r\n", end)
    return head + body + tail


def leaves(msg: Message) -> list[tuple[str, bytes, bool]]:
    """(content type, decoded bytes, clean) of every part that is not a multipart, in MIME order."""
    out = []
    stack = [msg]
    while stack:
        node = stack.pop()
        if node.is_multipart():
            stack.extend(reversed(mime.children(node)))
        else:
            out.append((node.get_content_type(), *mime.decode(node)))
    return out


def held(msg: Message) -> int:
    """How many parts kept their body in the raw bytes."""
    return sum(1 for node in msg.walk() if isinstance(node, mime.ParsedMessage) and node.raw_body is not None)


def parsed(raw: bytes, least: int) -> Message | str:
    """The tree :func:`mime.parse` gives with ``raw_body_min=least``, or the structure bound it names."""
    try:
        return mime.parse(raw, 50, 500, raw_body_min=least)
    except mime.LimitExceeded as exc:
        return str(exc)


def both_ways(raw: bytes) -> tuple[Message, Message]:
    """(every run left in the raw bytes, the email package holding every body)."""
    kept, plain = parsed(raw, 1), parsed(raw, len(raw) + 1)
    assert isinstance(kept, Message) and isinstance(plain, Message)
    return kept, plain


def assert_same(raw: bytes) -> int:
    """The two parses decode alike (and their candidates are alike); how many bodies stayed raw."""
    kept, plain = parsed(raw, 1), parsed(raw, len(raw) + 1)
    if isinstance(plain, str):  # past a structure bound: refused alike, before either parse
        assert kept == plain
        return 0
    assert isinstance(kept, Message)
    assert held(plain) == 0
    assert leaves(kept) == leaves(plain)
    assert list(mime.candidates(kept)) == list(mime.candidates(plain))
    assert [(p.get_content_type(), p.preamble, p.epilogue) for p in kept.walk()] == [
        (p.get_content_type(), p.preamble, p.epilogue) for p in plain.walk()
    ]
    return held(kept)


def pdf_part(body: bytes, end: bytes = b"\r\n") -> bytes:
    return PDF_PART.replace(b"\r\n", end) + end + body


# Mails whose base64 bodies are all decoded from the raw bytes: (id, mail).
RAW_CASES = [
    ("76-columns-crlf", mixed(pdf_part(lines(TEXT, 76)))),
    ("64-columns-lf", mixed(pdf_part(lines(TEXT, 64, b"\n"), b"\n"), end=b"\n")),
    ("lone-cr-line-ends", mixed(pdf_part(lines(TEXT, 76, b"\r"), b"\r"), end=b"\r")),
    ("mixed-line-ends", mixed(pdf_part(b"".join(TEXT[i : i + 60] + (b"\r\n", b"\n", b"\r")[i % 3]
                                                for i in range(0, len(TEXT), 60))))),  # fmt: skip
    ("one-character-lines", mixed(pdf_part(lines(TEXT, 1)))),
    ("ragged-lines", mixed(pdf_part(b"".join(TEXT[a:b] + b"\r\n" for a, b in pairwise(CUTS))))),
    ("one-long-line", mixed(pdf_part(TEXT + b"\r\n"))),
    ("no-padding", mixed(pdf_part(lines(base64.b64encode(DATA[:-1]), 76)))),
    ("two-pad-characters", mixed(pdf_part(lines(base64.b64encode(DATA[:-2]), 76)))),
    ("padding-on-its-own-line", mixed(pdf_part(TEXT[:-1] + b"\r\n=\r\n"))),
    ("two-pads-split-over-lines", mixed(pdf_part(base64.b64encode(DATA[:-2])[:-1] + b"\r\n=\r\n"))),
    ("padding-missing", mixed(pdf_part(lines(TEXT[:-1], 76)))),
    ("one-character-too-many", mixed(pdf_part(lines(TEXT + b"A", 76)))),
    ("three-pads", mixed(pdf_part(lines(base64.b64encode(DATA[:-2]) + b"=", 76)))),
    ("padding-in-the-middle", mixed(pdf_part(lines(TEXT[:400] + b"==" + TEXT[400:], 76)))),
    ("data-after-the-padding", mixed(pdf_part(lines(TEXT + TEXT, 76)))),
    ("truncated-mid-quantum", mixed(pdf_part(lines(TEXT[:-3], 76)))),
    ("blank-lines-around-the-body", mixed(pdf_part(b"\r\n\r\n" + lines(TEXT, 76) + b"\r\n\r\n"))),
    ("no-blank-line-after-the-headers", mixed(PDF_PART + lines(TEXT, 76))),
    ("last-part-ends-without-newline", mixed(pdf_part(lines(TEXT, 76)[:-2]), close=False)),
    ("single-part-ends-without-newline", HEAD + PDF_PART + b"\r\n" + lines(TEXT, 76)[:-2]),
    ("single-part-with-newline", HEAD + PDF_PART + b"\r\n" + lines(TEXT, 76)),
    ("two-base64-parts", mixed(pdf_part(lines(TEXT, 76)), pdf_part(lines(base64.b64encode(b"second"), 76)))),
    ("nested-multiparts", mixed(
        b'Content-Type: multipart/alternative; boundary="A"\r\n\r\n--A\r\nContent-Type: text/plain\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + lines(base64.b64encode(b"Bonjour"), 76)
        + b'--A\r\nContent-Type: multipart/related; boundary="R"\r\n\r\n--R\r\nContent-Type: text/html\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + lines(base64.b64encode(b'<img src="cid:x@y">'), 76)
        + b"--R\r\nContent-Type: image/png\r\nContent-ID: <x@y>\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + lines(TEXT, 76) + b"--R--\r\n--A--\r\n",
        pdf_part(lines(TEXT, 76)))),  # fmt: skip
    ("forwarded-message", mixed(b"Content-Type: message/rfc822\r\n\r\n" + HEAD
                                + b'Content-Type: multipart/mixed; boundary="I"\r\n\r\n--I\r\n'
                                + pdf_part(lines(TEXT, 76)) + b"--I--\r\n")),  # fmt: skip
    ("multipart-without-boundary", HEAD + b"Content-Type: multipart/mixed\r\n\r\n" + lines(TEXT, 76)),
    ("digest", mixed(b'Content-Type: multipart/digest; boundary="D"\r\n\r\n--D\r\n\r\n' + HEAD + PDF_PART
                     + b"\r\n" + lines(TEXT, 76) + b"--D--\r\n")),  # fmt: skip
    ("not-base64-encoded", mixed(b"Content-Type: application/octet-stream\r\n\r\n" + lines(TEXT, 76),
                                 b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
                                 + lines(b"Caf=C3=A9" * 40, 76))),  # fmt: skip
]

# Mails where a run is not alone in the body of a part: parsed by the email package as they are.
PARSED_CASES = [
    ("junk-line-in-the-body", mixed(pdf_part(lines(TEXT[:760], 76) + b"!!junk!!\r\n" + lines(TEXT[760:], 76)))),
    ("trailing-spaces-on-one-line", mixed(pdf_part(lines(TEXT[:760], 76) + TEXT[760:836] + b" \r\n"
                                                   + lines(TEXT[836:], 76)))),  # fmt: skip
    ("blank-line-inside-the-body", mixed(pdf_part(lines(TEXT[:760], 76) + b"\r\n" + lines(TEXT[760:], 76)))),
    ("junk-before-the-body", mixed(pdf_part(b"%%\r\n" + lines(TEXT, 76)))),
    ("base64-in-the-preamble", mixed(pdf_part(lines(TEXT, 76))).replace(b"\r\n\r\n--B", b"\r\n\r\nQUJD\r\n--B", 1)),
    ("base64-in-the-epilogue", mixed(pdf_part(lines(TEXT, 76))) + b"QUJD\r\n"),
    ("boundary-never-seen", mixed(pdf_part(lines(TEXT, 76))).replace(b"--B\r\n", b"--C\r\n")),
]


@pytest.mark.parametrize(("name", "raw"), RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_bodies_decoded_from_the_raw_bytes_are_those_of_the_email_package(name: str, raw: bytes) -> None:
    assert assert_same(raw) >= 1


@pytest.mark.parametrize(("name", "raw"), PARSED_CASES, ids=[c[0] for c in PARSED_CASES])
def test_a_run_not_alone_in_a_body_leaves_the_mail_to_the_email_package(name: str, raw: bytes) -> None:
    assert assert_same(raw) == 0


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_mail_case_decodes_alike_both_ways(case: MailCase) -> None:
    assert_same(case.build())


def test_clean_bodies_are_what_get_payload_decodes() -> None:
    for _, raw in RAW_CASES:
        kept, _ = both_ways(raw)
        plain = email.message_from_bytes(raw, policy=email.policy.default)
        ours = [(data, clean) for _, data, clean in leaves(kept)]
        theirs = [p.get_payload(decode=True) for p in plain.walk() if not p.is_multipart()]
        assert len(ours) == len(theirs)
        for (data, clean), payload in zip(ours, theirs, strict=True):
            if clean:
                assert data == payload


def test_random_bodies_decode_alike() -> None:
    rng = random.Random(20261204)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    for _ in range(400):
        if rng.random() < 0.5:  # mostly valid: an encoding, sometimes cut or padded wrongly
            text = base64.b64encode(rng.randbytes(rng.randrange(1, 300)))
            text = text[: len(text) - rng.choice([0, 0, 0, 1, 2, 3])] + b"=" * rng.choice([0, 0, 0, 1, 2])
        else:  # anything made of base64 characters and "="
            text = bytes(rng.choice(alphabet + b"====") for _ in range(rng.randrange(1, 40)))
        ends = [b"\r\n", b"\n", b"\r"]
        body, at = b"", 0
        while at < len(text):
            width = rng.choice([1, 2, 3, 4, 57, 76, 1000])
            body += text[at : at + width] + rng.choice(ends)
            at += width
        single = rng.random() < 0.2
        raw = HEAD + PDF_PART + b"\r\n" + body if single else mixed(pdf_part(body))
        if rng.random() < 0.2:  # the message ends on the body's last character
            raw = raw.rstrip(b"\r\n") if single else mixed(pdf_part(body.rstrip(b"\r\n")), close=False)
        assert assert_same(raw) == 1, raw


def test_the_validity_rule_is_strict_base64() -> None:
    # RawBody.base64 decides "clean" without decoding strictly: the rule must be b64decode(validate=True)'s.
    rng = random.Random(7)
    for _ in range(3000):
        text = bytes(rng.choice(b"AQgw+/==") for _ in range(rng.randrange(1, 13)))
        body = mime.RawBody(text, 0, len(text), b"", b"")
        try:
            strict: bytes | None = binascii.a2b_base64(text, strict_mode=True)
        except binascii.Error:
            strict = None
        data, clean = body.base64()
        assert clean == (strict is not None and len(text) % 4 == 0), text
        if clean:
            assert data == strict


def test_large_attachments_stay_in_the_raw_bytes_and_decode_once() -> None:
    document = pdf(3) + bytes(200_000)
    raw = plain_with([("scan.pdf", "application/pdf", document)])
    msg = mime.parse(raw, 50, 500)
    assert held(msg) == 1  # the default threshold takes a real attachment
    (part,) = mime.candidates(msg)
    assert part.data == document and part.clean
    assert extract(raw, DEFAULT).documents[0]["bytes"] == len(document)


def test_the_decoded_bytes_bound_stops_bodies_left_in_the_raw_bytes() -> None:
    raw = plain_with([("a.pdf", "application/pdf", pdf(1) + bytes(300_000)),
                      ("b.pdf", "application/pdf", pdf(1) + bytes(300_000))])  # fmt: skip
    assert held(mime.parse(raw, 50, 500)) == 2
    with pytest.raises(DocumentRefused) as caught:
        extract(raw, dataclasses.replace(DEFAULT, max_decoded_bytes=500_000))
    assert caught.value.reason == "limits"
    assert str(caught.value.reply) == (
        "554 5.6.0 Message too complex to process: attachments larger than 500000 bytes in all"
    )


def test_a_decoding_bomb_in_a_body_left_in_the_raw_bytes_is_refused() -> None:
    raw = plain_with([("bomb.pdf", "application/pdf", pdf_object_stream_bomb(512))])
    assert held(mime.parse(raw, 50, 500)) == 1
    with pytest.raises(DocumentRefused) as caught:
        extract(raw, DEFAULT)
    assert caught.value.reply.reply is replies.DOC_LIMITS and "documents.max_stream_bytes" in str(caught.value)


def test_structure_bounds_hold_whatever_the_bodies() -> None:
    deep = nested(51).replace(b"Content-Transfer-Encoding: base64\r\n\r\n",
                              b"Content-Transfer-Encoding: base64\r\n\r\n" + lines(TEXT * 40, 76), 1)  # fmt: skip
    with pytest.raises(mime.LimitExceeded, match="nested more than 50 deep"):
        mime.parse(deep, 50, 500, raw_body_min=1)
