"""`python -m app eval` on hand-made data with known answers: loading, gold passages, metrics."""

import json

import pytest

from app import DocQA
from app.evaluate import (
    EvalQuestion,
    _limit,
    evaluate,
    evidence_spans,
    format_answers,
    format_table,
    gold_chunks,
    load_jsonl,
    load_squad,
)
from ingest.types import Chunk

SQUAD = {
    "data": [
        {
            "title": "Harbour",
            "paragraphs": [
                {
                    "context": "The lighthouse keeper of Brightwater is Amelia Thornbury.",
                    "qas": [
                        {
                            "id": "q1",
                            "question": "Who keeps the Brightwater lighthouse?",
                            "answers": [{"text": "Amelia Thornbury", "answer_start": 40}],
                        }
                    ],
                },
                {
                    "context": "The regatta is held every August. The winner receives a silver oar.",
                    "qas": [
                        {
                            "id": "q2",
                            "question": "What does the regatta winner receive?",
                            "answers": [{"text": "a silver oar", "answer_start": 54}],
                        }
                    ],
                },
            ],
        },
        {
            "title": "Mountains",
            "paragraphs": [
                {
                    "context": "Mount Kessel is 3,402 metres high and was first climbed in 1861.",
                    "qas": [
                        {
                            "id": "q3",
                            "question": "When was Mount Kessel first climbed?",
                            "answers": [{"text": "1861", "answer_start": 59}],
                        }
                    ],
                },
            ],
        },
    ]
}


@pytest.fixture()
def squad_file(tmp_path):
    path = tmp_path / "mini.json"
    path.write_text(json.dumps(SQUAD))
    return path


def test_load_squad_maps_answer_spans_into_the_documents(squad_file):
    by_article = load_squad(squad_file, "article")
    assert [d.title for d in by_article] == ["Harbour", "Mountains"]
    together = load_squad(squad_file, "all")
    assert len(together) == 1 and len(together[0].questions) == 3
    for docs in (by_article, together):
        for doc in docs:
            for q in doc.questions:
                start, end = q.spans[0]
                assert doc.text[start:end] == q.answers[0]


def test_gold_chunks_use_spans_or_answer_text():
    chunks = [Chunk(0, 0, 10, 1, 1, 3, "a" * 10), Chunk(1, 12, 30, 1, 1, 3, "The Silver Oar is here")]
    assert gold_chunks(EvalQuestion("q", "?", ["x"], [(14, 16)]), chunks) == {1}
    assert gold_chunks(EvalQuestion("q", "?", ["silver oar"]), chunks) == {1}
    assert gold_chunks(EvalQuestion("q", "?", ["nowhere"]), chunks) == set()


def test_limit_spreads_questions_over_documents(squad_file):
    docs = _limit(load_squad(squad_file, "article"), 2)
    assert sum(len(d.questions) for d in docs) == 2


def test_evidence_quotes_are_found_ignoring_case_and_line_breaks():
    text = "It is a truth.\nNetherfield  Park is\nlet at last, said she. netherfield park is let at last!"
    assert evidence_spans(text, "netherfield park is let at LAST") == [(15, 47), (59, 90)]
    assert text[15:47] == "Netherfield  Park is\nlet at last"
    assert evidence_spans(text, "Park is let at first") == []
    assert evidence_spans("a (b) c", "(b) c") == [(2, 7)]  # quotes are text, not patterns


