"""The HTTP listener's answers to requests it cannot parse: a short fixed body, nothing of the request.

Raw sockets on loopback against a receipt rig (the callback route, whose path holds the secret).
"""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from tests.support_receipts import SECRET, ReceiptRig, RigFactory

_TIMEOUT = 10.0


async def _exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` and read the whole answer (the listener closes after an error)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), _TIMEOUT)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), _TIMEOUT)
    finally:
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)


_PATH = f"/receipt/{SECRET}?etat_e=0&ref_accuse=R1".encode()
_BAD_REQUESTS = {
    "request line over 8190 bytes": b"GET " + _PATH + b"&x=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "header over 8190 bytes": b"GET " + _PATH + b" HTTP/1.1\r\nHost: x\r\nX-Long: " + b"b" * 9000 + b"\r\n\r\n",
    "bad method": b"G\x01T " + _PATH + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad version": b"GET " + _PATH + b" HTTP/9.Z\r\nHost: x\r\n\r\n",
    "control character in the target": b"GET " + _PATH + b"\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
    "space in the target": b"GET " + _PATH + b" x HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad header line": b"GET " + _PATH + b" HTTP/1.1\r\nHost: x\r\nno colon here " + SECRET.encode() + b"\r\n\r\n",
    "bad chunked body": b"POST " + _PATH + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz"
    + SECRET.encode() + b"\r\n\r\n",
    "two lengths": b"GET " + _PATH + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "not HTTP at all": b"\x16\x03\x01" + SECRET.encode() + b"\r\n\r\n",
}


@pytest.mark.parametrize("raw", list(_BAD_REQUESTS.values()), ids=list(_BAD_REQUESTS))
async def test_a_bad_request_gets_a_short_fixed_body_without_the_request(
    make_rig: RigFactory, caplog: pytest.LogCaptureFixture, raw: bytes
) -> None:
    rig: ReceiptRig = await make_rig()
    caplog.set_level(logging.DEBUG)
    answer = await _exchange(rig.http.port, raw)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", head), answer[:200]
    assert SECRET.encode() not in answer and b"receipt" not in answer
    assert body == b"bad request\n" or body.endswith(b" request\n"), body
    assert len(body) < 40
    assert SECRET not in caplog.text and "ref_accuse" not in caplog.text
    # Nothing was stored, and the listener still serves.
    assert await rig.rows("SELECT id FROM receipts") == []
    assert (await rig.receipt("R1", "0", 1))[0] == 200

