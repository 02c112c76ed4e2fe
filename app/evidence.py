"""Evidence in the page: the cited PDF page as an image with the passage and the answer boxed on it, or,
for a text document, the passage in its context with the answer marked.

The matching is pure: the store keeps the cleaned text (whitespace folded, line-break hyphens joined,
running headers dropped), which is not the PDF's own text layer, so passages are found on the page by
their letters and digits alone (`skeleton`), and the matched characters' boxes are merged into one box
per line (`line_boxes`). Rendering reads a copy of the PDF that the web page keeps beside the document's
arrays (`keep_source`), one page at a time, cached. No gradio here: app/ui.py shows what `show` returns.

Page numbers are physical, 1-based (page 1 is the PDF's first page, as a viewer's page box counts); a
PDF's printed page label (/PageLabels, e.g. "xii" or "1" after a title page) is shown beside it.
"""

from __future__ import annotations

import bisect
import functools
import html
import logging
import shutil
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image

from app.types import Evidence
from ingest.clean import PAGE_SEPARATOR
from ingest.store import DocumentStore

SOURCE_FILE = "source.pdf"  # the kept copy of an uploaded PDF, in the document's array folder
DPI = 120
MAX_SIDE_PX = 2000  # a poster-sized page is rendered smaller than DPI would make it
CACHED_PAGES = 16  # rendered pages kept in memory (~4 MB each for A4 at 120 dpi)
CONTEXT_CHARS = 400  # text shown before and after a text document's passage
ANSWER, PASSAGE = "answer", "passage"
COLORS = {ANSWER: "#f59e0b", PASSAGE: "#6366f1"}
# Mask opacity of each label's boxes (the page stays readable through them); the answer draws on top.
_OPACITY = {PASSAGE: 0.22, ANSWER: 0.5}
# A passage not found whole is matched in runs of this many words; runs with fewer letters and digits
# than _MIN_PIECE are skipped, as they could match anywhere.
_WINDOW_WORDS = 6
_MIN_PIECE = 12
_MAX_OCCURRENCES = 200
_MAX_MESSAGE_CHARS = 160
# PDFium is not thread-safe: every call into it, rendering and text alike, holds this lock.
_PDFIUM_LOCK = threading.Lock()

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in image pixels, y pointing down
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """What to show: one page of a document and the spans to mark (offsets into the document's text).

    Attributes:
        page: 1-based physical page.
        passage: (start, end) of the evidence passage in the document text.
        answer: (start, end) of the answer in the document text, or None (abstained, or no span).
    """

    doc_id: str
    page: int
    passage: tuple[int, int]
    answer: tuple[int, int] | None = None

    @classmethod
    def of(cls, evidence: Evidence, show_answer: bool = True) -> Target:
        """The evidence's page (the answer's, when there is one to show) and its spans."""
        answer = None
        if show_answer and evidence.answer_start is not None and evidence.answer_end is not None:
            answer = (evidence.char_start + evidence.answer_start, evidence.char_start + evidence.answer_end)
        page = evidence.answer_page if answer is not None and evidence.answer_page else evidence.page_start
        return cls(evidence.doc_id, page, (evidence.char_start, evidence.char_end), answer)

    def to_state(self) -> dict:
        return {"doc_id": self.doc_id, "page": self.page, "passage": self.passage, "answer": self.answer}

    @classmethod
    def from_state(cls, state: dict) -> Target:
        answer = state.get("answer")
        passage = tuple(state["passage"])
        return cls(state["doc_id"], int(state["page"]), passage, tuple(answer) if answer else None)

    def turn(self, delta: int) -> Target:
        return Target(self.doc_id, self.page + delta, self.passage, self.answer)


@dataclass
class EvidenceView:
    """What the page shows for one target.

    Attributes:
        page, n_pages: the page shown (clamped to the document) and the document's page count.
        caption: one line, e.g. "p. 3 (printed 1) of 5 · passage on pp. 3–4".
        image: the rendered page (PDFs), else None.
        boxes: (box, ANSWER or PASSAGE) on `image`.
        html: a text document's passage in context (safe HTML), else "".
        message: one line when something is missing (no page image, a passage not found on the page).
    """

    page: int
    n_pages: int
    caption: str
    image: Image.Image | None = None
    boxes: list[tuple[Box, str]] = field(default_factory=list)
    html: str = ""
    message: str = ""

    @property
    def can_turn(self) -> bool:
        """Whether previous/next page make sense here (a PDF page image is shown)."""
        return self.image is not None

    def annotated(self) -> tuple[Image.Image, list[tuple[np.ndarray, str]]] | None:
        """The value for gr.AnnotatedImage: the page and one mask per label (passage under answer)."""
        if self.image is None:
            return None
        return self.image, box_masks(self.boxes, (self.image.height, self.image.width))


