"""`python -m app eval`: long-document QA benchmark over SQuAD-format or JSONL data.

Each document is ingested through the normal pipeline (DocQA.add_text / DocQA.add), then every question
is asked of its own document with each method. Gold passages are the chunks that hold a reference answer
span (SQuAD, or JSONL questions with "answer_spans" such as FairytaleQA's) or the answer text (free-form
JSONL). Reported per method: recall@1/5/20 of the final evidence ranking, retrieval_recall@1/5/20/50 of
the retrieval stage alone (both over the questions that have a gold chunk), EM, F1, ROUGE-L,
answer-in-evidence (a reference answer appears in the top-5 evidence), abstention rate, p50/p95 latency;
where some questions are implicit (FairytaleQA), the same again over the explicit ones. The result also
records its setup: device, candidates read, the QA model's fingerprint (app/engine.py), seed, time box.

    python -m app eval --data ../shared/data/fairytaleqa/val.jsonl.gz --format jsonl            # per story
    python -m app eval --data ../shared/data/fairytaleqa/val.jsonl.gz --format jsonl --group all  # one doc

The pseudo-method `reader` measures the trained span reader alone on gold passages: it reads only the
chunk(s) holding the answer (no retrieval, no document cache, never abstains) and reports EM/F1.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from app import methods as registry
from app import metrics

FINAL_KS = (1, 5, 20)
RETRIEVAL_KS = (1, 5, 20, 50)


@dataclass
class EvalQuestion:
    id: str
    question: str
    answers: list[str]  # what F1, EM and ROUGE-L score against
    spans: list[tuple[int, int]] = field(default_factory=list)  # char spans in the document text
    explicit: bool = True  # the answer is stated in the text (FairytaleQA's "explicit"; SQuAD: always)
    evidence: list[str] = field(default_factory=list)  # quotes that state the answer: become spans at ingest


@dataclass
class EvalDocument:
    id: str
    title: str
    questions: list[EvalQuestion]
    text: str | None = None
    path: str | None = None


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="SQuAD JSON (.json or .json.gz) or JSONL file")
    p.add_argument("--format", choices=("squad", "jsonl"), default="squad")
    p.add_argument(
        "--group",
        choices=("article", "all"),
        default="article",
        help="one document per SQuAD article or JSONL line, or one document of them all",
    )
    p.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated from {', '.join(registry.NAMES)}, reader (the reader alone on gold "
        "chunks); default: every method (bsbr when the trained model is there)",
    )
    p.add_argument("--limit", type=int, default=None, help="ask at most N questions (spread over documents)")
    p.add_argument("--json", dest="json_out", default=None, help="write the metrics as JSON to this file")
    p.add_argument(
        "--unanswerable",
        type=int,
        default=0,
        help="also ask N questions of a document that does not hold them (needs >= 2 documents) "
        "and report abstain_rate_unanswerable",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop asking after this long; questions are asked in a seeded random order, so the "
        "ones answered are a random sample (the JSON says how many)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--answers",
        action="store_true",
        help="also list each method's answer to each question (printed, and in the JSON)",
    )


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def load_squad(path: Path, group: str) -> list[EvalDocument]:
    """SQuAD JSON -> documents of paragraphs joined by blank lines, answer spans mapped into them (one
    per article, or with `group="all"` one of every article)."""
    with _open_text(path) as f:
        articles = json.load(f)["data"]
    docs: list[EvalDocument] = []
    for a_idx, article in enumerate(articles):
        parts: list[str] = []
        questions: list[EvalQuestion] = []
        offset = 0
        for para in article["paragraphs"]:
            context = para["context"]
            for qa in para["qas"]:
                spans = [
                    (offset + a["answer_start"], offset + a["answer_start"] + len(a["text"]))
                    for a in qa["answers"]
                ]
                questions.append(
                    EvalQuestion(qa["id"], qa["question"], [a["text"] for a in qa["answers"]], spans)
                )
            parts.append(context)
            offset += len(context) + 2
        title = article.get("title", f"article {a_idx}")
        docs.append(EvalDocument(f"article-{a_idx}", title, questions, text="\n\n".join(parts)))
    return _join(docs, path.name) if group == "all" else docs


def load_jsonl(path: Path, group: str = "article") -> list[EvalDocument]:
    """One document per line: {"id", "title", "text" | "path", "questions": [...]}.

    A question is {"id", "question", "answers"}, optionally with "answer_spans" ([[start, end], ...]
    char offsets into "text", which then decide the gold chunks), "evidence" (quotes of the document
    that state the answer, matched ignoring case and whitespace once it is ingested: gold chunks for a
    "path" document, whose text is known only then), "extractive" (false: the answer is not stated in
    the text) and "answer_fields" (FairytaleQA: only answer1 and answer4 are scored, as in its
    benchmark). FairytaleQA's files are read as they are. `group="all"` joins every document's
    text, blank-line separated, into one document (spans shifted; "path" documents cannot be joined).
    """
    docs = []
    with _open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "text" not in row and "path" not in row:
                raise ValueError(f"{path}:{line_no}: a document needs 'text' or 'path'")
            doc_path = row.get("path")
            if doc_path is not None and not Path(doc_path).is_absolute():
                doc_path = str(path.parent / doc_path)
            qs = [_jsonl_question(q, f"{line_no}-{i}") for i, q in enumerate(row.get("questions", []))]
            docs.append(
                EvalDocument(
                    str(row.get("id", line_no)),
                    row.get("title", f"document {line_no}"),
                    qs,
                    text=row.get("text"),
                    path=doc_path,
                )
            )
    return _join(docs, path.name) if group == "all" else docs


SCORED_FIELDS = ("answer1", "answer4")  # FairytaleQA's benchmark scores against these two


def _jsonl_question(q: dict, default_id: str) -> EvalQuestion:
    answers = list(q.get("answers", []))
    fields = q.get("answer_fields")
    if fields and any(f in SCORED_FIELDS for f in fields):
        answers = [a for a, f in zip(answers, fields, strict=True) if f in SCORED_FIELDS]
    spans = [(int(a), int(b)) for a, b in q.get("answer_spans", [])]
    evidence = q.get("evidence", [])
    if isinstance(evidence, str) or not all(isinstance(e, str) and e.strip() for e in evidence):
        raise ValueError(f"question {q.get('id', default_id)}: 'evidence' must be a list of non-empty quotes")
    return EvalQuestion(
        str(q.get("id", default_id)),
        q["question"],
        answers,
        spans,
        bool(q.get("extractive", True)),
        list(evidence),
    )


def _join(docs: list[EvalDocument], title: str) -> list[EvalDocument]:
    """Every document's text as one, blank-line separated, with the answer spans shifted into it."""
    if any(d.text is None for d in docs):
        raise ValueError("--group all needs every document's 'text' (a 'path' document cannot be joined)")
    parts, questions, offset = [], [], 0
    for d in docs:
        for q in d.questions:
            spans = [(a + offset, b + offset) for a, b in q.spans]
            questions.append(EvalQuestion(q.id, q.question, q.answers, spans, q.explicit, q.evidence))
        parts.append(d.text)
        offset += len(d.text) + 2
    return [EvalDocument("all", title, questions, text="\n\n".join(parts))]


