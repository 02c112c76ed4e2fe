"""Training data for the QA model: SQuAD v1.1 train (and FairytaleQA) as long documents, chunked like
the app chunks.

Runs on the CPU (it uses the ingest chunker), writes one safetensors file that the GPU trainer reads:
    python -m model.data --squad ../shared/data/squad-v1.1/train-v1.1.json.gz --out .carry/train.safetensors
    python -m model.data --fairytaleqa ../shared/data/fairytaleqa --stories-per-doc 24,48 --story-groupings 6

With --fairytaleqa, FairytaleQA's train stories (children's stories with human questions; the questions
with an answer span) are grouped the same way, `stories_per_doc` at a time, and all of its val stories
form one more held-out document: narrative text, dialogue and names, unlike Wikipedia.

With --books, public-domain novels (../shared/data/books/, no QA labels) give self-supervised retrieval
questions, the inverse cloze task (Lee et al., 2019): consecutive chapters are grouped into documents of
about `book_chunks` chunks, and up to `book_questions` sentences of each (8-40 words, not headings; those
naming someone or quote-free first, no two adjacent) become questions whose gold chunk is the one that
held the sentence. The sentence is cut from the text before chunking (kept in 10%, as in the paper), so
retrieval must match its context, not copy it. These questions have no answer span and train retrieval
only (q_start = q_end = RETRIEVAL_ONLY). The evaluation book (pride_and_prejudice) is left out by default.
With --book-cloze, each book document comes again with reader questions made by `name_cloze`
(recurring-span selection in question form: a sentence with a name replaced by "who", cut from the
text; the answer is another mention of that name nearby).

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
    q_start, q_end [Q]       answer token span inside the gold chunk's content tokens (-1: not inside,
                             the reader learns [CLS] there; RETRIEVAL_ONLY = -2: no reader rows at all)
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import json
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import save_file

from ingest.chunk import CHUNK_TOKENS  # token ids fit int16: the MiniLM vocabulary has 30,522 entries

QUESTION_TOKENS = 63
RETRIEVAL_ONLY = -2  # q_start and q_end of a question that trains retrieval alone (no answer to read)


class RetrievalQuestion(NamedTuple):
    """A question without an answer span: its gold chunk is the one holding text[start:end] whole, or,
    with start == end, the one that has the point `start` strictly inside (where a sentence was cut)."""

    question: str
    start: int
    end: int


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


# Chapter-like headings start a line: "CHAPTER I", "Chapter 12", "STAVE ONE", "BOOK II", "PART 1".
_HEADING = re.compile(r"^[^\S\n]*(?:CHAPTER|Chapter|STAVE|Stave|BOOK|Book|PART|Part)\b[^\n]{0,60}$", re.M)
# A paragraph: a run of lines without a blank line between them (the novels keep their hard wraps).
_PARAGRAPH = re.compile(r"\S(?:[^\n]|\n(?![^\S\n]*\n))*")
# A sentence ends at . ! ? (and closing quotes or brackets) before whitespace, not after a title or an
# initial ("Mr. Lorry", "J. Smith") nor before a lower-case word.
_SENTENCE_END = re.compile(r"[.!?][\"'’”)\]_]*(?=\s)")
_NOT_AN_END = re.compile(r"(?:\b(?:Mr|Mrs|Ms|Dr|St|Messrs|Capt|Col|Gen|Rev|Prof)|\b[A-Z])\.$")
_NAME = re.compile(r"\s[\"“‘(]?(?!I\b)[A-Z][a-z]+")  # a capitalised word after the first
_QUOTES = re.compile('["“”]')
ICT_WORDS = (8, 40)  # words of a sentence that becomes a question
ICT_KEEP = 0.1  # share of question sentences left in their chunk (Lee et al. keep 10%)
_SPACES = re.compile(r"\s*")
_TITLES = "Mr|Mrs|Miss|Dr|Lady|Sir|Colonel|Captain|Aunt|Uncle|Madame|Monsieur"
# A name in a sentence: a capitalised word, with the title before it if any (name_cloze filters more).
_TITLED_NAME = re.compile(
    rf"(?<=[\s\"“‘(])(?:(?:{_TITLES})\.?\s+)?"
    r"(?!(?:I|God|Heaven|Oh|Yes|No|Sir|Madam|Lord|The|But|And|What|It|He|She|They|We|You|My|Christmas|"
    r"Sunday|Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|English|French)\b)([A-Z][a-z]{2,})\b"
)
CLOZE_REACH = 700  # characters around a cloze sentence searched for another mention of its name


def read_book(path: Path) -> str:
    """A novel's text, from .txt or .txt.gz (UTF-8, ../shared/data/books/README)."""
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    return path.read_text(encoding="utf-8")