# Matching the stored text to the page's own text layer (pure).


def skeleton(text: str) -> tuple[str, list[int]]:
    """The letters and digits of `text`, NFKC-normalised and case-folded, and for each the index of the
    character of `text` it comes from.

    Whitespace, punctuation, hyphens and PDFium's line-end hyphen marker (U+FFFE) fall out, so that a
    cleaned text ("example", "Thornbury. Some") and a text layer ("exam\\ufffeple", "Thornbury.\\r\\nSome")
    compare equal; NFKC turns ligatures ("ﬁ") into their letters.
    """
    chars: list[str] = []
    where: list[int] = []
    for i, ch in enumerate(text):
        if not ch.isalnum():
            continue
        folded = ch.lower() if ch.isascii() else unicodedata.normalize("NFKC", ch).casefold()
        for c in folded:
            if c.isalnum():
                chars.append(c)
                where.append(i)
    return "".join(chars), where


@dataclass(frozen=True)
class Match:
    """Where a passage and its answer sit in a page's text (char ranges of that text, end exclusive).

    Attributes:
        passage: ranges of the passage: one when found whole, several when only runs of it were found,
            none when it was not found.
        answer: the answer's range, or None when there was no answer or it was not found.
        whole: the passage was found whole.
    """

    passage: list[tuple[int, int]]
    answer: tuple[int, int] | None
    whole: bool


def match_on_page(page_text: str, passage: str, answer: tuple[int, int] | None = None) -> Match:
    """Find `passage` (cleaned text) and its answer span in `page_text` (the page's text layer).

    Args:
        page_text: the page's text, one character per PDFium char index.
        passage: the part of the passage on this page, as the store has it.
        answer: (start, end) of the answer inside `passage`, or None.

    Returns:
        The Match. When the passage is found whole, the answer is where it sits inside it; otherwise the
        answer's occurrence nearest to the matched runs of the passage (the first, if none matched).
    """
    page_sk, page_at = skeleton(page_text)
    passage_sk = skeleton(passage)[0]
    at = page_sk.find(passage_sk) if passage_sk else -1
    ranges = [(at, at + len(passage_sk))] if at >= 0 else _match_runs(page_sk, passage)
    answer_sk = None
    needle = skeleton(passage[answer[0] : answer[1]])[0] if answer else ""
    if needle and at >= 0:
        start = at + len(skeleton(passage[: answer[0]])[0])
        answer_sk = (start, start + len(needle))
    elif needle:
        answer_sk = _nearest(page_sk, needle, ranges[0][0] if ranges else 0)

    def chars(r: tuple[int, int]) -> tuple[int, int]:
        return page_at[r[0]], page_at[r[1] - 1] + 1

    found = [chars(r) for r in ranges]
    if at >= 0:  # the passage's own punctuation at its ends ('"But', 'go.') is on the page too
        found = [_widen(page_text, found[0], _edge_marks(passage))]
    if answer_sk and answer:
        answer_chars = _widen(page_text, chars(answer_sk), _edge_marks(passage[answer[0] : answer[1]]))
    else:
        answer_chars = None
    return Match(found, answer_chars, whole=at >= 0)


def _edge_marks(text: str) -> tuple[int, int]:
    """How many characters `text` has before its first and after its last letter or digit."""
    stripped = text.strip()
    first = next((i for i, c in enumerate(stripped) if c.isalnum()), len(stripped))
    last = next((i for i, c in enumerate(reversed(stripped)) if c.isalnum()), len(stripped))
    return first, last


