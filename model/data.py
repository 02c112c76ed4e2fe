"""Training data for the QA model: SQuAD v1.1 train (and FairytaleQA) as long documents, chunked like
the app chunks.

Runs on the CPU (it uses the ingest chunker), writes one safetensors file that the GPU trainer reads:
    python -m model.data --squad ../shared/data/squad-v1.1/train-v1.1.json.gz --out .carry/train.safetensors
    python -m model.data --fairytaleqa ../shared/data/fairytaleqa --stories-per-doc 24,48 --story-groupings 6

With --fairytaleqa, FairytaleQA's train stories (children's stories with human questions; the questions
with an answer span) are grouped the same way, `stories_per_doc` at a time, and all of its val stories
form one more held-out document: narrative text, dialogue and names, unlike Wikipedia.

Articles are shuffled (seeded) and concatenated `articles_per_doc` at a time, paragraphs joined by a blank
line, so retrieval trains against hundreds of in-document distractor chunks. The first `val_articles`
articles of the shuffle form held-out documents (validation never touches the dev set). With
`groupings` K > 1 the training articles are grouped K times, each time in another seeded order, so every
article appears in K documents among different distractors (the held-out documents appear once).
Several sizes (`--articles-per-doc 48,24`) give the K groupings sizes in turn, so that training sees
documents of several lengths.

Tensors (Q questions, M chunks, G documents, C = 256 chunk tokens, L = 63 question tokens):
    chunk_ids [M, C] int16   "[CLS] chunk [SEP]" padded with 0
    doc_ranges [G, 2] int64  first and one-past-last chunk of each document
    doc_is_val [G] bool
    question_ids [Q, L] int16 question word-pieces (no specials) padded with 0
    q_doc [Q], q_chunk [Q]   document and gold chunk (global index) of each question
    q_start, q_end [Q]       answer token span inside the gold chunk's content tokens (-1: not inside)
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from ingest.chunk import CHUNK_TOKENS  # token ids fit int16: the MiniLM vocabulary has 30,522 entries

QUESTION_TOKENS = 63


def group_articles(
    articles: list[dict],
    articles_per_doc: int | Sequence[int],
    val_articles: int,
    seed: int,
    groupings: int = 1,
):
    """Yield (text, [(question, answer_char_start, answer_char_end)], is_val) per long document.

    `articles_per_doc` may list several sizes: grouping k of the training articles then makes documents
    of size k modulo the list (so documents of several lengths); the held-out documents use the first.
    """
    sizes = [articles_per_doc] if isinstance(articles_per_doc, int) else list(articles_per_doc)
    order = list(range(len(articles)))
    random.Random(seed).shuffle(order)
    splits = [(order[:val_articles], True, sizes[0]), (order[val_articles:], False, sizes[0])]
    for k in range(1, groupings):  # the same training articles, regrouped
        regrouped = list(order[val_articles:])
        random.Random(f"{seed}/grouping/{k}").shuffle(regrouped)
        splits.append((regrouped, False, sizes[k % len(sizes)]))
    for ids, is_val, size in splits:
        for g in range(0, len(ids), size):
            paragraphs = [p for a in ids[g : g + size] for p in articles[a]["paragraphs"]]
            yield (*join_passages((p["context"], _squad_answers(p)) for p in paragraphs), is_val)


def _squad_answers(paragraph: dict) -> list[tuple[str, int, int]]:
    """(question, answer_char_start, answer_char_end) of a SQuAD paragraph's questions (first answer)."""
    out = []
    for qa in paragraph["qas"]:
        answer = qa["answers"][0]
        out.append((qa["question"], answer["answer_start"], answer["answer_start"] + len(answer["text"])))
    return out


def join_passages(passages) -> tuple[str, list[tuple[str, int, int]]]:
    """(text, [(question, start, end)]) passages as one text joined by blank lines, the answer spans
    shifted into it."""
    parts, qas, offset = [], [], 0
    for text, questions in passages:
        qas += [(q, offset + a, offset + b) for q, a, b in questions]
        parts.append(text)
        offset += len(text) + 2
    return "\n\n".join(parts), qas


