"""Evidence pages: matching the stored (cleaned) text to a PDF's text layer, boxes on the rendered page,
page labels, text documents in context, and the messages shown when something is missing.

PDFs are made with fpdf2; the oracle for "the box is on the right words" is PDFium's own text search,
independent of the matching under test.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
import pytest
from fpdf import FPDF

from app import evidence
from app.evidence import ANSWER, PASSAGE, Target
from app.types import Evidence
from ingest.chunk import chunk_document
from ingest.extract import extract
from ingest.store import DocumentStore

ANSWER_NAME = "Amelia Thornbury"
# Physical pages 1-2 are front matter labelled i, ii; page 3 is printed "1". Page 1 has no text at all
# (a drawn title plate), page 2 a title: the title-page case.
BOOK = [
    None,
    "THE BOOK OF TIDES\n\nA history of the coast",
    "Chapter one. The village of Brightwater lies on a rocky coast. Fishing boats leave the harbour "
    "at dawn and come back at dusk with mackerel and crab.",
    "Chapter two. The lighthouse of Brightwater is kept by a careful woman. The lighthouse keeper of "
    f"Brightwater is {ANSWER_NAME}. She climbs the tower every evening, writes in her well-known log-\n"
    "book and watches the head-\nland where the ships pass.",
    "Chapter three. In winter the storms are fierce and the school closes for a week in January.",
]
ANSWER_PAGE = 4  # physical, 1-based; printed "2"
MASTER = "Tobias Reed"


def _book_pdf(path: Path, pages: list[str | None]) -> Path:
    pdf = FPDF(format=(148, 210))
    pdf.set_auto_page_break(False)
    for n, text in enumerate(pages, 1):
        pdf.add_page()
        if n == 1:
            pdf.set_page_label("r")  # i, ii, ...
        elif n == 3:
            pdf.set_page_label("D", label_start=1)  # 1, 2, ... from the first chapter
        if text is None:
            pdf.rect(20, 30, 100, 40, style="F")
            continue
        pdf.set_font("Helvetica", size=11)
        for paragraph in text.split("\n\n"):
            pdf.multi_cell(0, 6, paragraph)
            pdf.ln(4)
    pdf.output(str(path))
    return path


@pytest.fixture(scope="module")
def book_pdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _book_pdf(tmp_path_factory.mktemp("book") / "tides.pdf", BOOK)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory, book_pdf: Path) -> tuple[DocumentStore, str]:
    """The book in a real store (extracted, cleaned and chunked as the app does), its PDF kept."""
    store = DocumentStore(tmp_path_factory.mktemp("home"))
    parsed = extract(book_pdf)
    store.add("book", parsed, chunk_document(parsed), {}, "local", {})
    assert evidence.keep_source(store, "book", book_pdf)
    yield store, "book"
    store.close()


def answer_evidence(store: DocumentStore, doc_id: str, answer: str = ANSWER_NAME) -> Evidence:
    """The evidence DocQA would return: the chunk holding `answer`, the answer's span and page in it."""
    text, starts = store.text(doc_id)
    at = text.index(answer)
    chunk = next(c for c in store.chunks(doc_id) if c.char_start <= at < c.char_end)
    return Evidence(
        doc_id=doc_id,
        title="tides",
        chunk_index=chunk.index,
        text=chunk.text,
        page_start=chunk.page_start,
        page_end=chunk.page_end,
        char_start=chunk.char_start,
        char_end=chunk.char_end,
        score=1.0,
        answer_start=at - chunk.char_start,
        answer_end=at - chunk.char_start + len(answer),
        answer_page=evidence.page_of(starts, at),
    )


def pdfium_word_boxes(path: Path, page: int, word: str, dpi: int = evidence.DPI) -> list[evidence.Box]:
    """Pixel boxes of every char of `word`'s first occurrence, found by PDFium's own search."""
    pdf = pdfium.PdfDocument(str(path))
    try:
        handle = pdf[page - 1]
        bitmap = handle.render(scale=dpi / 72)
        conv, textpage = bitmap.get_posconv(handle), handle.get_textpage()
        start, count = textpage.search(word, match_case=True).get_next()
        boxes = []
        for i in range(start, start + count):
            left, bottom, right, top = textpage.get_charbox(i)
            (ax, ay), (bx, by) = conv.to_bitmap(left, bottom), conv.to_bitmap(right, top)
            boxes.append((min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)))
        return boxes
    finally:
        pdf.close()


