"""Plain data types shared by the ingestion pipeline, the store and the app."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ParsedDocument:
    """A whole document as one cleaned string plus where each page starts in it.

    Attributes:
        path: the file it came from.
        title: a human title (file stem, or the PDF's /Title when it has one).
        text: the cleaned text of all pages, pages joined with a blank line.
        page_starts: char offset in `text` where each page starts; len == n_pages, non-decreasing.
        n_pages: number of pages (1 for plain text files).
        scanned_pages: 1-based numbers of pages that had no text layer (counted, never silently dropped).
        warnings: human-readable one-line warnings (e.g. "3 pages have no text layer: 4, 9, 12").
    """

    path: str
    title: str
    text: str
    page_starts: list[int]
    n_pages: int
    scanned_pages: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def page_of(self, char_offset: int) -> int:
        """1-based page number holding `char_offset` (offsets past the end map to the last page)."""
        lo, hi = 0, len(self.page_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.page_starts[mid] <= char_offset:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1


@dataclass(frozen=True)
class Chunk:
    """A contiguous span of the document text that fits the model window.

    Attributes:
        index: position of the chunk in the document (0-based, in reading order).
        char_start, char_end: the chunk is exactly `document.text[char_start:char_end]`.
        page_start, page_end: 1-based first and last page the chunk touches.
        n_tokens: word-piece tokens of the chunk text, without special tokens.
        text: the chunk text.
    """

    index: int
    char_start: int
    char_end: int
    page_start: int
    page_end: int
    n_tokens: int
    text: str
