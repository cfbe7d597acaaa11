"""The provider's receipt (AR) codes, as one table.

Each code has the provider's French text, an English reading and a category
(delivered; busy; no answer; wrong number; document problem; transmission
error; number barred). A code missing from the table is kept as it came, in
the category ``unknown``: a failure, never a crash.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Category(enum.StrEnum):
    DELIVERED = "delivered"
    BUSY = "busy"
    NO_ANSWER = "no answer"
    WRONG_NUMBER = "wrong number"
    DOCUMENT = "document problem"
    TRANSMISSION = "transmission error"
    BARRED = "number barred"
    UNKNOWN = "unknown"


# Busy and no answer may be resubmitted automatically (delivery.busy_retries).
RETRYABLE = frozenset({Category.BUSY, Category.NO_ANSWER})


@dataclass(frozen=True)
class ReceiptCode:
    code: str
    french: str
    english: str
    category: Category

    @property
    def delivered(self) -> bool:
        return self.category is Category.DELIVERED


def _c(code: int, french: str, english: str, category: Category) -> tuple[str, ReceiptCode]:
    return str(code), ReceiptCode(str(code), french, english, category)


_NO_ANSWER = ("pas de réponse", "no answer")
_CONVERSION = ("erreur de conversion de document", "the document could not be converted")
_TRANSMISSION = ("erreur de transmission", "transmission error")

# From the provider's documentation (../shared/provider/123-fax-http-api.fr.txt).
CODES: dict[str, ReceiptCode] = dict(
    [
        _c(0, "OK reçu", "received", Category.DELIVERED),
        _c(31064, "occupé", "line busy", Category.BUSY),
        _c(34012, "occupé", "line busy", Category.BUSY),
        *(_c(n, *_NO_ANSWER, Category.NO_ANSWER) for n in (31068, 304128, 30127, 5313, 31079, 30120, 30032)),
        *(_c(n, *_NO_ANSWER, Category.NO_ANSWER) for n in (30112, 30113, 20007, 30129)),
        _c(31083, "mauvais numéro", "wrong number", Category.WRONG_NUMBER),
        _c(30133, "coordonnées incorrectes", "incorrect details for the number", Category.WRONG_NUMBER),
        _c(25011, "pas de fichier", "no document", Category.DOCUMENT),
        *(_c(n, *_CONVERSION, Category.DOCUMENT) for n in (25012, 25013, 25002)),
        _c(25300, "erreur lors de la conversion", "error while converting the document", Category.DOCUMENT),
        _c(20008, "mauvais format de fichier", "wrong document format", Category.DOCUMENT),
        *(_c(n, *_TRANSMISSION, Category.TRANSMISSION) for n in (33126, 5316, 33127)),
        _c(34011, "raccroché distant", "the remote side hung up", Category.TRANSMISSION),
        _c(34000, "déconnexion distance", "the remote side disconnected", Category.TRANSMISSION),
        _c(
            31082,
            "le fax distant a interrompu la transmission",
            "the remote fax stopped the transmission",
            Category.TRANSMISSION,
        ),  # fmt: skip
        _c(31086, "la communication n'a pu s'établir", "the call could not be set up", Category.TRANSMISSION),
        _c(
            70003,
            "Numéro en liste rouge ou EcoFAX",
            "the number is on a do-not-call list (liste rouge or EcoFAX)",
            Category.BARRED,
        ),  # fmt: skip
    ]
)


def lookup(code: str) -> ReceiptCode:
    """The table entry for ``code``; an unknown code is kept as such."""
    found = CODES.get(code.lstrip("0") or "0")
    return found or ReceiptCode(code, "", f"unknown receipt code {code}", Category.UNKNOWN)
