"""Recipients: every spelling, every refusal, every relay trick (pure parser, then on the wire)."""

from __future__ import annotations

import pytest

from gateway.settings import NumberSettings
from gateway.smtp.recipients import Domains, FaxRecipient, ReceiptRecipient, classify, split_path
from tests.support_smtp import Door, Raw, Starter

DOMAINS = Domains(("fax.local",), "ar.fax.local")
FR = NumberSettings()
RELAY = "550 5.7.1 Relaying denied: only <number>@fax.local recipients are accepted"


@pytest.mark.parametrize(
    "local", ["0145678900", "01.45.67.89.00", "01-45-67-89-00", "+33145678900", "0033145678900", "+33.1.45.67.89.00"]
)
def test_every_spelling_gives_the_same_e164_number(local: str) -> None:
    assert classify(f"{local}@fax.local", DOMAINS, FR) == FaxRecipient("+33145678900")
    assert classify(f"{local}@FAX.Local", DOMAINS, FR) == FaxRecipient("+33145678900")


@pytest.mark.parametrize(
    "local",
    [
        "01&45678900", "0145678900=1", "0145678900?x", "01456%78900", "0145!678900", '"0145678900"', "01 45",
        "\uff10\uff11\uff14\uff15\uff16\uff17\uff18\uff19\uff10\uff10",  # full-width digits
        "\u0660\u0661\u0664\u0665\u0666\u0667\u0668\u0669\u0660\u0660",  # Arabic-Indic digits
        "01..45678900", ".0145678900", "0145678900-", "33+145678900", "++33145678900", "abc", "0" * 65,
    ],
)  # fmt: skip
def test_anything_but_ascii_digits_dots_dashes_is_a_syntax_error(local: str) -> None:
    reply = classify(f"{local}@fax.local", DOMAINS, FR)
    assert str(reply).startswith("553 5.1.3 "), reply


@pytest.mark.parametrize(
    ("local", "reason"),
    [
        ("0145", "too short"),
        ("01456789001234567", "too long"),
        ("+999145678900", "unknown country code"),
        ("+33045678900", "no such number in the numbering plan"),
    ],
)
def test_a_well_formed_but_invalid_number_is_550_511_with_the_reason(local: str, reason: str) -> None:
    reply = str(classify(f"{local}@fax.local", DOMAINS, NumberSettings(allowed_regions=("FR", "DK"))))
    assert reply == f"550 5.1.1 {local} is not a valid fax number: {reason}"


@pytest.mark.parametrize(
    ("local", "reason"),
    [
        ("0899123456", "premium-rate number"),
        ("08.99.12.34.56", "premium-rate number"),
        ("0033899123456", "premium-rate number"),
        ("0810123456", "shared-cost number"),
        ("112", "short or emergency number"),
        ("15", "short or emergency number"),
        ("3646", "short or emergency number"),
        ("+4930123456", "faxes to DE are not allowed"),
        ("004930123456", "faxes to DE are not allowed"),
    ],
)
def test_destination_policy_is_550_571_for_every_spelling(local: str, reason: str) -> None:
    reply = str(classify(f"{local}@fax.local", DOMAINS, FR))
    assert reply.startswith("550 5.7.1 Destination not permitted: ") and reply.endswith(f"({reason})")


def test_the_policy_can_be_opened() -> None:
    settings = NumberSettings(allowed_regions=("FR", "DE"), block_premium_rate=False, block_shared_cost=False)
    assert classify("+4930123456@fax.local", DOMAINS, settings) == FaxRecipient("+4930123456")
    assert classify("0899123456@fax.local", DOMAINS, settings) == FaxRecipient("+33899123456")
    assert classify("0810123456@fax.local", DOMAINS, settings) == FaxRecipient("+33810123456")
    assert str(classify("112@fax.local", DOMAINS, settings)).startswith("550 5.7.1")


