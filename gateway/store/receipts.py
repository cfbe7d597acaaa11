"""Receipts (AR) on record, and which jobs have one waiting to be applied.

In: receipts from the provider's callback and AR mails (the receipt stage
decides what they do to a job). Out: the ``receipts`` rows, and the questions
asked about them: the receipts a job's reference has on file, a receipt on
file for an ambiguous job's number, the ambiguous job a receipt for a number
may settle, and :meth:`ReceiptQueries.jobs_with_pending_receipts`, the work
the receipt stage finds after a wake-up or a restart.

An early receipt (one that came before the submit answer was recorded)
belongs to a job only if it came while that job's request was in flight:
after the request went out (``submitted_at``) and within ``early_window``
seconds of it. A receipt planted before a request, or long after it, never
decides the job that later gets its reference.

A receipt names a fax line by its number; the same line is written in many
ways (0145.., +33145.., 0033145..), so numbers compare by their last nine
digits (:func:`number_tail`).
"""

from __future__ import annotations

import math
import re
from typing import Any

from gateway.store.base import Row
from gateway.store.jobs import Job, JobQueries
from gateway.store.states import State

# An ambiguous job's receipt may come a little before the attempt was recorded (the clocks of one machine).
_SLACK_SECONDS = 60.0


def number_tail(number: str) -> str:
    """The last nine digits: the same line whatever the format (0145.., +33145.., 0033145..)."""
    return re.sub(r"\D", "", number)[-9:]


