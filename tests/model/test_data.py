"""model.data: SQuAD articles grouped into long training documents, chunked and tokenised like the app."""

from __future__ import annotations

import argparse
import gzip
import json
from collections import Counter

import pytest
import torch

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


NOVEL = [  # one chapter; {i} makes every copy's sentences unique
    "CHAPTER {i}.",
    "Mr. Lorry walked down the long grey street towards the bank on day {i} of the frost. The clerks "
    "of office {i} were at their desks when he came in. Jerry Cruncher waited by the door with his hat\n"
    "pressed against his chest and his boots still wet from night {i}.",
    '"Poor man!" sighed Lucie, looking out at the rain over courtyard {i}. Nobody answered her. The '
    "fire in grate {i} had burned down to a heap of red embers and soft grey ash by then.",
    "Far away in tavern {i} by the harbour, Madame Defarge sat knitting in her usual corner seat. Her "
    "husband counted the bottles on shelf {i} behind the counter and said nothing at all to anyone.",
]


def novel(chapters: int, name: str = "Lorry") -> str:
    return "\n\n".join(p.format(i=i) for i in range(1, chapters + 1) for p in NOVEL).replace("Lorry", name)


def write_novels(folder, chapters: int) -> None:
    """A novel and the excluded evaluation book, as ../shared/data/books holds them."""
    with gzip.open(folder / "a_tale.txt.gz", "wt", encoding="utf-8") as f:
        f.write(novel(chapters))
    (folder / "pride_and_prejudice.txt").write_text(novel(chapters, "Darcy"), encoding="utf-8")


def test_sentences_split_at_ends_not_at_titles_inside_dialogue_or_at_line_wraps():
    from model.data import ict_rank, sentence_spans

    text = novel(1)
    sentences = [text[a:b] for a, b in sentence_spans(text)]
    assert sentences[:2] == ["CHAPTER 1.", NOVEL[1].split(" The clerks")[0].format(i=1)]
    assert sentences[3].startswith("Jerry Cruncher") and "his hat\npressed" in sentences[3]
    assert sentences[4] == '"Poor man!" sighed Lucie, looking out at the rain over courtyard 1.'
    assert sentences[5] == "Nobody answered her."
    # a heading; named or quote-free; too short; the rest quote-free
    assert [ict_rank(s) for s in sentences] == [None, 0, 0, 0, 0, None, 0, 0, 0]
    assert ict_rank('"I shall go to the town tomorrow morning before it rains," he said.') == 1
    assert ict_rank("THE END OF THE FIRST BOOK AND THE START OF THE SECOND ONE") is None


def _inside(needle: list[int], row: list[int]) -> bool:
    return any(row[i : i + len(needle)] == needle for i in range(len(row) - len(needle) + 1))


def test_inverse_cloze_questions_cut_from_their_gold_chunk(tmp_path):
    from ingest.tokenizer import load_tokenizer
    from model.data import RETRIEVAL_ONLY, encode, group_books

    write_novels(tmp_path, chapters=60)
    docs = list(group_books(tmp_path, ["pride_and_prejudice"], 2000, questions=80, seed=0))
    assert len(docs) >= 3 and not any(is_val for _, _, is_val in docs)
    assert all("Lorry" in text and "Darcy" not in text for text, _, _ in docs)  # the evaluation book is out
    tok = load_tokenizer()
    words = {}
    for text, qas, _ in docs:
        flat = " ".join(text.split())
        for q in qas:
            cut = q.start == q.end
            assert (q.question in flat) != cut  # cut from the text, or kept in place (~10%)
            if not cut:
                assert " ".join(text[q.start : q.end].split()) == q.question
            around = (text[: q.start].split()[-3:], text[q.end :].split()[:3])
            words[tuple(tok(q.question, add_special_tokens=False)["input_ids"])] = (cut, around)
    data = encode(docs)
    assert (data["q_start"] == RETRIEVAL_ONLY).all() and (data["q_end"] == RETRIEVAL_ONLY).all()
    assert data["question_ids"].shape[1] == 63 and data["chunk_ids"].shape[1] == 256
    assert len(words) >= len(data["question_ids"]) >= 0.6 * len(words)  # at a chunk's edge: left out
    chunks, ranges, cut_count = data["chunk_ids"].tolist(), data["doc_ranges"].tolist(), 0
    for q in range(len(data["question_ids"])):
        first, last = ranges[int(data["q_doc"][q])]
        gold = int(data["q_chunk"][q])
        assert first <= gold < last
        question = [t for t in data["question_ids"][q].tolist() if t]
        cut, (before, after) = words[tuple(question)]
        assert _inside(question, chunks[gold]) != cut
        if cut:  # gone from every chunk, and the gold chunk holds the text on both sides of the cut
            assert not any(_inside(question, chunks[c]) for c in range(first, last))
            for side in (before, after):
                assert _inside(tok(" ".join(side), add_special_tokens=False)["input_ids"], chunks[gold])
        cut_count += cut
    assert 0.75 * len(data["q_doc"]) < cut_count < len(data["q_doc"])  # ~10% kept
    again = encode(group_books(tmp_path, ["pride_and_prejudice"], 2000, questions=80, seed=0))
    assert all(torch.equal(again[k], v) for k, v in data.items())  # seeded
    other = list(group_books(tmp_path, ["pride_and_prejudice"], 2000, questions=80, seed=1))
    assert [qas for _, qas, _ in other] != [qas for _, qas, _ in docs]
    every = list(group_books(tmp_path, [], 2000, questions=80, seed=0))
    assert any("Darcy" in text for text, _, _ in every)