RELAY_TRICKS = [
    "0145678900@evil.example",
    "0145678900%evil.example@fax.local",
    "0145678900%localhost@fax.local",
    "0145678900%127.0.0.1@fax.local",
    "0145678900%[127.0.0.1]@fax.local",
    "0145678900%01.45.67.89@fax.local",
    "127.0.0.1!0145678900@fax.local",
    "evil.example!0145678900@fax.local",
    "0145678900!evil.example@fax.local",
    '"0145678900@evil.example"@fax.local',
    "0145678900@evil.example@fax.local",
    "@fax.local:0145678900@evil.example",
    "@a.example,@fax.local:0145678900@evil.example",
    "0145678900@[127.0.0.1]",
    "0145678900@[IPv6:::1]",
    "0145678900@fax.local.",
    "0145678900@fax.local.evil.example",
    "0145678900@fax.locaI",
    "0145678900@xfax.local",
    "0145678900@sub.fax.local",
    "0145678900@fax\u2024local",
    "0145678900",
    "postmaster",
]


@pytest.mark.parametrize("address", RELAY_TRICKS)
def test_relay_tricks_are_refused(address: str) -> None:
    assert str(classify(address, DOMAINS, FR)) == RELAY


def test_receipt_addresses() -> None:
    token = "0123456789abcdef" * 2
    assert classify(f"ar-{token}@ar.fax.local", DOMAINS, FR) == ReceiptRecipient(token)
    assert str(classify("ar-nope@ar.fax.local", DOMAINS, FR)) == "550 5.1.1 No such receipt address"
    assert str(classify(f"ar-{token}@ar.fax.local", Domains(("fax.local",)), FR)) == RELAY


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("<0145678900@fax.local>", ("0145678900@fax.local", "")),
        ("<0145678900@fax.local> NOTIFY=NEVER", ("0145678900@fax.local", "NOTIFY=NEVER")),
        ("0145678900@fax.local", ("0145678900@fax.local", "")),
        ("<0145678900@fax.local", "501 5.5.4 Syntax error in parameters: missing '>' after the address"),
        ("<a>b>", "501 5.5.4 Syntax error in parameters: text after '>' must be parameters"),
        ("<>", "501 5.5.4 Syntax error in parameters: expected <number@domain>"),
    ],
)
def test_the_path_is_split_strictly(arg: str, expected: object) -> None:
    got = split_path(arg)
    assert (got if isinstance(got, tuple) else str(got)) == expected


@pytest.mark.parametrize("address", RELAY_TRICKS)
async def test_relay_tricks_on_the_wire_from_a_trusted_client(smtp_gateway: Starter, door: Door, address: str) -> None:
    h = await smtp_gateway(door.table())
    raw = await door.open(h.port)
    await raw.cmd("EHLO mfp")
    assert (await raw.cmd("MAIL FROM:<alice@example.com>")).startswith("250")
    try:
        assert await raw.cmd(f"RCPT TO:<{address}>") == RELAY
    finally:
        await raw.close()


async def test_number_replies_on_the_wire(smtp_gateway: Starter) -> None:
    h = await smtp_gateway()
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO mfp")
    await raw.cmd("MAIL FROM:<alice@example.com>")
    try:
        for spelling in ["0145678900", "01.45.67.89.00", "01-45-67-89-00", "+33145678900", "0033145678900"]:
            assert await raw.cmd(f"RCPT TO:<{spelling}@fax.local>") == "250 2.1.5 Recipient OK: fax to +33145678900"
        assert (await raw.cmd("RCPT TO:<01&45678900@fax.local>")).startswith("553 5.1.3 '01&45678900' is not")
        full_width = "\uff10\uff11\uff14\uff15\uff16\uff17\uff18\uff19\uff10\uff10"
        assert (await raw.cmd(f"RCPT TO:<{full_width}@fax.local>")).startswith("553 5.1.3 '??????????' is not")
        assert await raw.cmd("RCPT TO:<0145@fax.local>") == "550 5.1.1 0145 is not a valid fax number: too short"
        assert await raw.cmd("RCPT TO:<0899123456@fax.local>") == (
            "550 5.7.1 Destination not permitted: +33899123456 (premium-rate number)"
        )
        assert await raw.cmd("RCPT TO:<0145678900@fax.local> NOTIFY=NEVER") == (
            "555 5.5.4 Parameters not recognized or not implemented"
        )
    finally:
        await raw.close()
