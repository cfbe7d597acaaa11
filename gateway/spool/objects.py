"""The spool of a cluster: the files of accepted messages kept in the S3 bucket every gateway shares.

In: a message id and the files of that message (raw mail, fax document), as
:class:`~gateway.spool.files.Spool` takes them. Out: objects in
``storage.bucket`` that any gateway of the cluster can read, written before the
store row that makes the message a job is committed (so before the 250):

- the raw mail (and every other file but the fax document) at
  ``<storage.prefix>mail/<message id>/<name>``;
- the fax document at ``<storage.prefix><128 random bits>.pdf``, the key the
  provider's URL names (nothing in it says which message it is, so its URL
  leads to nothing else); typed and ``Content-Disposition: attachment`` as the
  worker would have stored it, and recorded as the message's ``upload_key``,
  so the worker finds it stored and never uploads it again. The raw mail's
  object names it (metadata ``fax-document``), so that any gateway can read
  or remove it knowing the message id alone.

The local directory is still the instance's own (the daemon lock, ``tmp/``,
the free-space check), but holds nothing accepted. Every method blocks (one
boto3 client, made by :meth:`create`): callers run them in a thread. An S3
failure raises :class:`StorageUnavailable` with words free of secrets; a
missing object :class:`FileNotFoundError`, as a missing file would.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from gateway.settings import StorageSettings
from gateway.spool.files import FAX_NAME, RAW_NAME, Spool

T = TypeVar("T")

# Leading bytes -> Content-Type of what the provider downloads.
_SIGNATURES: list[tuple[bytes, str]] = [
    (b"%PDF-", "application/pdf"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
]
# The raw mail's metadata naming the fax document's object.
_DOCUMENT_META = "fax-document"


def content_type(data: bytes) -> str:
    """The detected type of a fax document."""
    for magic, ctype in _SIGNATURES:
        if data.startswith(magic):
            return ctype
    return "application/octet-stream"


def document_key(prefix: str = "") -> str:
    """An object key for a fax document: 128 random bits and nothing about the sender."""
    return f"{prefix}{secrets.token_hex(16)}.pdf"


def s3_client(settings: StorageSettings) -> Any:
    """One boto3 S3 client for ``[storage]`` (blocking to make): its timeouts, one quick retry inside boto3."""
    import boto3  # local: only the s3 backend needs it
    from botocore.config import Config

    config = Config(
        connect_timeout=settings.timeout_seconds,
        read_timeout=settings.timeout_seconds,
        # One quick retry inside boto3; the callers own the real backoff.
        retries={"total_max_attempts": 2, "mode": "standard"},
        signature_version="s3v4",
        # Path style works with every S3-compatible server and IP endpoints.
        s3={"addressing_style": "path" if settings.endpoint_url else "auto"},
    )
    return boto3.session.Session().client(
        "s3", region_name=settings.region or None, endpoint_url=settings.endpoint_url or None, config=config
    )


def s3_reason(action: str, exc: Exception) -> str:
    """Words for an S3 failure: the error code and status, never the request (it may hold a signature)."""
    response: Any = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
        code = str(error.get("Code", "")) or "error"
        return f"S3 {action} failed: {code} (HTTP {status})"
    names = {
        "EndpointConnectionError": "cannot connect to the S3 endpoint",
        "ConnectTimeoutError": "timed out connecting to the S3 endpoint",
        "ReadTimeoutError": "the S3 endpoint did not answer in time",
        "ConnectionClosedError": "the S3 endpoint closed the connection",
        "NoCredentialsError": "no S3 credentials found",
        "SSLError": "TLS failure talking to the S3 endpoint",
    }
    return f"S3 {action} failed: {names.get(type(exc).__name__, 'the S3 request failed')}"


class StorageUnavailable(OSError):
    """S3 did not do what was asked (down, refusing, too slow); the words say why, without secrets."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def _missing(exc: Exception) -> bool:
    response: Any = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    return code in ("NoSuchKey", "404", "NotFound")


