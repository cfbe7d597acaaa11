"""The spool: durable message files and the daemon lock."""

from gateway.spool.files import FAX_NAME, RAW_NAME, Spool, SpoolLockedError

__all__ = ["FAX_NAME", "RAW_NAME", "Spool", "SpoolLockedError"]
