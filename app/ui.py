"""The web page (Gradio): add documents, ask, compare the methods side by side, see where each looked.

The only module that imports gradio. Handlers are short adapters: widget values in, one DocQA call,
formatted result out; the formatting itself is pure and lives in app/plots.py (cards, plot) and
app/evidence.py (the cited page as an image with the passage and answer boxed, or a text's passage in
context). Each method has its own column: its card, then its evidence page with previous/next buttons.
Uploaded PDFs are kept in the store (`evidence.keep_source`) so that their pages can be drawn later.

Sessions: a public Space is shared, so every DocQA call passes an owner. In the browser the owner is a
random id kept in gr.BrowserState (localStorage: it survives reloads); API clients have no BrowserState
and are identified by their Gradio session hash. Owners are prefixed ("browser:", "session:") so that no
client can claim the CLI's "local" or the pre-ingest's "sample" documents.

Every click is its own event, and events run side by side, in no set order (issue 21). So a new browser's
id is derived from its page session (`Page.browser_id`), never drawn at random when the page loads: a click
sent before the page load's answer carries no id yet, and still lands on the owner the load hands out. And
a question waits for its owner's document changes under way (`DocumentChanges`), so that it is asked of the
documents the visitor has just added or removed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr
import pandas as pd

from app import evidence, plots, zerogpu
from app import methods as registry
from app.docqa import DocQA
from app.settings import Settings
from app.types import Answer, IngestReport
from ingest.errors import IngestError
from ingest.store import StoreError

if TYPE_CHECKING:
    from app.sample import SampleBook

STAGE_LABELS = {
    "extract": "extracting pages",
    "chunk": "chunking",
    "embed": "FAISS embedding",
    "bsbr": "BSBR document pass",
}
SAMPLE_QUESTIONS = [
    "Who is Mr. Darcy's friend who rents Netherfield?",
    "What estate has been let at last?",
    "Who does Elizabeth marry?",
]
DOC_COLUMNS = ["Title", "Pages", "Tokens", "Chunks", "Notes"]
FILE_TYPES = [".pdf", ".txt", ".md"]
_BROWSER_ID = re.compile(r"[0-9a-f]{32}")
# The secret only scrambles localStorage (the browser holds it too); fixing it keeps ids across restarts.
_STORAGE_SECRET = "bsbr-docqa-browser-owner"
_WAITING = "Waiting for your documents to finish indexing"
_NO_DOCS = "No documents yet: upload a PDF, TXT or MD file, or load the sample novel."
_PLOT_CAPTION = (
    "Best chunk score per page, scaled per method so they share an axis: BSBR as a softmax over "
    "chunks (relative to its best chunk), FAISS and BM25 min-max scaled."
)
_PRIVATE = {"api_visibility": "private"}
_PROGRESS = gr.Progress()  # a marker: Gradio passes each call its own tracker in its place
log = logging.getLogger(__name__)

CSS = """
.hero h1 {margin: 0 0 4px; font-size: 1.6rem;}
.hero p {margin: 0;}
.hero small {color: var(--body-text-color-subdued);}
.remove-row {align-items: flex-end !important;}
.remove-row button {margin-bottom: 10px;}
#cards {gap: 12px;}
#cards .card {border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 12px 14px;
  background: var(--block-background-fill); min-width: 0;}
.card-head {display: flex; flex-wrap: wrap; align-items: baseline; gap: 4px 10px; margin-bottom: 6px;}
.card-head .method {font-weight: 700; font-size: 1.05rem; color: var(--color-accent);}
.card-head .blurb, .card .note, .evidence summary {color: var(--body-text-color-subdued); font-size: 0.85rem;}
.card-head .stats {margin-left: auto; font-size: 0.85rem; font-variant-numeric: tabular-nums;}
.card .answer {font-size: 1.05rem; font-weight: 600; margin: 4px 0;}
.card .answer.abstain {font-weight: 400; font-style: italic;}
.evidence {border-top: 1px solid var(--border-color-primary); padding-top: 6px; margin-top: 6px;}
.evidence summary {cursor: pointer;}
.evidence .cite {font-weight: 600; color: var(--body-text-color);}
.passage {white-space: pre-wrap; max-height: 16rem; overflow-y: auto; font-size: 0.9rem; line-height: 1.5;
  margin-top: 4px;}
