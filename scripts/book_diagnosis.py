"""Where book answers fail: for each scripts/book_latency.py question, every method's best rank of a chunk
holding the answer, and the reader run over every chunk of the book (its top 5 and the right answer's place).

    DOCQA_DEVICE=cpu [DOCQA_MODEL_DIR=...] python -m scripts.book_diagnosis

The answer strings below are what a reader of the novel gives; they are used only to score, never to answer.
"""

import numpy as np

from app import DocQA
from app.answering import answer_order
from scripts.book_latency import QUESTIONS

# question -> (text only a chunk holding the answer has, the answer a reader of the novel gives)
ANSWERS = {
    "What estate has been let at last?": ("netherfield park is let", "netherfield"),
    "Who is Mr. Darcy's friend who rents Netherfield?": ("bingley", "bingley"),
    "Who does Elizabeth marry?": ("darcy", "darcy"),
    "Where does Mr. Collins live?": ("hunsford", "hunsford"),
    "Whom does Lydia run away with?": ("wickham", "wickham"),
    "What is the name of Mr. Darcy's estate?": ("pemberley", "pemberley"),
}
assert set(ANSWERS) == set(QUESTIONS), "scripts/book_latency.py's questions changed"


def main() -> None:
    qa = DocQA()
    doc = qa.ingest("assets/pride_and_prejudice.pdf").doc_id
    texts = [c.text for c in qa.store.chunks(doc)]
    cache = qa.retrievers["bsbr"].cache(doc)
    eng = qa.engine
    print("threshold", eng.abstain_threshold)
    for q in QUESTIONS:
        marker, answer = ANSWERS[q]
        gold = [i for i, t in enumerate(texts) if marker in t.lower()]
        line = [f"\n== {q}  ({len(gold)} gold-string chunks)"]
        for m in ("bsbr", "faiss", "bm25", "hybrid"):
            ids = qa.retrievers[m].top(q, doc, len(texts))[0]
            ranks = [int(np.where(ids == g)[0][0]) for g in gold if g in ids]
            line.append(f"  {m}: best gold rank {min(ranks) if ranks else None}")
        reads = [r for k in range(0, len(texts), 64) for r in eng.read(q, texts[k : k + 64], cache)]
        scored = sorted(range(len(texts)), key=lambda i: -reads[i].score)
        ans = [texts[i][reads[i].char_start : reads[i].char_end] for i in range(len(texts))]
        good = [i for i in scored if answer in ans[i].lower()]
        line.append(
            "  reader top5 over all chunks: "
            + "; ".join(f"{ans[i]!r} {reads[i].score:.2f} c{i}" for i in scored[:5])
        )
        line.append(
            f"  reader: first right answer at reader rank {scored.index(good[0]) if good else None}"
            + (f" {ans[good[0]]!r} score {reads[good[0]].score:.2f} chunk {good[0]}" if good else "")
        )
        order = answer_order([(reads[i].score, ans[i]) for i in range(len(texts))])
        line.append(f"  aggregated over all chunks: {ans[order[0]]!r}")
        print("\n".join(line), flush=True)


if __name__ == "__main__":
    main()
