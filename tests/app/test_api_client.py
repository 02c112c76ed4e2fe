"""The app's named API endpoints, called the way a user would: through gradio_client."""

from __future__ import annotations

from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests.app.conftest import ANSWER_NAME, FACT, QUESTION, RunningApp


@pytest.fixture(scope="module")
def client(app_server: RunningApp) -> Client:
    return Client(app_server.url, verbose=False)


def test_only_add_and_ask_are_public(client: Client) -> None:
    api = client.view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == {"/add", "/ask"}
    assert not api["unnamed_endpoints"]


def test_add_then_ask_cites_page_2(client: Client, app_server: RunningApp, brightwater_pdf: Path) -> None:
    summaries = client.predict([handle_file(str(brightwater_pdf))], api_name="/add")
    assert len(summaries) == 1
    assert summaries[0]["filename"] == "brightwater.pdf"
    assert summaries[0]["pages"] == 3 and summaries[0]["chunks"] >= 1

    result = client.predict(QUESTION, list(app_server.methods), 3, api_name="/ask")
    assert result["question"] == QUESTION
    assert [a["method"] for a in result["answers"]] == list(app_server.methods)
    for answer in result["answers"]:
        assert ANSWER_NAME in answer["answer"], answer
        top = answer["evidence"][0]
        assert FACT in top["text"]
        assert top["page_start"] <= 2 <= top["page_end"]
        assert len(answer["evidence"]) <= 3


def test_ask_defaults_to_every_method(client: Client, app_server: RunningApp, brightwater_pdf: Path) -> None:
    client.predict([handle_file(str(brightwater_pdf))], api_name="/add")
    result = client.predict(QUESTION, api_name="/ask")
    assert {a["method"] for a in result["answers"]} == set(app_server.methods)


def test_unreadable_file_is_reported_not_raised(client: Client, tmp_path: Path) -> None:
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 this is not really a PDF" + bytes(range(256)))
    summaries = client.predict([handle_file(str(broken))], api_name="/add")
    assert summaries[0]["file"] == "broken.pdf"
    assert summaries[0]["error"].startswith("broken.pdf: ")
    assert "\n" not in summaries[0]["error"]


def test_other_sessions_see_nothing(app_server: RunningApp, client: Client, brightwater_pdf: Path) -> None:
    client.predict([handle_file(str(brightwater_pdf))], api_name="/add")
    stranger = Client(app_server.url, verbose=False)
    with pytest.raises(AppError, match="no documents yet"):
        stranger.predict(QUESTION, api_name="/ask")