.passage mark {background: rgba(250, 204, 21, 0.55); color: inherit; border-radius: 3px; padding: 0 2px;}
.plot-note {color: var(--body-text-color-subdued); font-size: 0.85rem;}
#status {min-height: 2.5rem;}
.empty-note {color: var(--body-text-color-subdued); padding: 8px 0;}
.page-nav {flex-wrap: nowrap !important; gap: 8px;}
.page-nav button {min-width: 0 !important;}
.page-caption {font-size: 0.85rem; font-variant-numeric: tabular-nums;}
.page-note {color: var(--body-text-color-subdued); font-size: 0.85rem;}
.passage-context {white-space: pre-wrap; max-height: 20rem; overflow-y: auto; font-size: 0.9rem;
  line-height: 1.5; border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 10px;}
.passage-context .ctx-passage {background: rgba(99, 102, 241, 0.14);}
.passage-context mark {background: rgba(245, 158, 11, 0.55); color: inherit; border-radius: 3px;}
"""


def theme() -> gr.themes.Base:
    return gr.themes.Soft(
        primary_hue="indigo", secondary_hue="amber", neutral_hue="slate", radius_size="md", spacing_size="md"
    )


def launch_options(settings: Settings) -> dict:
    """Keyword arguments for Blocks.launch: looks (theme and CSS moved to launch() in Gradio 6), and
    Gradio's own upload limit, equal to the library's, so huge files are refused before they land."""
    return {
        "theme": theme(),
        "css": CSS,
        "max_file_size": settings.max_file_mb * 2**20,
        "footer_links": ["api", "gradio"],
    }


def owner_of(browser_id: str | None, request: gr.Request | None) -> str:
    """The owner id every DocQA call gets: the browser's id, else the Gradio session."""
    if isinstance(browser_id, str) and _BROWSER_ID.fullmatch(browser_id):
        return f"browser:{browser_id}"
    session = getattr(request, "session_hash", None)
    if not session:
        raise gr.Error("No session: reload the page.")
    return f"session:{session}"


class DocumentChanges:
    """The document changes (uploads, sample loads, removals) under way, counted per owner."""

    def __init__(self) -> None:
        self._idle = threading.Condition()
        self._running: Counter[str] = Counter()

    @contextmanager
    def running(self, owner: str) -> Iterator[None]:
        with self._idle:
            self._running[owner] += 1
        try:
            yield
        finally:
            with self._idle:
                self._running[owner] -= 1
                if not self._running[owner]:
                    del self._running[owner]  # owners come and go: keep no zero counts
                self._idle.notify_all()

    def wait(self, owner: str, on_wait: Callable[[], None] | None = None) -> None:
        """Return once `owner` has no change under way (at once when there is none); `on_wait` is called
        first when there is one to wait for."""
        with self._idle:
            if self._running[owner] and on_wait is not None:
                on_wait()
            self._idle.wait_for(lambda: not self._running[owner])


def _relay(progress: gr.Progress, prefix: str) -> Callable[[str, int, int], None]:
    """DocQA's progress(stage, done, total) -> the page's progress bar."""

    def report(stage: str, done: int, total: int) -> None:
        progress((done, max(total, 1)), desc=f"{prefix}: {STAGE_LABELS.get(stage, stage)}")

    return report


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _report_line(report: IngestReport) -> str:
    state = f"indexed in {report.seconds:.1f} s" if report.new else "ready"
    line = (
        f"✓ **{plots.html.escape(report.title)}**: {_plural(report.pages, 'page')} · "
        f"{_plural(report.tokens, 'token')} · {_plural(report.chunks, 'chunk')} · {state}"
    )
    return "\n".join([line, *(f"  ⚠ {plots.html.escape(w)}" for w in report.warnings)])