def _limit(docs: list[EvalDocument], limit: int | None) -> list[EvalDocument]:
    """Keep at most `limit` questions, spread evenly over the data (every k-th question)."""
    total = sum(len(d.questions) for d in docs)
    if limit is None or limit >= total:
        return docs
    step = total / limit
    keep = {int(i * step) for i in range(limit)}
    seen = 0
    out = []
    for d in docs:
        qs = [q for i, q in enumerate(d.questions, seen) if i in keep]
        seen += len(d.questions)
        if qs:
            out.append(EvalDocument(d.id, d.title, qs, d.text, d.path))
    return out


def evidence_spans(text: str, quote: str) -> list[tuple[int, int]]:
    """Every place `quote` is in `text`, ignoring case and treating any run of whitespace as one
    space: (start, end) char offsets into `text`."""
    words = quote.split()
    pattern = r"\s+".join(re.escape(w) for w in words)
    return [(m.start(), m.end()) for m in re.finditer(pattern, text, flags=re.IGNORECASE)]


def _resolve_evidence(doc: EvalDocument, text: str) -> None:
    """Turn the evidence quotes of `doc`'s questions into answer spans of its ingested `text`."""
    for q in doc.questions:
        for quote in q.evidence:
            found = evidence_spans(text, quote)
            if not found:
                raise ValueError(f"{doc.title}: question {q.id}: evidence {quote!r} is not in the document")
            q.spans.extend(span for span in found if span not in q.spans)


