"""extract(): PDFs (generated with fpdf2), text files, and every bad input as a typed error."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pypdf
import pytest

from ingest.errors import (
    CorruptDocumentError,
    EmptyDocumentError,
    EncryptedDocumentError,
    FileMissingError,
    IngestError,
    LimitExceededError,
    UnsupportedTypeError,
)
from ingest.extract import build_document, extract, text_with_paragraph_gaps

PAGES = [
    "The first page talks about apples.",
    "The second page is about pears.",
    "MARKER-THREE lives on the third page only.",
    "The fourth page closes the document.",
]


def _page_of(doc, needle: str) -> int:
    assert doc.text.count(needle) == 1, needle
    return doc.page_of(doc.text.index(needle))


def _assert_one_line_naming(err: IngestError, path: Path) -> None:
    message = str(err)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert len(message) > len(f"{path}: ")


# PDF pages


def test_pdf_pages_are_numbered_from_one_and_text_lands_on_its_page(make_pdf) -> None:
    doc = extract(make_pdf(PAGES))
    assert doc.n_pages == 4
    assert len(doc.page_starts) == 4
    assert _page_of(doc, "MARKER-THREE") == 3
    assert [_page_of(doc, word) for word in ("apples", "pears", "closes")] == [1, 2, 4]
    assert doc.scanned_pages == [] and doc.warnings == []


def test_page_starts_point_at_each_page_text(make_pdf) -> None:
    doc = extract(make_pdf(PAGES))
    for start, page in zip(doc.page_starts, PAGES, strict=True):
        assert doc.text[start : start + len(page)] == page


def test_running_header_and_page_numbers_are_removed(make_pdf) -> None:
    pages = [f"Chapter text number {word} is here." for word in ("one", "two", "three", "four", "five")]
    doc = extract(make_pdf(pages, header="Annual Report 2024", footer_numbers=True))
    assert "Annual Report" not in doc.text
    assert doc.text == "\n\n".join(pages)


def test_lines_join_into_paragraphs_and_paragraph_gaps_survive(make_pdf) -> None:
    page = "First line of a paragraph\nand its second line.\n\nA second paragraph\nstarts here.\n\nThird."
    doc = extract(make_pdf([page]))
    assert (
        doc.text
        == "First line of a paragraph and its second line.\n\nA second paragraph starts here.\n\nThird."
    )


def test_words_hyphenated_at_line_breaks_are_joined(make_pdf) -> None:
    doc = extract(make_pdf(["We saw an exam-\nple of a well-known\nproblem and a half-\nfinished job."]))
    assert "example" in doc.text
    assert "well-known" in doc.text
    assert "halffinished" in doc.text


def test_title_comes_from_metadata(make_pdf) -> None:
    assert extract(make_pdf(PAGES, title="  The Real Title ")).title == "The Real Title"


@pytest.mark.parametrize("title", [None, "", "   "], ids=["absent", "empty", "blank"])
def test_title_falls_back_to_the_file_stem(make_pdf, title) -> None:
    assert extract(make_pdf(PAGES, title=title, name="my_report.pdf")).title == "my_report"


def test_uppercase_pdf_extension_is_read(make_pdf) -> None:
    assert extract(make_pdf(PAGES, name="SHOUT.PDF")).n_pages == 4


# Scanned and unreadable pages


def test_scanned_pages_are_kept_empty_counted_and_warned(make_pdf) -> None:
    doc = extract(make_pdf(["Text on page one.", None, "Text on page three.", None]))
    assert doc.n_pages == 4
    assert doc.scanned_pages == [2, 4]
    assert len(doc.page_starts) == 4
    assert _page_of(doc, "page three") == 3
    (warning,) = doc.warnings
    assert "\n" not in warning
    assert "2 pages have no text layer" in warning and "2, 4" in warning


def test_every_page_scanned_is_an_empty_document(make_pdf) -> None:
    path = make_pdf([None, None, None])
    with pytest.raises(EmptyDocumentError) as info:
        extract(path)
    _assert_one_line_naming(info.value, path)
    assert "all 3 pages have no text layer" in str(info.value)


def test_a_page_that_fails_to_extract_is_kept_empty_and_named(make_pdf, monkeypatch) -> None:
    original = pypdf.PageObject.extract_text

    def flaky(self, *args, **kwargs):
        text = original(self, *args, **kwargs)
        if "BROKEN" in text:
            raise pypdf.errors.PdfReadError("bad content stream")
        return text

    monkeypatch.setattr(pypdf.PageObject, "extract_text", flaky)
    doc = extract(make_pdf(["Good page one.", "BROKEN page two.", "Good page three."]))
    assert doc.n_pages == 3
    assert "BROKEN" not in doc.text
    assert _page_of(doc, "page three") == 3
    assert any("could not be read" in w and w.endswith(": 2") for w in doc.warnings)


def test_all_pages_failing_is_a_corrupt_document(make_pdf, monkeypatch) -> None:
    def broken(self, *args, **kwargs):
        raise KeyError("/Resources")

    monkeypatch.setattr(pypdf.PageObject, "extract_text", broken)
    path = make_pdf(PAGES)
    with pytest.raises(CorruptDocumentError) as info:
        extract(path)
    _assert_one_line_naming(info.value, path)


# Encryption


def test_encrypted_pdf_without_password_is_refused(make_pdf) -> None:
    path = make_pdf(PAGES, encrypt_password="s3cret")
    with pytest.raises(EncryptedDocumentError) as info:
        extract(path)
    _assert_one_line_naming(info.value, path)
    assert "password" in str(info.value)


def test_encrypted_pdf_with_wrong_password_is_refused(make_pdf) -> None:
    path = make_pdf(PAGES, encrypt_password="s3cret")
    with pytest.raises(EncryptedDocumentError, match="wrong password"):
        extract(path, password="guess")


@pytest.mark.parametrize("algorithm", ["AES-256", "RC4-128"])
def test_encrypted_pdf_with_the_right_password_extracts(make_pdf, algorithm) -> None:
    path = make_pdf(PAGES, encrypt_password="s3cret", encrypt_algorithm=algorithm)
    doc = extract(path, password="s3cret")
    assert _page_of(doc, "MARKER-THREE") == 3


def test_pdf_with_only_an_owner_password_opens_without_one(make_pdf) -> None:
    path = make_pdf(PAGES, encrypt_password="")
    assert pypdf.PdfReader(path).is_encrypted
    assert _page_of(extract(path), "MARKER-THREE") == 3


# Text files


def test_txt_is_one_page(write_file) -> None:
    path = write_file("notes.txt", b"Hello  world.\nSame paragraph.\n\nNext paragraph.\n")
    doc = extract(path)
    assert (doc.n_pages, doc.page_starts, doc.title) == (1, [0], "notes")
    assert doc.text == "Hello world. Same paragraph.\n\nNext paragraph."


def test_markdown_is_read_as_text(write_file) -> None:
    doc = extract(write_file("README.md", b"# Title\n\nSome *text* here.\n"))
    assert doc.text == "# Title\n\nSome *text* here."


def test_form_feeds_split_pages(write_file) -> None:
    doc = extract(write_file("paged.txt", b"page one\fpage two\n\fpage three\f"))
    assert doc.n_pages == 3
    assert [_page_of(doc, f"page {n}") for n in ("one", "two", "three")] == [1, 2, 3]


def test_empty_form_feed_page_keeps_its_number(write_file) -> None:
    doc = extract(write_file("gap.txt", b"first\f\fthird"))
    assert doc.n_pages == 3
    assert _page_of(doc, "third") == 3
    assert doc.scanned_pages == []


def test_cp1252_text_is_decoded_with_a_warning(write_file) -> None:
    doc = extract(write_file("legacy.txt", "caf\u00e9 \u201cquoted\u201d \u2014 na\u00efve".encode("cp1252")))
    assert doc.text == "caf\u00e9 \u201cquoted\u201d \u2014 na\u00efve"
    (warning,) = doc.warnings
    assert "not valid UTF-8" in warning and "cp1252" in warning


def test_bytes_cp1252_cannot_decode_fall_back_to_latin1(write_file) -> None:
    doc = extract(write_file("latin.txt", b"An undefined cp1252 byte \x81 here, and d\xe9j\xe0 vu."))
    assert doc.text == "An undefined cp1252 byte here, and d\u00e9j\u00e0 vu."
    assert "latin-1" in doc.warnings[0]


def test_nul_bytes_are_stripped(write_file) -> None:
    assert extract(write_file("nul.txt", b"he\x00llo wor\x00ld")).text == "hello world"


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32"])
def test_byte_order_marks_are_honoured(write_file, encoding) -> None:
    doc = extract(write_file("bom.txt", "\u00e9t\u00e9 \u6771\u4eac".encode(encoding)))
    assert doc.text == "\u00e9t\u00e9 \u6771\u4eac"
    assert doc.warnings == []


def test_text_is_nfc_normalised(write_file) -> None:
    assert extract(write_file("nfd.txt", "cafe\u0301".encode())).text == "caf\u00e9"


# Bad input: every case is a typed error with a one-line message naming the file


def _random_bytes(n: int) -> bytes:
    return random.Random(1234).randbytes(n)


BAD_INPUTS = {
    "missing": (None, FileMissingError),
    "directory": ("dir", FileMissingError),
    "unknown-extension": ("report.docx", UnsupportedTypeError),
    "no-extension": ("README", UnsupportedTypeError),
    "pdf-named-txt": ("doc.txt", UnsupportedTypeError),
    "binary-named-txt": ("blob.txt", UnsupportedTypeError),
    "text-named-pdf": ("fake.pdf", CorruptDocumentError),
    "random-bytes-pdf": ("random.pdf", CorruptDocumentError),
    "pdf-header-then-garbage": ("garbage.pdf", CorruptDocumentError),
    "truncated-pdf": ("truncated.pdf", CorruptDocumentError),
    "empty-pdf": ("empty.pdf", EmptyDocumentError),
    "empty-txt": ("empty.txt", EmptyDocumentError),
    "whitespace-txt": ("blank.txt", EmptyDocumentError),
}


def _bad_file(case: str, tmp_path: Path, pdf: bytes) -> Path:
    name, _ = BAD_INPUTS[case]
    if name is None:
        return tmp_path / "does-not-exist.pdf"
    path = tmp_path / name
    contents = {
        "dir": None,
        "report.docx": b"PK\x03\x04 not really a docx",
        "README": b"plain text without an extension",
        "doc.txt": pdf,
        "blob.txt": bytes(range(32)) * 20,
        "fake.pdf": b"This is just text pretending to be a PDF.\n",
        "random.pdf": _random_bytes(4000),
        "garbage.pdf": b"%PDF-1.7\n" + _random_bytes(4000),
        "truncated.pdf": pdf[: len(pdf) // 2],
        "empty.pdf": b"",
        "empty.txt": b"",
        "blank.txt": b"  \n\n\t \f \r\n",
    }[name]
    if contents is None:
        path.mkdir()
    else:
        path.write_bytes(contents)
    return path


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_its_typed_error(case: str, tmp_path: Path, make_pdf) -> None:
    path = _bad_file(case, tmp_path, make_pdf(PAGES, name="good.pdf").read_bytes())
    with pytest.raises(BAD_INPUTS[case][1]) as info:
        extract(path)
    _assert_one_line_naming(info.value, path)
    assert info.value.__cause__ is None or isinstance(info.value.__cause__, IngestError)


def test_path_can_be_a_str(write_file) -> None:
    path = write_file("plain.txt", b"hello")
    assert extract(str(path)).path == str(path)


def test_unreadable_file_is_a_typed_error(write_file, monkeypatch) -> None:
    path = write_file("secret.txt", b"hidden")

    def denied(self):
        raise PermissionError(13, "Permission denied")

    # Root reads files whatever their mode, so the denial is simulated where extract reads.
    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(FileMissingError, match="Permission denied") as info:
        extract(path)
    _assert_one_line_naming(info.value, path)


# Pure helpers


def test_build_document_reports_scanned_and_unreadable_pages() -> None:
    doc = build_document("x.pdf", "X", ["one", "", "", "four"], scanned=[2], unreadable=[3])
    assert doc.n_pages == 4 and doc.scanned_pages == [2]
    assert doc.warnings == [
        "1 page has no text layer (scanned?): 2",
        "1 page could not be read (kept empty): 3",
    ]
    assert doc.page_of(doc.text.index("four")) == 4


def test_paragraph_gaps_need_a_clear_jump() -> None:
    pieces = [("a", 100.0), ("\n", None), ("b", 88.0), ("\n", None), ("c", 76.0), ("\n", None)]
    pieces += [("d", 58.0), ("\n", None), ("e", 46.0)]
    assert text_with_paragraph_gaps(pieces) == "a\nb\nc\n\nd\ne"


def test_too_few_lines_for_a_pitch_are_joined_as_they_are() -> None:
    assert text_with_paragraph_gaps([("a", 100.0), ("\n", None), ("b", 50.0)]) == "a\nb"


# Long PDFs: pages read by several processes


def _long_pages(n: int) -> list[str | None]:
    """n pages of distinct prose (no line repeats, so nothing reads as a running header), each with a
    mark naming its number; every 17th page scanned."""
    rng = random.Random(n)
    words = [
        "harbour",
        "ferry",
        "lantern",
        "orchard",
        "meadow",
        "quarry",
        "bridge",
        "mill",
        "chapel",
        "market",
        "tide",
        "cliff",
    ]

    def prose() -> str:
        return " ".join(rng.choice(words) for _ in range(40))

    return [None if i % 17 == 0 else f"{prose()}\n\n{prose()} mark{i}z." for i in range(1, n + 1)]


def test_a_long_pdf_reads_the_same_in_workers_as_in_this_process(make_pdf) -> None:
    from ingest import extract as module

    path = make_pdf(_long_pages(module.PARALLEL_MIN_PAGES + 13))
    assert len(module._page_ranges(module.PARALLEL_MIN_PAGES + 13, 3)) == 2  # 61 pages, 24 per worker
    alone, together = extract(path, workers=1), extract(path, workers=3)
    assert together == alone
    assert together.scanned_pages == [17, 34, 51] and _page_of(together, "mark44z") == 44
    assert any("no text layer" in w for w in together.warnings)


def test_page_ranges_cover_every_page_once_in_order() -> None:
    from ingest.extract import PARALLEL_MIN_PAGES, _page_ranges

    assert _page_ranges(PARALLEL_MIN_PAGES - 1, 8) == [(1, PARALLEL_MIN_PAGES - 1)]
    assert _page_ranges(421, 1) == [(1, 421)]
    ranges = _page_ranges(421, 8)
    assert len(ranges) == 8 and ranges[0][0] == 1 and ranges[-1][1] == 421
    assert all(b + 1 == c for (_, b), (c, _) in zip(ranges, ranges[1:], strict=False))
    assert len(_page_ranges(100, 8)) == 4  # at least 24 pages a worker


def test_the_character_limit_holds_across_workers(make_pdf) -> None:
    path = make_pdf(_long_pages(60))
    with pytest.raises(LimitExceededError, match="character limit at page") as info:
        extract(path, workers=3, max_chars=1500)  # each worker's range alone is under it
    _assert_one_line_naming(info.value, path)
    with pytest.raises(LimitExceededError, match="reading took over 0 s"):
        extract(path, workers=3, max_seconds=0)


def test_ingest_errors_rebuild_from_their_reduce_tuple() -> None:
    # how a worker's error crosses back to the caller (multiprocessing rebuilds it from __reduce__)
    original = LimitExceededError("book.pdf", "too long")
    cls, args = original.__reduce__()
    error = cls(*args)
    assert type(error) is LimitExceededError and str(error) == "book.pdf: too long"
    assert (error.path, error.reason) == ("book.pdf", "too long")


def test_a_script_without_a_main_guard_can_read_a_long_pdf(make_pdf, tmp_path) -> None:
    # workers never re-run the caller's main module (multiprocessing's spawn and forkserver would)
    path = make_pdf(_long_pages(60))
    script = tmp_path / "read.py"
    script.write_text(
        f"from ingest.extract import extract\nprint(extract({str(path)!r}, workers=2).n_pages)\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}  # a user's script that finds the package
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["60"]


def test_a_worker_that_dies_is_a_one_line_corrupt_document(make_pdf, monkeypatch) -> None:
    from ingest import extract as module

    path = make_pdf(_long_pages(60))
    monkeypatch.setattr(module.sys, "executable", "/bin/false")  # every worker exits with 1 at once
    with pytest.raises(
        CorruptDocumentError, match=r"the PDF reader crashed on this file \(exit code 1\)"
    ) as info:
        extract(path, workers=2)
    _assert_one_line_naming(info.value, path)


def test_a_worker_refuses_a_file_that_changed(make_pdf) -> None:
    from ingest.extract import read_range

    path = make_pdf(_long_pages(60))
    request = dict(path=str(path), sha256="0" * 64, name=str(path), password=None, n_pages=60)
    request |= dict(max_chars=None, max_seconds=None, seconds_left=None, first=1, last=30)
    reply = read_range(request)
    assert reply == {"error": "CorruptDocumentError", "reason": "the file changed while it was being read"}


def test_a_worker_names_any_typed_error_and_the_caller_raises_that_type(tmp_path) -> None:
    from ingest.extract import _WORKER_ERRORS, read_range

    request = dict(
        path=str(tmp_path / "gone.pdf"), sha256="0" * 64, name="gone.pdf", password=None, n_pages=60
    )
    request |= dict(max_chars=None, max_seconds=None, seconds_left=None, first=1, last=30)
    reply = read_range(request)
    assert reply["error"] == "FileMissingError" and _WORKER_ERRORS[reply["error"]] is FileMissingError