def _error_line(name: str, err: Exception) -> str:
    """One line, naming the file as the visitor knows it (never Gradio's temporary path)."""
    reason = getattr(err, "reason", None) or str(err)
    return f"{name}: {reason}"


class Page:
    """Holds the library object and the page's handlers (each a thin adapter over one DocQA call)."""

    def __init__(self, qa: DocQA, settings: Settings, sample: SampleBook | None) -> None:
        self.qa = qa
        self.settings = settings
        self.sample = sample
        self.methods = registry.ordered(qa.methods)
        self.shown = registry.ordered(qa.shown)
        self.changes = DocumentChanges()
        # Only derives ids for new browsers, which then keep theirs in localStorage: a fresh key per
        # process is enough.
        self._id_key = secrets.token_bytes(32)

    def browser_id(self, stored: str | None, request: gr.Request) -> str:
        """The browser's stored id, else the one its page session gets (the same for every event of
        the page, whichever reaches the server first)."""
        if isinstance(stored, str) and _BROWSER_ID.fullmatch(stored):
            return stored
        session = getattr(request, "session_hash", None)
        if not session:
            raise gr.Error("No session: reload the page.")
        return hmac.new(self._id_key, session.encode(), hashlib.sha256).hexdigest()[:32]

    def owner(self, browser_id: str | None, request: gr.Request) -> str:
        return owner_of(self.browser_id(browser_id, request), request)

    def documents(self, owner: str) -> tuple[pd.DataFrame, gr.Dropdown]:
        docs = self.qa.documents(owner)
        table = pd.DataFrame(plots.document_rows(docs), columns=DOC_COLUMNS)
        choices = [(f"{d.title} ({d.filename})", d.id) for d in docs]
        return table, gr.Dropdown(choices=choices, value=choices[0][1] if choices else None)

    def on_load(self, browser_id: str | None, request: gr.Request):
        browser_id = self.browser_id(browser_id, request)
        return browser_id, *self.documents(owner_of(browser_id, request))

    def upload(
        self,
        paths: list[str] | None,
        browser_id: str | None,
        request: gr.Request,
        progress: gr.Progress = _PROGRESS,
    ):
        owner, paths = self.owner(browser_id, request), paths or []
        with self.changes.running(owner):
            if self.sample is not None and paths:
                self.sample.wait(_relay(progress, "Waiting for the sample novel to finish indexing"))
            lines = [
                self._ingest_one(path, i, len(paths), owner, progress) for i, path in enumerate(paths, 1)
            ]
        return None, "\n\n".join(lines), *self.documents(owner)

    def _ingest_one(self, path: str, i: int, n: int, owner: str, progress: gr.Progress) -> str:
        name = Path(path).name
        try:
            report = self.qa.ingest(path, progress=_relay(progress, f"{name} ({i}/{n})"), owner=owner)
            self.keep_source(report.doc_id, path)
            return _report_line(report)
        except IngestError as err:
            message = _error_line(name, err)
            gr.Warning(message)
            return f"✗ {plots.html.escape(message)}"

    def delete(self, doc_id: str | None, browser_id: str | None, request: gr.Request):
        owner = self.owner(browser_id, request)
        if not doc_id:
            gr.Warning("Choose a document to remove.")
        else:
            try:
                with self.changes.running(owner):
                    self.qa.delete(doc_id, owner=owner)
            except StoreError as err:
                gr.Warning(str(err))
        return self.documents(owner)

    def load_sample(self, browser_id: str | None, request: gr.Request, progress: gr.Progress = _PROGRESS):
        owner = self.owner(browser_id, request)
        try:
            with self.changes.running(owner):
                report = self.sample.load(owner, progress=_relay(progress, "Sample novel"))
        except IngestError as err:
            message = _error_line(self.sample.path.name, err)
            gr.Warning(message)
            return gr.skip(), f"✗ {plots.html.escape(message)}", *self.documents(owner)
        self.keep_source(report.doc_id, self.sample.path)
        return SAMPLE_QUESTIONS[0], _report_line(report), *self.documents(owner)

    def keep_source(self, doc_id: str, path: str | Path) -> None:
        """Keep the PDF for its page images; a failure only costs the images (the answer still shows)."""
        try:
            evidence.keep_source(self.qa.store, doc_id, path)
        except (OSError, StoreError) as err:
            log.warning("%s: the PDF is not kept for page images: %s", Path(path).name, err)

    def settle(
        self, question: str, browser_id: str | None, request: gr.Request, progress: gr.Progress = _PROGRESS
    ) -> str:
        """Wait for this visitor's document changes under way; pass the question on as it was asked
        (a sample load that ends meanwhile puts its own question in the box)."""
        self.changes.wait(self.owner(browser_id, request), lambda: progress(None, desc=_WAITING))
        return question

    def ask_chat(
        self,
        question: str,
        history: list | None,
        methods: list[str] | None,
        top_k: float,
        browser_id: str | None,
        request: gr.Request,
    ):
        owner = self.owner(browser_id, request)
        question = " ".join((question or "").split())
        n_outputs = 8 + len(self.methods) * len(_Slot.ANSWER_OUTPUTS)
        if not question:
            gr.Warning("Type a question first.")
            return (gr.skip(),) * n_outputs
        history = [*(history or []), {"role": "user", "content": question}]
        chosen = [m for m in registry.ordered(methods or self.shown) if m in self.qa.methods]
        try:
            answers = self.qa.ask(question, methods=chosen or self.shown, top_k=int(top_k), owner=owner)
        except (ValueError, StoreError) as err:
            reply = _NO_DOCS if "no documents" in str(err) else str(err)
            return "", [*history, {"role": "assistant", "content": reply}], *(gr.skip(),) * (n_outputs - 2)
        starts = self.page_starts(answers)
        history.append({"role": "assistant", "content": plots.chat_summary(answers, starts)})
        scores = {a.method: a.chunk_scores for a in answers}
        doc_id = _top_doc(answers)
        by_method = {a.method: a for a in answers}
        return (
            "",
            history,
            gr.HTML(visible=False),
            *(u for m in self.methods for u in self.method_result(by_method.get(m), starts)),
            *self.plot(scores, doc_id),
            self.plot_choices(scores, doc_id),
            scores,
        )

    def method_result(self, answer: Answer | None, starts: dict[str, list[int]]) -> tuple:
        """One method's column: shown with its card and evidence page when it answered, else hidden."""
        if answer is None:
            return gr.Column(visible=False), "", *(gr.skip(),) * (len(_Slot.ANSWER_OUTPUTS) - 2)
        card = plots.answer_card_html(answer, starts)
        if not answer.evidence:
            return gr.Column(visible=True), card, *self.evidence_result(None)
        target = evidence.Target.of(answer.evidence[0], show_answer=not answer.abstained)
        return gr.Column(visible=True), card, *self.evidence_result(target)

    def evidence_result(self, target: evidence.Target | None) -> tuple:
        """The evidence page (image, text context, page buttons, caption) and the target it shows."""
        if target is None:
            hidden = gr.Button(visible=False)
            image = gr.AnnotatedImage(value=None, visible=False)
            return image, gr.HTML(visible=False), hidden, hidden, "", None
        view = evidence.show(self.qa.store, target)
        value = view.annotated()
        note = f'<div class="page-note">{plots.html.escape(view.message)}</div>' if view.message else ""
        return (
            gr.AnnotatedImage(value=value, visible=value is not None),
            gr.HTML(value=view.html, visible=bool(view.html)),
            gr.Button(visible=view.can_turn, interactive=view.page > 1),
            gr.Button(visible=view.can_turn, interactive=view.page < view.n_pages),
            f'<div class="page-caption">{plots.html.escape(view.caption)}</div>{note}',
            evidence.Target(target.doc_id, view.page, target.passage, target.answer).to_state(),
        )

    def previous_page(self, state: dict | None) -> tuple:
        return self.turn(state, -1)

    def next_page(self, state: dict | None) -> tuple:
        return self.turn(state, +1)

    def turn(self, state: dict | None, delta: int) -> tuple:
        if not state:
            return (gr.skip(),) * len(_Slot.TURN_OUTPUTS)
        return self.evidence_result(evidence.Target.from_state(state).turn(delta))

    def page_starts(self, answers: Sequence[Answer]) -> dict[str, list[int]]:
        doc_ids = {e.doc_id for a in answers for e in a.evidence}
        return {doc_id: self.qa.store.text(doc_id)[1] for doc_id in doc_ids}

    def plot(self, scores: dict[str, dict[str, list[float]]], doc_id: str | None):
        """The plot and its (titled) panel; the title sits on the panel because a plot label would
        eat into the plot's fixed height and clip its legend."""
        if not doc_id:  # None, not an empty table: Gradio's plot stops drawing after an empty one
            return gr.LinePlot(value=None), gr.Accordion(visible=False)
        info = self.qa.store.info(doc_id)
        by_method = {m: s[doc_id] for m, s in scores.items() if doc_id in s}
        table = plots.where_it_looked(by_method, self.qa.store.chunks(doc_id), info.n_pages)
        return (
            gr.LinePlot(value=table, x_lim=[1, max(info.n_pages, 2)]),
            gr.Accordion(label=f"Where it looked: {info.title}", visible=True),
        )

    def plot_choices(self, scores: dict[str, dict[str, list[float]]], doc_id: str | None) -> gr.Dropdown:
        doc_ids = list(dict.fromkeys(d for s in scores.values() for d in s))
        choices = [(self.qa.store.info(d).title, d) for d in doc_ids]
        return gr.Dropdown(choices=choices, value=doc_id, visible=len(choices) > 1)

    def replot(self, doc_id: str | None, scores: dict | None):
        return self.plot(scores or {}, doc_id)

    def api_add(self, paths: list[str] | None, request: gr.Request) -> list[dict]:
        """Add files for this API session; one summary per file (or {"file", "error"})."""
        owner, out = owner_of(None, request), []
        for path in paths or []:
            try:
                out.append(self.qa.ingest(path, owner=owner).to_json())
            except IngestError as err:
                out.append({"file": Path(path).name, "error": _error_line(Path(path).name, err)})
        return out

    def api_ask(
        self, question: str, methods: list[str] | None = None, top_k: int = 5, request: gr.Request = None
    ) -> dict:
        """Ask this API session's documents; the same JSON as `python -m app ask --json`."""
        try:
            answers = self.qa.ask(
                question, methods=methods or self.shown, top_k=int(top_k), owner=owner_of(None, request)
            )
        except (ValueError, StoreError) as err:
            raise gr.Error(str(err)) from None
        return {"question": question, "answers": [a.to_json() for a in answers]}


