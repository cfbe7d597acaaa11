"""Fair sessions: slots kept for trusted clients, a cap per address, refusal budgets, idleness, slow clients.

Clients come from several loopback addresses (127.0.0.1 outside the trusted
networks, 127.0.0.2 inside). The idle and DATA timers are the event loop's:
their tests use timeouts of a fraction of a second, and a trickling client
sends its next byte each time it has waited a moment for the server's reply.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.settings import SettingsError, from_mapping
from gateway.smtp.slots import Slots
from tests.support_smtp import PASSWORD, Raw, Starter, b64, client_tls, fax_mail, make_cert, transaction, users

STRANGER, OFFICE, OTHER = "127.0.0.1", "127.0.0.2", "127.0.0.3"
TRUSTED = [{"cidr": f"{OFFICE}/32"}]
# How long a trickling client waits for a reply before it sends its next byte, and how long it keeps at it.
EVERY, LIMIT = 0.05, 5.0


def fair(**smtp: Any) -> dict[str, Any]:
    return {"smtp": {"trusted_networks": TRUSTED} | smtp}


async def refused_at_connect(port: int, source: str) -> str:
    raw = await Raw.open(port, greet=False, source=source)
    try:
        line = await raw.reply()
        assert await raw.closed()
        return line
    finally:
        await raw.close()


async def trickle(raw: Raw, chunks: Iterator[bytes]) -> tuple[str, float]:
    """Send one chunk each time no reply came for EVERY seconds; the first 4xx line (or '' at close), and when."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < LIMIT:
        try:
            line = await asyncio.wait_for(raw.reader.readline(), EVERY)
        except TimeoutError:
            try:
                await raw.send(next(chunks))
            except ConnectionError:
                pass  # closed: the reply is still to be read
            continue
        if not line or line[:1] == b"4":
            return line.decode().rstrip("\r\n"), loop.time() - start
    raise AssertionError(f"still served after {LIMIT} s")


# -- slots -------------------------------------------------------------------------------


async def test_one_address_outside_the_trusted_networks_holds_at_most_its_cap(smtp_gateway: Starter) -> None:
    h = await smtp_gateway(fair(max_connections=10, reserved_connections=2, max_connections_per_address=3))
    held = [await Raw.open(h.port, source=STRANGER) for _ in range(3)]
    refusal = await refused_at_connect(h.port, STRANGER)
    assert refusal == "421 4.7.0 Too many connections from 127.0.0.1, try again later"
    assert h.server.capped() == [STRANGER]
    other = await Raw.open(h.port, source=OTHER)  # another address is not held back by it
    office = await Raw.open(h.port, source=OFFICE)
    await held.pop().close()
    assert await held[0].cmd("NOOP") == "250 2.0.0 OK"  # the session that closed has let its slot go
    assert h.server.capped() == []
    again = await Raw.open(h.port, source=STRANGER)
    for raw in (*held, other, office, again):
        await raw.close()


async def test_reserved_slots_keep_the_office_in_while_strangers_fill_the_rest(smtp_gateway: Starter) -> None:
    h = await smtp_gateway(fair(max_connections=4, reserved_connections=2, max_connections_per_address=10))
    strangers = [await Raw.open(h.port, source=STRANGER), await Raw.open(h.port, source=OTHER)]
    assert await refused_at_connect(h.port, STRANGER) == "421 4.7.0 Too many connections, try again later"
    office = [await Raw.open(h.port, source=OFFICE) for _ in range(2)]  # the two kept for it
    await office[0].cmd("EHLO office")
    replies = await transaction(office[0], "alice@example.com", ["0145678900@fax.local"], fax_mail())
    assert replies[-1].startswith("250 2.0.0 OK: queued as ")
    assert await refused_at_connect(h.port, OFFICE) == "421 4.7.0 Too many connections, try again later"  # all taken
    for raw in (*strangers, *office):
        await raw.close()