def test_evidence_quotes_decide_the_gold_passage_and_answers_are_listed(tmp_path):
    """A "path" document's gold chunks come from quotes, found in the text it was ingested to; --answers
    lists every method's answer in the data's order, with its page and where the gold chunk ranks."""
    paragraphs = [
        "The harbour of Brightwater keeps a lighthouse on the northern rock.",
        "Its keeper is Amelia Thornbury, who climbs the hundred steps each night.",
        "The regatta is held every August, and the winner receives a silver oar.",
    ]
    (tmp_path / "town.txt").write_text("\n\n".join(paragraphs))
    questions = [
        {
            "id": "k",
            "question": "Who keeps the lighthouse?",
            "answers": ["Amelia Thornbury"],
            "evidence": ["keeper is  amelia\nthornbury"],
        },
        {
            "id": "r",
            "question": "What does the regatta winner receive?",
            "answers": ["a silver oar"],
            "evidence": ["the winner receives a silver oar"],
        },
    ]
    data = tmp_path / "set.jsonl"
    data.write_text(json.dumps({"id": "town", "title": "Town", "path": "town.txt", "questions": questions}))
    docs = load_jsonl(data)
    assert (
        docs[0].questions[0].evidence == ["keeper is  amelia\nthornbury"] and not docs[0].questions[0].spans
    )
    qa = DocQA(home=tmp_path / "home", device="cpu")
    result = evaluate(qa, docs, ["bm25"], progress=False, answers=True)
    assert result["methods"]["bm25"]["has_gold"] == 1.0
    listed = result["answers"]["bm25"]
    assert [a["id"] for a in listed] == ["k", "r"]  # the data's order, whatever order they were asked in
    for a in listed:
        assert set(a) == {"id", "question", "answer", "abstained", "page", "em", "f1", "gold_rank"}
        assert a["page"] == 1 and a["gold_rank"] is not None
    table = format_answers(result)
    assert (
        "| Who keeps the lighthouse? |" in table and f"of 2: bm25 {sum(a['em'] for a in listed):.0f}" in table
    )
    assert "answers" not in evaluate(qa, load_jsonl(data), ["bm25"], progress=False)

    questions[1]["evidence"] = ["the loser receives a silver oar"]
    data.write_text(json.dumps({"id": "town", "title": "Town", "path": "town.txt", "questions": questions}))
    with pytest.raises(ValueError, match="question r: evidence 'the loser receives a silver oar' is not in"):
        evaluate(qa, load_jsonl(data), ["bm25"], progress=False)
    questions[1]["evidence"] = "the winner"
    data.write_text(json.dumps({"id": "town", "title": "Town", "path": "town.txt", "questions": questions}))
    with pytest.raises(ValueError, match="'evidence' must be a list of non-empty quotes"):
        load_jsonl(data)


def test_load_jsonl_resolves_paths_and_free_form_answers(tmp_path):
    (tmp_path / "doc.txt").write_text("Mount Kessel was first climbed in 1861.")
    rows = [
        {
            "id": "a",
            "title": "T",
            "path": "doc.txt",
            "questions": [{"question": "When?", "answers": ["1861"]}],
        },
        {"id": "b", "text": "inline", "questions": []},
    ]
    data = tmp_path / "set.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    docs = load_jsonl(data)
    assert docs[0].path == str(tmp_path / "doc.txt") and docs[0].questions[0].answers == ["1861"]
    assert docs[1].text == "inline"
    data.write_text(json.dumps({"id": "c", "questions": []}))
    with pytest.raises(ValueError, match="'text' or 'path'"):
        load_jsonl(data)


def test_evaluate_end_to_end_with_known_answers(squad_file, tmp_path):
    qa = DocQA(home=tmp_path / "home", device="cpu")
    result = evaluate(
        qa, load_squad(squad_file, "article"), ["bm25", "faiss"], progress=False, unanswerable=2
    )
    assert (result["documents"], result["questions"], result["questions_total"]) == (2, 3, 3)
    for method, row in result["methods"].items():
        # each article is one chunk, so the gold passage is always the top (and only) one
        assert row["recall@1"] == 1.0 and row["retrieval_recall@1"] == 1.0, method
        for key in (
            "em",
            "f1",
            "f1_never_abstain",
            "answer_in_evidence",
            "abstain_rate",
            "abstain_rate_unanswerable",
        ):
            assert 0.0 <= row[key] <= 1.0
        assert row["f1_never_abstain"] >= row["f1"] - 1e-9
        assert row["answer_in_evidence"] == 1.0
        assert row["latency_ms_p95"] >= row["latency_ms_p50"] > 0
    assert "| bm25 |" in format_table(result)
    assert result["setup"] == {
        "device": "cpu",
        "read_k": qa.read_k,
        "model": qa.engine.fingerprint,  # which weights made the numbers
        "seed": 0,
        "max_minutes": None,
    }
    assert len(qa.engine.fingerprint) == 16
    assert f"device cpu, {qa.read_k} candidates read, model {qa.engine.fingerprint}" in format_table(result)