def _widen(text: str, span: tuple[int, int], marks: tuple[int, int]) -> tuple[int, int]:
    """`span` grown by up to marks[0] / marks[1] characters that are neither space nor alphanumeric."""
    start, end = span
    for _ in range(marks[0]):
        if start == 0 or text[start - 1].isspace() or text[start - 1].isalnum():
            break
        start -= 1
    for _ in range(marks[1]):
        if end == len(text) or text[end].isspace() or text[end].isalnum():
            break
        end += 1
    return start, end


def _match_runs(page_sk: str, passage: str) -> list[tuple[int, int]]:
    """Skeleton ranges of the runs of `_WINDOW_WORDS` words of `passage` found on the page, in order
    (each searched after the previous match first), touching ranges merged."""
    words = passage.split()
    ranges: list[tuple[int, int]] = []
    cursor = 0
    for i in range(0, len(words), _WINDOW_WORDS):
        piece = skeleton(" ".join(words[i : i + _WINDOW_WORDS]))[0]
        if len(piece) < _MIN_PIECE:
            continue
        at = page_sk.find(piece, cursor)
        if at < 0:
            at = page_sk.find(piece)
        if at < 0:
            continue
        if ranges and ranges[-1][1] == at:
            ranges[-1] = (ranges[-1][0], at + len(piece))
        else:
            ranges.append((at, at + len(piece)))
        cursor = at + len(piece)
    return ranges


def _nearest(haystack: str, needle: str, near: int) -> tuple[int, int] | None:
    best = None
    at = haystack.find(needle)
    for _ in range(_MAX_OCCURRENCES):
        if at < 0:
            break
        if best is None or abs(at - near) < abs(best - near):
            best = at
        at = haystack.find(needle, at + 1)
    return (best, best + len(needle)) if best is not None else None


def line_boxes(char_boxes: Sequence[Box | None]) -> list[Box]:
    """Merge character boxes, in reading order, into one box per run of a line.

    A box joins the current run when its vertical centre lies within the run and it does not start left
    of the run's end by more than a line height (text that wraps back to the left starts a new run).

    Args:
        char_boxes: pixel boxes (x1, y1, x2, y2; y down) of consecutive characters; None for characters
            without a box (spaces, line breaks), which are skipped.
    """
    runs: list[Box] = []
    for box in char_boxes:
        if box is None:
            continue
        if runs:
            x1, y1, x2, y2 = runs[-1]
            centre = (box[1] + box[3]) / 2
            if y1 <= centre <= y2 and box[0] >= x2 - (y2 - y1):
                runs[-1] = (min(x1, box[0]), min(y1, box[1]), max(x2, box[2]), max(y2, box[3]))
                continue
        runs.append(box)
    return runs


def box_masks(boxes: Sequence[tuple[Box, str]], shape: tuple[int, int]) -> list[tuple[np.ndarray, str]]:
    """One mask per label (passage first, so the answer draws on top), each box filled with the label's
    opacity and outlined at full opacity. Masks rather than one annotation per box: Gradio stores one
    full-page PNG per annotation."""
    masks = []
    for label in (PASSAGE, ANSWER):
        mine = [b for b, name in boxes if name == label]
        if not mine:
            continue
        mask = np.zeros(shape, dtype=np.float32)
        for x1, y1, x2, y2 in mine:
            mask[y1:y2, x1:x2] = 1.0
            mask[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1] = _OPACITY[label]
        masks.append((mask, label))
    return masks


# The document text around a passage (pure).


def page_range(text_len: int, page_starts: Sequence[int], page: int) -> tuple[int, int]:
    """(start, end) of 1-based `page` in the document text (the separator between pages left out)."""
    start = page_starts[page - 1]
    end = page_starts[page] - len(PAGE_SEPARATOR) if page < len(page_starts) else text_len
    return start, max(start, end)


def page_of(page_starts: Sequence[int], offset: int) -> int:
    """1-based page holding document offset `offset`."""
    return max(1, bisect.bisect_right(page_starts, offset))


def on_page(
    text: str, page_starts: Sequence[int], page: int, target: Target
) -> tuple[str, tuple[int, int] | None]:
    """The part of the target's passage on `page`, and the answer's span inside that part (None when the
    answer is not on this page). ("", None) when the passage does not touch the page."""
    lo, hi = page_range(len(text), page_starts, page)
    start, end = max(target.passage[0], lo), min(target.passage[1], hi)
    if start >= end:
        return "", None
    answer = None
    if target.answer is not None:
        a, b = max(target.answer[0], start), min(target.answer[1], end)
        answer = (a - start, b - start) if a < b else None
    return text[start:end], answer