def covers(outer: evidence.Box, inner: evidence.Box, slack: int = 1) -> bool:
    return (
        outer[0] <= inner[0] + slack
        and outer[1] <= inner[1] + slack
        and outer[2] >= inner[2] - slack
        and outer[3] >= inner[3] - slack
    )


def test_skeleton_ignores_spacing_hyphenation_case_and_ligatures() -> None:
    cleaned = evidence.skeleton("The example, well-known: ﬁne Café")[0]
    layer = evidence.skeleton("the exam\ufffeple,\r\nwell-\r\nknown:  fine CAFÉ")[0]
    assert cleaned == layer == "theexamplewellknownfinecafé"
    text = "a-b  c"
    sk, where = evidence.skeleton(text)
    assert sk == "abc" and [text[i] for i in where] == ["a", "b", "c"]


def test_match_maps_the_answer_inside_the_passage_not_an_earlier_mention() -> None:
    page = "Amelia Thornbury is named twice.\r\nThe keeper is Amelia\r\nThorn-\r\nbury, they say."
    passage = "The keeper is Amelia Thornbury, they say."
    at = passage.index("Amelia")
    match = evidence.match_on_page(page, passage, (at, at + len(ANSWER_NAME)))
    assert match.whole
    [(a, z)] = match.passage
    assert page[a:z] == "The keeper is Amelia\r\nThorn-\r\nbury, they say."  # the final "." included
    assert page[slice(*match.answer)] == "Amelia\r\nThorn-\r\nbury"
    assert match.answer[0] > page.index("twice")


def test_match_in_runs_when_the_layer_differs_in_the_middle() -> None:
    """A word the text layer spells differently (a glyph mapped otherwise): the rest is still boxed."""
    passage = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixt"
    page = passage.replace("nine", "n1ne")
    match = evidence.match_on_page(page, passage)
    assert not match.whole and match.passage
    found = "".join(page[a:z] for a, z in match.passage)
    assert "one two three four five six" in found and "thirteen fourteen fifteen sixt" in found
    assert "n1ne" not in found


def test_match_not_found_gives_no_ranges() -> None:
    match = evidence.match_on_page("Something else entirely.", "The keeper is Amelia.", (14, 20))
    assert match == evidence.Match([], None, whole=False)
    assert evidence.match_on_page("", "", None) == evidence.Match([], None, whole=False)


def test_line_boxes_merge_a_line_and_break_where_text_wraps_back() -> None:
    boxes = [(10, 0, 20, 10), None, (22, 1, 30, 10), (40, 0, 50, 11), (10, 15, 20, 25), (21, 15, 28, 25)]
    assert evidence.line_boxes(boxes) == [(10, 0, 50, 11), (10, 15, 28, 25)]
    assert evidence.line_boxes([None, None]) == []


def test_box_masks_one_per_label_answer_on_top() -> None:
    masks = evidence.box_masks([((0, 0, 10, 4), PASSAGE), ((2, 0, 5, 4), ANSWER)], (6, 12))
    assert [label for _, label in masks] == [PASSAGE, ANSWER]
    passage, answer = masks[0][0], masks[1][0]
    assert passage.shape == (6, 12) and 0 < passage[1, 5] < 1 and passage[5, 5] == 0 and passage[0, 0] == 1
    assert answer[2, 3] > passage[2, 3] and answer[2, 8] == 0


def test_the_app_cites_physical_pages_after_a_title_page(stored) -> None:
    """Issue 21: a title page must not shift citations. Page numbers are the PDF's physical ones (the
    first page of the file is page 1, even without text); the printed label comes beside it."""
    store, doc_id = stored
    text, starts = store.text(doc_id)
    assert len(starts) == len(BOOK) and store.info(doc_id).scanned_pages == [1]
    assert evidence.page_of(starts, text.index("THE BOOK OF TIDES")) == 2
    assert evidence.page_of(starts, text.index(ANSWER_NAME)) == ANSWER_PAGE
    assert answer_evidence(store, doc_id).answer_page == ANSWER_PAGE
    rendered = evidence.render_page(evidence.source_pdf(store, doc_id), ANSWER_PAGE)
    assert rendered.label == "2" and rendered.n_pages == len(BOOK)
    assert "lighthouse keeper" in rendered.text