def test_book_parts_are_whole_chapters_and_questions_capped(tmp_path):
    from ingest.tokenizer import load_tokenizer
    from model.data import book_parts, group_books

    text = novel(30)
    parts = book_parts(text, 1500, load_tokenizer())
    assert len(parts) >= 2 and "\n\n".join(parts) == text  # consecutive, nothing lost
    assert all(p.startswith("CHAPTER ") for p in parts)
    write_novels(tmp_path, chapters=30)
    docs = list(group_books(tmp_path, ["pride_and_prejudice"], 1500, questions=5, seed=0, groupings=2))
    assert len(docs) == 2 * len(parts) and all(len(qas) == 5 for _, qas, _ in docs)
    assert docs[0][1] != docs[len(parts)][1]  # the second grouping cuts other sentences


def test_merged_books_keep_the_format(tmp_path):
    from model.data import RETRIEVAL_ONLY, encode, group_books, merge

    squad = tmp_path / "squad.json.gz"
    with gzip.open(squad, "wt", encoding="utf-8") as f:
        json.dump({"data": squad_articles(n_articles=2, paragraphs=1)}, f)
    first = build(squad, articles_per_doc=1, val_articles=1)
    write_novels(tmp_path, chapters=20)
    books = encode(group_books(tmp_path, ["pride_and_prejudice"], 1500, questions=10, seed=0))
    data = merge(first, books)
    n, q = len(first["chunk_ids"]), len(first["q_doc"])
    assert {k: v.dtype for k, v in data.items()} == {k: v.dtype for k, v in first.items()}
    assert data["q_chunk"][q:].tolist() == (books["q_chunk"] + n).tolist()
    assert (data["q_start"][:q] != RETRIEVAL_ONLY).all() and (data["q_start"][q:] == RETRIEVAL_ONLY).all()
    assert data["doc_is_val"].tolist() == [True, False] + [False] * len(books["doc_ranges"])


def test_name_cloze_asks_who_and_answers_with_another_mention_nearby(tmp_path):
    """Recurring-span reader questions: the sentence is cut, its name becomes "who", and the answer is
    the nearest other mention of that name (title included), inside the gold chunk once encoded."""
    import random

    from model.data import RETRIEVAL_ONLY, encode, group_books, name_cloze

    text = novel(30)
    out, qas = name_cloze(text, 40, random.Random(0))
    assert 10 <= len(qas) <= 40 and len(out) < len(text)
    flat = " ".join(out.split())
    for question, start, end in qas:
        assert question.endswith("?") and " who" in f" {question}" and question.count("who") == 1
        mention = out[start:end]
        name = mention.split()[-1]
        assert name in ("Lorry", "Cruncher", "Lucie", "Defarge") and mention in text, (question, mention)
        if name == "Lorry":
            assert mention == "Mr. Lorry"  # the title comes with the name
        for said in (mention, name):  # the sentence, with its name back, is gone from the text
            assert question[:-1].replace("who", said) + "." not in flat  # (every sentence ends with ".")
        assert "\n\n\n" not in out
    again = name_cloze(text, 40, random.Random(0))
    assert again == (out, qas)  # seeded

    write_novels(tmp_path, chapters=40)
    plain = list(group_books(tmp_path, ["pride_and_prejudice"], 1500, questions=5, seed=0))
    docs = list(group_books(tmp_path, ["pride_and_prejudice"], 1500, questions=5, seed=0, cloze=30))
    assert docs[: len(plain)] == plain and len(docs) == 2 * len(plain)  # each part again (groupings 1)
    data = encode(docs[len(plain) :])
    reads = data["q_start"] != RETRIEVAL_ONLY
    assert reads.all() and len(data["q_start"]) >= 10
    inside = data["q_start"] >= 0
    assert inside.float().mean() > 0.8  # the answer's chunk is the gold one
    chunks = data["chunk_ids"]
    from ingest.tokenizer import load_tokenizer

    tok = load_tokenizer()
    for q in torch.nonzero(inside).flatten().tolist():
        row = chunks[int(data["q_chunk"][q])].tolist()
        span = tok.decode(row[1 + int(data["q_start"][q]) : 2 + int(data["q_end"][q])])
        assert span.split()[-1] in ("lorry", "cruncher", "lucie", "defarge"), span
