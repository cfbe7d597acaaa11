"""The links to the senders' status pages: a random token per link, kept only as its hash.

In: a job that a receipt or notice is about to tell of (:meth:`StatusLinks.add_status_link`)
and, later, the token of a link someone opened (:meth:`StatusLinks.job_by_status_token`). Out:
the token to put in the mail (192 random bits, URL-safe; never stored: the store keeps its
SHA-256), and the job a token stands for. Every mail gets a link of its own; all of a job's
links open the same page. The lookup is by the hash, so a wrong token costs what a right one
costs: one index probe on a value an attacker cannot steer.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from gateway.store.jobs import Job, JobQueries

TOKEN_BYTES = 24
# What a token looks like (secrets.token_urlsafe of TOKEN_BYTES); anything else is no token.
TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


class StatusLinks(JobQueries):
    """The ``status_links`` table."""

    def add_status_link(self, job_id: str) -> str:
        """A new token for ``job_id``'s status page; only its hash is stored."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        with self.transaction() as db:
            db.execute(
                "INSERT INTO status_links (token_hash, job_id, created_at) VALUES (?, ?, ?)",
                (token_hash(token), job_id, self.clock()),
            )
        return token

    def job_by_status_token(self, token: str) -> Job | None:
        """The job ``token`` was given out for (None: no such link)."""
        row = self.db.execute(
            "SELECT job_id FROM status_links WHERE token_hash = ?", (token_hash(token),)
        ).fetchone()
        return None if row is None else self.get_job(str(row["job_id"]))
