"""Fixtures for ingestion tests: PDFs generated with fpdf2 at test time (no binary blobs in the repo)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from fpdf import FPDF
from pypdf import PdfReader, PdfWriter

from ingest.tokenizer import load_tokenizer

PAGE_SIZE_MM = (148, 210)
LINE_MM = 5.0
PARAGRAPH_GAP_MM = 4.0

MakePdf = Callable[..., Path]


class _TestPDF(FPDF):
    """A5 pages with an optional running header and page-number footer."""

    def __init__(self, header_text: str | None, footer_numbers: bool) -> None:
        super().__init__(orientation="P", unit="mm", format=PAGE_SIZE_MM)
        self.header_text = header_text
        self.footer_numbers = footer_numbers

    def header(self) -> None:
        if self.header_text:
            self.set_font("Helvetica", "I", 9)
            self.cell(0, 6, self.header_text, align="C")
            self.ln(10)

    def footer(self) -> None:
        if self.footer_numbers:
            self.set_y(-12)
            self.set_font("Helvetica", size=9)
            self.cell(0, 6, str(self.page_no()), align="C")


def pdf_bytes(
    pages: Sequence[str | None],
    header: str | None = None,
    footer_numbers: bool = False,
    title: str | None = None,
) -> bytes:
    """A PDF with one page per item: a str is laid out as text ("\\n\\n" separates paragraphs, "\\n"
    breaks a line), None is a "scanned" page (a filled rectangle and no text layer)."""
    pdf = _TestPDF(header, footer_numbers)
    pdf.set_auto_page_break(False)
    if title is not None:
        pdf.set_title(title)
    for page in pages:
        pdf.add_page()
        if page is None:
            pdf.rect(20, 30, 100, 140, style="F")
            continue
        pdf.set_font("Helvetica", size=11)
        for paragraph in page.split("\n\n"):
            pdf.multi_cell(0, LINE_MM, paragraph)
            pdf.ln(PARAGRAPH_GAP_MM)
    return bytes(pdf.output())


def encrypt_pdf(data: bytes, password: str, algorithm: str = "AES-256") -> bytes:
    """The same PDF encrypted with pypdf (user password = password)."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=password, owner_password=password + "-owner", algorithm=algorithm)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.fixture
def make_pdf(tmp_path: Path) -> MakePdf:
    """Factory: make_pdf(pages, header=None, footer_numbers=False, encrypt_password=None, title=None,
    name="doc.pdf", encrypt_algorithm="AES-256") writes a generated PDF under tmp_path and returns its
    path. encrypt_password="" gives a PDF that only an owner password restricts."""

    def make(
        pages: Sequence[str | None],
        header: str | None = None,
        footer_numbers: bool = False,
        encrypt_password: str | None = None,
        title: str | None = None,
        name: str = "doc.pdf",
        encrypt_algorithm: str = "AES-256",
    ) -> Path:
        data = pdf_bytes(pages, header=header, footer_numbers=footer_numbers, title=title)
        if encrypt_password is not None:
            data = encrypt_pdf(data, encrypt_password, encrypt_algorithm)
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return make


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, bytes], Path]:
    """Factory: write_file(name, data) writes raw bytes under tmp_path and returns the path."""

    def write(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return write


@pytest.fixture(scope="session")
def tokenizer():
    """The real MiniLM fast tokenizer (offline, loaded once)."""
    return load_tokenizer()
