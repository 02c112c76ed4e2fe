"""Fuzzing the ingestion entry point: extract() and chunking, on mutated PDFs and arbitrary bytes.

The property: whatever the bytes, extract either returns a well-formed document (which then chunks
into well-formed chunks) or raises an IngestError whose message is one line naming the file, within
bounded time. CI runs a short Hypothesis pass (FUZZ_EXAMPLES, default 60 per test); the long run is
scripts/fuzz_ingest.py, with the same seeds, mutations and check.
"""

from __future__ import annotations

import functools
import os
import random
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.errors import IngestError
from ingest.extract import extract
from tests.robustness.conftest import (
    FACT,
    encrypted_pdf,
    nested_pdf,
    stream,
    text_pdf,
    zlib_bomb,
)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
# Limits for fuzzing: small enough that every example is quick, as the app's are for real uploads.
FUZZ_LIMITS = {"max_pages": 200, "max_chars": 2_000_000, "max_seconds": 10.0}
MAX_SECONDS = 30.0  # per example: the time budget above plus one page's worst case, with room
PDF_TOKENS = [
    b"obj", b"endobj", b"stream", b"endstream", b"<<", b">>", b"[", b"]", b"(", b")", b"\\", b"R",
    b"0 0 R", b"1 0 R", b"2 0 R", b"-1", b"0", b"4294967296", b"1e308", b"99999999999999999999",
    b"/Length 99999999", b"/Length -1", b"/Filter /FlateDecode", b"/Filter /LZWDecode",
    b"/Filter [/FlateDecode /ASCIIHexDecode]", b"/DecodeParms << /Predictor 15 /Columns 99999 >>",
    b"/Type /Page", b"/Type /Pages", b"/Kids [2 0 R]", b"/Count -5", b"/Count 999999999",
    b"/Parent 2 0 R", b"/Contents [5 0 R 5 0 R]", b"/Encrypt 1 0 R", b"/Font << /F1 3 0 R >>",
    b"/ToUnicode 4 0 R", b"xref", b"trailer", b"startxref", b"%%EOF", b"%PDF-1.7", b"BT", b"ET",
    b"Tj", b"TJ", b"Tf", b"Td", b"Do", b"cm", b"q", b"Q", b"null", b"true", b"<FEFF00410042>",
    b"<>", b"\x00", b"\xff\xfe", b"\r\n", b"\n\n", b"\f",
]  # fmt: skip


