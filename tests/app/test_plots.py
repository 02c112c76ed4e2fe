"""app/plots.py: "where it looked" page aggregation and normalisation, and safe answer HTML."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from app import methods, plots
from app.types import Answer, Evidence

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Span:
    page_start: int
    page_end: int


def evidence(
    text: str,
    answer: tuple[int, int] | None = None,
    char_start: int = 0,
    pages: tuple = (1, 1),
    title: str = "Doc",
) -> Evidence:
    start, end = answer if answer else (None, None)
    return Evidence(
        doc_id="d1",
        title=title,
        chunk_index=0,
        text=text,
        page_start=pages[0],
        page_end=pages[1],
        char_start=char_start,
        char_end=char_start + len(text),
        score=0.5,
        answer_start=start,
        answer_end=end,
    )


def answer(method: str, text: str, ev: list[Evidence], abstained: bool = False) -> Answer:
    return Answer(
        method=method,
        answer=text,
        score=0.81234,
        abstained=abstained,
        latency_ms=42.4,
        evidence=ev,
        kind="span",
        message="",
    )


@pytest.mark.parametrize(
    ("scores", "expected"),
    [([1.0, 2.0, 3.0], [0.0, 0.5, 1.0]), ([-4.0, 0.0], [0.0, 1.0]), ([0.7], [1.0]), ([0.0, 0.0], [0.0, 0.0])],
    ids=["increasing", "negative", "single-chunk", "all-zero-bm25"],
)
def test_min_max(scores: list[float], expected: list[float]) -> None:
    np.testing.assert_allclose(plots.normalise(scores, "min-max"), expected)


def test_softmax_of_logits_is_relative_to_the_best_chunk() -> None:
    out = plots.normalise([0.0, math.log(2.0), math.log(4.0)], "softmax")
    np.testing.assert_allclose(out, [0.25, 0.5, 1.0])


def test_softmax_is_stable_for_large_logits() -> None:
    out = plots.normalise([1000.0, 999.0], "softmax")
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, [1.0, math.exp(-1.0)])


def test_softmax_keeps_scores_that_already_are_a_distribution() -> None:
    np.testing.assert_allclose(plots.normalise([0.2, 0.8], "softmax"), [0.25, 1.0])


def test_unknown_normalisation_and_empty_input() -> None:
    with pytest.raises(ValueError, match="unknown normalisation"):
        plots.normalise([1.0], "z-score")
    assert plots.normalise([], "min-max").size == 0


def test_page_max_takes_the_best_chunk_per_page_and_zero_for_uncovered_pages() -> None:
    spans = [Span(1, 1), Span(1, 2), Span(2, 2), Span(4, 4)]  # page 3: a scanned page, no chunk
    out = plots.page_max([0.2, 0.5, 0.9, 0.1], spans, n_pages=4)
    np.testing.assert_allclose(out, [0.5, 0.9, 0.0, 0.1])


def test_page_max_rejects_misaligned_scores() -> None:
    with pytest.raises(ValueError, match="3 scores for 2 chunks"):
        plots.page_max([0.1, 0.2, 0.3], [Span(1, 1), Span(2, 2)], n_pages=2)


def test_where_it_looked_shares_one_axis_and_names_the_normalisation() -> None:
    spans = [Span(1, 1), Span(2, 3), Span(3, 3)]
    table = plots.where_it_looked({"faiss": [0.1, 0.9, 0.3], "bsbr": [0.0, 5.0, 1.0]}, spans, n_pages=3)
    assert list(table.columns) == ["page", "score", "method"]
    assert list(table["method"].unique()) == ["BSBR (softmax)", "FAISS (min-max)"]  # BSBR first
    assert len(table) == 2 * 3
    assert table["score"].between(0, 1).all()
    for _, rows in table.groupby("method"):
        assert rows.set_index("page")["score"].idxmax() == 2  # the fact's chunk is on pages 2-3
        assert rows["score"].max() == pytest.approx(1.0)
    faiss = table[table["method"] == "FAISS (min-max)"]["score"].tolist()
    np.testing.assert_allclose(faiss, [0.0, 1.0, 1.0])


def test_where_it_looked_with_nothing() -> None:
    table = plots.where_it_looked({}, [], 0)
    assert table.empty and list(table.columns) == ["page", "score", "method"]


def test_highlight_escapes_document_text_and_marks_the_answer() -> None:
    text = "<b>Tom & Jerry</b> said: <script>alert(1)</script> the keeper is Amelia."
    start = text.index("Amelia")
    out = plots.highlight_html(evidence(text, (start, start + len("Amelia"))))
    assert "<script>" not in out and "<b>" not in out
    assert "&lt;script&gt;" in out and "Tom &amp; Jerry" in out
    assert out.count("<mark>") == 1 and "<mark>Amelia</mark>" in out


def test_highlight_escapes_inside_the_answer_span_too() -> None:
    text = "x <img src=x onerror=alert(1)> y"
    out = plots.highlight_html(evidence(text, (2, len(text) - 2)))
    assert "<img" not in out and "<mark>&lt;img src=x onerror=alert(1)&gt;</mark>" in out


@pytest.mark.parametrize("span", [None, (5, 5), (3, 999), (-1, 2)], ids=["none", "empty", "past-end", "neg"])
def test_highlight_without_a_valid_span_has_no_mark(span: tuple[int, int] | None) -> None:
    out = plots.highlight_html(evidence("a <tag> text", span))
    assert "<mark>" not in out and out == "a &lt;tag&gt; text"


def test_answer_page_is_where_the_answer_sits_within_a_multi_page_passage() -> None:
    page_starts = [0, 100, 200]
    ev = evidence("x" * 150, answer=(60, 70), char_start=50, pages=(1, 2))  # answer at document offset 110
    assert plots.answer_page(ev, page_starts) == 2
    assert plots.answer_page(evidence("x" * 10, answer=None), page_starts) is None


def test_answer_page_with_an_empty_scanned_page_before_it() -> None:
    page_starts = [0, 100, 100]  # page 2 has no text: page 3 starts where page 2 does
    ev = evidence("x" * 50, answer=(10, 20), char_start=90, pages=(1, 3))
    assert plots.answer_page(ev, page_starts) == 3


def test_page_citation() -> None:
    assert plots.page_citation(2, 2) == "page 2"
    assert plots.page_citation(2, 4) == "pages 2\u20134"


def test_answer_card_cites_the_answer_page_and_escapes_everything() -> None:
    text = "Intro. The keeper is <Amelia>."
    start = text.index("<Amelia>")
    ev = evidence(text, (start, start + 8), char_start=95, pages=(1, 2), title="A&B <title>")
    card = plots.answer_card_html(answer("faiss", "<Amelia>", [ev]), {"d1": [0, 100]})
    assert "FAISS" in card and "score 0.812" in card and "42 ms" in card
    assert '<span class="cite">page 2</span>' in card
    assert "passage on pages 1\u20132" in card
    assert "A&amp;B &lt;title&gt;" in card and "<title>" not in card
    assert "<Amelia>" not in card


def test_abstained_card_says_so() -> None:
    card = plots.answer_card_html(answer("bsbr", "", [], abstained=True), {})
    assert "does not seem to contain the answer" in card and "BSBR" in card


def test_answers_html_keeps_the_methods_in_order() -> None:
    ev = evidence("The keeper is Amelia.", (14, 20))
    out = plots.answers_html([answer("bsbr", "Amelia", [ev]), answer("faiss", "Amelia", [ev])], {})
    assert out.index("method-bsbr") < out.index("method-faiss")
    assert out.count('class="card ') == 2


def test_chat_summary_has_one_line_per_method_with_page() -> None:
    ev = evidence("The keeper is *Amelia* <b>.", (14, 22), pages=(2, 2))
    reply = plots.chat_summary([answer("faiss", "*Amelia* <b>", [ev]), answer("bm25", "", [], True)], {})
    first, second = reply.split("\n\n")
    assert first.startswith("**FAISS**") and "page 2" in first and "\\*Amelia\\*" in first
    assert "<b>" not in first
    assert second.startswith("**BM25**") and "no answer found" in second


def test_ordered_methods_puts_bsbr_first() -> None:
    assert methods.ordered(["bm25", "hybrid", "faiss", "bsbr", "other"]) == [
        "bsbr",
        "faiss",
        "hybrid",
        "bm25",
        "other",
    ]


def test_document_rows() -> None:
    @dataclass
    class Doc:
        title: str = "Book"
        n_pages: int = 3
        n_tokens: int = 417
        n_chunks: int = 2
        warnings: tuple = ("1 page has no text layer: 2",)

    assert plots.document_rows([Doc()]) == [["Book", 3, 417, 2, "1 page has no text layer: 2"]]


def test_importing_plots_does_not_pull_in_gradio() -> None:
    code = "import sys, app.plots; sys.exit(1 if 'gradio' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
