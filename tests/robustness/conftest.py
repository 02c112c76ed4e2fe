"""Bad inputs made at test time (no binary blobs in the repo), and one DocQA per test module.

The PDFs are written by hand (`pdf_from_objects`) so that each defect is exactly the one named: a
truncation, a broken xref, a decompression bomb, nesting deeper than any parser's recursion limit.
scripts/fuzz_ingest.py imports the generators too (as seeds for the long fuzz run).
"""

from __future__ import annotations

import dataclasses
import io
import os
import random
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

FACT = "The lighthouse keeper of Brightwater is Amelia Thornbury."
QUESTION = "Who is the lighthouse keeper of Brightwater?"
# What the robustness tests run DocQA with: the defaults, except a page limit under the 3,000-page PDF
# (extracting and embedding 3,000 pages takes minutes on 2 cores; the default limit is tested on extract).
TEST_MAX_PAGES = 1000
_MIB = 1 << 20


def pdf_from_objects(objects: list[bytes]) -> bytes:
    """A PDF of the given objects (object i+1 is objects[i]; object 1 must be the catalog), with a
    correct cross-reference table."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def stream(data: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d %s>>\nstream\n%s\nendstream" % (len(data), extra, data)


def text_ops(text: str) -> bytes:
    """A content stream that shows `text` one line per "\\n" (Helvetica 11, WinAnsi)."""
    lines = text.split("\n")
    escaped = [line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in lines]
    shown = b" T* ".join(b"(%s) Tj" % line.encode("cp1252", "replace") for line in escaped)
    return b"BT /F1 11 Tf 14 TL 72 720 Td " + shown + b" ET"


_IMAGE = stream(
    b"\xff\x00\x00" * 4,
    b"/Type /XObject /Subtype /Image /Width 2 /Height 2 /ColorSpace /DeviceRGB /BitsPerComponent 8 ",
)
_IMAGE_OPS = b"q 200 0 0 200 72 400 cm /Im1 Do Q"


def text_pdf(pages: list[str | bytes | None], page_extra: bytes = b"") -> bytes:
    """One page per item: a str is shown as text, None draws an image only (no text layer), bytes is
    the page's whole content-stream object (see `stream`). page_extra goes into every page dictionary."""
    kids = b" ".join(b"%d 0 R" % (5 + 2 * i) for i in range(len(pages)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(pages)),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        _IMAGE,
    ]
    for i, page in enumerate(pages):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R %s"
            b"/Resources << /Font << /F1 3 0 R >> /XObject << /Im1 4 0 R >> >> >>" % (6 + 2 * i, page_extra)
        )
        if isinstance(page, bytes):
            objects.append(page)
        else:
            objects.append(stream(_IMAGE_OPS if page is None else text_ops(page)))
    return pdf_from_objects(objects)


def word_for(number: int) -> str:
    """A word unique to `number` without digits (running-header removal treats digits as wildcards)."""
    return "".join("abcdefghij"[int(d)] for d in str(number))


def many_pages_pdf(n_pages: int) -> bytes:
    return text_pdf(
        [f"Page {word_for(i)} of a long report on topic {word_for(7 * i)}." for i in range(n_pages)]
    )


