"""The web page in a real (headless) Chromium: upload, ask, answers per method with page citations and
the cited page as an image (boxes, page buttons), per-browser document lists, friendly errors, the sample
button, phone width, and a new visitor's first clicks sent before the page load has answered (issue 21).

Screenshots of the main states go to test-artifacts/ (gitignored) for a person to look at.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fpdf import FPDF

from tests.app.conftest import ANSWER_NAME, MAX_FILE_MB, QUESTION, RunningApp

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TIMEOUT_MS = 90_000  # an ingest or a question on 2 busy CPU cores
DARCY = "Who is Mr. Darcy's friend who rents Netherfield?"  # the first of the page's example questions
FERRY_QUESTION = "Who captains the ferry to Gullholm?"
FERRY_CAPTAIN = "Ingrid Solberg"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium: apt-get install -y chromium"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (python)")
expect = sync_api.expect
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


def open_app(browser, url: str, width: int = 1280, height: int = 900):
    """A fresh browser context (its own localStorage, so its own owner id) on the app, fully loaded."""
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    expect(page.locator("#doc-table")).to_contain_text("Title")
    page.wait_for_function("Object.keys(localStorage).includes('bsbr-docqa-owner')")
    return page


class HeldLoad:
    """Holds back the page load's event (the one that hands a new browser its id and its document list),
    as a server busy indexing the sample novel does, until `release`: the page is usable meanwhile."""

    JOIN = "**/gradio_api/queue/join*"

    def __init__(self, page, url: str) -> None:
        with urllib.request.urlopen(url + "config") as response:
            dependencies = json.load(response)["dependencies"]
        self.fn_index = next(d["id"] for d in dependencies if any(e == "load" for _, e in d["targets"]))
        self.page, self.held = page, []
        page.route(self.JOIN, self._route)

    def _route(self, route) -> None:
        if (route.request.post_data_json or {}).get("fn_index") == self.fn_index:
            self.held.append(route)
        else:
            route.continue_()

    def release(self) -> None:
        assert self.held, "the page load was never sent"
        for route in self.held:
            route.continue_()
        self.page.unroute(self.JOIN, self._route)
        self.page.wait_for_function("Object.keys(localStorage).includes('bsbr-docqa-owner')")


def open_app_load_held(browser, url: str) -> tuple:
    """A new visitor (empty localStorage) at the issue's 1400x1000, its page load not answered yet."""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    load = HeldLoad(page, url)
    page.goto(url)
    expect(page.locator("#doc-table")).to_contain_text("Title")
    return page, load


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def upload(page, *paths: Path) -> None:
    page.set_input_files("#upload input[type=file]", [str(p) for p in paths])


def remove(page, title: str) -> None:
    """Pick the document in the "Remove a document" dropdown and press Remove."""
    page.locator("#remove-choice input").click()
    page.get_by_role("option", name=title).first.click()
    page.click("#remove-btn")


