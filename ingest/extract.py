"""Read a PDF, .txt or .md file into a ParsedDocument: one clean text, page offsets, warnings.

I/O happens in `extract` and the readers it calls; turning page texts into a document
(`build_document`) and finding paragraph gaps in a PDF page (`text_with_paragraph_gaps`) are pure.
Every failure is one of the typed errors in ingest.errors, never a pypdf exception.

A PDF of PARALLEL_MIN_PAGES pages or more is read by up to `workers` processes at once, each a
contiguous range of pages (pypdf is pure Python: threads would not help). Each worker is a fresh
`python -m ingest.extract_worker` that gets its request and sends its pages back as JSON (nothing is
pickled, and the caller's main module is never re-run, as multiprocessing would); the limits hold
across the ranges (one deadline, the characters summed), and a worker that dies (a crash inside the PDF
parser) fails that document with a one-line error instead of the app.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import hashlib
import io
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pypdf import PasswordType, PdfReader, apply_configuration

from ingest.clean import clean_pages, join_pages, normalize_unicode
from ingest.errors import (
    CorruptDocumentError,
    EmptyDocumentError,
    EncryptedDocumentError,
    FileMissingError,
    IngestError,
    LimitExceededError,
    UnsupportedTypeError,
)
from ingest.types import ParsedDocument

PDF_SUFFIXES = frozenset({".pdf"})
TEXT_SUFFIXES = frozenset({".txt", ".md", ".markdown"})

# Files that are plainly something else, whatever their name says.
_SIGNATURES = {
    b"%PDF-": "a PDF",
    b"PK\x03\x04": "a ZIP archive (docx, epub, ...)",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"\x7fELF": "an executable",
}
_BOMS = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
# cp1252 is what most non-UTF-8 Western text is; latin-1 decodes any byte, so it always ends the list.
_LEGACY_ENCODINGS = ("cp1252", "latin-1")
# Text has few control characters; a file where they are common is binary under a text name. NUL is
# left out: stray NULs are stripped, and UTF-16 text without a BOM is readable once they are.
_MAX_CONTROL_SHARE = 0.1
_BINARY_CONTROLS = re.compile(r"[\x01-\x08\x0b\x0e-\x1f\x7f-\x9f]")  # all but \t \n \r \f and NUL
# The PDF header may follow some junk, but only within the first KiB (PDF 1.7, annex H).
_PDF_HEADER_WINDOW = 1024
# A vertical jump this much larger than the page's usual line pitch starts a new paragraph.
_PARAGRAPH_GAP = 1.3
_MIN_LINES_FOR_PITCH = 3
_PITCH_QUANTILE = 10  # the 10th percentile
_MAX_LISTED_PAGES = 20
# pypdf's own limits guard decompression (75 MB of output per stream, 300 MB of decoding work) and are kept;
# its budget of 2,000,000 tokens per content stream is lowered, because parsing that many takes ~30 s on
# one core. A dense text page has ~10k; a page over the budget is kept empty and named, like any page
# pypdf cannot read.
PDF_MAX_STREAM_TOKENS = 300_000
# A page that takes longer is kept empty and named (an ordinary page takes milliseconds). The check runs
# before every content-stream operator, so a page stops within one stream's parse (about 3 s at most).
PDF_MAX_PAGE_SECONDS = 10.0
# A damaged file can make pypdf log a line per object it repairs (22,000 for one nested page dictionary);
# the first few of each extraction go to the log, the rest are only counted.
_MAX_LOGGED_PDF_WARNINGS = 5
PARALLEL_MIN_PAGES = 48  # fewer pages: read in this process (a worker's own parse of the file costs more)
_PAGES_PER_WORKER = 24  # at least this many pages a worker
MAX_WORKERS = 8
_MAX_REASON_CHARS = 200

log = logging.getLogger(__name__)


@dataclass
class _PdfWarnings:
    """pypdf warnings seen during one extraction."""

    name: str
    count: int = 0
    first: str = ""


_CURRENT_PDF: contextvars.ContextVar[_PdfWarnings | None] = contextvars.ContextVar("pdf", default=None)


class _PdfLogRelay(logging.Handler):
    """Takes over pypdf's log: counts each extraction's warnings and relays only the first few."""

    def emit(self, record: logging.LogRecord) -> None:
        seen = _CURRENT_PDF.get()
        if seen is None:
            log.log(record.levelno, "pypdf: %s", record.getMessage())
            return
        seen.count += 1
        seen.first = seen.first or " ".join(record.getMessage().split())[:_MAX_REASON_CHARS]
        if seen.count <= _MAX_LOGGED_PDF_WARNINGS:
            log.log(record.levelno, "%s: pypdf: %s", seen.name, record.getMessage())


def _install_pdf_log_relay() -> None:
    pypdf_log = logging.getLogger("pypdf")
    if not any(isinstance(h, _PdfLogRelay) for h in pypdf_log.handlers):
        pypdf_log.addHandler(_PdfLogRelay())
        pypdf_log.propagate = False


_install_pdf_log_relay()


@dataclass(frozen=True)
class Limits:
    """Bounds on one extraction (None: unbounded). The app passes DOCQA_MAX_PAGES, DOCQA_MAX_CHARS and
    DOCQA_MAX_EXTRACT_SECONDS; see docs/RELIABILITY.md.

    Attributes:
        max_pages: most pages a PDF may have; checked before any page is read.
        max_chars: most characters of extracted text (before clean-up), checked as pages are read.
        max_seconds: time budget for reading a PDF's pages, checked before each page (one page's own
            time is bounded by pypdf's limits and PDF_MAX_STREAM_TOKENS: a few seconds at worst).
    """

    max_pages: int | None = None
    max_chars: int | None = None
    max_seconds: float | None = None
    workers: int | None = None  # processes reading a long PDF (None: default_workers())


def extract(
    path: str | Path,
    password: str | None = None,
    *,
    max_pages: int | None = None,
    max_chars: int | None = None,
    max_seconds: float | None = None,
    workers: int | None = None,
) -> ParsedDocument:
    """Read a PDF (page by page, with pypdf) or a .txt/.md file into one cleaned document.

    Args:
        path: the file.
        password: the password of an encrypted PDF (ignored for text files).
        max_pages, max_chars, max_seconds: see `Limits` (None: no limit).
        workers: processes reading a long PDF's pages at once (None: default_workers(); 1: this
            process only). The text is the same either way.

    Returns:
        The ParsedDocument; pages without a text layer are kept empty, listed in `scanned_pages` and
        named in `warnings`, as are PDF pages that pypdf could not read.

    Raises:
        FileMissingError, UnsupportedTypeError, CorruptDocumentError, EncryptedDocumentError,
        EmptyDocumentError, LimitExceededError: see ingest.errors; str(error) is "<file>: <reason>".
    """
    limits = Limits(max_pages, max_chars, max_seconds, workers)
    file, name = Path(path), str(path)
    suffix = file.suffix.lower()
    if not file.exists():
        raise FileMissingError(name, "no such file")
    if not file.is_file():
        raise FileMissingError(name, "not a regular file (a directory?)")
    if suffix not in PDF_SUFFIXES | TEXT_SUFFIXES:
        shown = f"'{suffix}'" if suffix else "a file without an extension"
        raise UnsupportedTypeError(name, f"unsupported file type {shown}; PDF, .txt and .md are read")
    data = _read_bytes(file, name)
    if not data:
        raise EmptyDocumentError(name, "empty file (0 bytes)")
    if suffix in PDF_SUFFIXES:
        return _extract_pdf(data, name, file.stem, password, limits)
    pages, warnings = read_text_pages(data, name, max_chars=limits.max_chars)
    return build_document(name, file.stem, pages, warnings=warnings)


def _read_bytes(file: Path, name: str) -> bytes:
    try:
        return file.read_bytes()
    except OSError as exc:
        raise FileMissingError(name, f"cannot be read ({exc.strerror or type(exc).__name__})") from None


def build_document(
    path: str,
    title: str,
    raw_pages: Sequence[str],
    *,
    scanned: Sequence[int] = (),
    unreadable: Sequence[int] = (),
    warnings: Sequence[str] = (),
) -> ParsedDocument:
    """Clean page texts and assemble the document (pure).

    Args:
        path: the source file, for the document and error messages.
        title: the document title.
        raw_pages: extracted text of each page in order ("" for pages without text).
        scanned: 1-based numbers of pages without a text layer.
        unreadable: 1-based numbers of pages that failed to extract (kept empty).
        warnings: warnings gathered while reading, kept first.

    Returns:
        The ParsedDocument.

    Raises:
        EmptyDocumentError: when no page has any text.
    """
    all_warnings = list(warnings)
    if scanned:
        verb = "has" if len(scanned) == 1 else "have"
        all_warnings.append(f"{_pages(len(scanned))} {verb} no text layer (scanned?): {_page_list(scanned)}")
    if unreadable:
        all_warnings.append(
            f"{_pages(len(unreadable))} could not be read (kept empty): {_page_list(unreadable)}"
        )
    text, page_starts = join_pages(clean_pages(list(raw_pages)))
    if not text.strip():
        raise EmptyDocumentError(path, _empty_reason(len(raw_pages), len(scanned), len(unreadable)))
    return ParsedDocument(
        path=path,
        title=title,
        text=text,
        page_starts=page_starts,
        n_pages=len(raw_pages),
        scanned_pages=list(scanned),
        warnings=all_warnings,
    )


def _pages(count: int) -> str:
    return "1 page" if count == 1 else f"{count} pages"


def _page_list(numbers: Sequence[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:_MAX_LISTED_PAGES])
    more = len(numbers) - _MAX_LISTED_PAGES
    return f"{shown}, ... (+{more} more)" if more > 0 else shown


def _empty_reason(n_pages: int, n_scanned: int, n_unreadable: int) -> str:
    if n_scanned == n_pages:
        noun = "the only page has" if n_pages == 1 else f"all {n_pages} pages have"
        return f"no extractable text: {noun} no text layer (scanned images? run OCR first)"
    if n_scanned or n_unreadable:
        return (
            f"no extractable text in {n_pages} pages ({n_scanned} without a text layer, "
            f"{n_unreadable} unreadable, the rest blank)"
        )
    return "no text (only whitespace, control or unreadable characters)"


def read_text_pages(data: bytes, name: str, max_chars: int | None = None) -> tuple[list[str], list[str]]:
    """Decode a text file and split it into pages at form feeds.

    Args:
        data: the file's bytes (not empty).
        name: the file name, for messages.
        max_chars: most characters the decoded text may have (LimitExceededError beyond).

    Returns:
        (pages, warnings): the page texts (one page when there is no form feed; a form feed that
        ends the file does not open an extra page) and a warning when the file was not UTF-8.

    Raises:
        UnsupportedTypeError: the bytes are a PDF, an image or another binary format.
        LimitExceededError: the text is over max_chars.
    """
    for signature, kind in _SIGNATURES.items():
        if data.startswith(signature):
            raise UnsupportedTypeError(name, f"the file is {kind}, not text")
    text, warnings = _decode(data)
    if max_chars is not None and len(text) > max_chars:
        raise LimitExceededError(name, f"{len(text):,} characters, over the {max_chars:,}-character limit")
    controls = len(text) - len(_BINARY_CONTROLS.sub("", text))
    if controls > _MAX_CONTROL_SHARE * len(text):
        raise UnsupportedTypeError(name, "the file looks like binary data, not text")
    pages = text.replace("\x00", "").split("\f")
    if len(pages) > 1 and not pages[-1].strip():
        pages.pop()
    return pages, warnings


def _decode(data: bytes) -> tuple[str, list[str]]:
    """UTF-8 (or the encoding its BOM names), else a legacy 8-bit encoding with a warning."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data[len(bom) :].decode(encoding, errors="replace"), []
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        bad_byte = exc.start
    for encoding in _LEGACY_ENCODINGS:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        return text, [f"not valid UTF-8 (byte {bad_byte}); decoded as {encoding}"]
    raise AssertionError("latin-1 decodes every byte string")