async def test_an_authenticated_session_leaves_its_unreserved_slot_to_the_next(
    smtp_gateway: Starter, tmp_path: Path
) -> None:
    cert, key = make_cert(tmp_path)
    listener = {"listen": "127.0.0.1:0", "tls": "implicit", "name": "smtps"}
    h = await smtp_gateway(fair(max_connections=3, reserved_connections=1, max_connections_per_address=2,
                                users=users(), tls_cert=cert, tls_key=key, listeners=[listener]))  # fmt: skip
    tls = client_tls(cert)
    road = await Raw.open(h.port, tls=tls, source=STRANGER)
    second = await Raw.open(h.port, tls=tls, source=STRANGER)
    third = await Raw.open(h.port, greet=False, source=OTHER)  # the unreserved two are taken
    assert await third.closed()  # closed before any handshake: nothing can be said
    await third.close()
    await road.cmd("EHLO laptop")
    assert await road.cmd("AUTH PLAIN " + b64("\0scanner\0" + PASSWORD)) == "235 2.7.0 Authentication successful"
    third = await Raw.open(h.port, tls=tls, source=STRANGER)  # its place, and its address's, are free again
    assert await road.cmd("MAIL FROM:<alice@example.com>") == "250 2.1.0 Sender OK"
    for raw in (road, second, third):
        await raw.close()


async def test_a_client_that_may_not_send_is_closed_after_its_refusals(smtp_gateway: Starter) -> None:
    h = await smtp_gateway(fair(max_refused_mail=3))
    raw = await Raw.open(h.port, source=STRANGER)
    await raw.cmd("EHLO mfp")
    for _ in range(3):
        assert await raw.cmd("MAIL FROM:<alice@example.com>") == (
            "550 5.7.1 Client 127.0.0.1 is not permitted to send faxes"
        )
    assert await raw.cmd("NOOP") == "421 4.7.0 Too many refused senders, closing connection"
    assert await raw.closed()
    await raw.close()
    office = await Raw.open(h.port, source=OFFICE)  # a client that may send is never counted so
    await office.cmd("EHLO office")
    for _ in range(3):
        assert await office.cmd("MAIL FROM:<alice@example.com>") == "250 2.1.0 Sender OK"
        assert await office.cmd("RSET") == "250 2.0.0 OK"
    await office.close()


# -- idleness ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", [b"NOOP", b"RSET", b"HELP", b"VRFY alice", b"EHLO again"])
async def test_a_session_that_only_keeps_itself_alive_is_idle(smtp_gateway: Starter, command: bytes) -> None:
    h = await smtp_gateway({"smtp": {"idle_timeout": 0.3}})
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO mfp")
    line, seconds = await trickle(raw, itertools.repeat(command + b"\r\n"))
    assert line == "421 4.4.2 Connection idle for too long, closing"
    assert seconds < 2.0
    await raw.close()


async def test_commands_that_move_forward_keep_the_session(smtp_gateway: Starter) -> None:
    h = await smtp_gateway({"smtp": {"idle_timeout": 0.3}})
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO mfp")
    for _ in range(3):  # each in less than the idle timeout, the whole in more
        replies = await transaction(raw, "alice@example.com", ["0145678900@fax.local"], fax_mail())
        assert replies[-1].startswith("250 2.0.0 OK: queued as ")
    await raw.close()


# -- slow clients ---------------------------------------------------------------------


async def test_a_command_line_that_never_ends_is_cut_off(smtp_gateway: Starter) -> None:
    h = await smtp_gateway({"smtp": {"idle_timeout": 0.3}})
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO mfp")
    line, seconds = await trickle(raw, (bytes([c]) for c in itertools.cycle(b"MAIL FROM:<alice@example.com>")))
    assert line == "421 4.4.2 Command line not completed in time, closing connection"
    assert seconds < 2.0
    await raw.close()


async def start_data(raw: Raw) -> None:
    await raw.cmd("EHLO mfp")
    assert (await raw.cmd("MAIL FROM:<alice@example.com>")).startswith("250")
    assert (await raw.cmd("RCPT TO:<0145678900@fax.local>")).startswith("250")
    assert (await raw.cmd("DATA")).startswith("354")