def _top_doc(answers: Sequence[Answer]) -> str | None:
    for a in answers:
        if a.evidence:
            return a.evidence[0].doc_id
    return next((d for a in answers for d in a.chunk_scores), None)


def _header(methods: Sequence[str]) -> str:
    note = (
        ""
        if "bsbr" in methods
        else (
            "<p><small>BSBR joins the comparison once its trained weights are installed; until then "
            f"{' and '.join(registry.label(m) for m in methods)} answer.</small></p>"
        )
    )
    return (
        '<div class="hero"><h1>BSBR DocQA</h1><p>Ask long documents (PDFs, whole books) and get the '
        "answer with its passage and page. <b>BSBR</b> reads the whole document as one sequence and "
        "its block retrieval finds the evidence; <b>FAISS</b> embeds chunks and searches them. "
        f"Compare them side by side.</p>{note}</div>"
    )


def build_ui(qa: DocQA, settings: Settings, sample: SampleBook | None = None) -> gr.Blocks:
    """The whole page over one DocQA. `sample` backs the "try the sample" button (hidden without it)."""
    page = Page(qa, settings, sample)
    with gr.Blocks(title="BSBR DocQA", delete_cache=(3600, 3600)) as demo:
        browser_id = gr.BrowserState("", storage_key="bsbr-docqa-owner", secret=_STORAGE_SECRET)
        scores = gr.State({})
        gr.HTML(_header(page.methods))
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                docs = _documents_panel(settings, sample)
            with gr.Column(scale=3, min_width=320):
                ask = _ask_panel(page.methods, page.shown)
        results = _results_panel(page.methods)
        _wire(page, demo, browser_id, scores, docs, ask, results)
        _wire_api(page)
    return demo