def _extract_pdf(data: bytes, name: str, stem: str, password: str | None, limits: Limits) -> ParsedDocument:
    if b"%PDF-" not in data[:_PDF_HEADER_WINDOW]:
        raise CorruptDocumentError(name, "not a PDF (no %PDF- header)")
    with _pdf_session(name) as seen:
        try:
            return _read_pdf(data, name, stem, password, limits, seen)
        except IngestError:
            raise
        # A last net: nesting deeper than the recursion limit, or a pypdf error raised outside a page.
        except Exception as exc:
            raise CorruptDocumentError(name, f"cannot read the PDF ({_describe(exc)})") from None


@contextmanager
def _pdf_session(name: str) -> Iterator[_PdfWarnings]:
    """pypdf limits for untrusted input, and a tally of pypdf's warnings, for one extraction."""
    seen = _PdfWarnings(name)
    token = _CURRENT_PDF.set(seen)
    try:
        with apply_configuration(stream_parsing_work_maximum_count=PDF_MAX_STREAM_TOKENS):
            yield seen
    finally:
        _CURRENT_PDF.reset(token)
        if seen.count > _MAX_LOGGED_PDF_WARNINGS:
            log.warning("%s: pypdf: %d more warnings not logged", name, seen.count - _MAX_LOGGED_PDF_WARNINGS)