async def test_data_slower_than_the_minimum_rate_is_cut_off(smtp_gateway: Starter) -> None:
    h = await smtp_gateway({"smtp": {"idle_timeout": 0.3, "data_min_rate": 100, "data_timeout": 60}})
    raw = await Raw.open(h.port)
    await start_data(raw)
    message = fax_mail().replace(b"\n", b"\r\n")
    line, seconds = await trickle(raw, (message[i : i + 1] for i in range(len(message))))  # ~20 bytes/s
    assert line == "421 4.4.2 Message arriving slower than 100 bytes per second, closing connection"
    assert seconds < 2.0
    assert await raw.closed()
    await raw.close()
    assert await h.jobs() == []


async def test_data_that_takes_longer_than_data_timeout_is_cut_off(smtp_gateway: Starter) -> None:
    h = await smtp_gateway({"smtp": {"idle_timeout": 0.3, "data_min_rate": 0, "data_timeout": 0.5}})
    raw = await Raw.open(h.port)
    await start_data(raw)
    line, seconds = await trickle(raw, itertools.repeat(b"x"))
    assert line == "421 4.4.2 Message not received within 0.5 seconds, closing connection"
    assert 0.4 < seconds < 2.0
    await raw.close()
    assert await h.jobs() == []


async def test_a_pause_in_data_after_a_fast_start_is_still_bounded_by_the_idle_timeout(smtp_gateway: Starter) -> None:
    h = await smtp_gateway({"smtp": {"idle_timeout": 0.3, "data_min_rate": 1, "data_timeout": 60}})
    raw = await Raw.open(h.port)
    await start_data(raw)
    await raw.send(b"x" * 100_000)  # far ahead of the rate: silence is what ends it
    assert await raw.reply() == "421 4.4.2 Connection idle for too long, closing"
    await raw.close()


# -- the settings and the bookkeeping --------------------------------------------------------


@pytest.mark.parametrize(
    ("smtp", "error"),
    [
        ({"max_connections_per_address": 0}, "smtp.max_connections_per_address: must be more than zero"),
        ({"reserved_connections": -1}, "smtp.reserved_connections: must be zero or more"),
        ({"data_timeout": 0}, "smtp.data_timeout: must be more than zero"),
        ({"data_min_rate": -5}, "smtp.data_min_rate: must be zero or more"),
        ({"max_refused_mail": 0}, "smtp.max_refused_mail: must be more than zero"),
    ],
)
def test_the_fairness_settings_are_checked(smtp: dict[str, Any], error: str) -> None:
    with pytest.raises(SettingsError, match=error):
        from_mapping({"smtp": smtp}, {})


def test_slots_count_the_unvouched_by_address_and_vouching_frees_their_share() -> None:
    slots = Slots(max_connections=4, reserved=2, per_address=1)
    a, b, c, d, e = (object() for _ in range(5))
    assert slots.take(a, "192.0.2.1", vouched=False) is None
    assert slots.take(b, "192.0.2.1", vouched=False) is not None and slots.capped() == ["192.0.2.1"]
    assert slots.take(b, "192.0.2.2", vouched=False) is None
    assert slots.take(c, "192.0.2.3", vouched=False) is not None  # the unreserved two are taken
    slots.vouch(a)
    assert slots.unvouched() == 1 and slots.capped() == ["192.0.2.2"]
    assert slots.take(c, "192.0.2.1", vouched=False) is None
    assert slots.take(d, "10.0.0.1", vouched=True) is None and len(slots) == 4
    assert slots.take(e, "10.0.0.1", vouched=True) is not None  # every slot is taken
    slots.vouch(a, False)  # STARTTLS after AUTH: over the limits, never closed for it
    for holder in (a, b, c, d):
        slots.release(holder)
    assert len(slots) == 0 and slots.unvouched() == 0 and slots.capped() == []
    assert Slots(max_connections=2, reserved=20, per_address=5).shared == 1  # strangers always get one
