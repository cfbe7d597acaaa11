"""Client addresses against configured networks: one rule for every listener.

In: a peer address as the socket layer reports it, and networks in CIDR form
(``smtp.trusted_networks``, ``http.status_networks``,
``http.callback_networks``). Out: whether, or in which network, the address
lies. A dual-stack listener reports an IPv4 client as ``::ffff:a.b.c.d`` and a
link-local client with a scope (``fe80::1%eth0``): both are judged as the
address they stand for, so an IPv4 entry admits the IPv4 client on any
listener.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text: str | None) -> Address | None:
    """The address ``text`` stands for (IPv4-mapped IPv6 as IPv4, no scope); None if it is not one."""
    try:
        address = ipaddress.ip_address((text or "").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_network(cidr: str) -> Net:
    return ipaddress.ip_network(cidr, strict=False)


class Networks:
    """A list of networks; an empty list restricts nothing (the settings say so where it applies)."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks = tuple(parse_network(c) for c in cidrs)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def holds(self, address: str | None) -> bool:
        """Whether one of the networks holds ``address`` (never true for what is not an address)."""
        parsed = parse_address(address)
        return parsed is not None and any(parsed in net for net in self.networks)

    def allows(self, address: str | None) -> bool:
        """:meth:`holds`, or true when the list is empty."""
        return not self.networks or self.holds(address)