def _documents_panel(settings: Settings, sample: SampleBook | None) -> dict[str, gr.components.Component]:
    c = {
        "files": gr.File(
            label="Add PDF, TXT or MD files (several at once)",
            file_count="multiple",
            file_types=FILE_TYPES,
            height=120,
            elem_id="upload",
        ),
        "status": gr.Markdown(
            f"Up to {settings.max_file_mb} MB per file; pages without a text layer (scans) are flagged.",
            elem_id="status",
        ),
        "sample": gr.Button(
            "Load the sample novel: Pride and Prejudice",
            size="sm",
            elem_id="sample-btn",
            visible=sample is not None and sample.available,
        ),
        "table": gr.Dataframe(
            value=pd.DataFrame(columns=DOC_COLUMNS),
            label="Your documents",
            interactive=False,
            elem_id="doc-table",
        ),
    }
    with gr.Row(equal_height=False, elem_classes="remove-row"):
        c["choice"] = gr.Dropdown(
            label="Remove a document", choices=[], scale=3, min_width=160, elem_id="remove-choice"
        )
        c["delete"] = gr.Button(
            "Remove", variant="stop", size="md", scale=1, min_width=80, elem_id="remove-btn"
        )
    return c


def _ask_panel(methods: Sequence[str], shown: Sequence[str]) -> dict[str, gr.components.Component]:
    c = {
        "chat": gr.Chatbot(
            label="Questions and answers",
            height=340,
            elem_id="chat",
            placeholder="Answers from each method appear here, with their page.",
        )
    }
    with gr.Row(equal_height=True):
        c["question"] = gr.Textbox(
            show_label=False,
            placeholder="Ask a question about your documents…",
            scale=5,
            min_width=180,
            max_length=1000,
            elem_id="question",
        )
        c["ask"] = gr.Button("Ask", variant="primary", scale=1, min_width=80, elem_id="ask-btn")
    gr.Examples(
        [[q] for q in SAMPLE_QUESTIONS],
        inputs=[c["question"]],
        label="Questions for the sample novel",
        elem_id="examples",
    )
    with gr.Accordion("Options", open=False):
        c["methods"] = gr.CheckboxGroup(
            [(registry.label(m), m) for m in methods], value=list(shown), label="Methods"
        )
        c["top_k"] = gr.Slider(1, 10, value=5, step=1, label="Evidence passages per method")
    return c


