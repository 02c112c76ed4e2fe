"""model.data: SQuAD articles grouped into long training documents, chunked and tokenised like the app."""

from __future__ import annotations

import argparse
import gzip
import json
from collections import Counter

import pytest

from model.data import _sizes, build, group_articles

FILLER = (
    "The valley road climbs past orchards, stone walls and a mill whose wheel still turns in spring. "
    "Travellers stop at the inn for bread and cheese before the pass. "
)


def squad_articles(n_articles: int = 6, paragraphs: int = 2) -> list[dict]:
    """Articles whose every paragraph names one keeper, asked about by one question."""
    articles = []
    for a in range(n_articles):
        paras = []
        for p in range(paragraphs):
            answer = f"Marigold Quenby{a}{p}"
            context = f"{FILLER * 3}The keeper of tower {a}-{p} is {answer}. {FILLER * 2}"
            qa = {
                "id": f"{a}-{p}",
                "question": f"Who keeps tower {a}-{p}?",
                "answers": [{"text": answer, "answer_start": context.index(answer)}],
            }
            paras.append({"context": context, "qas": [qa]})
        articles.append({"title": f"Article {a}", "paragraphs": paras})
    return articles


def _questions(docs) -> Counter:
    return Counter(q for _, qas, _ in docs for q, _, _ in qas)


def test_groupings_put_each_training_article_in_k_documents_and_held_out_ones_in_one():
    articles = squad_articles(n_articles=6)
    docs = list(group_articles(articles, 2, val_articles=2, seed=0, groupings=2))
    val = [d for d in docs if d[2]]
    train = [d for d in docs if not d[2]]
    assert len(val) == 1 and len(train) == 4  # 2 held out; 4 training articles, 2 a document, twice
    assert set(_questions(val).values()) == {1} and set(_questions(train).values()) == {2}
    assert not set(_questions(val)) & set(_questions(train))
    for text, qas, _ in docs:  # answer offsets point at the answer inside the document text
        for question, start, end in qas:
            assert text[start:end].startswith("Marigold Quenby"), question


def test_several_sizes_give_the_groupings_documents_of_several_lengths():
    articles = squad_articles(n_articles=10)
    docs = list(group_articles(articles, [2, 4], val_articles=2, seed=0, groupings=2))
    lengths = sorted(len(qas) // 2 for _, qas, is_val in docs if not is_val)  # 2 questions an article
    assert lengths == [2, 2, 2, 2, 4, 4]  # grouping 0: size 2; grouping 1: size 4
    assert [len(qas) // 2 for _, qas, is_val in docs if is_val] == [2]  # held out: the first size
    same = list(group_articles(articles, 2, val_articles=2, seed=0, groupings=2))
    assert same == list(group_articles(articles, [2], val_articles=2, seed=0, groupings=2))
    assert _sizes("48,24") == [48, 24]
    with pytest.raises(argparse.ArgumentTypeError, match="whole numbers"):
        _sizes("48,x")


def test_build_chunks_documents_and_maps_answers_to_chunk_tokens(tmp_path):
    from ingest.tokenizer import load_tokenizer

    path = tmp_path / "squad.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump({"data": squad_articles(n_articles=4, paragraphs=3)}, f)
    data = build(path, articles_per_doc=2, val_articles=2, seed=0, groupings=1)
    tok = load_tokenizer()
    assert data["doc_is_val"].tolist() == [True, False]
    chunks = data["chunk_ids"].long()
    assert chunks.shape[1] == 256 and (chunks[:, 0] == tok.cls_token_id).all()
    ranges = data["doc_ranges"].tolist()
    assert ranges[0][0] == 0 and ranges[-1][1] == len(chunks) and ranges[0][1] > ranges[0][0] + 1
    inside = 0
    for q in range(len(data["question_ids"])):
        first, last = ranges[int(data["q_doc"][q])]
        chunk = int(data["q_chunk"][q])
        assert first <= chunk < last
        start, end = int(data["q_start"][q]), int(data["q_end"][q])
        if start < 0:
            continue
        row = chunks[chunk]
        content = row[1 : int((row != 0).sum()) - 1].tolist()  # without [CLS] and [SEP]
        answer = tok.decode(content[start : end + 1]).replace(" ", "")
        question = tok.decode(data["question_ids"][q][data["question_ids"][q] != 0].tolist())
        keeper = question.split("tower ")[1].rstrip("?").replace(" ", "").replace("-", "")
        assert answer == f"marigoldquenby{keeper}"  # the answer's tokens, in the right chunk
        inside += 1
    assert inside >= 10  # of 12: an answer may straddle two chunks (then it is marked -1)


def test_stories_are_grouped_and_merged_after_the_squad_documents(tmp_path):
    from model.data import encode, group_stories, merge, read_stories

    texts = [f"{FILLER * 4}Once a miller named Tobias{i} kept a grey goose. {FILLER}" for i in range(5)]
    rows = [
        {
            "text": t,
            "questions": [
                {"question": f"Who kept goose {i}?", "answer_spans": [[t.index("Tobias"), t.index(" kept")]]},
                {"question": "Why was he sad?", "answer_spans": []},  # implicit: no span, left out
            ],
        }
        for i, t in enumerate(texts)
    ]
    path = tmp_path / "train.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in rows))
    stories = read_stories(path)
    assert [len(qas) for _, qas in stories] == [1] * 5
    docs = list(group_stories(stories, [2, 3], seed=0, groupings=2))
    assert [len(qas) for _, qas, _ in docs] == [2, 2, 1, 3, 2]  # grouping 0 by 2, grouping 1 by 3
    for text, qas, is_val in docs:
        assert not is_val and all(text[a:b].startswith("Tobias") for _, a, b in qas)
    assert _questions(docs) == Counter({f"Who kept goose {i}?": 2 for i in range(5)})
    squad = tmp_path / "squad.json.gz"
    with gzip.open(squad, "wt", encoding="utf-8") as f:
        json.dump({"data": squad_articles(n_articles=2, paragraphs=1)}, f)
    first = build(squad, articles_per_doc=1, val_articles=1)
    second = encode(docs[:2])
    data = merge(first, second)
    n = len(first["chunk_ids"])
    assert len(data["chunk_ids"]) == n + len(second["chunk_ids"])
    assert data["doc_ranges"][2:].tolist() == (second["doc_ranges"] + n).tolist()
    assert data["q_doc"][-1] == 3 and data["q_chunk"][-1] == second["q_chunk"][-1] + n
    assert data["doc_is_val"].tolist() == [True, False, False, False]