def _answer_tokens(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """Token span covering chars [start, end) given per-token char offsets; (-1, -1) if not inside."""
    first = next((i for i, (_, e) in enumerate(offsets) if e > start), -1)
    last = next((i for i in range(len(offsets) - 1, -1, -1) if offsets[i][0] < end), -1)
    if first < 0 or last < first:
        return -1, -1
    return first, last


def build(
    squad_path: Path,
    articles_per_doc: int | Sequence[int] = 24,
    val_articles: int = 24,
    seed: int = 0,
    max_articles: int | None = None,
    groupings: int = 1,
) -> dict:
    """SQuAD train articles as long documents (see group_articles), encoded by `encode`."""
    with gzip.open(squad_path, "rt", encoding="utf-8") as f:
        articles = json.load(f)["data"][:max_articles]
    return encode(group_articles(articles, articles_per_doc, val_articles, seed, groupings))


def read_stories(path: Path) -> list[tuple[str, list[tuple[str, int, int]]]]:
    """FairytaleQA stories (one JSON line each, ../shared/data/fairytaleqa/README): (text, [(question,
    answer_char_start, answer_char_end)]) for the questions with an answer span (the first one: answer1's
    first occurrence where it has one); implicit questions have no span and are left out."""
    stories = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                qas = [(q["question"], *q["answer_spans"][0]) for q in row["questions"] if q["answer_spans"]]
                stories.append((row["text"], qas))
    return stories


def group_stories(
    stories: list[tuple[str, list[tuple[str, int, int]]]],
    stories_per_doc: int | Sequence[int],
    seed: int,
    groupings: int = 1,
    is_val: bool = False,
):
    """Yield (text, qas, is_val) of documents of `stories_per_doc` stories joined by blank lines, the
    stories regrouped `groupings` times in other seeded orders (grouping k takes the k-th size,
    cyclically), so each story's questions meet other stories' chunks as distractors each time."""
    sizes = [stories_per_doc] if isinstance(stories_per_doc, int) else list(stories_per_doc)
    for k in range(groupings):
        order = list(range(len(stories)))
        random.Random(f"{seed}/stories/{k}").shuffle(order)
        size = sizes[k % len(sizes)]
        for g in range(0, len(order), size):
            yield (*join_passages(stories[i] for i in order[g : g + size]), is_val)


def encode(documents) -> dict:
    """Chunk (like the app) and tokenise (text, [(question, answer_start, answer_end)], is_val)
    documents into the training tensors of the module docstring."""
    from ingest.chunk import chunk_document
    from ingest.tokenizer import load_tokenizer
    from ingest.types import ParsedDocument

    tok = load_tokenizer()
    chunk_rows, doc_ranges, doc_is_val = [], [], []
    q_rows: dict[str, list] = {k: [] for k in ("ids", "doc", "chunk", "start", "end")}
    for text, qas, is_val in documents:
        doc = ParsedDocument(path="train", title="train", text=text, page_starts=[0], n_pages=1)
        chunks = chunk_document(doc, tok, max_tokens=CHUNK_TOKENS)
        enc = tok([c.text for c in chunks], add_special_tokens=False, return_offsets_mapping=True)
        base = len(chunk_rows)
        for ids in enc["input_ids"]:
            row = [tok.cls_token_id, *ids, tok.sep_token_id]
            chunk_rows.append(row + [0] * (CHUNK_TOKENS - len(row)))
        starts = [c.char_start for c in chunks]
        q_enc = tok(
            [q for q, _, _ in qas], add_special_tokens=False, truncation=True, max_length=QUESTION_TOKENS
        )["input_ids"]
        for (_, a_start, a_end), q_ids in zip(qas, q_enc, strict=True):
            c = max(i for i, s in enumerate(starts) if s <= a_start) if a_start >= starts[0] else 0
            rel = [(s + chunks[c].char_start, e + chunks[c].char_start) for s, e in enc["offset_mapping"][c]]
            span = _answer_tokens(rel, a_start, a_end) if a_end <= chunks[c].char_end else (-1, -1)
            q_rows["ids"].append(q_ids + [0] * (QUESTION_TOKENS - len(q_ids)))
            q_rows["doc"].append(len(doc_ranges))
            q_rows["chunk"].append(base + c)
            q_rows["start"].append(span[0])
            q_rows["end"].append(span[1])
        doc_ranges.append((base, len(chunk_rows)))
        doc_is_val.append(is_val)
    return {
        "chunk_ids": torch.tensor(chunk_rows, dtype=torch.int16),
        "doc_ranges": torch.tensor(doc_ranges, dtype=torch.int64),
        "doc_is_val": torch.tensor(doc_is_val, dtype=torch.bool),
        "question_ids": torch.tensor(q_rows["ids"], dtype=torch.int16),
        "q_doc": torch.tensor(q_rows["doc"], dtype=torch.int64),
        "q_chunk": torch.tensor(q_rows["chunk"], dtype=torch.int64),
        "q_start": torch.tensor(q_rows["start"], dtype=torch.int64),
        "q_end": torch.tensor(q_rows["end"], dtype=torch.int64),
    }


def merge(*parts: dict) -> dict:
    """Training tensors of several `encode` results as one set (chunk and document indexes shifted)."""
    out = {k: [] for k in parts[0]}
    chunks = docs = 0
    for part in parts:
        for k, v in part.items():
            shift = {"doc_ranges": chunks, "q_chunk": chunks, "q_doc": docs}.get(k, 0)
            out[k].append(v + shift if shift else v)
        chunks += len(part["chunk_ids"])
        docs += len(part["doc_ranges"])
    return {k: torch.cat(v) for k, v in out.items()}


def _sizes(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--squad", default="../shared/data/squad-v1.1/train-v1.1.json.gz")
    parser.add_argument("--out", default=".carry/train.safetensors")
    parser.add_argument(
        "--articles-per-doc",
        type=_sizes,
        default=[24],
        help="articles per document; several (e.g. 48,24) give grouping k the k-th size, cyclically",
    )
    parser.add_argument("--val-articles", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-articles", type=int, default=None, help="use only the first N (tests)")
    parser.add_argument(
        "--groupings", type=int, default=1, help="group the training articles this many times (other orders)"
    )
    parser.add_argument(
        "--fairytaleqa",
        default=None,
        help="also FairytaleQA from this folder: train.jsonl.gz stories as training documents, all of "
        "val.jsonl.gz as one held-out document (test.jsonl.gz is never read)",
    )
    parser.add_argument("--stories-per-doc", type=_sizes, default=[24], help="stories per document")
    parser.add_argument(
        "--story-groupings", type=int, default=1, help="group the training stories this many times"
    )
    args = parser.parse_args()
    if args.groupings < 1 or min(args.articles_per_doc) < 1 or args.val_articles < 0:
        parser.error("--groupings and --articles-per-doc must be at least 1, --val-articles at least 0")
    if args.story_groupings < 1 or min(args.stories_per_doc) < 1:
        parser.error("--story-groupings and --stories-per-doc must be at least 1")
    data = build(
        Path(args.squad),
        args.articles_per_doc,
        args.val_articles,
        args.seed,
        args.max_articles,
        args.groupings,
    )
    sources = str(args.squad)
    if args.fairytaleqa:
        folder = Path(args.fairytaleqa)
        train = read_stories(folder / "train.jsonl.gz")
        val = read_stories(folder / "val.jsonl.gz")
        stories = encode(
            [
                *group_stories(train, args.stories_per_doc, args.seed, args.story_groupings),
                *group_stories(val, len(val), args.seed, is_val=True),
            ]
        )
        data = merge(data, stories)
        sources += f", {folder / 'train.jsonl.gz'} (held out: val.jsonl.gz)"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file(data, args.out, metadata={"format_version": "1", "source": sources})
    n_doc = len(data["doc_ranges"])
    found = (data["q_start"] >= 0).float().mean().item()
    print(
        f"{n_doc} documents, {len(data['chunk_ids'])} chunks, {len(data['question_ids'])} questions, "
        f"answer span inside its chunk for {found:.1%}"
    )


if __name__ == "__main__":
    main()
