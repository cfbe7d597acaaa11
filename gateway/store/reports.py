"""Reports: what the metrics read from the store at scrape time.

In: the store as the stages left it. Out: counts (messages accepted, receipts
by provider code) and the times a latency is measured between (the end of
DATA, the submission, the final receipt). Read-only.
"""

from __future__ import annotations

from gateway.store.jobs import JobQueries


class Reports(JobQueries):
    def count_messages(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def count_receipts_by_code(self) -> dict[str, int]:
        return {str(r[0]): int(r[1]) for r in self.db.execute("SELECT etat_e, COUNT(*) FROM receipts GROUP BY etat_e")}

    def submitted_after(self, mark: float) -> list[tuple[float, float]]:
        """(submitted at, mail received at) of jobs submitted after ``mark``, in submission order."""
        rows = self.db.execute(
            "SELECT j.submitted_at, m.received_at FROM jobs j JOIN messages m ON m.id = j.message_id"
            " WHERE j.submitted_at > ? ORDER BY j.submitted_at",
            (mark,),
        )
        return [(float(at), float(received)) for at, received in rows]

    def settled_by_receipt_after(self, mark: float) -> list[tuple[float, float]]:
        """(final at, mail received at) of jobs a receipt made final after ``mark``, in that order."""
        rows = self.db.execute(
            "SELECT j.final_at, m.received_at FROM jobs j JOIN messages m ON m.id = j.message_id"
            " WHERE j.final_at > ? AND j.receipt_code != '' ORDER BY j.final_at",
            (mark,),
        )
        return [(float(at), float(received)) for at, received in rows]