def test_answer_box_lands_on_the_answer_words(stored, book_pdf: Path) -> None:
    store, doc_id = stored
    view = evidence.show(store, Target.of(answer_evidence(store, doc_id)))
    assert view.page == ANSWER_PAGE and view.message == ""
    assert view.caption.startswith("p. 4 (printed 2) of 5")
    answer_boxes = [b for b, label in view.boxes if label == ANSWER]
    passage_boxes = [b for b, label in view.boxes if label == PASSAGE]
    assert len(answer_boxes) == 1 and passage_boxes
    for char in pdfium_word_boxes(book_pdf, ANSWER_PAGE, ANSWER_NAME):
        assert covers(answer_boxes[0], char)
        assert any(covers(p, char) for p in passage_boxes)
    for char in pdfium_word_boxes(book_pdf, ANSWER_PAGE, "careful"):  # in the passage, not the answer
        assert not covers(answer_boxes[0], char, slack=0)
        assert any(covers(p, char) for p in passage_boxes)
    assert view.image.size == (math.ceil(148 / 25.4 * evidence.DPI), math.ceil(210 / 25.4 * evidence.DPI))
    image, masks = view.annotated()
    assert image is view.image and [label for _, label in masks] == [PASSAGE, ANSWER]


def test_hyphenated_line_breaks_are_boxed(stored, book_pdf: Path) -> None:
    """The store joined "head-\\nland" into "headland"; the box still covers both halves on the page."""
    store, doc_id = stored
    target = Target.of(answer_evidence(store, doc_id, answer="headland"))
    view = evidence.show(store, target)
    answer_boxes = [b for b, label in view.boxes if label == ANSWER]
    assert len(answer_boxes) == 2 and view.message == ""  # one per line
    for half in ("head", "land"):
        chars = pdfium_word_boxes(book_pdf, ANSWER_PAGE, half)
        assert all(any(covers(b, c) for b in answer_boxes) for c in chars)


def test_turning_pages_keeps_the_boxes_on_the_passage_page(stored) -> None:
    store, doc_id = stored
    target = Target.of(answer_evidence(store, doc_id))
    before = evidence.show(store, target.turn(-1))
    assert before.page == ANSWER_PAGE - 1 and before.image is not None
    assert before.caption.startswith("p. 3 (printed 1) of 5")
    assert not before.boxes or all(label == PASSAGE for _, label in before.boxes)
    first = evidence.show(store, target.turn(-10))  # clamped to the first page
    assert first.page == 1 and first.caption.startswith("p. 1 (printed i) of 5")
    last = evidence.show(store, target.turn(+10))
    assert last.page == 5 and not any(label == ANSWER for _, label in last.boxes)
    assert Target.from_state(target.to_state()) == target


def test_passage_not_in_the_text_layer_shows_the_page_without_boxes(stored) -> None:
    store, doc_id = stored
    rendered = evidence.render_page(evidence.source_pdf(store, doc_id), ANSWER_PAGE)
    boxes, note = evidence.highlight(rendered, "Words that this page never prints anywhere at all.", (0, 5))
    assert boxes == [] and "not found" in note
    passage = "The lighthouse keeper of Brightwater is Amelia Thornbury."
    boxes, note = evidence.highlight(rendered, passage, (passage.index("Brightwater"), len(passage) - 1))
    assert [label for _, label in boxes] == [PASSAGE, ANSWER] and note == ""
    boxes, note = evidence.highlight(rendered, passage + " Zebra", (len(passage) + 1, len(passage) + 6))
    assert [label for _, label in boxes] == [PASSAGE] and "only the passage" in note


