"""Pure text clean-up for extracted pages: Unicode, hyphenation, whitespace, running headers/footers.

The order matters and `clean_pages` applies it: normalise Unicode and line endings first (so every
later step sees "\\n" only), drop running headers/footers while the page's lines still exist, join
words hyphenated across line breaks, and only then fold lines into paragraphs.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable

PAGE_SEPARATOR = "\n\n"

# Line and paragraph separators other than "\n" become "\n" so that line-based steps see them.
_LINE_BREAKS = str.maketrans({"\r": "\n", "\x0b": "\n", "\x85": "\n", "\u2028": "\n", "\u2029": "\n\n"})
# Control characters carry no text; tab, newline and form feed are whitespace and kept for later steps.
# U+FFFD, what a PDF with a broken font map often yields, carries none either (the tokenizer drops it).
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\ufeff\ufffd]")
_LETTERS = r"[^\W\d_]+"
# A word before a hyphen starts where a run of letters starts and takes the whole run (possessive): without
# both, every position inside a long run of letters is retried and the search is quadratic (a 40 kB word
# took 27 s; a 50 MB line of one "word" would never end).
_WORD_BEFORE_HYPHEN = r"(?<![^\W\d_])([^\W\d_]++)"
_LINE_BREAK_HYPHEN = re.compile(rf"{_WORD_BEFORE_HYPHEN}[-\u00ad][^\S\n]*\n[^\S\n]*({_LETTERS})")
_COMPOUND = re.compile(rf"{_WORD_BEFORE_HYPHEN}-(?=({_LETTERS}))")
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")
# Runs of whitespace become one space. A lone space already is one, and matching each would cost a
# match object per word (1 GB of them for a 50 MB line).
_SPACES = re.compile(r"\s{2,}|[^\S ]")
_DIGITS = re.compile(r"\d+")

# A line is a running header/footer when it opens (or closes) at least this share of the pages with text.
_HEADER_SHARE = 0.5
_HEADER_MIN_PAGES = 3
# Two passes catch two-line headers such as a title line above a page-number line.
_HEADER_PASSES = 2


def normalize_unicode(text: str) -> str:
    """NFC-normalise, unify line endings to "\\n" and drop control characters (NUL, BOM, U+FFFD, ...).

    Args:
        text: raw text of one page or file.

    Returns:
        The text with only "\\n", "\\t" and "\\f" left among control characters.
    """
    text = text.replace("\r\n", "\n").translate(_LINE_BREAKS)
    return unicodedata.normalize("NFC", _CONTROL.sub("", text))


def hyphenated_compounds(texts: Iterable[str]) -> frozenset[str]:
    """Lower-cased "left-right" word pairs written with a hyphen inside a line anywhere in `texts`.

    A word split at a line break is joined unless the document also writes it as a compound
    elsewhere ("well-\\nknown" stays "well-known" when "well-known" occurs on some line).
    """
    pairs: set[str] = set()
    for text in texts:
        pairs.update(f"{m.group(1)}-{m.group(2)}".lower() for m in _COMPOUND.finditer(text))
    return frozenset(pairs)


def join_hyphenated_words(text: str, compounds: frozenset[str] = frozenset()) -> str:
    """Join words hyphenated across a line break: "exam-\\nple" -> "example".

    The hyphen is kept (and only the line break removed) when the pair is a known compound or the
    second part starts with a capital ("Anglo-\\nSaxon" -> "Anglo-Saxon"). Hyphens that are not at a
    line break are never touched. Soft hyphens (U+00AD) are invisible and always dropped.

    Args:
        text: page text with "\\n" line breaks.
        compounds: lower-cased "left-right" pairs known to be real compounds (see hyphenated_compounds).

    Returns:
        The text with line-break hyphenation undone.
    """

    def join(match: re.Match[str]) -> str:
        left, right = match.group(1), match.group(2)
        keep_hyphen = f"{left}-{right}".lower() in compounds or right[0].isupper()
        return f"{left}-{right}" if keep_hyphen else left + right

    return _LINE_BREAK_HYPHEN.sub(join, text).replace("\u00ad", "")


def normalize_whitespace(text: str) -> str:
    """Fold lines into paragraphs: blank lines separate paragraphs ("\\n\\n"), other line breaks and runs
    of spaces/tabs become one space, and the result is stripped.
    """
    paragraphs = (_SPACES.sub(" ", part).strip() for part in _PARAGRAPH_BREAK.split(text))
    return "\n\n".join(p for p in paragraphs if p)


def _edge_index(lines: list[str], first: bool) -> int | None:
    """Index of the first (or last) non-blank line, or None for a page without text."""
    order = range(len(lines)) if first else range(len(lines) - 1, -1, -1)
    return next((i for i in order if lines[i].strip()), None)


def _header_key(line: str) -> str:
    """What must repeat for a line to count as a running header: digits are wildcards, case and
    spacing are ignored, so "Page 12" and "page  13" match."""
    return _DIGITS.sub("#", " ".join(line.split()).lower())


def _drop_repeated_edge(pages: list[list[str]], first: bool, min_pages: int) -> bool:
    """Blank the first (or last) line of every page where that line repeats on >= min_pages pages."""
    edges = {p: _edge_index(lines, first) for p, lines in enumerate(pages)}
    keys = {p: _header_key(pages[p][i]) for p, i in edges.items() if i is not None}
    counts = Counter(keys.values())
    dropped = False
    for p, key in keys.items():
        if counts[key] >= min_pages:
            pages[p][edges[p]] = ""
            dropped = True
    return dropped


def remove_running_headers(pages: list[str]) -> list[str]:
    """Drop first/last lines that repeat on most pages (running headers, footers, page numbers).

    A first (or last) non-blank line is dropped when the same line, with digits as wildcards, opens
    (or closes) at least half of the pages that have text, and at least 3 of them. So "Page 12",
    "12" or "Pride and Prejudice 12" go, while a document of one or two pages is never touched.

    Args:
        pages: page texts with "\\n" line breaks, in page order ("" for a page without text).

    Returns:
        The pages, same length and order, without those lines.
    """
    n_with_text = sum(1 for page in pages if page.strip())
    if n_with_text < _HEADER_MIN_PAGES:
        return list(pages)
    min_pages = max(_HEADER_MIN_PAGES, math.ceil(_HEADER_SHARE * n_with_text))
    lines = [page.split("\n") for page in pages]
    for _ in range(_HEADER_PASSES):
        dropped_header = _drop_repeated_edge(lines, first=True, min_pages=min_pages)
        dropped_footer = _drop_repeated_edge(lines, first=False, min_pages=min_pages)
        if not (dropped_header or dropped_footer):
            break
    return ["\n".join(page_lines) for page_lines in lines]


def clean_pages(raw_pages: list[str]) -> list[str]:
    """The whole clean-up, page by page: Unicode, running headers/footers, hyphenation, whitespace.

    Args:
        raw_pages: extracted page texts in page order ("" for pages without text).

    Returns:
        Cleaned page texts, same length: paragraphs separated by "\\n\\n", no leading/trailing space.
    """
    pages = remove_running_headers([normalize_unicode(page) for page in raw_pages])
    compounds = hyphenated_compounds(pages)
    return [normalize_whitespace(join_hyphenated_words(page, compounds)) for page in pages]


def join_pages(pages: list[str]) -> tuple[str, list[int]]:
    """Join cleaned pages into the document text with a blank line between pages.

    Returns:
        (text, page_starts): page_starts[i] is the offset of page i in text; an empty page still gets
        an entry, so len(page_starts) == len(pages).
    """
    starts: list[int] = []
    offset = 0
    for page in pages:
        starts.append(offset)
        offset += len(page) + len(PAGE_SEPARATOR)
    return PAGE_SEPARATOR.join(pages), starts