@dataclass
class _Slot:
    """One method's column: its answer card, and below it the cited page with its page buttons."""

    column: gr.Column
    card: gr.HTML
    image: gr.AnnotatedImage
    context: gr.HTML
    previous: gr.Button
    next: gr.Button
    caption: gr.HTML
    target: gr.State

    ANSWER_OUTPUTS = ("column", "card", "image", "context", "previous", "next", "caption", "target")
    TURN_OUTPUTS = ANSWER_OUTPUTS[2:]

    def outputs(self, names: Sequence[str]) -> list[gr.components.Component]:
        return [getattr(self, name) for name in names]


def _slot(method: str) -> _Slot:
    with gr.Column(min_width=280, visible=False, elem_classes="method-col") as column:
        card = gr.HTML(elem_id=f"card-{method}")
        image = gr.AnnotatedImage(
            show_label=False,
            color_map=evidence.COLORS,
            visible=False,
            elem_id=f"evidence-{method}",
            elem_classes="evidence-page",
        )
        context = gr.HTML(visible=False, elem_id=f"context-{method}")
        caption = gr.HTML(elem_id=f"page-{method}")
        with gr.Row(elem_classes="page-nav"):
            previous = gr.Button("‹ Previous page", size="sm", visible=False, elem_id=f"prev-{method}")
            next_ = gr.Button("Next page ›", size="sm", visible=False, elem_id=f"next-{method}")
        target = gr.State(None)
    return _Slot(column, card, image, context, previous, next_, caption, target)


