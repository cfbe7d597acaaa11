"""Connection slots: who may hold one, so that clients that may not send cannot lock out those that may.

In: each connection as it opens (its address, and whether it is from a
trusted network), when it authenticates, and when it closes. Out: whether it
gets a slot, and if not which reply it hears (421 4.7.0, the general
``TOO_MANY_CONNECTIONS`` or ``TOO_MANY_FROM_ADDRESS``); the addresses held at
their cap right now (for ``/healthz``).

A connection is *vouched for* when it comes from a trusted network or its
session has authenticated; the others are *unvouched*. Of
``smtp.max_connections`` slots:

- unvouched connections hold at most ``max_connections - reserved_connections``
  (at least one), and at most ``max_connections_per_address`` from one address;
- a vouched connection may take any free slot.

AUTH comes after connect, so a client that will authenticate connects as an
unvouched one (it needs an unreserved slot, and counts against its address);
once it has authenticated it is vouched for: it keeps its slot, and stops
counting against the unreserved share and its address (the next unvouched
client can come in). If it starts TLS again it forgets its user (RFC 3207) and
counts as unvouched again, over the limits if need be (it is never closed for
it).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from gateway import replies
from gateway.replies import Reply


@dataclass
class _Slot:
    ip: str
    vouched: bool


class Slots:
    """The slots taken, by holder (a session, or a TLS handshake before it)."""

    def __init__(self, max_connections: int, reserved: int, per_address: int) -> None:
        self.max_connections = max_connections
        self.shared = max(1, max_connections - reserved)  # what unvouched connections may hold
        self.per_address = per_address
        self._held: dict[object, _Slot] = {}
        self._unvouched = Counter[str]()

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, holder: object) -> bool:
        return holder in self._held

    def take(self, holder: object, ip: str, *, vouched: bool) -> Reply | None:
        """A slot for ``holder``; None if it got one, else the reply that says why not."""
        if len(self._held) >= self.max_connections:
            return replies.TOO_MANY_CONNECTIONS
        if not vouched:
            if self._unvouched[ip] >= self.per_address:
                return replies.TOO_MANY_FROM_ADDRESS
            if self._unvouched.total() >= self.shared:
                return replies.TOO_MANY_CONNECTIONS
            self._unvouched[ip] += 1
        self._held[holder] = _Slot(ip, vouched)
        return None

    def vouch(self, holder: object, vouched: bool = True) -> None:
        """``holder`` has authenticated (``vouched``), or forgot it (STARTTLS after AUTH)."""
        slot = self._held.get(holder)
        if slot is None or slot.vouched == vouched:
            return
        slot.vouched = vouched
        self._unvouched[slot.ip] += -1 if vouched else 1
        if self._unvouched[slot.ip] <= 0:
            del self._unvouched[slot.ip]

    def move(self, old: object, new: object) -> None:
        """The slot of ``old`` (a TLS handshake) goes to ``new`` (its session)."""
        slot = self._held.pop(old, None)
        if slot is not None:
            self._held[new] = slot

    def release(self, holder: object) -> None:
        slot = self._held.pop(holder, None)
        if slot is not None and not slot.vouched:
            self._unvouched[slot.ip] -= 1
            if self._unvouched[slot.ip] <= 0:
                del self._unvouched[slot.ip]

    def capped(self) -> list[str]:
        """The addresses that hold ``per_address`` unvouched connections now: the next one gets 421."""
        return sorted(ip for ip, n in self._unvouched.items() if n >= self.per_address)

    def unvouched(self) -> int:
        return self._unvouched.total()