@pytest.fixture(scope="module")
def ferry_pdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight pages about an island, the ferry's captain on page 5: long enough that indexing it takes a
    moment, in which a question can be asked."""
    topics = ["tides", "market", "school", "church bell", "fishing fleet", "lighthouse", "storms", "harbour"]
    pdf = FPDF(format=(148, 210))
    pdf.set_font("Helvetica", size=11)
    for n, topic in enumerate(topics, 1):
        pdf.add_page()
        fact = f"The ferry to Gullholm is captained by {FERRY_CAPTAIN}. " if n == 5 else ""
        pdf.multi_cell(0, 6, fact + f"Chapter {n} is about the {topic} of the island of Gullholm. " * 12)
    path = tmp_path_factory.mktemp("ferry") / "gullholm_ferry.pdf"
    pdf.output(str(path))
    return path


@pytest.fixture(scope="module")
def visitor(browser, app_server: RunningApp, brightwater_pdf: Path):
    """The first visitor, after uploading the three-page PDF."""
    page = open_app(browser, app_server.url)
    shot(page, "01-empty")
    upload(page, brightwater_pdf)
    expect(page.locator("#doc-table")).to_contain_text("brightwater")
    expect(page.locator("#status")).to_contain_text("3 pages")
    shot(page, "02-uploaded")
    yield page
    page.context.close()


def test_answers_for_every_method_cite_page_2(visitor, app_server: RunningApp) -> None:
    visitor.fill("#question textarea", QUESTION)
    visitor.click("#ask-btn")
    cards = visitor.locator("#cards .card")
    expect(cards).to_have_count(len(app_server.methods))
    for method in app_server.methods:
        card = visitor.locator(f"#cards .card.method-{method}")
        expect(card.locator(".answer")).to_contain_text(ANSWER_NAME)
        expect(card.locator(".evidence").first.locator(".cite")).to_have_text("page 2")
        expect(card.locator("mark").first).to_contain_text(ANSWER_NAME)
        expect(card.locator(".stats")).to_contain_text(" ms")
    expect(visitor.locator("#chat")).to_contain_text("page 2")
    expect(visitor.locator("#plot")).to_be_visible()
    expect(visitor.locator("#plot")).to_contain_text("page")
    shot(visitor, "03-answered")


def page_caption(page, method: str):
    return page.locator(f"#page-{method} .page-caption")


def on_page(n: int) -> re.Pattern:
    """A page caption: "p. 2 of 3", perhaps followed by " · passage on pp. 1–2"."""
    return re.compile(rf"^p\. {n} of 3( · |$)")


def test_evidence_page_boxes_the_answer_and_turns_pages(visitor, app_server: RunningApp) -> None:
    """Beside each answer the cited page as an image, the passage and answer boxed (one mask per label),
    and previous/next page buttons that stop at the document's ends."""
    visitor.fill("#question textarea", QUESTION)
    visitor.click("#ask-btn")
    for method in app_server.methods:
        image, legend = visitor.locator(f"#evidence-{method}"), visitor.locator(f"#evidence-{method} .legend")
        expect(page_caption(visitor, method)).to_have_text(on_page(2))
        expect(image.locator("img").first).to_be_visible()
        expect(image.locator("img.mask")).to_have_count(2)
        expect(legend).to_contain_text("answer")
        expect(legend).to_contain_text("passage")
    method = app_server.methods[0]
    shot(visitor, "07-evidence")
    previous, next_ = visitor.locator(f"#prev-{method}"), visitor.locator(f"#next-{method}")
    first_src = visitor.locator(f"#evidence-{method} img").first.get_attribute("src")
    next_.click()
    expect(page_caption(visitor, method)).to_have_text(on_page(3))
    expect(next_).to_be_disabled()
    expect(visitor.locator(f"#evidence-{method} .legend")).not_to_contain_text("answer")
    assert visitor.locator(f"#evidence-{method} img").first.get_attribute("src") != first_src
    previous.click()
    expect(page_caption(visitor, method)).to_have_text(on_page(2))
    expect(visitor.locator(f"#evidence-{method} .legend")).to_contain_text("answer")
    previous.click()
    expect(page_caption(visitor, method)).to_have_text(on_page(1))
    expect(previous).to_be_disabled()
    expect(next_).to_be_enabled()
    other = app_server.methods[-1]  # each method turns its own page
    expect(page_caption(visitor, other)).to_have_text(on_page(2))


def test_text_document_evidence_is_the_passage_in_context(
    browser, app_server: RunningApp, notes_md: Path
) -> None:
    page = open_app(browser, app_server.url)
    try:
        upload(page, notes_md)
        expect(page.locator("#doc-table")).to_contain_text("harbour_notes")
        page.fill("#question textarea", "Who is the harbour master of Brightwater?")
        page.click("#ask-btn")
        for method in app_server.methods:
            context = page.locator(f"#context-{method}")
            expect(context.locator(".ctx-passage")).to_contain_text("The harbour master of Brightwater")
            expect(context.locator("mark")).to_contain_text("Tobias Reed")
            expect(page.locator(f"#evidence-{method}")).to_be_hidden()
            expect(page.locator(f"#next-{method}")).to_be_hidden()
        shot(page, "09-text-evidence")
    finally:
        page.context.close()