def gold_chunks(question: EvalQuestion, chunks) -> set[int]:
    """Chunks holding a reference answer span, or (free-form) the answer text."""
    gold = set()
    if question.spans:
        for start, _end in question.spans:
            for c in chunks:
                if c.char_start <= start < c.char_end:
                    gold.add(c.index)
                    break
        return gold
    answers = [a.lower() for a in question.answers if a.strip()]
    for c in chunks:
        low = c.text.lower()
        if any(a in low for a in answers):
            gold.add(c.index)
    return gold


def _best_guess(answer) -> str:
    """The answer the method would give if it never abstained (its top passage's best span)."""
    if not answer.abstained or not answer.evidence:
        return answer.answer
    top = answer.evidence[0]
    if top.answer_start is None:
        return ""
    return top.text[top.answer_start : top.answer_end]


def _answer_in_evidence(answer, references: list[str]) -> float:
    refs = [metrics.normalize_answer(r) for r in references if r.strip()]
    texts = [metrics.normalize_answer(e.text) for e in answer.evidence[:5]]
    return float(any(r and r in t for r in refs for t in texts))


def evaluate(
    qa,
    docs: list[EvalDocument],
    methods: list[str],
    progress: bool = True,
    unanswerable: int = 0,
    max_minutes: float | None = None,
    seed: int = 0,
    answers: bool = False,
) -> dict:
    """Ingest every document, ask every question with every method, and aggregate the metrics. With
    `answers`, the result also lists each method's answer to each question, in the data's order."""
    rows: dict[str, dict[str, list[float]]] = {m: {} for m in methods}
    listed: dict[str, list[tuple[int, dict]]] = {m: [] for m in methods if m != READER}
    explicit_rows: dict[str, dict[str, list[float]]] = {m: {} for m in methods}
    ingest_seconds = {m: 0.0 for m in methods}
    doc_tokens = 0
    stored = []
    for doc in tqdm(docs, desc="ingest", file=sys.stderr, disable=not progress):
        report = (
            qa.add_text(doc.text, title=doc.title, owner="eval")
            if doc.text is not None
            else qa.ingest(doc.path, owner="eval")
        )
        doc_tokens += report.tokens
        if any(q.evidence for q in doc.questions):
            _resolve_evidence(doc, qa.store.text(report.doc_id)[0])
        for m in methods:
            ingest_seconds[m] += report.timings.get("chunk", 0.0) + report.timings.get(_stage(m), 0.0)
        stored.append(report.doc_id)
    asked_methods = [m for m in methods if m != READER]
    jobs = [(d, q) for d in range(len(docs)) for q in docs[d].questions]
    position = {id(q): k for k, (_, q) in enumerate(jobs)}  # the data's order, for `answers`
    rng = random.Random(seed)
    rng.shuffle(jobs)
    probes = rng.sample(jobs, min(unanswerable, len(jobs))) if len(docs) > 1 else []
    deadline = time.monotonic() + max_minutes * 60 if max_minutes else math.inf
    for d, q in probes:  # first, so that a time limit never leaves them out
        other = stored[(d + 1) % len(stored)]
        for a in qa.ask(q.question, docs=[other], methods=asked_methods, top_k=5, owner="eval"):
            rows[a.method].setdefault("abstain_rate_unanswerable", []).append(float(a.abstained))
    asked = 0
    for d, q in tqdm(jobs, desc="questions", file=sys.stderr, disable=not progress):
        if time.monotonic() > deadline:
            break
        chunks = qa.store.chunks(stored[d])
        gold = gold_chunks(q, chunks)
        subsets = [rows, explicit_rows] if q.explicit else [rows]
        if READER in methods and gold:
            prediction, latency = _read_gold(qa, q, chunks, gold)
            for r in subsets:
                r[READER].setdefault("latency", []).append(latency)
                _record_answer(r[READER], prediction, q)
        replies = qa.ask(
            q.question,
            docs=[stored[d]],
            methods=asked_methods,
            top_k=max(FINAL_KS),
            owner="eval",
            retrieve_k=max(RETRIEVAL_KS),
        )
        for a in replies:
            for r in subsets:
                _record(r[a.method], a, q, gold)
            listed[a.method].append((position[id(q)], _listed(a, q, gold)))
        asked += 1
    result = {
        "documents": len(docs),
        "questions": asked,
        "questions_total": len(jobs),
        "doc_tokens": doc_tokens,
        "ingest_seconds": {m: round(s, 3) for m, s in ingest_seconds.items()},
        "setup": {  # what produced these numbers
            "device": qa.device,
            "read_k": qa.read_k,
            "model": qa.engine.fingerprint if qa.engine is not None else None,
            "seed": seed,
            "max_minutes": max_minutes,
        },
        "methods": {m: _summarise(r) for m, r in rows.items()},
    }
    if any(not q.explicit for _, q in jobs):  # FairytaleQA: the answer-is-stated questions apart
        result["explicit"] = {m: _summarise(r) for m, r in explicit_rows.items()}
    if answers:  # in the data's order, not the order asked
        result["answers"] = {m: [a for _, a in sorted(got, key=lambda p: p[0])] for m, got in listed.items()}
    return result


