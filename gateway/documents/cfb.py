"""The streams of a Compound File (OLE2, [MS-CFB]): what Word 97-2003 and Excel 97-2003 files are made of.

In: the bytes of a file that may be a compound file, the name of a stream at its top (``WordDocument``,
``Workbook``) and how many of its first bytes are wanted. Out: those bytes, ``None`` when the file has no
such stream, or :class:`Damaged` when the file is not a compound file or its tables do not hold together.

Only what the Office checks need (gateway.documents.office: is a password set?), read under bounds: a
chain of sectors never visits a sector twice nor more sectors than the file holds (a loop in the
allocation table is damage, not an endless read), the directory is walked once per entry, and nothing
past ``limit`` bytes of a stream is read. Blocking, pure computation: runs in the document worker
processes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

SIGNATURE = bytes.fromhex("d0cf11e0a1b11ae1")
_HEADER = 512
_ENTRY = 128
_NOSTREAM = 0xFFFFFFFF
_MAXREGSECT = 0xFFFFFFFA  # sector numbers above this are markers (end of chain, free, FAT or DIFAT sector)
_ENDOFCHAIN = 0xFFFFFFFE
_STREAM, _ROOT = 2, 5


class Damaged(ValueError):
    """Not a compound file, or one whose sector tables, directory or chains are broken."""


def is_compound(data: bytes) -> bool:
    return data.startswith(SIGNATURE)


def stream(data: bytes, name: str, limit: int) -> bytes | None:
    """The first ``limit`` bytes of the stream ``name`` among the root storage's children (case-insensitive,
    as [MS-CFB] compares names), or None when there is none."""
    return _File(data).read(name, limit)


class _File:
    def __init__(self, data: bytes) -> None:
        if len(data) < _HEADER or not is_compound(data):
            raise Damaged("not a compound file")
        self.data = data
        (major, order, shift, mini_shift) = struct.unpack_from("<HHHH", data, 0x1A)
        if order != 0xFFFE or (major, shift) not in ((3, 9), (4, 12)) or mini_shift != 6:
            raise Damaged(f"unknown compound file layout (version {major}, sector shift {shift})")
        self.sector = 1 << shift
        self._ministream: bytes | None = None
        self._minifat: bytes | None = None
        (self.fat_sectors, self.dir_start, _, self.cutoff, self.minifat_start, self.minifat_sectors,
         difat_start, difat_sectors) = struct.unpack_from("<IIIIIIII", data, 0x2C)  # fmt: skip
        # Sectors the file holds (the header takes the first sector's place).
        self.sectors = max(0, (len(data) - self.sector) // self.sector + (1 if len(data) % self.sector else 0))
        if self.fat_sectors > self.sectors:
            raise Damaged("more allocation table sectors than the file holds")
        self.fat = self._difat(difat_start, difat_sectors)
        entries = self._chain(self.dir_start, self.sectors * self.sector, self._fat_next, self._sector, self.sectors)
        self.entries = [entries[i : i + _ENTRY] for i in range(0, len(entries) - _ENTRY + 1, _ENTRY)]
        if not self.entries or self.entries[0][66] != _ROOT:
            raise Damaged("no root entry")

    # -- the sector tables ----------------------------------------------------------------------

    def _difat(self, start: int, count: int) -> list[int]:
        """The sector numbers of the allocation table (FAT): 109 in the header, the rest in a DIFAT chain."""
        found = [s for s in struct.unpack_from("<109I", self.data, 0x4C) if s <= _MAXREGSECT]
        per = self.sector // 4 - 1  # each DIFAT sector: that many FAT sector numbers, then the next DIFAT sector
        sector, seen = start, 0
        while sector <= _MAXREGSECT and seen < count and len(found) < self.fat_sectors:
            seen += 1
            if seen > self.sectors:
                raise Damaged("the DIFAT chain loops")
            values = struct.unpack_from(f"<{per + 1}I", self._sector(sector))
            found.extend(s for s in values[:per] if s <= _MAXREGSECT)
            sector = values[per]
        return found[: self.fat_sectors]

    def _sector(self, number: int) -> bytes:
        if number > _MAXREGSECT or number >= self.sectors:
            raise Damaged(f"sector {number} is past the end of the file")
        offset = (number + 1) * self.sector
        return self.data[offset : offset + self.sector].ljust(self.sector, b"\0")

    def _fat_next(self, number: int) -> int:
        per = self.sector // 4
        index = number // per
        if index >= len(self.fat):
            raise Damaged(f"sector {number} is not in the allocation table")
        return int(struct.unpack_from("<I", self._sector(self.fat[index]), (number % per) * 4)[0])

    @staticmethod
    def _chain(start: int, limit: int, following: Callable[[int], int], read: Callable[[int], bytes],
               most: int) -> bytes:  # fmt: skip
        """Up to ``limit`` bytes of the chain that begins at ``start``, of at most ``most`` sectors, each once."""
        out, sector, seen = bytearray(), start, set[int]()
        while sector != _ENDOFCHAIN and len(out) < limit:
            if sector in seen or len(seen) >= most:
                raise Damaged("a sector chain loops")
            seen.add(sector)
            out += read(sector)
            sector = following(sector)
        return bytes(out[:limit])

    # -- the directory and the mini stream ------------------------------------------------------

    def read(self, name: str, limit: int) -> bytes | None:
        entry = self._child_of_root(name)
        if entry is None:
            return None
        start, size = self._extent(entry)
        wanted = min(limit, size)
        if wanted <= 0:
            return b""
        if size < self.cutoff:  # in the mini stream, 64-byte sectors chained by the mini allocation table
            ministream = self._mini()
            return self._chain(start, wanted, self._mini_next, self._mini_sector, len(ministream) // 64)
        return self._chain(start, wanted, self._fat_next, self._sector, self.sectors)

    def _extent(self, entry: bytes) -> tuple[int, int]:
        """An entry's first sector and size in bytes."""
        start, size = struct.unpack_from("<IQ", entry, 116)
        if self.sector == 512:
            size &= 0xFFFFFFFF  # version 3: the high half may hold anything
        return int(start), int(size)

    def _child_of_root(self, name: str) -> bytes | None:
        """The stream entry called ``name`` in the root's tree of children (a red-black tree by sibling ids)."""
        wanted = name.upper()
        pending, seen = [self._id(self.entries[0], 76)], set()
        while pending:
            index = pending.pop()
            if index == _NOSTREAM:
                continue
            if index in seen or index >= len(self.entries):
                raise Damaged("the directory is not a tree")
            seen.add(index)
            entry = self.entries[index]
            length = struct.unpack_from("<H", entry, 64)[0]
            found = entry[: max(0, min(length, 64) - 2)].decode("utf-16-le", "replace")
            if entry[66] == _STREAM and found.upper() == wanted:
                return entry
            pending += [self._id(entry, 68), self._id(entry, 72)]  # left and right siblings
        return None

    @staticmethod
    def _id(entry: bytes, offset: int) -> int:
        return int(struct.unpack_from("<I", entry, offset)[0])

    def _mini(self) -> bytes:
        """The mini stream: the root entry's stream, in regular sectors."""
        if self._ministream is None:
            start, size = self._extent(self.entries[0])
            self._ministream = self._chain(start, min(size, len(self.data)), self._fat_next, self._sector,
                                           self.sectors)  # fmt: skip
        return self._ministream

    def _mini_sector(self, number: int) -> bytes:
        ministream, offset = self._mini(), number * 64
        if offset + 64 > len(ministream):
            raise Damaged(f"mini sector {number} is past the end of the mini stream")
        return ministream[offset : offset + 64]

    def _mini_next(self, number: int) -> int:
        if self._minifat is None:
            self._minifat = self._chain(self.minifat_start, self.minifat_sectors * self.sector, self._fat_next,
                                        self._sector, self.sectors)  # fmt: skip
        offset = number * 4
        if offset + 4 > len(self._minifat):
            raise Damaged(f"mini sector {number} is not in the mini allocation table")
        return int(struct.unpack_from("<I", self._minifat, offset)[0])
