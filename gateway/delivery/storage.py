"""Document storage: where the provider fetches the fax document from.

In: the fax document of a spooled message and a key from :func:`new_key`.
Out: a URL the provider can GET, made at submit time and never stored (a
presigned URL carries a signature). Two backends:

- ``s3``: one boto3 client, created at start and shared; every call runs in a
  thread, never on the event loop. Objects are private (no ACL is ever set),
  typed, ``Content-Disposition: attachment``; the URL is a presigned GET or
  ``<public_base_url>/<key>`` for a CDN.
- ``local``: the document stays in the spool and the HTTP listener serves
  ``GET /documents/<key>`` while a job of that message is not final.

Failures raise :class:`~gateway.outcomes.Retry` with a reason free of secrets.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from aiohttp import web

from gateway.outcomes import Retry
from gateway.settings import Settings
from gateway.spool import FAX_NAME, Spool
from gateway.spool.objects import content_type as content_type
from gateway.spool.objects import document_key, s3_client, s3_reason
from gateway.store import AsyncStore

log = logging.getLogger("gateway.storage")

T = TypeVar("T")

# 128 random bits, hex, and nothing about the sender.
KEY_RE = re.compile(r"^[0-9a-f]{32}\.pdf$")

def new_key(prefix: str = "") -> str:
    """An object key with 128 random bits and no sender data."""
    return document_key(prefix)


class Storage(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def new_key(self) -> str:
        """A fresh key for one message's document."""
        ...

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key``; raises Retry when the backend is unavailable."""
        ...

    async def url(self, key: str) -> str:
        """The URL the provider GETs; it may carry a signature: never log or store it."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; raises Retry when the backend is unavailable."""
        ...

    async def check(self) -> str:
        """One line for check-config saying the backend is usable; raises Retry if not."""
        ...


class S3Storage:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings.storage
        self._client: Any = None

    async def start(self) -> None:
        self._client = await asyncio.to_thread(self._make_client)

    def _make_client(self) -> Any:
        return s3_client(self.settings)

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    def new_key(self) -> str:
        return new_key(self.settings.prefix)

    async def _call(self, action: str, fn: Callable[[Any], T]) -> T:
        if self._client is None:
            raise Retry(f"S3 {action} failed: storage is not started")
        client = self._client
        try:
            return await asyncio.to_thread(fn, client)
        except Exception as exc:
            from botocore.exceptions import BotoCoreError, ClientError

            if isinstance(exc, (BotoCoreError, ClientError)):
                raise Retry(s3_reason(action, exc)) from None
            raise

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        bucket = self.settings.bucket
        await self._call(
            "upload",
            lambda c: c.put_object(
                Bucket=bucket, Key=key, Body=data, ContentType=content_type, ContentDisposition="attachment"
            ),
        )

    async def url(self, key: str) -> str:
        if self.settings.public_base_url:
            return f"{self.settings.public_base_url.rstrip('/')}/{key}"
        params = {"Bucket": self.settings.bucket, "Key": key}
        expiry = self.settings.presign_seconds
        url: str = await self._call(
            "presign", lambda c: c.generate_presigned_url("get_object", Params=params, ExpiresIn=expiry)
        )
        return url

    async def delete(self, key: str) -> None:
        bucket = self.settings.bucket
        await self._call("delete", lambda c: c.delete_object(Bucket=bucket, Key=key))

    async def check(self) -> str:
        bucket = self.settings.bucket
        await self._call("check", lambda c: c.head_bucket(Bucket=bucket))
        where = self.settings.endpoint_url or "AWS"
        return f"s3: bucket {bucket!r} reachable at {where}"


class LocalStorage:
    """The spool is the storage; the HTTP listener serves the document to the provider."""

    def __init__(self, settings: Settings, store: AsyncStore, spool: Spool) -> None:
        self.public_url = settings.http.public_url.rstrip("/")
        self.store = store
        self.spool = spool

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/documents/{key}", self._serve)]

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def new_key(self) -> str:
        return new_key()

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        pass  # already in the spool; the key is recorded on the message by the worker

    async def url(self, key: str) -> str:
        return f"{self.public_url}/documents/{key}"

    async def delete(self, key: str) -> None:
        pass  # serving stops by itself once every job of the message is final

    async def check(self) -> str:
        return f"local: documents served at {self.public_url}/documents/"

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        if not KEY_RE.match(key):
            raise web.HTTPNotFound()
        message_id = await self.store.run(lambda s: s.served_message(key))
        if message_id is None:
            raise web.HTTPNotFound()
        try:
            data = await asyncio.to_thread(self.spool.read, message_id, FAX_NAME)
        except FileNotFoundError:
            raise web.HTTPNotFound() from None
        return web.Response(
            body=data,
            content_type=content_type(data),
            headers={"Content-Disposition": "attachment", "Cache-Control": "no-store"},
        )


def build_storage(settings: Settings, store: AsyncStore, spool: Spool) -> S3Storage | LocalStorage:
    if settings.storage.backend == "s3":
        return S3Storage(settings)
    return LocalStorage(settings, store, spool)