def _listed(answer, q: EvalQuestion, gold: set[int]) -> dict:
    """One method's answer to one question, as `--answers` lists it: the text, the cited page, whether
    it is right (exact match after normalisation) and where the first gold chunk is in its evidence."""
    final = [e.chunk_index for e in answer.evidence]
    rank = next((k for k, i in enumerate(final) if i in gold), None)
    top = answer.evidence[0] if answer.evidence else None
    return {
        "id": q.id,
        "question": q.question,
        "answer": answer.answer,
        "abstained": answer.abstained,
        "page": top.answer_page if top is not None else None,
        "em": metrics.exact_match("" if answer.abstained else answer.answer, q.answers),
        "f1": round(metrics.f1_score("" if answer.abstained else answer.answer, q.answers), 4),
        "gold_rank": rank,  # 0-based place of a gold chunk in the evidence; None: not in it
    }


def format_answers(result: dict) -> str:
    """Each question with every method's answer (right ones marked), from `--answers`."""
    listed = result.get("answers", {})
    methods = [m for m in listed if listed[m]]
    if not methods:
        return ""
    lines = ["| question | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for k, row in enumerate(listed[methods[0]]):
        cells = []
        for m in methods:
            a = listed[m][k]
            text = "(abstains)" if a["abstained"] else a["answer"].replace("|", "/").replace("\n", " ")
            cells.append(f"{'**' + text + '**' if a['em'] else text} p. {a['page']}")
        lines.append(f"| {row['question']} | " + " | ".join(cells) + " |")
    right = ", ".join(f"{m} {sum(a['em'] for a in listed[m]):.0f}" for m in methods)
    lines.append(f"right (exact match, in bold) of {len(listed[methods[0]])}: {right}")
    return "\n".join(lines)


READER = "reader"


def _stage(method: str) -> str:
    """The ingest stage a method's index comes from (the reader alone: none)."""
    return READER if method == READER else registry.BY_NAME[method].stage


def _read_gold(qa, q: EvalQuestion, chunks, gold: set[int]) -> tuple[str, float]:
    """The reader alone on the gold chunk(s): its best span over them (never abstaining), and the ms
    it took."""
    start = time.perf_counter()
    passages = [chunks[i].text for i in sorted(gold)]
    readings = qa.engine.read(q.question, passages, None)
    i = max(range(len(passages)), key=lambda j: readings[j].score)
    prediction = passages[i][readings[i].char_start : readings[i].char_end]
    return prediction, (time.perf_counter() - start) * 1000


def _record_answer(row: dict[str, list[float]], prediction: str, q: EvalQuestion) -> None:
    row.setdefault("em", []).append(metrics.exact_match(prediction, q.answers))
    row.setdefault("f1", []).append(metrics.f1_score(prediction, q.answers))
    row.setdefault("rouge_l", []).append(metrics.rouge_l(prediction, q.answers))


def _record(row: dict[str, list[float]], answer, q: EvalQuestion, gold: set[int]) -> None:
    """One answer's metrics. Recall is over the questions that have a gold chunk (an implicit
    FairytaleQA answer is written in no chunk); `has_gold` says what share that is."""
    row.setdefault("has_gold", []).append(float(bool(gold)))
    if gold:
        final = [e.chunk_index for e in answer.evidence]
        for k in FINAL_KS:
            row.setdefault(f"recall@{k}", []).append(metrics.recall_at_k(final, gold, k))
        for k in RETRIEVAL_KS:
            hit = metrics.recall_at_k(answer.retrieved, gold, k)
            row.setdefault(f"retrieval_recall@{k}", []).append(hit)
    _record_answer(row, "" if answer.abstained else answer.answer, q)
    row.setdefault("f1_never_abstain", []).append(metrics.f1_score(_best_guess(answer), q.answers))
    row.setdefault("answer_in_evidence", []).append(_answer_in_evidence(answer, q.answers))
    row.setdefault("abstain_rate", []).append(float(answer.abstained))
    row.setdefault("latency", []).append(answer.latency_ms)


def _summarise(row: dict[str, list[float]]) -> dict[str, float]:
    out = {k: round(sum(v) / len(v), 4) for k, v in row.items() if k != "latency" and v}
    latency = row.get("latency", [])
    out["latency_ms_p50"] = round(metrics.percentile(latency, 50), 2)
    out["latency_ms_p95"] = round(metrics.percentile(latency, 95), 2)
    return out


def format_table(result: dict) -> str:
    cols = [
        "recall@1",
        "recall@5",
        "recall@20",
        "retrieval_recall@1",
        "retrieval_recall@5",
        "retrieval_recall@20",
        "retrieval_recall@50",
        "em",
        "f1",
        "rouge_l",
        "f1_never_abstain",
        "answer_in_evidence",
        "abstain_rate",
        "abstain_rate_unanswerable",
        "latency_ms_p50",
        "latency_ms_p95",
    ]
    lines = [
        f"{result['documents']} documents, {result['questions']} of {result['questions_total']} questions, "
        f"{result['doc_tokens']:,} document tokens",
        "| method | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    subsets = [("", result["methods"])]
    if "explicit" in result:
        subsets.append((" (explicit)", result["explicit"]))
    for label, by_method in subsets:
        for m, vals in by_method.items():
            cells = (_cell(vals, c) for c in cols)
            lines.append(f"| {m}{label} | " + " | ".join(cells) + " |")
    lines.append("ingest seconds: " + ", ".join(f"{m} {s:.1f}" for m, s in result["ingest_seconds"].items()))
    setup = result.get("setup")
    if setup:
        lines.append(
            f"device {setup['device']}, {setup['read_k']} candidates read, model {setup['model'] or 'none'}"
        )
    return "\n".join(lines)


def _cell(vals: dict, column: str) -> str:
    if column not in vals:
        return "-"
    return f"{vals[column]:.1f}" if "latency" in column else f"{vals[column]:.3f}"


def run_eval(args: argparse.Namespace) -> int:
    from app.docqa import DocQA

    path = Path(args.data)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        docs = load_squad(path, args.group) if args.format == "squad" else load_jsonl(path, args.group)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, OSError) as err:
        raise ValueError(f"{path}: not a {args.format} file ({type(err).__name__}: {err})") from err
    docs = _limit(docs, args.limit)
    qa = DocQA()
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(qa.methods)
    known = (*registry.NAMES, *registry.ALIASES, READER)
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ValueError(
            f"unknown method(s) {', '.join(unknown)}: choose from {', '.join((*registry.NAMES, READER))}"
        )
    methods = [m if m == READER else registry.canonical(m) for m in methods]
    if "bsbr" in methods and qa.engine is None:
        raise ValueError("--methods bsbr needs the trained QA model (assets/qa_model or DOCQA_MODEL_DIR)")
    if READER in methods and qa.engine is None:
        raise ValueError("--methods reader needs the trained QA model (assets/qa_model or DOCQA_MODEL_DIR)")
    result = evaluate(
        qa,
        docs,
        methods,
        unanswerable=args.unanswerable,
        max_minutes=args.max_minutes,
        seed=args.seed,
        answers=args.answers,
    )
    print(format_table(result))
    if args.answers:
        print(format_answers(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0
