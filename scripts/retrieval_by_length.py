"""Retrieval recall@20 of each method (bsbr, faiss = FAISS alone, hybrid = FAISS fused with BM25,
bm25) against document length (issue 7 analysis).

    DOCQA_HOME=/tmp/len python -m scripts.retrieval_by_length PARTS [SQUAD_JSON_GZ]

Splits the SQuAD articles (in order) into PARTS documents, ingests each, and asks up to 1,000 random
questions of their own document; prints each method's retrieval-stage recall@1, @5 and @20. PARTS=1 is
the whole dev set as one document, PARTS=48 (of 48 articles) one document per article.
"""

import random
import sys
from pathlib import Path

import numpy as np

from app.docqa import DocQA
from app.evaluate import EvalQuestion, gold_chunks, load_squad

parts = int(sys.argv[1])
data = Path(sys.argv[2] if len(sys.argv) > 2 else "../shared/data/squad-v1.1/dev-v1.1.json.gz")
qa = DocQA()
arts = load_squad(data, "article")
groups = np.array_split(np.arange(len(arts)), parts)
docs = []
for grp in groups:
    text, qs, off = [], [], 0
    for a in grp:
        art = arts[a]
        qs += [
            EvalQuestion(q.id, q.question, q.answers, [(s + off, e + off) for s, e in q.spans])
            for q in art.questions
        ]
        text.append(art.text)
        off += len(art.text) + 2
    docs.append(("\n\n".join(text), qs))
rows = {m: [] for m in ("bsbr", "faiss", "hybrid", "bm25")}
sizes = []
for d, (text, qs) in enumerate(docs):
    rep = qa.add_text(text, title=f"part {d} of {parts}", owner="eval")
    chunks = qa.store.chunks(rep.doc_id)
    sizes.append(len(chunks))
    for q in random.Random(d).sample(qs, min(len(qs), 1000 // parts)):
        gold = gold_chunks(q, chunks)
        if not gold:
            continue
        for m in rows:
            ids, _, _ = qa.retrievers[m].top(q.question, rep.doc_id, 20)
            hits = [i in gold for i in ids]
            rows[m].append([any(hits[:k]) for k in (1, 5, 20)])
print(
    parts,
    "documents of",
    sizes,
    "chunks;",
    len(rows["bsbr"]),
    "questions; retrieval R@1/5/20:",
    {m: [round(float(x), 3) for x in np.mean(v, axis=0)] for m, v in rows.items()},
)