@functools.cache
def seeds() -> dict[str, tuple[str, bytes]]:
    """name -> (suffix, bytes): valid documents of each kind, and a few bad ones, to mutate."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for text in (
        FACT,
        "Second page, with a list:\n- one\n- two",
        "Third page: exam-\nple of hyphen-\nation.",
    ):
        pdf.add_page()
        pdf.multi_cell(0, 6, text)
    plain = text_pdf([FACT, "A second page about boats.", None])
    return {
        "handmade.pdf": (".pdf", plain),
        "fpdf2.pdf": (".pdf", bytes(pdf.output())),
        "encrypted.pdf": (".pdf", encrypted_pdf(plain, "")),
        "bomb.pdf": (".pdf", text_pdf([FACT, stream(zlib_bomb(80), b"/Filter /FlateDecode ")])),
        "nested.pdf": (".pdf", nested_pdf(1500, "content")),
        "utf8.txt": (
            ".txt",
            "Unicode: caf\u00e9, \u6771\u4eac, \u05e9\u05dc\u05d5\u05dd.\n\fPage two.".encode(),
        ),
        "utf16.txt": (".txt", "\ufeffUTF-16 text with a BOM.\nLine two.".encode("utf-16-le")),
        "cp1252.txt": (".txt", "na\u00efve \u201cquotes\u201d".encode("cp1252")),
        "notes.md": (".md", b"# Title\n\nSome *text* and `code`.\n\n- a list item\n"),
    }


def mutate(rng: random.Random, data: bytes, n_mutations: int) -> bytes:
    """n_mutations random edits: byte flips, random or PDF-token insertions, deletions, duplications,
    token swaps and truncation."""
    buf = bytearray(data)
    for _ in range(n_mutations):
        pos = rng.randrange(len(buf) + 1)
        op = rng.randrange(7)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 2:
            del buf[pos : pos + rng.randint(1, 64)]
        elif op == 3:
            buf[pos:pos] = buf[pos : pos + rng.randint(1, 256)] * rng.randint(1, 8)
        elif op == 4:
            buf[pos:pos] = b" " + rng.choice(PDF_TOKENS) + b" "
        elif op == 5:
            old, new = rng.choice(PDF_TOKENS), rng.choice(PDF_TOKENS)
            at = bytes(buf).find(old, pos)
            if at >= 0:
                buf[at : at + len(old)] = new
        elif rng.random() < 0.3:
            del buf[pos:]
    return bytes(buf)


@functools.cache
def _tokenizer():
    from ingest.tokenizer import load_tokenizer

    return load_tokenizer()


def check_input(path: Path, chunk: bool = True) -> str:
    """Run the ingestion entry point on `path` and check the property. Returns the outcome ("ok" or the
    error's class name); raises AssertionError (or the unexpected exception) on a violation."""
    from ingest.chunk import chunk_document

    start = time.perf_counter()
    try:
        doc = extract(path, **FUZZ_LIMITS)
    except IngestError as err:
        message = str(err)
        assert "\n" not in message and message.startswith(f"{path}: "), message
        assert err.__cause__ is None or isinstance(err.__cause__, IngestError)
        outcome = type(err).__name__
    else:
        assert doc.text.strip() and doc.n_pages == len(doc.page_starts) >= 1
        assert doc.page_starts[0] == 0 and doc.page_starts == sorted(doc.page_starts)
        assert doc.page_starts[-1] <= len(doc.text) and all("\n" not in w for w in doc.warnings)
        if chunk:
            chunks = chunk_document(doc, _tokenizer())
            assert chunks, "a document with text must give chunks"
            for i, c in enumerate(chunks):
                assert c.index == i and doc.text[c.char_start : c.char_end] == c.text
                assert 1 <= c.page_start <= c.page_end <= doc.n_pages and c.n_tokens <= 254
        outcome = "ok"
    seconds = time.perf_counter() - start
    assert seconds < MAX_SECONDS, f"{seconds:.1f} s"
    return outcome


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,  # time is bounded by check_input itself (a shared 2-core machine makes deadlines flaky)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.mark.parametrize("seed", sorted(seeds()))
def test_every_seed_is_read(seed: str, scratch: Path) -> None:
    """The seeds are readable (the bomb's first page is good), so mutations start from real structure."""
    suffix, data = seeds()[seed]
    path = scratch / f"seed{suffix}"
    path.write_bytes(data)
    assert check_input(path) == "ok"


@FUZZ_SETTINGS
@given(seed=st.sampled_from(sorted(seeds())), rng_seed=st.integers(0, 2**32 - 1), n=st.integers(1, 12))
def test_mutated_documents(seed: str, rng_seed: int, n: int, scratch: Path) -> None:
    suffix, data = seeds()[seed]
    path = scratch / f"mutated{suffix}"
    path.write_bytes(mutate(random.Random(rng_seed), data, n))
    check_input(path)


@FUZZ_SETTINGS
@given(data=st.binary(max_size=4096), suffix=st.sampled_from([".pdf", ".txt", ".md"]))
def test_arbitrary_bytes(data: bytes, suffix: str, scratch: Path) -> None:
    path = scratch / f"bytes{suffix}"
    path.write_bytes(data)
    check_input(path)


@FUZZ_SETTINGS
@given(text=st.text(max_size=3000), encoding=st.sampled_from(["utf-8", "utf-16", "utf-8-sig"]))
def test_any_text_file_is_read_or_reported_empty(text: str, encoding: str, scratch: Path) -> None:
    path = scratch / "text.txt"
    path.write_bytes(text.encode(encoding, errors="surrogatepass"))
    assert check_input(path) in ("ok", "EmptyDocumentError", "UnsupportedTypeError")