def context_html(text: str, target: Target, context: int = CONTEXT_CHARS) -> str:
    """A text document's passage with `context` characters either side (cut at whitespace), all
    escaped; the passage in <span class="ctx-passage">, the answer in <mark>."""
    p0, p1 = target.passage
    lo = _cut(text, max(0, p0 - context), forward=True) if p0 > context else 0
    hi = _cut(text, min(len(text), p1 + context), forward=False) if p1 + context < len(text) else len(text)
    a0, a1 = target.answer if target.answer is not None else (p0, p0)
    a0, a1 = min(max(a0, p0), p1), min(max(a1, p0), p1)
    parts = [
        "…" if lo > 0 else "",
        html.escape(text[lo:p0]),
        '<span class="ctx-passage">',
        html.escape(text[p0:a0]),
        f"<mark>{html.escape(text[a0:a1])}</mark>" if a1 > a0 else "",
        html.escape(text[a1:p1]),
        "</span>",
        html.escape(text[p1:hi]),
        "…" if hi < len(text) else "",
    ]
    return f'<div class="passage-context">{"".join(parts)}</div>'


def _cut(text: str, at: int, forward: bool) -> int:
    """The nearest whitespace at or after (forward) / before `at`, within 40 characters; else `at`."""
    window = text[at : at + 40] if forward else text[max(0, at - 40) : at]
    spaces = [i for i, c in enumerate(window) if c.isspace()]
    if not spaces:
        return at
    return at + spaces[0] + 1 if forward else max(0, at - 40) + spaces[-1]


def caption(page: int, n_pages: int, label: str = "", passage_pages: tuple[int, int] | None = None) -> str:
    """ "p. 3 (printed 1) of 5", plus where the passage is when it is not only on this page."""
    printed = f" (printed {label})" if label and label != str(page) else ""
    line = f"p. {page}{printed} of {n_pages}"
    if passage_pages is not None and passage_pages != (page, page):
        first, last = passage_pages
        line += f" · passage on p. {first}" if first == last else f" · passage on pp. {first}\u2013{last}"
    return line


# The kept PDF and its pages (I/O).


def keep_source(store: DocumentStore, doc_id: str, path: str | Path) -> bool:
    """Keep a copy of a stored document's PDF beside its arrays, for page images (once: the id is the
    file's content hash). Text files are not copied: their text is in the store.

    Returns:
        Whether a copy is kept now.
    """
    path = Path(path)
    if path.suffix.lower() != ".pdf":
        return False
    if not store.artifact_path(doc_id, SOURCE_FILE).exists():
        store.put_artifact(doc_id, SOURCE_FILE, lambda dest: shutil.copyfile(path, dest))
    return True


def source_pdf(store: DocumentStore, doc_id: str) -> Path | None:
    """The kept PDF of a document, or None (a text document, or one not added through the web page)."""
    path = store.artifact_path(doc_id, SOURCE_FILE)
    return path if path.is_file() else None


@dataclass(frozen=True)
class RenderedPage:
    """One rendered page and its text layer.

    Attributes:
        text: the page's characters, one per PDFium char index.
        char_boxes: per character its pixel box on `image` (None for whitespace and boxless characters).
        label: the page's printed label ("" when the PDF has none).
    """

    image: Image.Image
    text: str
    char_boxes: tuple[Box | None, ...]
    n_pages: int
    label: str


def render_page(path: str | Path, page: int, dpi: int = DPI) -> RenderedPage:
    """Render 1-based `page` of the PDF at `path` (cached per file version, page and dpi).

    Raises:
        IndexError: no such page. pypdfium2.PdfiumError: PDFium cannot open or render it.
    """
    stat = Path(path).stat()
    return _render(str(path), stat.st_mtime_ns, stat.st_size, page, dpi)