def _results_panel(methods: Sequence[str]) -> dict:
    gr.Markdown("### Answers side by side")
    c: dict = {"empty": gr.HTML('<div class="empty-note">Ask a question to compare the methods.</div>')}
    with gr.Row(equal_height=False, elem_id="cards"):
        c["slots"] = [_slot(m) for m in methods]
    with gr.Accordion("Where it looked", open=True, visible=False) as box:
        c["plot_doc"] = gr.Dropdown(label="Document", choices=[], visible=False)
        c["plot"] = gr.LinePlot(
            value=None,
            x="page",
            y="score",
            color="method",
            color_title="method",
            y_lim=[0, 1],
            x_title="page",
            y_title="relative score",
            height=300,
            show_label=False,
            elem_id="plot",
        )
        gr.Markdown(_PLOT_CAPTION, elem_classes="plot-note")
    c["plot_box"] = box
    return c


def _wire(
    page: Page,
    demo: gr.Blocks,
    browser_id: gr.BrowserState,
    scores: gr.State,
    docs: dict,
    ask: dict,
    results: dict,
) -> None:
    listing = [docs["table"], docs["choice"]]
    demo.load(page.on_load, [browser_id], [browser_id, *listing], **_PRIVATE)
    docs["files"].upload(
        zerogpu.gpu(page.upload, page.settings),
        [docs["files"], browser_id],
        [docs["files"], docs["status"], *listing],
        show_progress_on=docs["files"],
        **_PRIVATE,
    )
    docs["delete"].click(page.delete, [docs["choice"], browser_id], listing, **_PRIVATE)
    docs["sample"].click(
        zerogpu.gpu(page.load_sample, page.settings),
        [browser_id],
        [ask["question"], docs["status"], *listing],
        show_progress_on=docs["table"],
        concurrency_limit=None,
        **_PRIVATE,
    )
    asked = gr.State("")
    ask_inputs = [asked, ask["chat"], ask["methods"], ask["top_k"], browser_id]
    plot = [results["plot"], results["plot_box"]]
    slots = [o for slot in results["slots"] for o in slot.outputs(_Slot.ANSWER_OUTPUTS)]
    ask_outputs = [ask["question"], ask["chat"], results["empty"], *slots, *plot, results["plot_doc"], scores]
    for trigger in (ask["ask"].click, ask["question"].submit):
        # The wait is a step of its own, without a concurrency limit: waiting inside ask_chat would hold
        # the one slot that every visitor's questions queue for.
        trigger(
            page.settle,
            [ask["question"], browser_id],
            [asked],
            show_progress_on=ask["chat"],
            concurrency_limit=None,
            **_PRIVATE,
        ).success(zerogpu.gpu(page.ask_chat, page.settings), ask_inputs, ask_outputs, **_PRIVATE)
    results["plot_doc"].input(page.replot, [results["plot_doc"], scores], plot, **_PRIVATE)
    for slot in results["slots"]:
        turned = slot.outputs(_Slot.TURN_OUTPUTS)
        slot.previous.click(page.previous_page, [slot.target], turned, **_PRIVATE)
        slot.next.click(page.next_page, [slot.target], turned, **_PRIVATE)


def _wire_api(page: Page) -> None:
    """Named endpoints for gradio_client: "add" (files -> summaries) and "ask" (-> the CLI's --json)."""
    with gr.Column(visible=False):
        files = gr.File(file_count="multiple", file_types=FILE_TYPES)
        summaries = gr.JSON()
        gr.Button().click(zerogpu.gpu(page.api_add, page.settings), [files], [summaries], api_name="add")
    gr.api(zerogpu.gpu(page.api_ask, page.settings), api_name="ask")