def _read_pdf(
    data: bytes, name: str, stem: str, password: str | None, limits: Limits, seen: _PdfWarnings
) -> ParsedDocument:
    deadline = time.monotonic() + limits.max_seconds if limits.max_seconds is not None else float("inf")
    reader, n_pages = _open_pdf(data, name, password)
    if limits.max_pages is not None and n_pages > limits.max_pages:
        raise LimitExceededError(name, f"{n_pages:,} pages, over the {limits.max_pages:,}-page limit")
    ranges = _page_ranges(n_pages, limits.workers if limits.workers is not None else default_workers())
    if len(ranges) == 1:
        pages = _read_pages(reader, name, limits, deadline, 1, n_pages, n_pages)
    else:
        pages = _read_in_workers(data, name, password, limits, deadline, ranges, n_pages, seen)
    if len(pages.unreadable) == n_pages:
        raise CorruptDocumentError(name, f"no page could be read ({pages.first_failure})")
    if len(pages.scanned) + len(pages.unreadable) == n_pages and seen.count:
        # No text, and pypdf had to repair the file: damage is a likelier cause than scanned pages.
        raise CorruptDocumentError(
            name, f"no readable text; the file is damaged (pypdf: {seen.count} problems, first: {seen.first})"
        )
    warnings = []
    if pages.slow:
        slow, verb = pages.slow, "takes" if len(pages.slow) == 1 else "take"
        warnings.append(
            f"{_pages(len(slow))} {verb} over {PDF_MAX_PAGE_SECONDS:g} s to read: {_page_list(slow)}"
        )
    title = _pdf_title(reader) or stem
    return build_document(
        name, title, pages.texts, scanned=pages.scanned, unreadable=pages.unreadable, warnings=warnings
    )