def test_reload_keeps_the_visitor_documents(visitor) -> None:
    visitor.reload()
    expect(visitor.locator("#doc-table")).to_contain_text("brightwater")


def test_second_browser_sees_only_its_own_documents(
    browser, app_server: RunningApp, visitor, brightwater_pdf: Path, notes_md: Path
) -> None:
    expect(visitor.locator("#doc-table")).to_contain_text("brightwater")
    other = open_app(browser, app_server.url)
    try:
        expect(other.locator("#doc-table")).not_to_contain_text("brightwater")
        other.fill("#question textarea", QUESTION)
        other.click("#ask-btn")
        expect(other.locator("#chat")).to_contain_text("No documents yet")
        shot(other, "04-second-visitor")
        upload(other, brightwater_pdf, notes_md)  # the PDF's bytes are stored once, now owned by both
        expect(other.locator("#doc-table")).to_contain_text("harbour_notes")
        expect(other.locator("#doc-table")).to_contain_text("brightwater")
        remove(other, "brightwater")
        expect(other.locator("#doc-table")).not_to_contain_text("brightwater")
        expect(other.locator("#doc-table")).to_contain_text("harbour_notes")
    finally:
        other.context.close()
    visitor.reload()  # the first visitor's copy is untouched by the other's removal
    expect(visitor.locator("#doc-table")).to_contain_text("brightwater")


def test_unreadable_file_gives_a_one_line_message(visitor, tmp_path: Path) -> None:
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 not really a PDF" + bytes(range(256)))
    upload(visitor, broken)
    status = visitor.locator("#status")
    expect(status).to_contain_text("broken.pdf:")
    assert "Traceback" not in status.inner_text()
    assert str(tmp_path) not in status.inner_text()  # the visitor's file name, not the server's path
    expect(visitor.locator("#doc-table")).to_contain_text("brightwater")  # still serving


def test_file_over_the_size_limit_is_refused_with_a_clear_message(visitor, tmp_path: Path) -> None:
    big = tmp_path / "huge.txt"
    big.write_text("word " * (MAX_FILE_MB * 2**20 // 4), encoding="utf-8")
    upload(visitor, big)
    expect(visitor.get_by_text("exceed the maximum allowed size")).to_be_visible()
    expect(visitor.locator("#doc-table")).not_to_contain_text("huge")
    visitor.reload()  # the page still works after the refusal
    expect(visitor.locator("#doc-table")).to_contain_text("brightwater")


def test_sample_button_adds_the_sample_and_an_example_question(visitor) -> None:
    visitor.click("#sample-btn")
    expect(visitor.locator("#doc-table")).to_contain_text("tiny_novel")
    expect(visitor.locator("#question textarea")).not_to_have_value("")


def test_phone_width_has_no_sideways_scroll(visitor) -> None:
    visitor.set_viewport_size({"width": 390, "height": 844})
    visitor.fill("#question textarea", QUESTION)
    visitor.click("#ask-btn")
    expect(visitor.locator("#cards .card").first).to_be_visible()
    overflow = visitor.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1
    shot(visitor, "05-phone")


def test_phone_width_every_control_is_reachable(
    browser, app_server: RunningApp, brightwater_pdf: Path
) -> None:
    """At 390x844 (a phone) nothing scrolls sideways, before or after answers, and every control is on
    screen and clickable once scrolled to."""
    width = 390
    page = open_app(browser, app_server.url, width=width, height=844)
    try:

        def assert_fits() -> None:
            assert page.evaluate("document.documentElement.scrollWidth") <= page.evaluate("innerWidth")

        def assert_reachable(selector: str, click: bool = True) -> None:
            control = page.locator(selector).first
            control.scroll_into_view_if_needed()
            expect(control).to_be_visible()
            box = control.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= width, (selector, box)
            if click:
                control.click(trial=True)  # actionable: visible, enabled, not covered by anything

        assert_fits()
        for selector in ("#upload", "#sample-btn", "#question textarea", "#ask-btn", "#remove-btn"):
            assert_reachable(selector)
        upload(page, brightwater_pdf)
        expect(page.locator("#doc-table")).to_contain_text("brightwater")
        assert_reachable("#remove-choice input")
        page.get_by_text("Options").click()
        expect(page.get_by_text("Evidence passages per method")).to_be_visible()
        page.fill("#question textarea", QUESTION)
        page.click("#ask-btn")
        method = app_server.methods[0]
        expect(page_caption(page, method)).to_have_text(on_page(2))
        expect(page.locator(f"#evidence-{method} img.mask")).to_have_count(2)
        assert_fits()
        for m in app_server.methods:
            assert_reachable(f"#evidence-{m}", click=False)  # the whole page image, within the screen
            assert_reachable(f"#next-{m}")
        page.click(f"#next-{method}")
        expect(page_caption(page, method)).to_have_text(on_page(3))
        assert_fits()
        page.locator(f"#card-{method}").evaluate("card => card.scrollIntoView({block: 'start'})")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "08-phone-evidence.png"))  # the viewport, as a phone shows it
        shot(page, "08-phone-full")
    finally:
        page.context.close()


