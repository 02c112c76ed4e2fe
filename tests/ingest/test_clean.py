"""Text clean-up: Unicode, hyphenation, whitespace, running headers/footers, page joining."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.clean import (
    clean_pages,
    hyphenated_compounds,
    join_hyphenated_words,
    join_pages,
    normalize_unicode,
    normalize_whitespace,
    remove_running_headers,
)

_BODIES = [
    "Alice walked to the market.\nShe bought apples and pears.",
    "The river rose in the night.\nBy morning the bridge was gone.",
    "Letters came from London.\nNone of them brought good news.",
    "A storm broke over the hills.\nThe sheep huddled by the wall.",
    "Dinner was served at six.\nNobody spoke of the wedding.",
    "The carriage was late again.\nHer mother blamed the horses.",
    "Snow covered the garden.\nThe children built a fort.",
    "He read the will twice.\nThe estate went to a cousin.",
]
ACCENT = "\u0301"


def _body(n: int) -> str:
    return _BODIES[n - 1]


# normalize_unicode


def test_normalize_unicode_composes_to_nfc() -> None:
    assert normalize_unicode("cafe\u0301") == "caf\u00e9"


def test_normalize_unicode_drops_nul_bom_and_controls_but_keeps_layout_whitespace() -> None:
    assert normalize_unicode("\ufeffa\x00b\x07c\td\fe") == "abc\td\fe"


@pytest.mark.parametrize("raw", ["a\r\nb", "a\rb", "a\u2028b", "a\x85b"], ids=["crlf", "cr", "u2028", "nel"])
def test_normalize_unicode_unifies_line_breaks(raw: str) -> None:
    assert normalize_unicode(raw) == "a\nb"


# join_hyphenated_words


def test_word_hyphenated_at_line_break_is_joined() -> None:
    assert join_hyphenated_words("an exam-\nple of it") == "an example of it"


def test_hyphen_with_spaces_around_the_line_break_is_joined() -> None:
    assert join_hyphenated_words("exam-  \n  ple") == "example"


def test_real_compound_inside_a_line_is_kept() -> None:
    text = "a well-known, twenty-five year-old story"
    assert join_hyphenated_words(text) == text


def test_known_compound_split_at_line_break_keeps_its_hyphen() -> None:
    text = "a well-known man\nand a well-\nknown woman"
    compounds = hyphenated_compounds([text])
    assert "well-known" in compounds
    assert join_hyphenated_words(text, compounds) == "a well-known man\nand a well-known woman"


def test_capitalised_second_part_keeps_the_hyphen() -> None:
    assert join_hyphenated_words("Anglo-\nSaxon") == "Anglo-Saxon"


def test_hyphen_before_a_paragraph_break_is_not_joined() -> None:
    assert join_hyphenated_words("ends with a dash-\n\nnew paragraph") == "ends with a dash-\n\nnew paragraph"


def test_soft_hyphens_are_joined_and_dropped() -> None:
    assert join_hyphenated_words("exam\u00ad\nple and in\u00advisible") == "example and invisible"


def test_unicode_words_are_joined() -> None:
    assert join_hyphenated_words("na\u00efve\u00e9-\nt\u00e9") == "na\u00efve\u00e9t\u00e9"


# normalize_whitespace


def test_whitespace_runs_collapse_and_lines_fold_into_paragraphs() -> None:
    raw = "  First  line\twith   tabs\nand its continuation.\n\n\n  Second   paragraph. \n"
    assert normalize_whitespace(raw) == "First line with tabs and its continuation.\n\nSecond paragraph."


def test_blank_lines_with_spaces_still_separate_paragraphs() -> None:
    assert normalize_whitespace("one\n \t \ntwo") == "one\n\ntwo"


def test_whitespace_only_becomes_empty() -> None:
    assert normalize_whitespace(" \n\t\n \f ") == ""


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab\u00e9\u6771 \t\n\f.")), max_size=200))
def test_normalize_whitespace_keeps_every_visible_char_in_order(raw: str) -> None:
    out = normalize_whitespace(raw)
    assert [ch for ch in out if not ch.isspace()] == [ch for ch in raw if not ch.isspace()]
    assert out == out.strip()
    assert "  " not in out and "\t" not in out and "\n\n\n" not in out
    assert all(part and "\n" not in part for part in out.split("\n\n")) or out == ""
    assert normalize_whitespace(out) == out


# remove_running_headers


def test_header_and_numbered_footer_are_removed() -> None:
    pages = [f"Pride and Prejudice\n{_body(n)}\n{n}" for n in range(1, 6)]
    cleaned = remove_running_headers(pages)
    for n, page in enumerate(cleaned, start=1):
        assert "Pride and Prejudice" not in page
        assert page.strip() == _body(n)


@pytest.mark.parametrize(
    "header", ["Page {n}", "{n}", "Pride and Prejudice {n}", "- {n} -", "Chapter 3 | page {n} of 10"]
)
def test_numbered_headers_match_with_digits_as_wildcards(header: str) -> None:
    pages = [f"{header.format(n=n)}\n{_body(n)}" for n in range(1, 8)]
    assert [page.strip() for page in remove_running_headers(pages)] == [_body(n) for n in range(1, 8)]


def test_two_line_header_goes_in_two_passes() -> None:
    pages = [f"Annual Report\nSection {n}\n{_body(n)}" for n in range(1, 5)]
    assert [page.strip() for page in remove_running_headers(pages)] == [_body(n) for n in range(1, 5)]


def test_header_on_half_the_pages_is_removed_but_rarer_lines_stay() -> None:
    pages = [("Odd header\n" if n % 2 else "") + _body(n) for n in range(1, 7)]
    pages[5] = "A one-off first line\n" + _body(6)
    cleaned = remove_running_headers(pages)
    assert not any("Odd header" in page for page in cleaned)
    assert cleaned[5].startswith("A one-off first line")


def test_line_on_fewer_than_half_the_pages_stays() -> None:
    pages = [("Rare line\n" if n < 2 else "") + _body(n) for n in range(1, 7)]
    assert remove_running_headers(pages) == pages


def test_documents_with_fewer_than_three_text_pages_are_untouched() -> None:
    pages = ["Header\nbody one\n1", "", "Header\nbody two\n2"]
    assert remove_running_headers(pages) == pages


def test_empty_pages_keep_their_place_and_do_not_count() -> None:
    pages = ["", "Title\nbody a\n1", "Title\nbody b\n2", "", "Title\nbody c\n3"]
    cleaned = remove_running_headers(pages)
    assert [page.strip() for page in cleaned] == ["", "body a", "body b", "", "body c"]


# clean_pages and join_pages


def test_clean_pages_runs_every_step() -> None:
    words = {1: "Bright", 2: "Quiet", 3: "Final"}
    pages = [
        f"My Book\n{w} exam-\nple  of\tpage {n}.\n\nNew para{ACCENT if n == 1 else ''}.\n{n}"
        for n, w in words.items()
    ]
    assert clean_pages(pages) == [
        "Bright example of page 1.\n\nNew par\u00e1.",
        "Quiet example of page 2.\n\nNew para.",
        "Final example of page 3.\n\nNew para.",
    ]


def test_join_pages_offsets_point_at_each_page() -> None:
    pages = ["first page", "", "third page"]
    text, starts = join_pages(pages)
    assert text == "first page\n\n\n\nthird page"
    assert starts == [0, 12, 14]
    assert [text[start : start + len(page)] for start, page in zip(starts, pages, strict=True)] == pages


def test_join_pages_of_nothing() -> None:
    assert join_pages([]) == ("", [])
