"""The spool: durable message files and the daemon lock; in a cluster, the message files in S3."""

from gateway.spool.files import FAX_NAME, RAW_NAME, Spool, SpoolLockedError
from gateway.spool.objects import ObjectSpool, StorageUnavailable, content_type

__all__ = ["FAX_NAME", "RAW_NAME", "ObjectSpool", "Spool", "SpoolLockedError", "StorageUnavailable", "content_type"]