def test_pdf_without_a_kept_file_and_a_broken_file_give_one_line_messages(tmp_path: Path, book_pdf) -> None:
    store = DocumentStore(tmp_path / "home")
    parsed = extract(book_pdf)
    store.add("nofile", parsed, chunk_document(parsed), {}, "local", {})
    target = Target.of(answer_evidence(store, "nofile"))
    view = evidence.show(store, target)
    assert view.image is None and "not kept" in view.message and "\n" not in view.message
    assert not view.can_turn and view.annotated() is None
    store.put_artifact("nofile", evidence.SOURCE_FILE, lambda p: p.write_bytes(b"%PDF-1.4 broken"))
    view = evidence.show(store, target)
    assert view.image is None and view.message.startswith("The page could not be shown (")
    assert "\n" not in view.message
    store.close()


def test_keep_source_copies_a_pdf_once_and_no_text_file(tmp_path: Path, book_pdf: Path) -> None:
    store = DocumentStore(tmp_path / "home")
    parsed = extract(book_pdf)
    store.add("b", parsed, chunk_document(parsed), {}, "local", {})
    assert evidence.keep_source(store, "b", book_pdf)
    kept = evidence.source_pdf(store, "b")
    assert kept.read_bytes() == book_pdf.read_bytes()
    mtime = kept.stat().st_mtime_ns
    assert evidence.keep_source(store, "b", book_pdf) and kept.stat().st_mtime_ns == mtime
    notes = tmp_path / "notes.md"
    notes.write_text("# Notes\n\nSome text.", encoding="utf-8")
    assert not evidence.keep_source(store, "b", notes)
    store.delete("b")
    assert evidence.source_pdf(store, "b") is None
    store.close()


def test_text_document_shows_the_passage_in_context_with_the_answer_marked(tmp_path: Path) -> None:
    notes = tmp_path / "harbour_notes.md"
    filler = "The tide tables are pinned by the door. " * 20
    notes.write_text(
        f"# Harbour <notes>\n\n{filler}\n\nThe harbour master of Brightwater is {MASTER} & son.\n\n{filler}",
        encoding="utf-8",
    )
    store = DocumentStore(tmp_path / "home")
    parsed = extract(notes)
    store.add("md", parsed, chunk_document(parsed), {}, "local", {})
    text, _ = store.text("md")
    at = text.index(MASTER)
    end = at + len(f"{MASTER} & son.")
    target = Target("md", 1, (text.index("The harbour master"), end), (at, at + len(MASTER)))
    view = evidence.show(store, target)
    assert view.image is None and not view.can_turn and view.message == ""
    assert "<mark>Tobias Reed</mark> &amp; son.</span>" in view.html
    assert '<span class="ctx-passage">The harbour master of Brightwater is <mark>' in view.html
    assert view.html.count("…") == 2 and "<notes>" not in view.html  # cut both sides, escaped
    whole = evidence.context_html("Head <b>. Mid. Tail", Target("t", 1, (8, 12), None), context=100)
    passage = '<span class="ctx-passage">. Mi</span>'
    assert whole == f'<div class="passage-context">Head &lt;b&gt;{passage}d. Tail</div>'
    store.close()


def test_cached_render_is_reused_and_quick(stored) -> None:
    store, doc_id = stored
    path = evidence.source_pdf(store, doc_id)
    first = evidence.render_page(path, 2)
    assert evidence.render_page(path, 2) is first
    assert np.asarray(first.image).mean() > 200  # a mostly white page, rendered


def test_docqa_answers_cite_the_physical_page_and_the_view_adds_the_printed_one(tmp_path, book_pdf) -> None:
    """The whole path, as the web page runs it: every method's top evidence is on physical page 4."""
    from app import DocQA

    qa = DocQA(home=tmp_path / "home", device="cpu")
    doc_id = qa.add(book_pdf)
    evidence.keep_source(qa.store, doc_id, book_pdf)
    for answer in qa.ask("Who is the lighthouse keeper of Brightwater?", methods=qa.methods, top_k=1):
        [top] = answer.evidence
        assert top.answer_page == ANSWER_PAGE, answer.method
        view = evidence.show(qa.store, Target.of(top, show_answer=not answer.abstained))
        assert view.caption.startswith("p. 4 (printed 2) of 5") and view.boxes, answer.method
    qa.store.close()