def _read_pages(
    reader: PdfReader, name: str, limits: Limits, deadline: float, first: int, last: int, n_pages: int
) -> _PdfPages:
    """Pages first..last (1-based, inclusive) of an open PDF, under the limits."""
    pages = _PdfPages()
    for number in range(first, last + 1):
        _check_time(name, deadline, limits, number, n_pages)
        left = limits.max_chars - pages.n_chars if limits.max_chars is not None else None
        budget = _PageBudget(min(time.monotonic() + PDF_MAX_PAGE_SECONDS, deadline), left)
        try:
            pages.add(number, _page_text(reader, number - 1, budget))
        except _PageStopped as stop:
            if stop.over_chars:
                raise _over_chars(name, limits, number, n_pages) from None
            _check_time(name, deadline, limits, number, n_pages)
            pages.fail(number, f"page {number} took over {PDF_MAX_PAGE_SECONDS:g} s", slow=True)
        # pypdf raises many exception types on damaged pages (RecursionError on deep nesting among
        # them); any of them makes the page unreadable.
        except Exception as exc:
            pages.fail(number, _describe(exc))
    return pages


def _over_chars(name: str, limits: Limits, number: int, n_pages: int) -> LimitExceededError:
    return LimitExceededError(
        name, f"over the {limits.max_chars:,}-character limit at page {number} of {n_pages}"
    )


