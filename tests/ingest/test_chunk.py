"""chunk_document(): invariants (property tests) for every strategy, boundary preferences, token windows,
edge cases, the sample book."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.chunk import CHUNK_TOKENS, STRATEGIES, chunk_document
from ingest.clean import join_pages
from ingest.extract import extract
from ingest.types import Chunk, ParsedDocument

SAMPLE_PDF = Path(__file__).resolve().parents[2] / "assets" / "pride_and_prejudice.pdf"
LONG_WORD = "pneumonoultramicroscopicsilicovolcanoconiosis"

PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def make_doc(pages: list[str]) -> ParsedDocument:
    text, starts = join_pages(pages)
    return ParsedDocument(path="mem.txt", title="mem", text=text, page_starts=starts, n_pages=len(pages))


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def assert_chunk_invariants(
    doc: ParsedDocument, chunks: list[Chunk], tokenizer, max_tokens: int, overlap: int
):
    """Everything a consumer of chunks relies on."""
    assert bool(chunks) == bool(doc.text.strip())
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.text and c.text == c.text.strip()
        assert doc.text[c.char_start : c.char_end] == c.text
        assert (c.page_start, c.page_end) == (doc.page_of(c.char_start), doc.page_of(c.char_end - 1))
        assert c.n_tokens == n_tokens(tokenizer, c.text) <= max_tokens - 2
        assert len(tokenizer(c.text)["input_ids"]) <= max_tokens  # with [CLS] and [SEP]: fits the model
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        assert prev.char_start < nxt.char_start and prev.char_end < nxt.char_end
        if overlap == 0:
            assert prev.char_end <= nxt.char_start
    # Every non-space char is in a chunk: what lies between, before and after chunks is whitespace.
    bounds = [0] + [x for c in chunks for x in (c.char_start, c.char_end)] + [len(doc.text)]
    for gap_start, gap_end in zip(bounds[::2], bounds[1::2], strict=True):
        assert doc.text[gap_start:gap_end].strip() == "" or gap_start >= gap_end
    if overlap == 0:
        assert "".join(re.sub(r"\s", "", c.text) for c in chunks) == re.sub(r"\s", "", doc.text)


# Property tests

_WORDS = [
    "the", "Bennet", "naïve", "café", "Zürich", "東京", "日本語", "😀", "don't", "e-mail", "3.14",
    "Mr.", "(see", "it)", "«quoted»", "ﬁne", "Straße", "İstanbul", "x\u200by", "ǅ", "\u0301a",
]  # fmt: skip
_word = st.one_of(
    st.sampled_from(_WORDS),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=15, max_size=130),  # long words, some > 100
    st.text(alphabet=st.characters(exclude_categories=["Cs", "Zs", "Cc"]), min_size=1, max_size=8),
)
_sentence = st.builds(
    lambda words, end: " ".join(words) + end,
    st.lists(_word, min_size=1, max_size=25),
    st.sampled_from([".", "!", "?", "。", "", '."', ":"]),
)
_paragraph = st.lists(_sentence, min_size=1, max_size=6).map(" ".join)
_page = st.one_of(
    st.lists(_paragraph, min_size=0, max_size=5).map("\n\n".join),
    st.text(max_size=300),  # anything at all: controls, odd whitespace, surrogate-free Unicode
    st.lists(_word, min_size=1, max_size=40).map("".join),  # no spaces
    st.lists(_word, min_size=1, max_size=40).map("-".join),  # no spaces, but punctuation
    st.text(alphabet="東京は日本の首都です。、！？「」", max_size=300),  # CJK
    st.lists(st.sampled_from(["\n", "\n\n", " \n ", "word", "end.", "Mr.", "\t"]), max_size=120).map("".join),
)
_pages = st.lists(_page, min_size=1, max_size=4)
_max_tokens = st.one_of(st.integers(8, 32), st.integers(8, 256))


@PROPERTY_SETTINGS
@pytest.mark.parametrize("strategy", ["content-aware", "fixed"])
@given(pages=_pages, max_tokens=_max_tokens)
def test_chunks_partition_the_text_and_fit_the_model(tokenizer, strategy, pages, max_tokens) -> None:
    doc = make_doc(pages)
    chunks = chunk_document(doc, tokenizer, max_tokens=max_tokens, strategy=strategy)
    assert_chunk_invariants(doc, chunks, tokenizer, max_tokens, overlap=0)


@PROPERTY_SETTINGS
@given(pages=_pages, max_tokens=_max_tokens, data=st.data())
def test_overlapping_chunks_keep_the_invariants(tokenizer, pages, max_tokens, data) -> None:
    overlap = data.draw(st.integers(1, max_tokens - 3), label="overlap")
    doc = make_doc(pages)
    chunks = chunk_document(doc, tokenizer, max_tokens, overlap_tokens=overlap, strategy="overlapping")
    assert_chunk_invariants(doc, chunks, tokenizer, max_tokens, overlap=overlap)


# Edge cases


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("text", ["", "   \n\n\t  "], ids=["empty", "whitespace"])
def test_empty_text_gives_no_chunks(tokenizer, text, strategy) -> None:
    overlap = 4 if strategy == "overlapping" else 0
    assert chunk_document(make_doc([text]), tokenizer, overlap_tokens=overlap, strategy=strategy) == []


@pytest.mark.parametrize("strategy", ["content-aware", "fixed"])
def test_text_of_dropped_chars_only_is_one_chunk_of_no_tokens(tokenizer, strategy) -> None:
    doc = make_doc(["\u200b\u200b \u200b"])
    (chunk,) = chunk_document(doc, tokenizer, strategy=strategy)
    assert (chunk.text, chunk.n_tokens) == (doc.text, 0)


def test_one_short_page_is_one_chunk(tokenizer) -> None:
    doc = make_doc(["  Hello world.  "])
    (chunk,) = chunk_document(doc, tokenizer)
    assert (chunk.text, chunk.char_start, chunk.char_end) == ("Hello world.", 2, 14)
    assert (chunk.page_start, chunk.page_end, chunk.n_tokens) == (1, 1, 3)


def test_a_char_the_tokenizer_drops_is_in_one_chunk_only(tokenizer) -> None:
    # langchain keeps a piece that measures 0 as overlap: "\u200b" began the second chunk too.
    doc = make_doc(["aahbdaaaaabdjbjx\u200bythe"])
    chunks = chunk_document(doc, tokenizer, max_tokens=15)
    assert_chunk_invariants(doc, chunks, tokenizer, 15, overlap=0)
    assert "".join(c.text for c in chunks) == doc.text


@pytest.mark.parametrize("max_tokens", [8, 64, 256])
def test_text_of_exactly_the_budget_is_one_chunk_and_one_more_token_is_two(tokenizer, max_tokens) -> None:
    budget = max_tokens - 2
    exact = " ".join(["apple"] * budget)
    assert n_tokens(tokenizer, exact) == budget
    (chunk,) = chunk_document(make_doc([exact]), tokenizer, max_tokens=max_tokens)
    assert chunk.n_tokens == budget
    over = exact + " apple"
    chunks = chunk_document(make_doc([over]), tokenizer, max_tokens=max_tokens)
    assert [c.n_tokens for c in chunks] == [budget, 1]


@pytest.mark.parametrize("strategy", ["content-aware", "fixed"])
@pytest.mark.parametrize("max_tokens", [3, 8, 10])
def test_a_word_longer_than_the_window_is_split(tokenizer, max_tokens, strategy) -> None:
    assert n_tokens(tokenizer, LONG_WORD) > max_tokens
    doc = make_doc([LONG_WORD])
    chunks = chunk_document(doc, tokenizer, max_tokens=max_tokens, strategy=strategy)
    assert len(chunks) > 1
    assert "".join(c.text for c in chunks) == LONG_WORD
    assert_chunk_invariants(doc, chunks, tokenizer, max_tokens, overlap=0)


def test_text_without_spaces_is_split(tokenizer) -> None:
    doc = make_doc(["-".join(f"part{i}" for i in range(200))])
    chunks = chunk_document(doc, tokenizer, max_tokens=16)
    assert len(chunks) > 10
    assert_chunk_invariants(doc, chunks, tokenizer, 16, overlap=0)


@pytest.mark.parametrize(
    "text",
    [
        "Ça a été très naïve, déjà vu à Zürich. " * 30,
        "東京は日本の首都です。大阪は大きな都市です。" * 20,
        "Emoji 😀 and 🎉 everywhere 👍🏽! " * 40,
        "Mixed Ελληνικά, русский, العربية and हिन्दी text. " * 25,
    ],
    ids=["accents", "cjk", "emoji", "scripts"],
)
def test_unicode_text(tokenizer, text) -> None:
    doc = make_doc([text, text])
    chunks = chunk_document(doc, tokenizer, max_tokens=32)
    assert len(chunks) > 2
    assert_chunk_invariants(doc, chunks, tokenizer, 32, overlap=0)
    assert chunks[-1].page_end == 2


def test_cjk_chunks_end_at_sentence_marks(tokenizer) -> None:
    doc = make_doc(["東京は日本の首都です。大阪は大きな都市です。" * 20])
    chunks = chunk_document(doc, tokenizer, max_tokens=32)
    assert all(c.text.endswith("。") for c in chunks)


# Boundary preferences


def test_chunks_end_at_paragraph_ends_when_they_can(tokenizer) -> None:
    paragraphs = [f"Paragraph {i} has a few words. It ends with a second sentence here." for i in range(40)]
    doc = make_doc(["\n\n".join(paragraphs)])
    chunks = chunk_document(doc, tokenizer, max_tokens=64)
    assert len(chunks) > 5
    for c in chunks[:-1]:
        assert doc.text[c.char_end : c.char_end + 2] == "\n\n"


def test_chunks_end_at_sentence_ends_inside_a_long_paragraph(tokenizer) -> None:
    sentences = [f"Sentence number {i} is short, but Mr. Darcy is in it." for i in range(80)]
    doc = make_doc([" ".join(sentences)])
    chunks = chunk_document(doc, tokenizer, max_tokens=48)
    assert len(chunks) > 5
    assert all(c.text.endswith("it.") for c in chunks)


def test_a_page_break_inside_a_sentence_is_not_a_paragraph_end(tokenizer) -> None:
    first = "Alpha beta gamma delta epsilon zeta eta theta iota. Then it runs on over the"
    doc = make_doc([first, "page and ends here. More words follow in another sentence."])
    chunks = chunk_document(doc, tokenizer, max_tokens=20)
    assert n_tokens(tokenizer, first) < 18 < n_tokens(tokenizer, first + " page and ends here.")
    assert chunks[0].text == "Alpha beta gamma delta epsilon zeta eta theta iota."


# Token windows


def test_fixed_windows_hold_the_budget_and_ignore_sentences(tokenizer) -> None:
    doc = make_doc([" ".join(f"Fact {i} is short." for i in range(200))])
    chunks = chunk_document(doc, tokenizer, max_tokens=64, strategy="fixed")
    assert_chunk_invariants(doc, chunks, tokenizer, 64, overlap=0)
    assert all(c.n_tokens == 62 for c in chunks[:-1])
    assert not all(c.text.endswith(".") for c in chunks[:-1])
    assert [c.n_tokens for c in chunk_document(doc, tokenizer, max_tokens=64)] != [c.n_tokens for c in chunks]


def test_overlapping_windows_repeat_that_many_tokens(tokenizer) -> None:
    doc = make_doc([" ".join(f"Fact {i} is short." for i in range(200))])
    chunks = chunk_document(doc, tokenizer, max_tokens=64, overlap_tokens=16, strategy="overlapping")
    assert_chunk_invariants(doc, chunks, tokenizer, 64, overlap=16)
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        shared = doc.text[nxt.char_start : prev.char_end]
        assert n_tokens(tokenizer, shared) == 16
        assert n_tokens(tokenizer, doc.text[prev.char_start : nxt.char_start]) == 62 - 16


def test_a_window_that_cuts_a_word_is_cut_again_to_fit(tokenizer) -> None:
    # Whole-text word-pieces of LONG_WORD ("##ult", ...) re-tokenise into other, often more, pieces
    # alone; every window still fits once re-tokenised, and the windows still cover the word.
    doc = make_doc([" ".join([LONG_WORD] * 20)])
    for strategy, overlap in (("fixed", 0), ("overlapping", 3)):
        chunks = chunk_document(doc, tokenizer, max_tokens=9, overlap_tokens=overlap, strategy=strategy)
        assert_chunk_invariants(doc, chunks, tokenizer, 9, overlap=overlap)


def test_page_spans_follow_the_pages(tokenizer) -> None:
    # Each page ends inside a sentence that the next page finishes, so chunks run across page breaks.
    pages = [" ".join(f"Page {p} sentence {i}." for i in range(30)) + " It goes on" for p in range(1, 6)]
    doc = make_doc(pages)
    chunks = chunk_document(doc, tokenizer, max_tokens=40)
    for c in chunks:
        assert f"Page {c.page_start} " in c.text and f"Page {c.page_end} " in c.text
    assert chunks[0].page_start == 1 and chunks[-1].page_end == 5
    assert any(c.page_start < c.page_end for c in chunks)


def test_default_tokenizer_is_minilm(tokenizer) -> None:
    doc = make_doc(["Some words. " * 100])
    assert chunk_document(doc, max_tokens=32) == chunk_document(doc, tokenizer, max_tokens=32)


@pytest.mark.parametrize(
    ("strategy", "max_tokens", "overlap"),
    [
        ("content-aware", 2, 0),
        ("fixed", 0, 0),
        ("overlapping", 16, 14),
        ("overlapping", 16, 0),
        ("overlapping", 16, -1),
        ("content-aware", 16, 4),
        ("fixed", 16, 4),
        ("sentences", 16, 0),
    ],
)
def test_bad_parameters_are_refused(tokenizer, strategy, max_tokens, overlap) -> None:
    with pytest.raises(ValueError):
        chunk_document(make_doc(["text"]), tokenizer, max_tokens, overlap_tokens=overlap, strategy=strategy)


def test_the_default_is_content_aware_with_the_app_window(tokenizer) -> None:
    doc = make_doc(["\n\n".join(" ".join(f"Line {p}.{i} is here." for i in range(40)) for p in range(6))])
    chunks = chunk_document(doc, tokenizer)
    assert chunks == chunk_document(doc, tokenizer, CHUNK_TOKENS, 0, "content-aware") and CHUNK_TOKENS == 256
    assert 200 < max(c.n_tokens for c in chunks) <= 254
    assert all(c.text.endswith("here.") for c in chunks)


# The sample book


@pytest.fixture(scope="module")
def sample_book():
    if not SAMPLE_PDF.exists():
        pytest.skip("assets/pride_and_prejudice.pdf is missing (run python -m scripts.make_sample_pdf)")
    return extract(SAMPLE_PDF)


def _page_holding(path: Path, phrase: str) -> int:
    """1-based page whose raw pypdf text contains the phrase (whitespace-normalised)."""
    from pypdf import PdfReader

    for number, page in enumerate(PdfReader(path).pages, start=1):
        if phrase in " ".join(page.extract_text().split()):
            return number
    raise AssertionError(f"{phrase!r} is on no page")


def test_sample_book_chunks(sample_book, tokenizer) -> None:
    doc = sample_book
    assert doc.n_pages > 300 and doc.title == "Pride and Prejudice" and doc.scanned_pages == []
    chunks = chunk_document(doc, tokenizer)
    assert_chunk_invariants(doc, chunks, tokenizer, 256, overlap=0)
    assert 700 <= len(chunks) <= 850  # 810 with langchain's recursive split; 724 with the old splitter
    running_header = re.compile(r"Pride and Prejudice\s*\d+|\d+\s*Pride and Prejudice")
    assert not any(running_header.search(c.text) for c in chunks)
    assert "Pride and Prejudice" not in doc.text  # only in the running header; the title page is upper case
    for phrase in ("Netherfield Park is let at last", "had been the means of uniting them"):
        (chunk,) = [c for c in chunks if phrase in c.text]
        page = _page_holding(SAMPLE_PDF, phrase)
        assert doc.page_of(doc.text.index(phrase)) == page
        assert chunk.page_start <= page <= chunk.page_end
    netherfield = next(c for c in chunks if "Netherfield Park is let at last" in c.text)
    assert netherfield.page_start == netherfield.page_end == 1
    sentence_ends = sum(1 for c in chunks if c.text[-1] in '.!?"')
    assert sentence_ends >= 0.95 * len(chunks)