class ReceiptQueries(JobQueries):
    """The ``receipts`` table."""

    def add_receipt(self, *, source: str, ref_accuse: str, etat_e: str, numero: str, nb_page: int, heure: str,
                    validated: str) -> int | None:  # fmt: skip
        """Store a receipt; its row id, or None for a replay of one on record (same reference, code, time, pages)."""
        rows = self.db.execute(
            "INSERT INTO receipts (received_at, source, ref_accuse, etat_e, numero, nb_page, heure, validated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
            (self.clock(), source, ref_accuse, etat_e, numero, nb_page, heure, validated),
        ).fetchall()  # all of them: SQLite finishes the statement (and its write) only then
        return int(rows[0][0]) if rows else None

    def mark_receipt_applied(self, receipt_id: int, job_id: str) -> None:
        self.db.execute(
            "UPDATE receipts SET job_id = ?, applied_at = ? WHERE id = ?", (job_id, self.clock(), receipt_id)
        )

    def unapplied_receipts(
        self, ref: str, received_from: float = 0.0, received_to: float = math.inf
    ) -> list[Row]:
        """The receipts for reference ``ref`` that no job has taken yet, received in the bounds, oldest first."""
        rows = self.db.execute(
            "SELECT * FROM receipts WHERE ref_accuse = ? AND applied_at = 0 AND received_at BETWEEN ? AND ?"
            " ORDER BY id",
            (ref, received_from, received_to),
        )
        return list(rows)

    def receipt_for_ambiguous(self, job: Job, early_window: float = math.inf) -> Row | None:
        """The oldest receipt on file that matched no job, for the number of ambiguous ``job``.

        It must come after the job's request went out, while it was in flight
        (``early_window``), and must have been on file when the job was recorded
        ambiguous: one that came later was matched as it came
        (:meth:`ambiguous_job_for_number`), and is no business of this job.
        """
        since, until = self._attempt_bounds(job, early_window)
        for row in self._unmatched_receipts(since, until):
            if self._fits(job, row, since, until):
                return row
        return None

    def submission_in_flight(self, numero: str, since: float) -> bool:
        """Whether a request to ``numero`` went out since ``since`` and has no answer recorded yet."""
        tail = number_tail(numero)
        rows = self.db.execute(
            "SELECT number FROM jobs WHERE state = ? AND submitted_at >= ?", (State.SUBMITTING, since)
        )
        return bool(tail) and any(number_tail(r["number"]) == tail for r in rows)

    def count_unmatched_receipts(self, since: float) -> int:
        """Receipts received since ``since`` that no job has taken (for the cap on unknown receipts)."""
        row = self.db.execute(
            "SELECT COUNT(*) FROM receipts WHERE job_id = '' AND applied_at = 0 AND received_at >= ?", (since,)
        ).fetchone()
        return int(row[0])

    def ambiguous_job_for_number(self, numero: str, updated_from: float, updated_to: float) -> Job | None:
        """The oldest ambiguous job to ``numero`` recorded between ``updated_from`` and ``updated_to``."""
        tail = number_tail(numero)
        rows = self.db.execute(
            "SELECT id, number FROM jobs WHERE state = ? AND updated_at BETWEEN ? AND ? ORDER BY updated_at, id",
            (State.AMBIGUOUS, updated_from, updated_to),
        )
        for row in rows:
            if number_tail(row["number"]) == tail:
                return self.get_job(row["id"])
        return None

    def jobs_with_pending_receipts(self, early_window: float = math.inf) -> list[str]:
        """Jobs a receipt on file waits for: what the receipt stage applies after a wake-up or a restart.

        A ``submitted`` job with a receipt for its reference not applied yet that came
        while its request was in flight (after ``submitted_at``, within ``early_window``
        seconds); an ``ambiguous`` job with a receipt on file for its number
        (:meth:`receipt_for_ambiguous`).
        """
        rows = self.db.execute(
            "SELECT DISTINCT j.id FROM jobs j JOIN receipts r ON r.ref_accuse = j.provider_ref"
            " WHERE j.state = ? AND j.provider_ref != '' AND r.applied_at = 0"
            " AND r.received_at BETWEEN j.submitted_at AND j.submitted_at + ?",
            (State.SUBMITTED, early_window),
        )
        found = [str(r["id"]) for r in rows]
        ambiguous = self.list_jobs(states=[State.AMBIGUOUS], limit=-1)
        if ambiguous:
            bounds = {job.id: self._attempt_bounds(job, early_window) for job in ambiguous}
            since = min(b[0] for b in bounds.values())
            until = max(b[1] for b in bounds.values())
            unmatched = self._unmatched_receipts(since, until)
            found += [job.id for job in ambiguous if any(self._fits(job, r, *bounds[job.id]) for r in unmatched)]
        return found

    @staticmethod
    def _attempt_bounds(job: Job, early_window: float) -> tuple[float, float]:
        """When a receipt on file for ambiguous ``job`` may have come: after its request went out, while it
        was in flight, and before the job was recorded ambiguous."""
        if not job.submitted_at:
            return job.updated_at - _SLACK_SECONDS, job.updated_at + _SLACK_SECONDS
        return job.submitted_at, min(job.updated_at + _SLACK_SECONDS, job.submitted_at + early_window)

    def _unmatched_receipts(self, since: float, until: float) -> list[Row]:
        """Receipts no job has taken, received between ``since`` and ``until``, oldest first."""
        rows = self.db.execute(
            "SELECT * FROM receipts WHERE job_id = '' AND applied_at = 0 AND received_at BETWEEN ? AND ? ORDER BY id",
            (since, until),
        )
        return list(rows)

    @staticmethod
    def _fits(job: Job, receipt: Row, since: float, until: float) -> bool:
        return since <= receipt["received_at"] <= until and number_tail(receipt["numero"]) == number_tail(job.number)

    def latest_applied_receipt(self, job_id: str) -> Row | None:
        """The receipt that decided the job (the last one applied to it)."""
        row: Row | None = self.db.execute(
            "SELECT * FROM receipts WHERE job_id = ? AND applied_at > 0 ORDER BY id DESC LIMIT 1", (job_id,)
        ).fetchone()
        return row

    def receipts_of_job(self, job_id: str) -> list[dict[str, Any]]:
        """The receipts applied to the job, oldest first, as plain data."""
        rows = self.db.execute(
            "SELECT received_at, source, ref_accuse, etat_e, numero, nb_page, heure, applied_at FROM receipts"
            " WHERE job_id = ? ORDER BY id",
            (job_id,),
        )
        return [{k: r[k] for k in r.keys()} for r in rows]