def test_reader_alone_reads_the_gold_passage_with_the_shipped_weights(squad_file, tmp_path):
    qa = DocQA(home=tmp_path / "home", device="cpu")
    assert qa.engine is not None  # assets/qa_model ships with the repo
    result = evaluate(qa, load_squad(squad_file, "all"), ["reader", "bm25"], progress=False)
    reader = result["methods"]["reader"]
    # no retrieval, no abstention
    assert set(reader) == {"em", "f1", "rouge_l", "latency_ms_p50", "latency_ms_p95"}
    assert reader["f1"] >= 2 / 3  # three one-fact questions on their own paragraphs
    table = format_table(result)
    assert "| reader | - | - |" in table and "| bm25 | 1.000 |" in table


def test_eval_cli_names_bad_data_and_unknown_methods(squad_file, tmp_path, monkeypatch, capsys):
    from app.cli import main

    monkeypatch.setenv("DOCQA_HOME", str(tmp_path / "home"))
    not_json = tmp_path / "notes.json"
    not_json.write_text("these are notes")
    assert main(["eval", "--data", str(not_json)]) == 1
    assert f"{not_json}: not a squad file" in capsys.readouterr().err
    assert main(["eval", "--data", str(squad_file), "--methods", "bsbr,nope"]) == 1
    assert "unknown method(s) nope" in capsys.readouterr().err


STORIES = [
    {
        "id": "mill",
        "title": "The Mill",
        "text": "A miller named Tobias kept a grey goose.\n\nThe goose laid one golden egg each winter.",
        "questions": [
            {
                "id": "m1",
                "question": "Who kept the goose?",
                "answers": ["a miller named Tobias", "the miller", "Tobias"],
                "answer_fields": ["answer1", "answer2", "answer4"],
                "extractive": True,
                "answer_spans": [[2, 21]],
            },
            {
                "id": "m2",
                "question": "Why was the miller rich?",
                "answers": ["his goose laid gold"],
                "answer_fields": ["answer1"],
                "extractive": False,
                "answer_spans": [],
            },
        ],
    },
    {
        "id": "bridge",
        "title": "The Bridge",
        "text": "A troll lived under the bridge and counted the goats that crossed it.",
        "questions": [
            {
                "id": "b1",
                "question": "Where did the troll live?",
                "answers": ["under the bridge"],
                "answer_fields": ["answer1"],
                "extractive": True,
                "answer_spans": [[14, 30]],
            }
        ],
    },
]


@pytest.fixture()
def stories_file(tmp_path):
    path = tmp_path / "stories.jsonl"
    path.write_text("\n".join(json.dumps(s) for s in STORIES) + "\n")
    return path


def test_load_jsonl_reads_fairytaleqa_spans_scored_answers_and_joins_stories(stories_file):
    per_story = load_jsonl(stories_file)
    first = per_story[0].questions[0]
    assert first.answers == ["a miller named Tobias", "Tobias"]  # answer1 and answer4 only
    assert first.spans == [(2, 21)] and first.explicit
    assert not per_story[0].questions[1].explicit and per_story[0].questions[1].spans == []
    [joined] = load_jsonl(stories_file, "all")
    assert joined.text == STORIES[0]["text"] + "\n\n" + STORIES[1]["text"]
    assert [q.id for q in joined.questions] == ["m1", "m2", "b1"]
    for q in joined.questions:
        for start, end in q.spans:
            assert joined.text[start:end] in {"miller named Tobias", "under the bridge"}
    assert joined.questions[2].spans[0][0] > len(STORIES[0]["text"])


def test_evaluate_reports_explicit_questions_apart_and_recall_only_where_there_is_gold(
    stories_file, tmp_path
):
    qa = DocQA(home=tmp_path / "home", device="cpu")
    result = evaluate(qa, load_jsonl(stories_file, "all"), ["bm25"], progress=False)
    every, explicit = result["methods"]["bm25"], result["explicit"]["bm25"]
    # the implicit question has no span and its answer is written nowhere: no gold chunk, no recall
    assert every["has_gold"] == round(2 / 3, 4) and explicit["has_gold"] == 1.0
    assert every["recall@1"] == explicit["recall@1"] == 1.0  # one chunk: always first
    for row in (every, explicit):
        assert 0.0 <= row["rouge_l"] <= 1.0
    assert "| bm25 (explicit) |" in format_table(result)
    squad_like = evaluate(qa, load_jsonl(stories_file), ["bm25"], progress=False)
    assert len(squad_like["explicit"]["bm25"]) > 0 and squad_like["documents"] == 2
