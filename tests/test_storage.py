"""Document storage against real endpoints: moto's S3 server and the gateway's own HTTP listener."""

from __future__ import annotations

import re

import aiohttp
import pytest

from gateway.delivery.storage import KEY_RE, LocalStorage, S3Storage, content_type, new_key
from gateway.outcomes import Retry
from gateway.settings import Settings
from gateway.store import State
from tests.support_delivery import Delivery
from tests.support_docs import pdf as minimal_pdf
from tests.support_net import free_port
from tests.support_s3 import BUCKET, S3
from tests.support_settings import SettingsFactory


async def _get(url: str) -> tuple[int, bytes, dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.get(url, allow_redirects=False) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


def _s3_settings(make_settings: SettingsFactory, s3: S3, **extra: object) -> Settings:
    return make_settings(s3.table(**extra))


def test_keys_carry_128_random_bits_and_no_sender_data() -> None:
    keys = {new_key("fax/") for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert re.fullmatch(r"fax/[0-9a-f]{32}\.pdf", key)
        assert KEY_RE.match(key.removeprefix("fax/"))


def test_content_type_is_detected_from_the_bytes() -> None:
    assert content_type(minimal_pdf()) == "application/pdf"
    assert content_type(b"II*\x00rest") == "image/tiff"
    assert content_type(b"\x89PNG\r\n\x1a\nrest") == "image/png"
    assert content_type(b"nothing known") == "application/octet-stream"


async def test_s3_object_is_private_typed_attachment_and_presigned_url_downloads(
    make_settings: SettingsFactory, s3: S3
) -> None:
    storage = S3Storage(_s3_settings(make_settings, s3, presign_seconds=600))
    await storage.start()
    try:
        key = storage.new_key()
        pdf = minimal_pdf()
        await storage.put(key, pdf, "application/pdf")
        head = s3.client.head_object(Bucket=BUCKET, Key=key)
        assert head["ContentType"] == "application/pdf"
        assert head["ContentDisposition"] == "attachment"
        grants = s3.client.get_object_acl(Bucket=BUCKET, Key=key)["Grants"]
        assert all("AllUsers" not in str(g.get("Grantee", {})) for g in grants)
        url = await storage.url(key)
        assert "X-Amz-Signature=" in url and "X-Amz-Expires=600" in url
        status, body, headers = await _get(url)
        assert status == 200 and body == pdf
        assert headers["Content-Type"] == "application/pdf"
        assert "s3: bucket 'fax-documents' reachable" in await storage.check()
        await storage.delete(key)
        assert s3.keys() == []
    finally:
        await storage.stop()


async def test_s3_public_base_url_is_used_instead_of_a_signature(
    make_settings: SettingsFactory, s3: S3
) -> None:
    storage = S3Storage(_s3_settings(make_settings, s3, public_base_url="https://cdn.example.com/docs/"))
    await storage.start()
    try:
        key = storage.new_key()
        assert await storage.url(key) == f"https://cdn.example.com/docs/{key}"
    finally:
        await storage.stop()


@pytest.mark.parametrize("mode", ["refuse", "hang"])
async def test_s3_down_raises_retry_without_secrets_then_works_when_back(
    make_settings: SettingsFactory, s3: S3, mode: str
) -> None:
    storage = S3Storage(_s3_settings(make_settings, s3, timeout_seconds=0.3))
    await storage.start()
    try:
        s3.relay.mode = mode  # type: ignore[assignment]
        key = storage.new_key()
        with pytest.raises(Retry) as caught:
            await storage.put(key, minimal_pdf(), "application/pdf")
        assert caught.value.reason.startswith("S3 upload failed: ")
        assert "testing-secret-key" not in caught.value.reason and "Signature" not in caught.value.reason
        if mode == "refuse":
            with pytest.raises(Retry):
                await storage.check()
        s3.relay.mode = "forward"
        await storage.put(key, minimal_pdf(), "application/pdf")
        assert s3.keys() == [key]
    finally:
        await storage.stop()


@pytest.mark.parametrize(("status", "code"), [(500, "InternalError"), (503, "SlowDown"), (403, "RequestTimeTooSkewed")])
async def test_s3_errors_and_clock_skew_raise_retry_then_the_upload_works(
    make_settings: SettingsFactory, s3: S3, status: int, code: str
) -> None:
    storage = S3Storage(_s3_settings(make_settings, s3))
    await storage.start()
    try:
        s3.relay.mode, s3.relay.error = "error", (status, code)
        key = storage.new_key()
        with pytest.raises(Retry, match=rf"^S3 upload failed: {code} \(HTTP {status}\)$"):
            await storage.put(key, minimal_pdf(), "application/pdf")
        s3.relay.mode = "forward"
        await storage.put(key, minimal_pdf(), "application/pdf")
        assert s3.keys() == [key]
    finally:
        await storage.stop()


async def test_s3_missing_bucket_is_a_retry_naming_the_error(make_settings: SettingsFactory, s3: S3) -> None:
    settings = make_settings(s3.table(bucket="no-such-bucket"))
    storage = S3Storage(settings)
    await storage.start()
    try:
        with pytest.raises(Retry, match=r"S3 upload failed: NoSuchBucket \(HTTP 404\)"):
            await storage.put(storage.new_key(), b"%PDF-1.4", "application/pdf")
    finally:
        await storage.stop()


async def test_local_storage_serves_the_document_only_until_its_jobs_are_final(make_settings: SettingsFactory) -> None:
    port = free_port()
    settings = make_settings({"http": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"}})
    d = Delivery(settings)
    await d.start(worker=False)
    try:
        assert isinstance(d.storage, LocalStorage)
        pdf = minimal_pdf(2)
        job_a, job_b = await d.spool_message("+33145678900", "+33145678901", document=pdf)
        message_id = (await d.job(job_a)).message_id
        key = d.storage.new_key()
        await d.store.run(lambda s: s.update_message(message_id, upload_key=key, uploaded_at=1.0))
        url = await d.storage.url(key)
        assert url == f"http://127.0.0.1:{port}/documents/{key}"
        status, body, headers = await _get(url)
        assert (status, body) == (200, pdf)
        assert headers["Content-Type"] == "application/pdf" and headers["Content-Disposition"] == "attachment"
        assert (await _get(f"http://127.0.0.1:{port}/documents/{new_key()}"))[0] == 404
        assert (await _get(f"http://127.0.0.1:{port}/documents/..%2Fjobs.sqlite3"))[0] == 404
        await d.store.run(lambda s: s.transition(job_a, State.FAILED, "test"))
        assert (await _get(url))[0] == 200  # job_b still open
        await d.store.run(lambda s: s.transition(job_b, State.DELIVERED, "test"))
        assert (await _get(url))[0] == 404
    finally:
        await d.stop()
