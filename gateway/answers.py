"""The provider's answer codes to a submission (101-113), as one table both languages read.

In: a code as the provider sent it (``"107"``). Out: what the code means for
the job (:class:`Answer`) and its reason in words, in English and in French,
each naming what to change. The provider client reads the table to turn an
answer into an outcome; the receipts read it (through the code recorded with
the notice, never by parsing words back) to say the reason in their own
language. Pure.
"""

from __future__ import annotations

import enum
import types
from collections.abc import Mapping
from dataclasses import dataclass


class Answer(enum.Enum):
    ACCEPTED = "accepted"
    FAILED = "failed"  # the sender's document or number: tell the sender
    FAILED_BUG = "failed-bug"  # the gateway should have caught it: also a bug alert
    HOLD_CONFIG = "hold-config"  # our configuration: pause submissions, alert the administrator
    HOLD_URL = "hold-url"  # the provider could not fetch the document
    HOLD_CREDIT = "hold-credit"  # no credit: retried on a timer


@dataclass(frozen=True)
class AnswerCode:
    code: int
    answer: Answer
    english: str
    french: str

    def reason(self, lang: str) -> str:
        """The reason in ``lang`` (``en`` or ``fr``), with the code."""
        return f"{self.french if lang == 'fr' else self.english} (code {self.code})"


def _a(code: int, answer: Answer, english: str, french: str) -> tuple[int, AnswerCode]:
    return code, AnswerCode(code, answer, english, french)


# The provider's answer codes (../shared/provider/README.md).
ANSWER_CODES: Mapping[int, AnswerCode] = types.MappingProxyType(dict([
    _a(101, Answer.HOLD_CONFIG, "the provider says the account e-mail is empty: set provider.email",
       "le fournisseur dit que l'adresse du compte fax est vide : l'administrateur doit la renseigner"),
    _a(102, Answer.HOLD_CONFIG, "the provider says the password is empty: set FAX_GATEWAY_PROVIDER_PASSWORD",
       "le fournisseur dit que le mot de passe du compte fax est vide : l'administrateur doit le renseigner"),
    _a(103, Answer.HOLD_CONFIG,
       "the provider refused the credentials: check provider.email and FAX_GATEWAY_PROVIDER_PASSWORD",
       "le fournisseur a refusé les identifiants du compte fax : l'administrateur doit les vérifier"),
    _a(104, Answer.HOLD_CONFIG,
       "the provider received no document URL (a gateway fault): check the storage settings",
       "le fournisseur n'a pas reçu l'adresse du document (une faute de la passerelle) : "
       "l'administrateur doit vérifier le stockage"),
    _a(105, Answer.HOLD_URL,
       "the provider could not use the document URL: check that storage (or http.public_url) is reachable "
       "from the internet and not expired",
       "le fournisseur n'a pas pu télécharger le document : l'administrateur doit vérifier que le stockage "
       "est joignable depuis internet"),
    _a(106, Answer.HOLD_CONFIG, "the provider received no fax number (a gateway fault)",
       "le fournisseur n'a pas reçu le numéro de fax (une faute de la passerelle)"),
    _a(107, Answer.FAILED, "the provider says the fax number is not valid: check the number and send again",
       "le fournisseur dit que le numéro de fax n'est pas valide : vérifiez le numéro et renvoyez le message"),
    _a(108, Answer.HOLD_CREDIT,
       "the provider account balance is zero: credit the account; the fax will be retried",
       "le compte fax n'a plus de crédit : le fax sera renvoyé dès que le compte sera recrédité"),
    _a(109, Answer.FAILED, "the provider refused the document format: send a PDF, TIFF, JPEG, PNG or GIF",
       "le fournisseur a refusé le format du document : envoyez un PDF, TIFF, JPEG, PNG ou GIF"),
    _a(110, Answer.FAILED_BUG,
       "the provider refused the document as larger than 1 MB: send fewer or lighter pages",
       "le fournisseur a refusé le document, plus grand que 1 Mo : envoyez moins de pages ou des pages "
       "plus légères"),
    _a(111, Answer.FAILED_BUG, "the provider says the document is empty: send a document with at least one page",
       "le fournisseur dit que le document est vide : envoyez un document d'au moins une page"),
    _a(112, Answer.HOLD_CREDIT,
       "the provider account needs credit for this fax: credit the account; the fax will be retried",
       "le compte fax n'a pas assez de crédit pour ce fax : le fax sera renvoyé dès que le compte sera "
       "recrédité"),
    _a(113, Answer.ACCEPTED, "the provider accepted the fax and passed it to the operator",
       "le fournisseur a accepté le fax et l'a transmis à l'opérateur"),
]))  # fmt: skip


def lookup(code: str) -> AnswerCode | None:
    """The table entry for an answer code as recorded (``"107"``); None for anything else."""
    return ANSWER_CODES.get(int(code)) if code.isdigit() and len(code) <= 6 else None
