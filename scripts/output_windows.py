"""Held-out retrieval of a trained delta by output-level window size (issue 7): how the shipped
`output_window` was chosen, on the held-out train articles (never dev).

    python -m scripts.output_windows --data .carry/train48.safetensors --model assets/qa_model 0 64 32 16 12 8

For each window size (0 = one mean per chunk, as trained) it encodes the held-out document(s) and ranks
their chunks for the questions `model.train.validation.validate` samples (--limit 1200, seed 0),
printing retrieval recall@1/5/20/50. CPU: about 2.5 minutes a size. `--write W` then sets
`"encoder": {"output_window": W}` in the model's config.json (16 for the shipped model: the middle of the
8-16 plateau, fewest vectors).
"""

import argparse
import json
from pathlib import Path

import torch

from model.qa import DocQAModel
from model.train.data import Documents, load_data
from model.train.losses import question_scores
from model.train.validation import held_out_questions


@torch.no_grad()
def held_out_recall(model: DocQAModel, docs: Documents, limit: int, device: str) -> dict[int, float]:
    hits: dict[int, list[float]] = {k: [] for k in (1, 5, 20, 50)}
    for g, qs in held_out_questions(docs, limit).items():  # the sample validate(limit) reads
        ids, mask = docs.chunks(g, device)
        cache = model.document_cache(ids, mask)
        first = docs.ranges[g][0]
        for i in range(0, len(qs), 128):
            batch = qs[i : i + 128]
            scores = question_scores(model, [docs.question_tokens(q) for q in batch], cache, device)
            ranking = scores.argsort(1, descending=True)[:, :50].cpu() + first
            gold = docs.q_chunk[batch]
            for k in hits:
                hits[k] += (ranking[:, :k] == gold[:, None]).any(1).float().tolist()
    return {k: round(sum(v) / len(v), 4) for k, v in hits.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("windows", type=int, nargs="+", help="window sizes in tokens; 0 = one mean per chunk")
    p.add_argument("--data", default=".carry/train48.safetensors")
    p.add_argument("--model", default="assets/qa_model")
    p.add_argument("--limit", type=int, default=1200)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--write", type=int, default=None, help="then save this window size in config.json")
    args = p.parse_args()
    docs = Documents(load_data(args.data))
    model = DocQAModel.from_pretrained(args.model).to(args.device)
    if not model.config.output_level:
        raise SystemExit(f"{args.model} has no output retrieval level: nothing to window")
    for window in args.windows:
        model.encoder.config.output_window = window or None
        recall = held_out_recall(model, docs, args.limit, args.device)
        name = window or "none"
        print(f"output_window {name}: retrieval recall@1/5/20/50 {list(recall.values())}", flush=True)
    if args.write is not None:
        path = Path(args.model) / "config.json"
        config = json.loads(path.read_text())
        config["encoder"] = {**config.get("encoder", {}), "output_window": args.write or None}
        path.write_text(json.dumps(config, indent=2) + "\n")
        print(f"{path}: output_window {args.write or 'none'}")


if __name__ == "__main__":
    main()