def encrypted_pdf(data: bytes, password: str) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=password, owner_password=password + "-owner", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def zlib_bomb(total_mib: int, fill: bytes = b" ") -> bytes:
    """A valid zlib stream that inflates to total_mib MiB of `fill` (about 1 KB per MiB, built in
    well under a second: after a full flush, compressing the same block again gives the same bytes)."""
    block = (fill * (_MIB // len(fill) + 1))[:_MIB]
    compressor = zlib.compressobj(9)
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeat = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.flush(zlib.Z_FINISH)[:-4]  # the final block; its checksum covers 2 blocks only
    checksum = 1
    for _ in range(total_mib):
        checksum = zlib.adler32(block, checksum)
    return first + repeat * (total_mib - 1) + tail + checksum.to_bytes(4, "big")


def bomb_pdf(total_mib: int = 1024, fill: bytes = b" ", good_page: bool = False) -> bytes:
    """A page whose content stream inflates to total_mib MiB (after one good page if asked)."""
    bomb = stream(zlib_bomb(total_mib, fill), b"/Filter /FlateDecode ")
    return text_pdf([FACT, bomb] if good_page else [bomb])


def nested_pdf(depth: int, where: str) -> bytes:
    """Nesting `depth` deep: "array" puts [[[...]]] and "dict" << /A << /A ... >> >> into the page
    dictionary; "content" puts [[[...]]] into the content stream of page 2 (page 1 is fine)."""
    if where == "content":
        return text_pdf([FACT, stream(b"BT /F1 11 Tf " + b"[" * depth + b"]" * depth + b" TJ ET")])
    nest = b"[" * depth + b"]" * depth if where == "array" else b"<< /A " * depth + b"1 " + b">> " * depth
    return text_pdf([FACT], page_extra=b"/Deep " + nest + b" ")


def broken_xref(data: bytes) -> bytes:
    """Every xref offset wrong, and startxref pointing past the end of the file."""
    body, _, rest = data.partition(b"xref\n")
    table, _, trailer = rest.partition(b"trailer")
    head, *entries = table.rstrip(b"\n").split(b"\n")
    wrong = [b"%010d 00000 n " % (7 * i + 3) for i in range(len(entries) - 1)]
    trailer = re.sub(rb"startxref\n\d+", b"startxref\n%d" % (10 * len(data)), trailer)
    return body + b"xref\n" + b"\n".join([head, entries[0], *wrong]) + b"\ntrailer" + trailer


def truncated(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def random_bytes(n: int, seed: int = 1234) -> bytes:
    return random.Random(seed).randbytes(n)


# name -> (file name, bytes); each entry is one row of docs/RELIABILITY.md.
def bad_inputs() -> dict[str, tuple[str, Callable[[], bytes]]]:
    good = text_pdf([FACT, "A second page about the harbour and its fishing boats.", "A third page."])
    return {
        "zero-bytes": ("empty.pdf", lambda: b""),
        "random-bytes": ("random.pdf", lambda: random_bytes(64 * 1024)),
        "truncated-10": ("cut10.pdf", lambda: truncated(good, 0.1)),
        "truncated-50": ("cut50.pdf", lambda: truncated(good, 0.5)),
        "truncated-90": ("cut90.pdf", lambda: truncated(good, 0.9)),
        "broken-xref": ("xref.pdf", lambda: broken_xref(good)),
        "encrypted": ("locked.pdf", lambda: encrypted_pdf(good, "s3cret")),
        "image-only": ("scan.pdf", lambda: text_pdf([None, None])),
        "bomb": ("bomb.pdf", lambda: bomb_pdf(1024)),
        "bomb-text": ("bombtext.pdf", lambda: bomb_pdf(1024, fill=b"(ab) Tj ")),
        "nested-array": ("deep.pdf", lambda: nested_pdf(100_000, "array")),
        "nested-dict": ("deepdict.pdf", lambda: nested_pdf(100_000, "dict")),
        "3000-pages": ("long.pdf", lambda: many_pages_pdf(3000)),
        "cp1252-txt": (
            "legacy.txt",
            lambda: "caf\u00e9 \u201cna\u00efve\u201d \u2014 r\u00e9sum\u00e9".encode("cp1252"),
        ),
        "nul-txt": ("nul.txt", lambda: b"he\x00llo \x00wor\x00ld " * 100),
        "50mb-line": ("line.txt", lambda: b"word " * (10 * _MIB)),
    }


@pytest.fixture(scope="module")
def qa(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One DocQA per test module over a fresh DOCQA_HOME (loading the models costs seconds)."""
    from app.docqa import DocQA
    from app.settings import Settings

    home = tmp_path_factory.mktemp("docqa-home")
    settings = dataclasses.replace(Settings.from_env(), home=home, device="cpu", max_pages=TEST_MAX_PAGES)
    docqa = DocQA(settings=settings)
    yield docqa
    docqa.store.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, bytes], Path]:
    folder = tmp_path_factory.mktemp("inputs")

    def write(name: str, data: bytes) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return write