def test_new_visitor_sample_then_example_question_answers_from_the_sample(
    browser, app_server: RunningApp
) -> None:
    """Issue 21's steps, for a new visitor whose sample click reaches the server before the page load:
    the click and the load must agree on the owner, else the question finds no documents."""
    page, load = open_app_load_held(browser, app_server.url)
    try:
        page.click("#sample-btn")
        expect(page.locator("#status")).to_contain_text("tiny_novel: 1 page")
        expect(page.locator("#doc-table")).to_contain_text("tiny_novel")
        load.release()
        expect(page.locator("#doc-table")).to_contain_text("tiny_novel")  # the load's list, same owner
        page.locator("#examples").get_by_text(DARCY).click()
        expect(page.locator("#question textarea")).to_have_value(DARCY)
        page.click("#ask-btn")
        expect(page.locator("#chat")).to_contain_text(re.compile("BM25|No documents yet"))  # the reply
        assert "No documents yet" not in page.locator("#chat").inner_text()
        expect(page.locator("#cards .card")).to_have_count(len(app_server.methods))
        for method in app_server.methods:  # the tiny sample does not name Mr. Darcy: its passage is shown
            evidence = page.locator(f"#cards .card.method-{method} .evidence").first
            expect(evidence.locator(".cite")).to_have_text("page 1")
            expect(evidence).to_contain_text("tiny_novel")
            expect(evidence).to_contain_text("Netherfield Park is let at last")
        shot(page, "06-sample-question")
    finally:
        page.context.close()


def test_new_visitor_asks_while_the_upload_is_indexing(
    browser, app_server: RunningApp, ferry_pdf: Path
) -> None:
    """Upload before the page load has answered, ask while the file is still indexing: the question
    waits for it and is answered from it."""
    page, load = open_app_load_held(browser, app_server.url)
    try:
        page.fill("#question textarea", FERRY_QUESTION)
        upload(page, ferry_pdf)
        indexing = page.locator("#upload").get_by_text("gullholm_ferry.pdf (1/1)")
        done = page.locator("#doc-table").get_by_text("gullholm_ferry")
        expect(indexing.or_(done).first).to_be_visible()  # indexing, or (on a fast machine) done
        page.click("#ask-btn")
        load.release()
        for method in app_server.methods:
            card = page.locator(f"#cards .card.method-{method}")
            expect(card.locator(".answer")).to_contain_text(FERRY_CAPTAIN)
            expect(card.locator(".evidence").first.locator(".cite")).to_have_text("page 5")
        expect(page.locator("#chat")).to_contain_text(f"{FERRY_CAPTAIN} — page 5, gullholm_ferry")
        expect(page.locator("#chat")).not_to_contain_text("No documents yet")
        expect(page.locator("#doc-table")).to_contain_text("gullholm_ferry")
    finally:
        page.context.close()
