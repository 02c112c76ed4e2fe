"""The web page in a real (headless) Chromium: upload, ask, answers per method with page citations,
per-browser document lists, friendly errors, the sample button, phone width.

Screenshots of the main states go to test-artifacts/ (gitignored) for a person to look at.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
