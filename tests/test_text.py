"""Header text decoded for a person (gateway.text), as the receipts and the timeline quote it."""

from __future__ import annotations

import pytest

from gateway.documents.headers import read_headers
from gateway.text import display


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("=?utf-8?b?RmFjdHVyZSDDqXTDqSBuwrA1?=", "Facture été n°5"),
        ("Re: =?ISO-8859-1?Q?Devis_n=B042?= urgent", "Re: Devis n°42 urgent"),
        ("=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),  # adjacent encoded words join (RFC 2047 6.2)
        ("=?bogus-charset?q?x?=", "=?bogus-charset?q?x?="),  # an unknown charset: as it came
        ("Invoice 42", "Invoice 42"),
    ],
)
def test_display_decodes_encoded_words(raw: str, shown: str) -> None:
    assert display(raw) == shown


@pytest.mark.parametrize(
    ("header", "subject"),
    [
        (b"Subject: =?utf-8?b?RmFjdHVyZSDDqXTDqSBuwrA1?=", "Facture été n°5"),
        ("Subject: Facture été n°5 ☃".encode(), "Facture été n°5 ☃"),  # raw UTF-8 (BODY=8BITMIME)
        (b"Subject: caf\xe9 cr\xe8me", "café crème"),  # raw bytes that are not UTF-8: Latin-1
        (b"Subject: =?utf-8?q?Facture?=\r\n =?utf-8?q?_d=C3=A9cembre?=", "Facture décembre"),  # folded
    ],
)
def test_the_subject_is_stored_as_a_person_reads_it(header: bytes, subject: str) -> None:
    headers = read_headers(header + b"\r\nFrom: =?utf-8?q?C=C3=A9line?= <celine@example.com>\r\n\r\nbody\r\n")
    assert headers.subject == subject
    assert headers.header_from == "=?utf-8?q?C=C3=A9line?= <celine@example.com>"  # addresses as written
