"""The parts of split mails (``message/partial``) kept until their set is whole: the ``partial_parts`` table.

In: each part the SMTP stage answered 250 (:meth:`PartialParts.add_partial_part`, once its raw mail is
in the spool), and the end of a set, faxed or refused (:meth:`PartialParts.finish_partial_set`, in the
transaction that commits the message or the refusal). Out: the parts of a set in order, the sets
still open with the time their first part came (for the expiry of incomplete ones), and the spool
ids that still belong to a part (so that start-up keeps their files). A set is one sender's parts
with one id: parts of another sender never join it. A finished set's rows stay, without their
files, until :meth:`PartialParts.forget_partial_sets`: a part sent again then is not a new set.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from gateway.store.jobs import JobQueries, _marks


class PartTaken(enum.StrEnum):
    """What :meth:`PartialParts.add_partial_part` did with a part."""

    KEPT = "kept"  # a new part of an open set (or the first of a new set)
    RESENT = "resent"  # that number of that set was kept already: the first copy stays
    FINISHED = "finished"  # that set was already faxed or refused
    TOO_MANY_SETS = "too many sets"  # its sender has documents.partial_max_sets sets open already
    TOO_BIG = "too big"  # the set would be over smtp.max_message_size in all


@dataclass(frozen=True)
class NewPart:
    sender: str
    set_id: str
    number: int
    total: int  # 0: not given by this part
    spool_id: str
    numbers: Sequence[str]
    client_addr: str = ""
    auth_user: str = ""
    size: int = 0  # bytes of the part's mail


@dataclass(frozen=True)
class Part:
    sender: str
    set_id: str
    number: int
    total: int
    spool_id: str
    received_at: float
    numbers: tuple[str, ...]
    client_addr: str
    auth_user: str


@dataclass(frozen=True)
class OpenSet:
    sender: str
    set_id: str
    first_at: float  # when its first part came


_PART_COLUMNS = "sender, set_id, number, total, spool_id, received_at, numbers, client_addr, auth_user"


class PartialParts(JobQueries):
    """The ``partial_parts`` table."""

    def add_partial_part(self, part: NewPart, *, max_sets: int = 0, max_bytes: int = 0) -> PartTaken:
        """Keep ``part`` (its file already in the spool) unless its set is finished or has that number.

        Bounded like any mail: a part that opens a set when its sender already has ``max_sets`` open
        is ``TOO_MANY_SETS``, one that takes its set over ``max_bytes`` in all is ``TOO_BIG`` (0: no bound).
        """
        with self.transaction() as db:
            # One sender's parts one at a time across gateways (PostgreSQL): the bounds below are counted exactly.
            self.serialise(f"partials:{part.sender.lower()}")
            key = (part.sender, part.set_id)
            if db.execute(
                "SELECT 1 FROM partial_parts WHERE sender = ? AND set_id = ? AND done_at > 0 LIMIT 1", key
            ).fetchone():
                return PartTaken.FINISHED
            if db.execute(
                "SELECT 1 FROM partial_parts WHERE sender = ? AND set_id = ? AND number = ?", (*key, part.number)
            ).fetchone():
                return PartTaken.RESENT
            row = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM partial_parts WHERE sender = ? AND set_id = ?", key
            ).fetchone()
            if max_sets and not row[0]:
                open_sets = db.execute(
                    "SELECT COUNT(DISTINCT set_id) FROM partial_parts WHERE sender = ? AND done_at = 0",
                    (part.sender,),
                ).fetchone()[0]
                if open_sets >= max_sets:
                    return PartTaken.TOO_MANY_SETS
            if max_bytes and int(row[1]) + part.size > max_bytes:
                return PartTaken.TOO_BIG
            # A sender spelled in another case is not serialised with this one: its row wins, as a part sent again.
            cursor = db.execute(
                f"INSERT INTO partial_parts ({_PART_COLUMNS}, bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (part.sender, part.set_id, part.number, part.total, part.spool_id, self.clock(),
                 " ".join(part.numbers), part.client_addr, part.auth_user, part.size),
            )  # fmt: skip
        return PartTaken.KEPT if cursor.rowcount == 1 else PartTaken.RESENT

    def partial_set(self, sender: str, set_id: str) -> list[Part]:
        """The kept parts of an open set, by number (none once it is finished)."""
        rows = self.db.execute(
            f"SELECT {_PART_COLUMNS} FROM partial_parts WHERE sender = ? AND set_id = ? AND done_at = 0"
            " ORDER BY number",
            (sender, set_id),
        )
        return [
            Part(str(r["sender"]), str(r["set_id"]), int(r["number"]), int(r["total"]), str(r["spool_id"]),
                 float(r["received_at"]), tuple(str(r["numbers"]).split()), str(r["client_addr"]),
                 str(r["auth_user"]))
            for r in rows
        ]  # fmt: skip

    def open_partial_sets(self, limit: int = 100) -> list[OpenSet]:
        """The sets not finished yet, the oldest first (at most ``limit``)."""
        rows = self.db.execute(
            "SELECT sender, set_id, MIN(received_at) AS first_at FROM partial_parts WHERE done_at = 0"
            " GROUP BY sender, set_id ORDER BY first_at LIMIT ?",
            (limit,),
        )
        return [OpenSet(str(r["sender"]), str(r["set_id"]), float(r["first_at"])) for r in rows]

    def finish_partial_set(self, sender: str, set_id: str) -> list[str]:
        """Mark a set faxed or refused (in the caller's transaction); the spool ids of its parts, to remove."""
        with self.transaction() as db:
            rows = db.execute(
                "SELECT spool_id FROM partial_parts WHERE sender = ? AND set_id = ? AND done_at = 0",
                (sender, set_id),
            )
            ids = [str(r[0]) for r in rows if r[0]]
            db.execute(
                "UPDATE partial_parts SET done_at = ?, spool_id = '' WHERE sender = ? AND set_id = ? AND done_at = 0",
                (self.clock(), sender, set_id),
            )
        return ids

    def forget_partial_sets(self, before: float) -> int:
        """Delete the rows of sets finished before ``before``; how many."""
        with self.transaction() as db:
            cursor = db.execute("DELETE FROM partial_parts WHERE done_at > 0 AND done_at < ?", (before,))
        return int(cursor.rowcount)

    def recorded_messages(self, message_ids: Collection[str]) -> set[str]:
        """Which of ``message_ids`` have a ``messages`` row or are a kept part's file."""
        found = super().recorded_messages(message_ids)
        ids = [i for i in message_ids if i not in found]
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            rows = self.db.execute(f"SELECT spool_id FROM partial_parts WHERE spool_id IN ({_marks(chunk)})", chunk)
            found |= {str(r[0]) for r in rows}
        return found
