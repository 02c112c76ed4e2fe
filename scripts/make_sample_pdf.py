"""Build the sample book PDF, assets/pride_and_prejudice.pdf, from the plain-text novel.

Source: ../shared/data/books/pride_and_prejudice.txt (Project Gutenberg's text of Jane Austen's
"Pride and Prejudice", public domain), relative to the repository root; another file may be given.

The PDF looks like a small book (A5, Times, a running header "Pride and Prejudice" and the page
number in the footer of every page, each chapter from a new page), so that ingestion meets what real
books have: headers and footers to drop and page numbers to keep. The bytes are deterministic (fixed
creation date, no random ids), so re-running gives the same file.

    python -m scripts.make_sample_pdf [SOURCE] [--out assets/pride_and_prejudice.pdf]
"""

from __future__ import annotations

import argparse
import datetime
import re
import unicodedata
from pathlib import Path

from fpdf import FPDF

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO_ROOT / ".." / "shared" / "data" / "books" / "pride_and_prejudice.txt"
DEFAULT_OUT = REPO_ROOT / "assets" / "pride_and_prejudice.pdf"

TITLE = "Pride and Prejudice"
AUTHOR = "Jane Austen"
# Fixed so that the output is byte-for-byte reproducible.
CREATION_DATE = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)

PAGE_SIZE_MM = (148, 210)  # A5
MARGIN_MM = 18
BODY_FONT_PT = 11
LINE_MM = 5.2
# Half a line between paragraphs: the vertical gap is the paragraph signal a PDF reader gets.
PARAGRAPH_GAP_MM = 2.6

# Core PDF fonts only encode Latin-1; typographic punctuation gets its plain equivalent.
_TRANSLITERATION = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2013": "-",
        "\u2014": "--",
        "\u2026": "...",
        "\u00a0": " ",
    }
)
_CHAPTER = re.compile(r"^Chapter \d+$")
# Gutenberg marks italics as _word_; a core font in one style cannot show them, so the marks go.
_ITALIC_MARKS = re.compile(r"_([^_]+)_")


def to_core_font(text: str) -> str:
    """Text that a core (Latin-1) font can draw: punctuation transliterated, accents stripped from
    letters outside Latin-1, anything else replaced with '?'."""
    out = []
    for ch in text.translate(_TRANSLITERATION):
        if ord(ch) < 256:
            out.append(ch)
            continue
        base = unicodedata.normalize("NFKD", ch).encode("latin-1", "ignore").decode("latin-1")
        out.append(base or "?")
    return "".join(out)


def parse_book(text: str) -> list[tuple[str, str]]:
    """Blocks of the book in order: ("title", line), ("chapter", heading) or ("paragraph", text).

    Paragraphs are separated by blank lines in the source; their line breaks become spaces. The
    blocks before the first chapter heading are the title page.
    """
    blocks: list[tuple[str, str]] = []
    seen_chapter = False
    for raw in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        block = " ".join(raw.split())
        if not block:
            continue
        if _CHAPTER.match(block):
            seen_chapter = True
            blocks.append(("chapter", block))
        else:
            kind = "paragraph" if seen_chapter else "title"
            blocks.append((kind, to_core_font(_ITALIC_MARKS.sub(r"\1", block))))
    return blocks


class BookPDF(FPDF):
    """A5 pages with the running header (the book's title) and a page-number footer."""

    def __init__(self, title: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.book_title = title

    def header(self) -> None:
        self.set_font("Times", "I", 9)
        self.cell(0, 6, self.book_title, align="C")
        self.ln(10)

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("Times", size=9)
        self.cell(0, 6, str(self.page_no()), align="C")


def build_pdf(blocks: list[tuple[str, str]], title: str = TITLE) -> bytes:
    """Lay the blocks out as a book titled `title` (header and PDF metadata); return the PDF bytes."""
    pdf = BookPDF(title, orientation="P", unit="mm", format=PAGE_SIZE_MM)
    pdf.set_margins(MARGIN_MM, MARGIN_MM, MARGIN_MM)
    pdf.set_auto_page_break(True, margin=MARGIN_MM)
    pdf.set_title(title)
    pdf.set_author(AUTHOR)
    pdf.set_creation_date(CREATION_DATE)
    pdf.add_page()
    first_chapter, first_title = True, True
    for kind, text in blocks:
        if kind == "title":
            pdf.set_font("Times", "B" if first_title else "", 16 if first_title else 12)
            pdf.multi_cell(0, 9, text, align="C")
            pdf.ln(4)
            first_title = False
        elif kind == "chapter":
            if not first_chapter:
                pdf.add_page()
            first_chapter = False
            pdf.set_font("Times", "B", 13)
            pdf.ln(4)
            pdf.multi_cell(0, 8, text, align="C")
            pdf.ln(4)
        else:
            pdf.set_font("Times", size=BODY_FONT_PT)
            pdf.multi_cell(0, LINE_MM, text, align="J")
            pdf.ln(PARAGRAPH_GAP_MM)
    return bytes(pdf.output())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE, help="the novel as text")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the PDF")
    args = parser.parse_args(argv)
    data = build_pdf(parse_book(args.source.read_text(encoding="utf-8")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
