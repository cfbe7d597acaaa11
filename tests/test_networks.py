"""One rule for client addresses against configured networks (gateway.networks)."""

from __future__ import annotations

import pytest

from gateway.networks import Networks, parse_address
from gateway.settings import Network
from gateway.smtp.access import client_network


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),  # an IPv4 client of a dual-stack listener
        ("fe80::1%eth0", "fe80::1"),  # a link-local client with its scope
        ("::1", "::1"),
        ("", None),
        (None, None),
        ("not-an-address", None),
    ],
)
def test_a_peer_address_is_judged_as_the_address_it_stands_for(peer: str | None, expected: str | None) -> None:
    parsed = parse_address(peer)
    assert (str(parsed) if parsed is not None else None) == expected


def test_networks_hold_mapped_and_scoped_addresses() -> None:
    nets = Networks(["192.0.2.0/24", "fe80::/10"])
    assert nets.holds("::ffff:192.0.2.7") and nets.holds("192.0.2.7") and nets.holds("fe80::1%eth0")
    assert not nets.holds("198.51.100.1") and not nets.holds("garbage") and not nets.holds(None)
    assert nets.allows("192.0.2.9") and not nets.allows("198.51.100.1")


def test_an_empty_list_restricts_nothing_but_holds_nothing() -> None:
    nets = Networks([])
    assert not nets and nets.allows("198.51.100.1") and not nets.holds("198.51.100.1")


def test_the_smtp_trusted_network_is_the_first_that_holds_the_client() -> None:
    office, lan = Network(cidr="192.0.2.0/24"), Network(cidr="192.0.0.0/16")
    assert client_network("::ffff:192.0.2.5", [office, lan]) is office
    assert client_network("192.0.9.5", [office, lan]) is lan
    assert client_network("198.51.100.1", [office, lan]) is None
    assert client_network("bogus", [office]) is None