def default_workers() -> int:
    """Processes for a long PDF: the CPUs this process may use, at most MAX_WORKERS."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cpus))


def _page_ranges(n_pages: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous 1-based (first, last) page ranges, one per worker; one range below PARALLEL_MIN_PAGES
    pages or for one worker."""
    n = min(workers, n_pages // _PAGES_PER_WORKER)
    if n_pages < PARALLEL_MIN_PAGES or n < 2:
        return [(1, n_pages)]
    bounds = [n_pages * i // n for i in range(n + 1)]
    return [(a + 1, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _read_in_workers(
    data: bytes, name: str, password: str | None, limits: Limits, deadline: float,
    ranges: list[tuple[int, int]], n_pages: int, seen: _PdfWarnings,
) -> _PdfPages:  # fmt: skip
    """The page ranges read at once by worker processes (`python -m ingest.extract_worker`, one per
    range, JSON both ways), joined in page order. Each worker may use the whole character budget; the
    sum is checked here."""
    left = None if deadline == float("inf") else deadline - time.monotonic()
    digest = hashlib.sha256(data).hexdigest()  # the worker reads the file again: the same bytes
    common = {"path": str(Path(name).resolve()), "sha256": digest, "name": name, "password": password,
              "n_pages": n_pages, "max_chars": limits.max_chars, "max_seconds": limits.max_seconds,
              "seconds_left": left}  # fmt: skip
    requests = [{**common, "first": a, "last": b} for a, b in ranges]
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as threads:
        replies = list(threads.map(lambda r: _run_worker(r, name), requests))
    for reply in replies:  # the first range's error is the one a reader in this process would raise
        if "error" in reply:
            raise _WORKER_ERRORS.get(reply["error"], CorruptDocumentError)(name, reply["reason"])
    pages = _PdfPages()
    for reply in replies:
        seen.count += reply["warnings"]
        seen.first = seen.first or reply["first_warning"]
        for number, text in enumerate(reply["texts"], start=len(pages.texts) + 1):
            if limits.max_chars is not None and pages.n_chars + len(text) > limits.max_chars:
                raise _over_chars(name, limits, number, n_pages)
            pages.texts.append(text)
            pages.n_chars += len(text)
        pages.scanned += reply["scanned"]
        pages.unreadable += reply["unreadable"]
        pages.slow += reply["slow"]
        pages.first_failure = pages.first_failure or reply["first_failure"]
    return pages


_WORKER_ERRORS = {cls.__name__: cls for cls in IngestError.__subclasses__()}  # a worker's error by name


def _run_worker(request: dict, name: str) -> dict:
    """One worker process's reply to `request`; a worker that dies is a one-line CorruptDocumentError."""
    root = str(Path(__file__).resolve().parents[1])  # so that the child finds this package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "ingest.extract_worker"],
        input=json.dumps(request).encode(),
        capture_output=True,
        env=env,
        check=False,
    )
    try:
        reply = json.loads(result.stdout)
    except ValueError:
        reply = None
    if result.returncode != 0 or not isinstance(reply, dict):
        raise CorruptDocumentError(
            name, f"the PDF reader crashed on this file (exit code {result.returncode})"
        )
    return reply


def read_range(request: dict) -> dict:
    """What a worker does with one request (ingest/extract_worker.py): read pages first..last of the PDF
    at request["path"]; the reply holds the page texts and what went wrong, or one typed error."""
    name = request["name"]
    left = request["seconds_left"]
    deadline = time.monotonic() + left if left is not None else float("inf")
    limits = Limits(max_chars=request["max_chars"], max_seconds=request["max_seconds"])
    try:
        with _pdf_session(name) as seen:
            data = _read_bytes(Path(request["path"]), name)
            if hashlib.sha256(data).hexdigest() != request["sha256"]:
                raise CorruptDocumentError(name, "the file changed while it was being read")
            reader, _ = _open_pdf(data, name, request["password"])
            pages = _read_pages(
                reader, name, limits, deadline, request["first"], request["last"], request["n_pages"]
            )
    except IngestError as exc:
        return {"error": type(exc).__name__, "reason": exc.reason}
    return {
        "texts": pages.texts, "scanned": pages.scanned, "unreadable": pages.unreadable, "slow": pages.slow,
        "first_failure": pages.first_failure, "warnings": seen.count, "first_warning": seen.first,
    }  # fmt: skip


@dataclass
class _PdfPages:
    """Page texts as they are read, and which pages had no text layer or failed."""

    texts: list[str] = field(default_factory=list)
    scanned: list[int] = field(default_factory=list)
    unreadable: list[int] = field(default_factory=list)
    slow: list[int] = field(default_factory=list)
    first_failure: str = ""
    n_chars: int = 0

    def add(self, number: int, text: str) -> None:
        if not text.strip():
            self.scanned.append(number)
        self.texts.append(text)
        self.n_chars += len(text)

    def fail(self, number: int, reason: str, slow: bool = False) -> None:
        self.first_failure = self.first_failure or reason
        self.unreadable.append(number)
        if slow:
            self.slow.append(number)
        self.texts.append("")


def _check_time(name: str, deadline: float, limits: Limits, number: int, n_pages: int) -> None:
    if time.monotonic() > deadline:
        raise LimitExceededError(
            name, f"reading took over {limits.max_seconds:g} s (stopped at page {number} of {n_pages})"
        )


def _open_pdf(data: bytes, name: str, password: str | None) -> tuple[PdfReader, int]:
    """Parse the PDF, decrypt it if needed, and count its pages."""
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            _decrypt(reader, name, password)
        n_pages = len(reader.pages)
    except IngestError:
        raise
    except Exception as exc:
        raise CorruptDocumentError(name, f"cannot parse the PDF ({_describe(exc)})") from None
    if n_pages == 0:
        raise CorruptDocumentError(name, "the PDF has no pages")
    return reader, n_pages


def _decrypt(reader: PdfReader, name: str, password: str | None) -> None:
    """Decrypt in place; a PDF with only an owner password opens with the empty user password."""
    try:
        result = reader.decrypt(password if password is not None else "")
    except Exception as exc:
        raise EncryptedDocumentError(name, f"cannot decrypt the PDF ({_describe(exc)})") from None
    if result == PasswordType.NOT_DECRYPTED:
        reason = "the PDF is encrypted; a password is needed" if password is None else "wrong password"
        raise EncryptedDocumentError(name, reason)


class _PageStopped(BaseException):
    """Raised from pypdf's callbacks to stop reading a page. A BaseException, because pypdf catches and
    logs any Exception raised while it reads a form XObject, and goes on with the next one."""

    def __init__(self, over_chars: bool) -> None:
        super().__init__("character limit" if over_chars else "time budget")
        self.over_chars = over_chars


@dataclass
class _PageBudget:
    """What one page may cost: a deadline (checked before every content-stream operator, forms
    included) and the characters left under the document's limit."""

    deadline: float
    chars_left: int | None
    chars: int = 0

    def check_time(self, *_: object) -> None:
        if time.monotonic() > self.deadline:
            raise _PageStopped(over_chars=False)

    def count(self, text: str) -> None:
        self.chars += len(text)
        if self.chars_left is not None and self.chars > self.chars_left:
            raise _PageStopped(over_chars=True)


def _page_text(reader: PdfReader, index: int, budget: _PageBudget | None = None) -> str:
    """Plain-mode text of one page, with a blank line wherever the layout leaves a paragraph gap.

    Raises:
        _PageStopped: the page went over `budget` (a page that invokes a form XObject thousands of times
            can otherwise take minutes and produce gigabytes of text from a few kilobytes).
    """
    pieces: list[tuple[str, float | None]] = []

    def visit(text: str, cm: list[float], tm: list[float], font: object, size: float) -> None:
        if budget is not None:
            budget.count(text)
        # Text space to page space: the y of (tm @ cm)'s translation row.
        pieces.append((text, tm[4] * cm[1] + tm[5] * cm[3] + cm[5] if text.strip() else None))

    before = budget.check_time if budget is not None else None
    text = reader.pages[index].extract_text(visitor_text=visit, visitor_operand_before=before)
    if "".join(piece for piece, _ in pieces) != text:
        return text
    return text_with_paragraph_gaps(pieces)


def text_with_paragraph_gaps(pieces: Sequence[tuple[str, float | None]]) -> str:
    """Join text pieces in reading order, adding a blank line before a piece that sits noticeably
    farther from the previous line than the page's usual line pitch (pure).

    pypdf's plain mode puts every line on its own line but loses paragraph spacing; the layout gap is
    the only paragraph signal a PDF has, and chunking prefers to end at paragraphs.

    Args:
        pieces: (text, y) in reading order; y is None for whitespace-only pieces.

    Returns:
        The concatenated text with the extra "\\n" inserted at paragraph gaps.
    """
    ys = [y for _, y in pieces if y is not None]
    steps = [abs(a - b) for a, b in zip(ys, ys[1:], strict=False) if abs(a - b) > 0.5]
    if len(steps) < _MIN_LINES_FOR_PITCH:
        return "".join(piece for piece, _ in pieces)
    threshold = _PARAGRAPH_GAP * _line_pitch(steps)
    out: list[str] = []
    last_y: float | None = None
    for piece, y in pieces:
        if y is not None:
            if last_y is not None and abs(last_y - y) > threshold:
                out.append("\n" if out and out[-1].endswith("\n") else "\n\n")
            last_y = y
        out.append(piece)
    return "".join(out)


def _line_pitch(steps: Sequence[float]) -> float:
    """The usual distance between lines: a low quantile of the vertical steps, because on a page of
    dialogue most steps are paragraph gaps; steps under half the median (super/subscripts) are out."""
    half_median = statistics.median(steps) / 2
    line_steps = sorted(step for step in steps if step >= half_median)
    return line_steps[len(line_steps) // _PITCH_QUANTILE]


def _pdf_title(reader: PdfReader) -> str | None:
    """The non-empty /Title of the PDF's metadata, whitespace-normalised, or None."""
    try:
        metadata = reader.metadata
        title = metadata.title if metadata is not None else None
    except Exception:
        return None
    if not title:
        return None
    return " ".join(normalize_unicode(str(title)).split()) or None


def _describe(exc: BaseException) -> str:
    """A one-line description of an exception for an error reason."""
    message = " ".join(str(exc).split())[:_MAX_REASON_CHARS]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
