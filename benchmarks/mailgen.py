"""Benchmark mail: real PDF documents made with pikepdf, wrapped in MIME mails.

The PDF holds pages with text content streams and an embedded JPEG scan (as
multifunction printers send), so the gateway's type and PDF checks do real
work. The mail has no Message-ID header: every copy sent by ``smtp-source -F``
is then a new fax, not a resend that duplicate detection would short-cut.
"""

from __future__ import annotations

import base64
import io
import random
import textwrap

import pikepdf
from PIL import Image

SENDER = "scanner@bench.example"
# A valid French geographic number (Paris): passes the number checks.
NUMBER = "0140000000"
RECIPIENT = f"{NUMBER}@fax.local"


def _jpeg(width: int, height: int, seed: int) -> bytes:
    """A greyscale 'scan' with noise: JPEG data that does not compress away."""
    rng = random.Random(seed)
    noise = Image.frombytes("L", (width, height), rng.randbytes(width * height))
    img = noise.point(lambda v: 160 + v * 95 // 255)  # light paper grey with grain
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=85)
    return out.getvalue()


def _build_pdf(pages: int, side: int, seed: int) -> bytes:
    pdf = pikepdf.new()
    for n in range(pages):
        data = _jpeg(side, side, seed + n)
        image = pikepdf.Stream(pdf, data)
        image.Type = pikepdf.Name.XObject
        image.Subtype = pikepdf.Name.Image
        image.Width, image.Height = side, side
        image.ColorSpace = pikepdf.Name.DeviceGray
        image.BitsPerComponent = 8
        image.Filter = pikepdf.Name.DCTDecode
        text = "".join(
            f"BT /F1 10 Tf 50 {780 - 14 * i} Td (Invoice line {i} of page {n + 1}) Tj ET\n" for i in range(20)
        )
        content = f"{text}q 495 0 0 495 50 40 cm /Im0 Do Q\n".encode()
        page = pikepdf.Dictionary(
            Type=pikepdf.Name.Page,
            MediaBox=[0, 0, 595, 842],
            Contents=pikepdf.Stream(pdf, content),
            Resources=pikepdf.Dictionary(
                Font=pikepdf.Dictionary(
                    F1=pikepdf.Dictionary(
                        Type=pikepdf.Name.Font, Subtype=pikepdf.Name.Type1, BaseFont=pikepdf.Name.Helvetica
                    )
                ),
                XObject=pikepdf.Dictionary(Im0=image),
            ),
        )
        pdf.pages.append(pikepdf.Page(page))
    out = io.BytesIO()
    pdf.save(out)
    return out.getvalue()


def make_pdf(target_bytes: int, pages: int = 3, seed: int = 7) -> bytes:
    """A valid PDF of about ``target_bytes`` (within a few percent, never above)."""
    lo, hi = 16, 4096
    best = _build_pdf(pages, lo, seed)
    while lo <= hi:  # binary search on the image side: size grows with it
        mid = (lo + hi) // 2
        pdf = _build_pdf(pages, mid, seed)
        if len(pdf) <= target_bytes:
            best, lo = pdf, mid + 1
        else:
            hi = mid - 1
    return best


def make_mail(pdf: bytes, *, sender: str = SENDER, recipient: str = RECIPIENT) -> bytes:
    """A MIME mail carrying ``pdf``, with LF line ends (``smtp-source -F`` adds the CR)."""
    body = "\n".join(textwrap.wrap(base64.b64encode(pdf).decode(), 76))
    mail = (
        f"From: Scanner <{sender}>\n"
        f"To: <{recipient}>\n"
        "Subject: Scanned document\n"
        "Date: Mon, 30 Nov 2026 06:00:00 +0000\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="bench-boundary"\n'
        "\n"
        "--bench-boundary\n"
        "Content-Type: text/plain; charset=us-ascii\n"
        "\n"
        "Please fax the attached document.\n"
        "\n"
        "--bench-boundary\n"
        'Content-Type: application/pdf; name="scan.pdf"\n'
        "Content-Transfer-Encoding: base64\n"
        'Content-Disposition: attachment; filename="scan.pdf"\n'
        "\n"
        f"{body}\n"
        "--bench-boundary--\n"
    )
    return mail.encode("ascii")


def with_crlf(mail: bytes) -> bytes:
    return mail.replace(b"\n", b"\r\n")