class ObjectSpool(Spool):
    """A :class:`Spool` whose accepted files live in the shared bucket; its directory only for the lock and ``tmp``."""

    shared = True

    def __init__(self, directory: str | os.PathLike[str], storage: StorageSettings, *,
                 client: Callable[[StorageSettings], Any] = s3_client) -> None:  # fmt: skip
        super().__init__(directory)
        self.storage = storage
        self.bucket = storage.bucket
        self._make_client = client
        self._client: Any = None

    def create(self) -> None:
        super().create()
        if self._client is None:
            self._client = self._make_client(self.storage)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def raw_key(self, message_id: str, name: str = RAW_NAME) -> str:
        return f"{self.storage.prefix}mail/{message_id}/{name}"

    def _call(self, action: str, fn: Callable[[Any], T]) -> T:
        if self._client is None:
            raise StorageUnavailable(f"S3 {action} failed: the spool is not open")
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(self._client)
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(f"S3 {action}: no such object") from None
            raise StorageUnavailable(s3_reason(action, exc)) from None
        except BotoCoreError as exc:
            raise StorageUnavailable(s3_reason(action, exc)) from None

    def keep(self, message_id: str, files: Mapping[str, bytes], *, document: str = "") -> str:
        """Put ``files`` in the bucket; the fax document's key (``""`` without one). All or nothing.

        ``document``: the key the store records for the message's fax document already (migrate-store
        moving a site): the document, if given in ``files``, is put there, and the raw mail names that key
        even when the document is not given (it is in the bucket already). A failure removes what this call
        put, but never an object under a given key (it may have been there before).
        """
        written: list[str] = []
        try:
            if FAX_NAME in files:
                given = bool(document)
                document = document or document_key(self.storage.prefix)
                data = files[FAX_NAME]
                self._put(document, data, content_type(data), {}, disposition="attachment")
                if not given:
                    written.append(document)
            for name, body in files.items():
                if name == FAX_NAME:
                    continue
                key = self.raw_key(message_id, name)
                meta = {_DOCUMENT_META: document} if document and name == RAW_NAME else {}
                self._put(key, body, "message/rfc822", meta)
                written.append(key)
        except BaseException:
            self._delete_quietly(written)
            raise
        return document

    def _put(self, key: str, body: bytes, ctype: str, meta: dict[str, str], disposition: str = "") -> None:
        extra = {"ContentDisposition": disposition} if disposition else {}
        bucket = self.bucket
        self._call("upload", lambda c: c.put_object(Bucket=bucket, Key=key, Body=body, ContentType=ctype,
                                                    Metadata=meta, **extra))  # fmt: skip

    def _delete(self, key: str) -> None:
        bucket = self.bucket
        self._call("delete", lambda c: c.delete_object(Bucket=bucket, Key=key))

    def write(self, message_id: str, files: Mapping[str, bytes]) -> Any:
        return self.keep(message_id, files)

    def path(self, message_id: str, name: str) -> Any:
        raise NotImplementedError("the files of a cluster's messages are objects in S3, not paths")

    def read(self, message_id: str, name: str) -> bytes:
        key = self._document_of(message_id) if name == FAX_NAME else self.raw_key(message_id, name)
        if not key:
            raise FileNotFoundError(f"message {message_id} has no fax document")
        bucket = self.bucket
        body: bytes = self._call("download", lambda c: c.get_object(Bucket=bucket, Key=key)["Body"].read())
        return body

    def _document_of(self, message_id: str) -> str:
        bucket, key = self.bucket, self.raw_key(message_id)
        head = self._call("download", lambda c: c.head_object(Bucket=bucket, Key=key))
        return str(head.get("Metadata", {}).get(_DOCUMENT_META, ""))

    def remove(self, message_id: str) -> None:
        """Delete the message's objects (its raw mail and the fax document it names); raises StorageUnavailable."""
        try:
            document = self._document_of(message_id)
        except FileNotFoundError:
            return  # removed already
        for key in [document, self.raw_key(message_id)]:
            if key:
                self._delete(key)

    def _delete_quietly(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self._delete(key)
            except OSError:
                pass  # left to the bucket's lifecycle rule (README, step 12)

    def check(self) -> None:
        """Whether the bucket answers (``head_bucket``); raises StorageUnavailable if not."""
        bucket = self.bucket
        self._call("check", lambda c: c.head_bucket(Bucket=bucket))