def book_parts(text: str, tokens_per_doc: int, tok) -> list[str]:
    """The novel as consecutive runs of whole chapters (cut at chapter headings) of at least
    `tokens_per_doc` word-pieces each, the last run joined to the one before when shorter than half."""
    cuts = [0, *(m.start() for m in _HEADING.finditer(text) if m.start() > 0), len(text)]
    sections = [text[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    sizes = [len(ids) for ids in tok(sections, add_special_tokens=False, verbose=False)["input_ids"]]
    parts, current, size = [], "", 0
    for section, n in zip(sections, sizes, strict=True):
        current, size = current + section, size + n
        if size >= tokens_per_doc:
            parts.append((current, size))
            current, size = "", 0
    if current.strip():
        parts.append((current, size))
    if len(parts) > 1 and parts[-1][1] < tokens_per_doc // 2:
        (a, m), (b, n) = parts[-2], parts.pop()
        parts[-1] = (a + b, m + n)
    return [part.strip() for part, _ in parts if part.strip()]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """[start, end) of each sentence of `text`, paragraph by paragraph (none spans a blank line)."""
    spans = []
    for paragraph in _PARAGRAPH.finditer(text):
        start, end = paragraph.start(), paragraph.start() + len(paragraph.group().rstrip())
        for m in _SENTENCE_END.finditer(text, start, end):
            rest = text[m.end() : end].lstrip()
            if _NOT_AN_END.search(text, start, m.start() + 1) or rest[:1].islower():
                continue  # "Mr. Lorry"; '"Poor!" sighed Meg' goes on after the quote
            spans.append((start, m.end()))
            start = end - len(rest)
        if start < end:
            spans.append((start, end))
    return spans


def ict_rank(sentence: str) -> int | None:
    """0 for a sentence that names someone or has no quotation marks, 1 for another one fit to be a
    question, None for one that is not (too short or long, a heading, no lower-case word)."""
    words = sentence.split()
    if not ICT_WORDS[0] <= len(words) <= ICT_WORDS[1] or _HEADING.match(sentence):
        return None
    letters = [c for c in sentence if c.isalpha()]
    if sum(c.isupper() for c in letters) > len(letters) / 2:
        return None
    return 0 if _NAME.search(sentence) or not _QUOTES.search(sentence) else 1


def pick_sentences(text: str, spans: list[tuple[int, int]], n: int, rng: random.Random) -> list[int]:
    """Indexes into `spans` of up to `n` question sentences, in text order: a seeded draw, sentences of
    rank 0 (ict_rank) before rank 1, never two adjacent ones (each keeps its neighbours as context)."""
    ranks = [ict_rank(text[a:b]) for a, b in spans]
    taken: set[int] = set()
    for rank in (0, 1):
        pool = [i for i, r in enumerate(ranks) if r == rank]
        rng.shuffle(pool)
        for i in pool:
            if len(taken) == n:
                break
            if i - 1 not in taken and i + 1 not in taken:
                taken.add(i)
    return sorted(taken)


def cut_end(text: str, end: int) -> int:
    """Where the cut of a sentence ending at `end` ends: its following spaces go with it, unless they
    hold a blank line (the paragraph break stays)."""
    gap = _SPACES.match(text, end).end()
    return gap if text.count("\n", end, gap) <= 1 else end


def inverse_cloze(text: str, n: int, rng: random.Random) -> tuple[str, list[RetrievalQuestion]]:
    """(text with the question sentences cut out, their RetrievalQuestions): up to `n` sentences
    (pick_sentences), each the question (whitespace normalised) for the point where it was cut, or, for
    ICT_KEEP of them, left in place and the question for its own span."""
    spans = sentence_spans(text)
    parts, questions, done, length = [], [], 0, 0
    for i in pick_sentences(text, spans, n, rng):
        start, end = spans[i]
        question = " ".join(text[start:end].split())
        parts.append(text[done:start])
        length += start - done
        if rng.random() < ICT_KEEP:
            questions.append(RetrievalQuestion(question, length, length + end - start))
            done = start
            continue
        done = cut_end(text, end)
        questions.append(RetrievalQuestion(question, length, length))
    parts.append(text[done:])
    return "".join(parts), questions


def name_cloze(text: str, n: int, rng: random.Random) -> tuple[str, list[tuple[str, int, int]]]:
    """(text with the question sentences cut out, reader questions (question, answer_start, answer_end)):
    recurring-span selection on a novel (Ram et al., 2021, in question form). Up to `n` sentences fit
    to be questions (ict_rank) that name someone mentioned again within CLOZE_REACH characters become
    questions: the sentence with that name (and its title) replaced by "who" ("who had soon made himself
    acquainted with all the principal people in the room?"). The sentence is cut from the text, and the
    answer is the nearest other mention, title included. The reader learns to tell which of a passage's
    names a question is about, from its context; the question's chunk is the one holding that mention."""
    spans = sentence_spans(text)
    # names: capitalised words seen at least 3 times after a lower-case word; only those may be a
    # sentence's first word (elsewhere any capitalised word may be one)
    seen = Counter(re.findall(r"(?<=[a-z,;] )([A-Z][a-z]{2,})\b", text))
    known = {word for word, count in seen.items() if count >= 3}
    chosen = []  # (sentence index, name match)
    order = pick_sentences(text, spans, len(spans), rng)
    rng.shuffle(order)  # up to n of them, from anywhere in the text
    for i in order:
        start, end = spans[i]
        names = [
            m
            for m in _TITLED_NAME.finditer(text, start, end)
            if (m.group(1) in known or re.search(r"[a-z]", text[start : m.start()]))
            and not _after_capital(text, m.start())
            and not re.match(r"\s+[A-Z]", text[m.end() : m.end() + 2])  # not "Madame Defarge", "New York"
        ]
        rng.shuffle(names)
        for m in names:
            near = _mentions(text, m.group(1), max(0, start - CLOZE_REACH), end + CLOZE_REACH)
            if any(not start <= a < end for a, _ in near):
                chosen.append((i, m))
                break
        if len(chosen) == n:
            break
    chosen.sort(key=lambda c: c[0])
    cut = [spans[i] for i, _ in chosen]
    removed = [(a, cut_end(text, b)) for a, b in cut]  # what is cut, in `text`
    kept = [text[b:a] for (_, b), (a, _) in zip([(0, 0), *removed], [*removed, (len(text), 0)], strict=True)]
    starts = [a for a, _ in removed]
    questions = []

    def shifted(offset: int) -> int:  # an offset of the original text in the cut one
        k = bisect.bisect_right(starts, offset)
        return offset - sum(b - a for a, b in removed[:k])

    for (_, m), (a, b) in zip(chosen, cut, strict=True):
        near = [
            (x, y)
            for x, y in _mentions(text, m.group(1), max(0, a - CLOZE_REACH), b + CLOZE_REACH)
            if not any(p <= x < q for p, q in removed)
        ]
        if not near:
            continue  # its only other mention was in another cut sentence
        x, y = min(near, key=lambda span: abs(span[0] - a))
        question = text[a : m.start()] + "who" + text[m.end() : b]
        question = " ".join(question.split()).rstrip(".!?\"'’”_ ") + "?"
        questions.append((question, shifted(x), shifted(y)))
    return "".join(kept), questions


def _after_capital(text: str, at: int) -> bool:
    """True where the word before `at` is capitalised and no title: "Celestial City", "New York"."""
    before = text[max(0, at - 30) : at].split()
    return bool(before) and before[-1][:1].isupper() and not _TITLE_BEFORE.search(before[-1] + " ")


def _mentions(text: str, name: str, start: int, end: int) -> list[tuple[int, int]]:
    """(start, end) of each mention of `name` in text[start:end], with its title if one precedes it."""
    found = []
    for m in re.finditer(rf"\b{re.escape(name)}\b", text[start:end]):
        a, b = start + m.start(), start + m.end()
        title = _TITLE_BEFORE.search(text, max(0, a - 12), a)
        found.append((title.start() if title else a, b))
    return found


_TITLE_BEFORE = re.compile(rf"(?:{_TITLES})\.?\s+$")


def group_books(
    folder: Path,
    exclude: Sequence[str],
    tokens_per_doc: int,
    questions: int,
    seed: int,
    groupings: int = 1,
    cloze: int = 0,
) -> Iterator[tuple[str, list, bool]]:
    """Yield (text, ICT questions, False) for each part (book_parts) of each novel in `folder` (*.txt
    and *.txt.gz, by name, but those named in `exclude`, without extension), `groupings` times with
    other seeded question sentences; all are training documents. With `cloze` > 0, each part `groupings`
    times more with up to that many name_cloze reader questions instead."""
    from ingest.tokenizer import load_tokenizer

    tok = load_tokenizer()
    for path in sorted(folder.glob("*.txt*")):
        name = path.name.split(".")[0]
        if name in exclude or path.suffix not in (".txt", ".gz"):
            continue
        parts = book_parts(read_book(path), tokens_per_doc, tok)
        for k in range(groupings):
            for j, part in enumerate(parts):
                yield (*inverse_cloze(part, questions, random.Random(f"{seed}/books/{name}/{j}/{k}")), False)
        for k in range(groupings if cloze else 0):
            for j, part in enumerate(parts):
                yield (*name_cloze(part, cloze, random.Random(f"{seed}/cloze/{name}/{j}/{k}")), False)


def encode(documents) -> dict:
    """Chunk (like the app) and tokenise (text, [(question, answer_start, answer_end) or
    RetrievalQuestion], is_val) documents into the training tensors of the module docstring. A
    RetrievalQuestion whose text lies in no single chunk is left out."""
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
        located = [(qa, _gold_chunk(chunks, starts, enc["offset_mapping"], qa)) for qa in qas]
        located = [(qa, found) for qa, found in located if found is not None]
        q_texts = [qa[0] for qa, _ in located]
        q_enc = tok(q_texts, add_special_tokens=False, truncation=True, max_length=QUESTION_TOKENS)
        q_enc = q_enc["input_ids"]
        for (_, (c, span)), q_ids in zip(located, q_enc, strict=True):
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
        "question_ids": torch.tensor(q_rows["ids"], dtype=torch.int16).view(-1, QUESTION_TOKENS),
        "q_doc": torch.tensor(q_rows["doc"], dtype=torch.int64),
        "q_chunk": torch.tensor(q_rows["chunk"], dtype=torch.int64),
        "q_start": torch.tensor(q_rows["start"], dtype=torch.int64),
        "q_end": torch.tensor(q_rows["end"], dtype=torch.int64),
    }


def _gold_chunk(chunks, starts: list[int], offsets, qa) -> tuple[int, tuple[int, int]] | None:
    """(gold chunk index, answer token span in it) of a question, given the chunks' char starts; None
    for a RetrievalQuestion that no single chunk holds."""
    if isinstance(qa, RetrievalQuestion):
        _, start, end = qa
        c = bisect.bisect_right(starts, start) - 1  # the last chunk starting at or before `start`
        if c < 0 or end > chunks[c].char_end or (start == end and not starts[c] < start < chunks[c].char_end):
            return None
        return c, (RETRIEVAL_ONLY, RETRIEVAL_ONLY)
    _, a_start, a_end = qa
    c = max(0, bisect.bisect_right(starts, a_start) - 1)
    rel = [(s + chunks[c].char_start, e + chunks[c].char_start) for s, e in offsets[c]]
    return c, _answer_tokens(rel, a_start, a_end) if a_end <= chunks[c].char_end else (-1, -1)


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
    parser.add_argument(
        "--books",
        default=None,
        help="also inverse-cloze retrieval questions from the novels (*.txt, *.txt.gz) in this folder",
    )
    parser.add_argument(
        "--books-exclude",
        type=lambda text: [n for n in text.split(",") if n],
        default=["pride_and_prejudice"],
        help="comma-separated novels (file names without extension) left out: the evaluation book",
    )
    parser.add_argument(
        "--book-chunks", type=int, default=400, help="a document per this many full chunks' tokens of a novel"
    )
    parser.add_argument("--book-questions", type=int, default=1000, help="at most this many a document")
    parser.add_argument(
        "--book-groupings",
        type=int,
        default=1,
        help="make each novel's documents this many times (other sentences)",
    )
    parser.add_argument(
        "--book-cloze",
        type=int,
        default=0,
        help="also each novel's documents again (--book-groupings times) with up to this many name-cloze "
        "reader questions a document (recurring-span selection: a sentence with a name replaced by "
        "'who', the answer another mention of it nearby; 0: none)",
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
    if args.books:
        if min(args.book_chunks, args.book_questions, args.book_groupings) < 1:
            parser.error("--book-chunks, --book-questions and --book-groupings must be at least 1")
        folder = Path(args.books)
        tokens = args.book_chunks * (CHUNK_TOKENS - 2)
        if args.book_cloze < 0:
            parser.error("--book-cloze must be at least 0")
        n, k = args.book_questions, args.book_groupings
        books = encode(group_books(folder, args.books_exclude, tokens, n, args.seed, k, args.book_cloze))
        read = int((books["q_start"] != RETRIEVAL_ONLY).sum())
        print(
            f"books: {len(books['doc_ranges'])} documents, {len(books['chunk_ids'])} chunks, "
            f"{len(books['question_ids']) - read} retrieval-only questions, {read} name-cloze questions"
        )
        data = merge(data, books)
        cloze = f", name cloze {args.book_cloze} a document" if args.book_cloze else ""
        sources += f", {folder} (inverse cloze{cloze}; left out: {','.join(args.books_exclude)})"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file(data, args.out, metadata={"format_version": "1", "source": sources})
    n_doc = len(data["doc_ranges"])
    spans = data["q_start"] != RETRIEVAL_ONLY
    found = (data["q_start"][spans] >= 0).float().mean().item()
    print(
        f"{n_doc} documents, {len(data['chunk_ids'])} chunks, {len(data['question_ids'])} questions "
        f"({int((~spans).sum())} retrieval-only), answer span inside its chunk for {found:.1%} of the others"
    )


if __name__ == "__main__":
    main()
