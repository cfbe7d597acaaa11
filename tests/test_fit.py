"""Scans that fit: a printer's default scan (300 dpi colour) becomes a legible black-and-white fax under 1 MB.

The legibility measure: connected components (8-connected ink blobs of at least 3 pixels) counted per
text line, on the fitted page and on a clean rendering of the same text at the same fax resolution.
A character that breaks up adds components; glyphs that merge, or paper turned into dots, change the
count too. Each line's count must match the clean one within 5% (10 pt lines) or 10% (the 6 pt line),
and the measure is shown to fail on two bad renderings of the same scan (a threshold close to the
paper's level, and halftone dithering).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import multiprocessing
import signal
import time
from typing import Any

import img2pdf
import numpy as np
import pikepdf
import pytest
from PIL import Image

from gateway.documents import examiner, fit, render
from gateway.documents.policy import DocumentRefused, extract
from gateway.notify.compose import fitted
from gateway.settings import DocumentSettings, SettingsError, from_mapping
from tests.support_mail import plain_with
from tests.support_scan import A4_INCHES, TEXT_LINES, draw_text, jpeg, scan
from tests.support_smtp import Starter, send_async, spooled_fax

DEFAULT = DocumentSettings()


@functools.cache
def scan_jpeg() -> bytes:
    """One A4 page of TEXT_LINES, scanned at 300 dpi in colour (about 0.5 MB as JPEG)."""
    return jpeg(scan(300))


@functools.cache
def ten_page_scan() -> bytes:
    return bytes(img2pdf.convert([scan_jpeg()] * 10))


# -- the measure ------------------------------------------------------------------


def components(ink: np.ndarray, min_area: int = 3) -> int:  # type: ignore[type-arg]
    """8-connected components of ``ink`` (True = black) with at least ``min_area`` pixels (runs + union-find)."""
    parent: list[int] = []
    area: list[int] = []

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    previous: list[tuple[int, int, int]] = []
    for row in ink:
        edges = np.diff(np.concatenate(([0], row.astype(np.int8), [0])))
        current = []
        j = 0
        for start, end in zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True):
            label = len(parent)
            parent.append(label)
            area.append(end - start)
            while j < len(previous) and previous[j][1] < start:  # ends before this run's left neighbour
                j += 1
            k = j
            while k < len(previous) and previous[k][0] <= end:  # touches, diagonals included
                a, b = root(label), root(previous[k][2])
                if a != b:
                    parent[b] = a
                    area[a] += area[b]
                k += 1
            current.append((start, end, label))
        previous = current
    return sum(1 for i in range(len(parent)) if parent[i] == i and area[i] >= min_area)


def per_line(page: Image.Image) -> list[int]:
    """Components in the band of each line of TEXT_LINES, on a page 1728 pixels across A4."""
    ink = ~np.asarray(page.convert("1"), dtype=bool)
    y_dpi = page.height / A4_INCHES[1]
    return [components(ink[round((line.top_inches - 0.15) * y_dpi):round((line.top_inches + 0.45) * y_dpi)])
            for line in TEXT_LINES]  # fmt: skip


def clean_counts() -> list[int]:
    """The same count on the text drawn clean, straight at fax resolution (fine, 1728 across A4)."""
    s = render.shape(A4_INCHES[0] * 72, A4_INCHES[1] * 72, render.FINE)
    x_dpi, y_dpi = s.columns / A4_INCHES[0], s.rows / A4_INCHES[1]
    return per_line(draw_text(s.columns, s.rows, x_dpi, y_dpi).point(lambda v: 255 if v >= 128 else 0))


def legible(got: list[int], clean: list[int]) -> bool:
    tolerances = [0.10 if line.points < 8 else 0.05 for line in TEXT_LINES]
    return all(abs(g - c) <= max(1, t * c) for g, c, t in zip(got, clean, tolerances, strict=True))


def codecs(image: pikepdf.Object) -> list[str]:
    found = image.get("/Filter")
    return [str(f) for f in found] if isinstance(found, pikepdf.Array) else [str(found)]


def first_page(document: bytes) -> Image.Image:
    with pikepdf.open(io.BytesIO(document)) as pdf:
        (image,) = pdf.pages[0].get_images().values()
        assert codecs(image) == ["/CCITTFaxDecode"]  # Group 4: lossless, never JBIG2
        return pikepdf.PdfImage(image).as_pil_image()


# -- legibility -------------------------------------------------------------------


def test_a_colour_scan_fitted_keeps_every_character_and_a_bad_rendering_fails_the_measure() -> None:
    raw = plain_with([("scan.pdf", "application/pdf", bytes(img2pdf.convert([scan_jpeg()])))])
    result = extract(raw, dataclasses.replace(DEFAULT, fit="always"))
    page = first_page(result.document)
    assert page.width == 1728
    clean = clean_counts()
    assert min(clean) > 20, clean  # every line has characters to count
    got = per_line(page)
    assert legible(got, clean), (got, clean)
    # The same scan, rendered grey at the same resolution, then made black and white badly:
    with render.opened(bytes(img2pdf.convert([scan_jpeg()]))) as doc:
        grey = doc.grey(0, render.FINE)
    too_low = grey.point(lambda v: 0 if v < 215 else 255)  # a threshold near the tinted paper: glyphs merge
    dithered = grey.convert("1")  # Floyd-Steinberg: tinted paper becomes dots
    for bad in (too_low, dithered):
        counts = per_line(bad)
        assert not legible(counts, clean), (counts, clean)


def test_thresholding_by_bands_is_thresholding_the_whole_page() -> None:
    with render.opened(bytes(img2pdf.convert([scan_jpeg()]))) as doc:
        for res in (render.FINE, render.STANDARD):  # neither page height is a multiple of the band
            grey = doc.grey(0, res)
            assert grey.height % render.BAND_ROWS != 0
            aspect = res.y_dpi / res.x_dpi
            pixels = np.asarray(grey, dtype=np.uint8)
            paper = render._paper(grey, aspect)
            sample = pixels[::4, ::4].astype(np.uint16) * 255 // np.maximum(paper[::4, ::4], 1)
            level = render._threshold(np.minimum(sample, 255))
            ink = (pixels.astype(np.uint16) * 255 < paper.astype(np.uint16) * level) | (pixels < render.SOLID_INK)
            got = render.binarise(grey, aspect)
            assert got.mode == "1" and np.array_equal(np.asarray(got), ~ink)


# -- through the real SMTP server ---------------------------------------------------


async def test_a_ten_page_colour_scan_is_faxed_under_1_mb_in_black_and_white(
    smtp_gateway: Starter,
) -> None:
    harness = await smtp_gateway()
    document = ten_page_scan()
    assert len(document) > 4 * 1024 * 1024  # what the printer sends: refused before fitting existed
    code, text = await send_async(harness.port, plain_with([("scan.pdf", "application/pdf", document)]))
    assert code == 250, text
    fax, row = await spooled_fax(harness)
    assert len(fax) <= DEFAULT.max_fax_bytes
    with pikepdf.open(io.BytesIO(fax)) as pdf:
        assert len(pdf.pages) == 10
        assert [codecs(im) for p in pdf.pages for im in p.get_images().values()] == [["/CCITTFaxDecode"]] * 10
        assert all(abs(float(p.mediabox[2]) - 595.28) < 1 and abs(float(p.mediabox[3]) - 841.89) < 1 for p in pdf.pages)
    (listed,) = json.loads(row["documents"])
    assert listed["fitted"] == "converted to black and white, fine resolution, 10 pages"
    assert fitted(row, "en") == "converted to black and white, fine resolution, 10 pages"
    assert fitted(row, "fr") == "converti en noir et blanc, résolution fine, 10 pages"


async def test_colour_photos_of_pages_become_a_black_and_white_fax(smtp_gateway: Starter) -> None:
    harness = await smtp_gateway()
    photos = [(f"page{i}.jpg", "image/jpeg", scan_jpeg()) for i in (1, 2, 3)]  # together over 1 MB
    code, text = await send_async(harness.port, plain_with(photos))
    assert code == 250, text
    fax, row = await spooled_fax(harness)
    assert len(fax) <= DEFAULT.max_fax_bytes
    assert legible(per_line(first_page(fax)), clean_counts())
    assert {d["fit"] for d in json.loads(row["documents"])} == {"fine"}


async def test_what_cannot_fit_is_refused_naming_pages_size_limit_and_how_many_pages_fit(
    smtp_gateway: Starter,
) -> None:
    limit = 10_000  # a page of this text is about 2.3 KB at standard resolution: 3 pages fit, not 8
    harness = await smtp_gateway({"documents": {"max_fax_bytes": limit}})
    document = bytes(img2pdf.convert([scan_jpeg()] * 8))
    code, text = await send_async(harness.port, plain_with([("relevé.pdf", "application/pdf", document)]))
    assert code == 552, text
    assert text.startswith("5.3.4 releve.pdf: 8 pages are still "), text
    size = int(text.split("are still ")[1].split()[0])
    assert size > limit
    assert f"as a black-and-white fax at standard resolution, over the limit of {limit} bytes: " in text
    most = int(text.split("send at most ")[1].split()[0])
    assert 1 <= most < 8 and most * size / 8 <= limit, text
    assert await harness.jobs() == []


async def test_the_time_bound_is_named_in_the_refusal(smtp_gateway: Starter) -> None:
    harness = await smtp_gateway({"documents": {"convert_timeout_seconds": 0.001, "fit": "always"}})
    document = bytes(img2pdf.convert([scan_jpeg()] * 2))
    code, text = await send_async(harness.port, plain_with([("scan.pdf", "application/pdf", document)]))
    assert (code, text) == (552, "5.3.4 scan.pdf: converting 2 pages to fit the fax limit of 1048576 bytes took "
                                 "longer than 0.001 s (documents.convert_timeout_seconds): send fewer pages per mail")


async def test_a_page_too_large_to_render_is_refused_naming_the_bound(smtp_gateway: Starter) -> None:
    harness = await smtp_gateway({"documents": {"fit": "always"}})
    with pikepdf.new() as doc:
        doc.add_blank_page(page_size=(595, 842))
        doc.add_blank_page(page_size=(595, 14_000))  # a till roll
        out = io.BytesIO()
        doc.save(out)
    code, text = await send_async(harness.port, plain_with([("roll.pdf", "application/pdf", out.getvalue())]))
    assert code == 554, text
    assert text.startswith("5.6.0 Message too complex to process: page 2 of roll.pdf would be 1728x"), text
    assert text.endswith(" pixels as a fax page, over documents.max_page_pixels (12000000)"), text


# -- unit checks ------------------------------------------------------------------------


def test_a_pdf_that_shrinks_without_loss_is_not_rendered() -> None:
    with pikepdf.new() as doc:
        doc.add_blank_page()
        doc.Root.Padding = doc.make_stream(b"0" * 1_200_000)
        out = io.BytesIO()
        doc.save(out, compress_streams=False)
    result = extract(plain_with([("big.pdf", "application/pdf", out.getvalue())]), DEFAULT)
    assert len(result.document) < 10_000
    assert result.documents[0]["fitted"] == "compressed without loss"
    with pikepdf.open(io.BytesIO(result.document)) as pdf:
        assert len(pdf.pages) == 1 and not pdf.pages[0].get_images()


def test_a_fax_that_fits_is_left_alone_unless_fit_is_always() -> None:
    small = plain_with([("page.png", "image/png", _png())])
    assert "fitted" not in extract(small, DEFAULT).documents[0]
    assert "fitted" not in extract(small, dataclasses.replace(DEFAULT, fit="off")).documents[0]
    assert extract(small, dataclasses.replace(DEFAULT, fit="always")).documents[0]["fit"] == "fine"


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (850, 1100), (240, 230, 200)).save(out, "PNG", dpi=(100, 100))
    return out.getvalue()


def test_standard_resolution_is_the_second_step() -> None:
    document = bytes(img2pdf.convert([scan_jpeg()] * 3))
    parts = [fit.Part("scan.pdf", 3)]
    fine = fit.fit(document, parts, dataclasses.replace(DEFAULT, fit="always"), time.monotonic() + 60)
    limit = len(fine.document) - 1  # fine is just over: standard must do
    result = fit.fit(document, parts, dataclasses.replace(DEFAULT, max_fax_bytes=limit), time.monotonic() + 60)
    assert (result.how, result.words) == ("standard", "converted to black and white, standard resolution, 3 pages")
    assert len(result.document) <= limit
    page = first_page(result.document)
    with pikepdf.open(io.BytesIO(document)) as source:
        box = source.pages[0].mediabox
    assert page.size == (1728, render.shape(float(box[2]), float(box[3]), render.STANDARD).rows)


def test_fit_settings_are_validated() -> None:
    for table, key in (({"fit": "sometimes"}, "documents.fit"),
                       ({"convert_timeout_seconds": 0}, "documents.convert_timeout_seconds"),
                       ({"max_page_pixels": 1000}, "documents.max_page_pixels")):  # fmt: skip
        with pytest.raises(SettingsError, match=key):
            from_mapping({"documents": table}, {})
    assert from_mapping({}, {}).smtp.max_message_size == 30 * 1024 * 1024


def _stuck_worker(seconds: float) -> None:
    """A worker whose examination never ends (a busy loop, bounded at 30 s so it cannot run away)."""
    examiner._worker_started()
    signal.setitimer(signal.ITIMER_REAL, seconds)  # what examine_in_worker arms
    end = time.monotonic() + 30
    while time.monotonic() < end:
        pass


def test_the_hard_stop_kills_a_worker_stuck_past_the_bound() -> None:
    settings = dataclasses.replace(DEFAULT, convert_timeout_seconds=0.1)
    assert examiner.hard_stop_seconds(settings) == pytest.approx(2.11)
    process = multiprocessing.get_context("forkserver").Process(target=_stuck_worker, args=(0.2,))
    process.start()
    process.join(20)
    assert process.exitcode == -signal.SIGALRM


def test_a_refusal_from_fitting_is_a_document_refusal() -> None:
    document = bytes(img2pdf.convert([scan_jpeg()]))
    settings: Any = dataclasses.replace(DEFAULT, max_fax_bytes=2_000, fit="always")
    with pytest.raises(DocumentRefused) as caught:
        extract(plain_with([("one.pdf", "application/pdf", document)]), settings)
    assert caught.value.reason == "too-big"
    assert str(caught.value.reply).endswith("over the limit of 2000 bytes: even one page is over it: scan in black and "
                                       "white at 200 dpi")  # fmt: skip


def test_a_scan_whose_images_alone_are_over_the_limit_skips_the_lossless_rewrite() -> None:
    # Lossless rewriting keeps JPEG images byte for byte: it cannot bring such a scan under the limit,
    # and would only hold a second copy of it in memory while the pages render.
    from gateway.documents.fit import _check_images

    jpegs = [scan_jpeg(), scan_jpeg()]
    document = bytes(img2pdf.convert(jpegs))
    assert _check_images(document, [], DEFAULT.max_image_pixels) == sum(len(j) for j in jpegs)
