"""Decompression bombs: each refused quickly, naming its bound, by a worker whose memory stays small."""

from __future__ import annotations

import dataclasses
import io
import time
import zlib
from collections.abc import Callable

import pikepdf
import pytest

from gateway import replies
from gateway.documents import bounds
from gateway.documents.examiner import Examiner
from gateway.documents.formats import Unfit
from gateway.documents.policy import DocumentRefused, extract
from gateway.settings import DocumentSettings, SettingsError, from_mapping
from tests.support_bombs import pdf_object_stream_bomb, peak_rss, png_bomb, tiff_bomb
from tests.support_docs import image, pdf
from tests.support_mail import plain_with
from tests.test_examiner import workers

MIB = 1 << 20
# Bounds, not benchmarks: a refusal takes seconds at most, and the worker never holds the expansion.
SECONDS = 15.0
PEAK_BYTES = 300 * MIB

BOMBS: dict[str, tuple[Callable[[], tuple[str, str, bytes]], str]] = {
    # Catalog, Pages and Page in one object stream that inflates to 1 GiB (1 MB of PDF).
    "pdf-object-stream-1GiB": (lambda: ("bomb.pdf", "application/pdf", pdf_object_stream_bomb(1024)),
                               "documents.max_stream_bytes"),
    "png-8944-squared": (lambda: ("bomb.png", "image/png", png_bomb(8944)), "documents.max_image_pixels"),
    "tiff-25-frames-8000x10000": (lambda: ("bomb.tif", "image/tiff", tiff_bomb(25, 8000, 10000)),
                                  "documents.max_image_pixels"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(BOMBS))
async def test_a_bomb_is_refused_quickly_by_a_worker_that_stays_small(name: str) -> None:
    build, bound = BOMBS[name]
    message = plain_with([build()])
    examiner = Examiner(DocumentSettings(), processes=1)
    await examiner.start()
    try:
        (worker,) = workers()
        started = time.monotonic()
        with pytest.raises(DocumentRefused) as caught:
            await examiner.examine(message)
        took = time.monotonic() - started
        peak = peak_rss(worker)
    finally:
        await examiner.stop()
    assert caught.value.reply.reply is replies.DOC_LIMITS and caught.value.reason == "limits"
    assert str(caught.value).startswith("554 5.6.0 Message too complex to process: ") and bound in str(caught.value)
    assert took < SECONDS, took
    assert peak < PEAK_BYTES, peak


def _pdf_with_stream(data: bytes, filters: list[str]) -> bytes:
    with pikepdf.new() as doc:
        doc.add_blank_page()
        stream = pikepdf.Stream(doc, data)
        stream.stream_dict.Filter = pikepdf.Array([pikepdf.Name("/" + f) for f in filters])
        doc.Root.Extra = stream
        out = io.BytesIO()
        doc.save(out, compress_streams=False)
        return out.getvalue()


def _lzw(data: bytes) -> bytes:
    """``data`` as LZWDecode codes (EarlyChange 1), literals only: each code after the first grows the table."""
    bits, nbits, out, width, size = 0, 0, bytearray(), 9, 258
    for index, code in enumerate([256, *data, 257]):
        bits, nbits = (bits << width) | code, nbits + width
        while nbits >= 8:
            nbits -= 8
            out.append((bits >> nbits) & 0xFF)
        if index >= 2 and code != 257:  # the decoder adds an entry for every code but the first
            size += 1
        if index >= 1 and size + 1 >= 1 << width and width < 12:
            width += 1
    if nbits:
        out.append((bits << (8 - nbits)) & 0xFF)
    return bytes(out)


STREAMS = {
    "flate": (zlib.compress(b"x" * (3 * MIB)), ["FlateDecode"], 3 * MIB),
    "flate-of-flate": (zlib.compress(zlib.compress(b"x" * (3 * MIB))), ["FlateDecode", "FlateDecode"], 3 * MIB),
    "ascii-hex-then-flate": (zlib.compress(b"x" * (3 * MIB)).hex().encode() + b">", ["AHx", "Fl"], 3 * MIB),
    "run-length": (bytes([129, 0x41]) * (3 * MIB // 128 + 1) + b"\x80", ["RunLengthDecode"], 3 * MIB),
    "jpeg-is-left-to-pixels": (b"\xff\xd8" + bytes(100), ["DCTDecode"], 0),
}


@pytest.mark.parametrize("name", list(STREAMS))
def test_what_a_stream_decodes_to_is_counted_through_its_filters_without_holding_it(name: str) -> None:
    data, filters, at_least = STREAMS[name]
    document = _pdf_with_stream(data, filters)
    budget = bounds.Budget(DocumentSettings(max_stream_bytes=64 * MIB))
    bounds.pdf_streams(document, budget)
    assert at_least <= budget.stream_bytes <= at_least + 64 * 1024, budget.stream_bytes
    if at_least:
        with pytest.raises(Unfit, match=r"more than 1048576 bytes \(documents.max_stream_bytes\)"):
            bounds.pdf_streams(document, bounds.Budget(DocumentSettings(max_stream_bytes=MIB)))


def test_an_lzw_stream_is_decoded_as_pdf_readers_decode_it() -> None:
    text = bytes(range(256)) * 8
    document = _pdf_with_stream(_lzw(text[:200]), ["LZWDecode"])
    budget = bounds.Budget(DocumentSettings())
    bounds.pdf_streams(document, budget)
    assert budget.stream_bytes == 200
    with pikepdf.open(io.BytesIO(document)) as doc:
        assert doc.Root.Extra.read_bytes() == text[:200]  # the same bytes qpdf reads


def test_every_pdf_of_a_mail_counts_toward_one_stream_bound() -> None:
    one = _pdf_with_stream(zlib.compress(b" " * (3 * MIB)), ["FlateDecode"])
    settings = DocumentSettings(max_stream_bytes=5 * MIB)
    assert extract(plain_with([("a.pdf", "application/pdf", one)]), settings).pages == 1
    with pytest.raises(DocumentRefused, match="documents.max_stream_bytes"):
        extract(plain_with([("a.pdf", "application/pdf", one), ("b.pdf", "application/pdf", one)]), settings)


def test_pixels_are_counted_over_every_image_of_a_mail() -> None:
    photo = ("scan.png", "image/png", image("PNG", (3000, 2000)))
    settings = DocumentSettings(max_total_pixels=10_000_000)
    assert extract(plain_with([photo]), settings).pages == 1
    with pytest.raises(DocumentRefused, match=r"more than 10000000 pixels in all .*documents.max_total_pixels"):
        extract(plain_with([photo, photo]), settings)


def test_images_a_pdf_draws_count_toward_the_pixel_bounds_before_anything_renders_them() -> None:
    with pikepdf.new() as doc:
        doc.add_blank_page()
        picture = pikepdf.Stream(doc, b"\xff\xd8" + bytes(64))  # a JPEG that only its dictionary describes
        picture.stream_dict.update({"/Type": pikepdf.Name.XObject, "/Subtype": pikepdf.Name.Image, "/Width": 9000,
                                    "/Height": 9000, "/ColorSpace": pikepdf.Name.DeviceRGB, "/BitsPerComponent": 8,
                                    "/Filter": pikepdf.Name.DCTDecode})  # fmt: skip
        doc.pages[0].Resources = pikepdf.Dictionary(XObject=pikepdf.Dictionary(Im0=picture))
        out = io.BytesIO()
        doc.save(out)
    with pytest.raises(DocumentRefused, match=r"page 1 holds an image of 9000x9000 pixels is too large"):
        extract(plain_with([("huge.pdf", "application/pdf", out.getvalue())]), DocumentSettings(fit="off"))
    assert extract(plain_with([("plain.pdf", "application/pdf", pdf(2))]), DocumentSettings()).pages == 2


async def test_a_worker_past_its_memory_cap_refuses_the_mail_naming_the_bound_and_stays() -> None:
    settings = DocumentSettings(worker_memory_bytes=300 * MIB)
    examiner = Examiner(settings, processes=1)
    await examiner.start()
    try:
        (worker,) = workers()
        with open(f"/proc/{worker}/limits") as file:
            (line,) = [line for line in file if line.startswith("Max address space")]
        assert line.split()[3:5] == [str(300 * MIB)] * 2, line
        # 36 million pixels of RGB: under the pixel bounds, over 300 MB of address space once decoded.
        with pytest.raises(DocumentRefused) as caught:
            await examiner.examine(plain_with([("big.png", "image/png", png_bomb(6000))]))
        assert str(caught.value) == ("554 5.6.0 Message too complex to process: examining it needs more memory "
                                     f"than documents.worker_memory_bytes ({300 * MIB})")  # fmt: skip
        extraction, _ = await examiner.examine(plain_with([("ok.pdf", "application/pdf", pdf(1))]))
        assert extraction.pages == 1 and workers() == [worker]
    finally:
        await examiner.stop()


def test_the_bound_settings_are_validated() -> None:
    for table, key in (({"max_stream_bytes": 0}, "documents.max_stream_bytes"),
                       ({"max_image_pixels": 90_000_000}, "documents.max_image_pixels"),
                       ({"max_total_pixels": 0}, "documents.max_total_pixels"),
                       ({"worker_memory_bytes": 1000}, "documents.worker_memory_bytes")):  # fmt: skip
        with pytest.raises(SettingsError, match=key):
            from_mapping({"documents": table}, {})
    assert dataclasses.replace(DocumentSettings(), worker_memory_bytes=0).worker_memory_bytes == 0