@functools.lru_cache(maxsize=CACHED_PAGES)
def _render(path: str, _mtime_ns: int, _size: int, page: int, dpi: int) -> RenderedPage:
    with _PDFIUM_LOCK:
        pdf = pdfium.PdfDocument(path)
        try:
            if not 1 <= page <= len(pdf):
                raise IndexError(f"page {page} is not in the document ({len(pdf)} pages)")
            handle = pdf[page - 1]
            try:
                width, height = handle.get_size()
                scale = min(dpi / 72, MAX_SIDE_PX / max(width, height, 1.0))
                bitmap = handle.render(scale=scale)
                image = bitmap.to_pil().convert("RGB")  # a copy: the bitmap's buffer goes with it
                text, boxes = _text_layer(handle, bitmap.get_posconv(handle))
                bitmap.close()
            finally:
                handle.close()
            return RenderedPage(image, text, boxes, len(pdf), pdf.get_page_label(page - 1))
        finally:
            pdf.close()


def _text_layer(handle: pdfium.PdfPage, posconv) -> tuple[str, tuple[Box | None, ...]]:
    """Each character of the page and its (loose: the font's full line height) box in pixels."""
    textpage = handle.get_textpage()
    try:
        chars, boxes = [], []
        for i in range(textpage.count_chars()):
            ch = chr(pdfium_c.FPDFText_GetUnicode(textpage.raw, i))
            chars.append(ch)
            boxes.append(None if ch.isspace() or not ch.isprintable() else _pixel_box(textpage, posconv, i))
        return "".join(chars), tuple(boxes)
    finally:
        textpage.close()


def _pixel_box(textpage, posconv, index: int) -> Box | None:
    try:
        left, bottom, right, top = textpage.get_charbox(index, loose=True)
    except pdfium.PdfiumError:
        return None
    if right <= left or top <= bottom:
        return None
    (ax, ay), (bx, by) = posconv.to_bitmap(left, bottom), posconv.to_bitmap(right, top)
    return min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)


def highlight(rendered: RenderedPage, passage: str, answer: tuple[int, int] | None) -> tuple[list, str]:
    """Boxes for the passage (its part on this page) and the answer on a rendered page, and a one-line
    note when they were not found in the page's text layer ("" when all was found)."""
    if not passage:
        return [], ""
    match = match_on_page(rendered.text, passage, answer)
    boxes = [(b, PASSAGE) for a, z in match.passage for b in line_boxes(rendered.char_boxes[a:z])]
    if match.answer is not None:
        boxes += [(b, ANSWER) for b in line_boxes(rendered.char_boxes[slice(*match.answer)])]
    if not match.passage and match.answer is None:
        return boxes, "The passage was not found in this page's text layer: the page is shown without boxes."
    if answer is not None and match.answer is None:
        return boxes, "The answer was not found in this page's text layer: only the passage is boxed."
    return boxes, ""


def show(store: DocumentStore, target: Target, dpi: int = DPI) -> EvidenceView:
    """What to show for `target`: the PDF page with boxes, or the text document's passage in context.
    Never raises: a failure becomes a one-line message (the answer card above still shows the passage)."""
    try:
        return _show(store, target, dpi)
    except Exception as exc:
        log.exception("evidence for %s page %d", target.doc_id, target.page)
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:_MAX_MESSAGE_CHARS]
        return EvidenceView(target.page, 0, "", message=f"The page could not be shown ({reason}).")


def _show(store: DocumentStore, target: Target, dpi: int) -> EvidenceView:
    info = store.info(target.doc_id)
    text, page_starts = store.text(target.doc_id)
    page = min(max(target.page, 1), info.n_pages)
    passage_pages = (page_of(page_starts, target.passage[0]), page_of(page_starts, target.passage[1] - 1))
    path = source_pdf(store, target.doc_id)
    if not info.filename.lower().endswith(".pdf"):
        return EvidenceView(page, info.n_pages, caption(page, info.n_pages), html=context_html(text, target))
    if path is None:
        return EvidenceView(
            page,
            info.n_pages,
            caption(page, info.n_pages, passage_pages=passage_pages),
            message="No page image: this PDF's file was not kept (add it again to see its pages).",
        )
    rendered = render_page(path, page, dpi)
    boxes, note = highlight(rendered, *on_page(text, page_starts, page, target))
    return EvidenceView(
        page,
        rendered.n_pages,
        caption(page, rendered.n_pages, rendered.label, passage_pages),
        image=rendered.image,
        boxes=boxes,
        message=note,
    )
