"""Where a joint training step's time goes, on one GPU (issue 7: ~0.75 s a step on an H200).

    python -m scripts.profile_step --data .carry/train48.safetensors.xz [--steps 4] [--json OUT]

Times the document pass, the question pass (retrieval loss), the reader rows and the backward of
`model.train.losses.step_loss`'s work for a few steps of the run-8 recipe (LoRA rank 64, output level, 4,096
retrieval questions, 192 read), after two warm-up steps; then prints torch.profiler's top CUDA kernels
for one step.
"""

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from model.qa import DocQAModel, QAConfig
from model.train.data import Documents, load_data
from model.train.losses import question_scores, reader_loss


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=".carry/train48.safetensors.xz")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--questions", type=int, default=4096)
    p.add_argument("--read", type=int, default=192)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device("cuda")
    docs = Documents(load_data(args.data))
    model = DocQAModel.from_minilm(QAConfig(lora_rank=64, lora_alpha=128.0, output_level=True)).to(device)
    params = model.trainable_parameters()
    model.train()
    train_docs = [g for g, v in enumerate(docs.is_val) if not v]
    rng = random.Random(0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    times: dict[str, list[float]] = {}

    def mark(name: str, t0: float) -> float:
        torch.cuda.synchronize()
        now = time.perf_counter()
        times.setdefault(name, []).append(now - t0)
        return now

    def step(k: int, record: bool) -> None:
        g = train_docs[k % len(train_docs)]
        batch = rng.sample(docs.questions_of[g], min(args.questions, len(docs.questions_of[g])))
        torch.cuda.synchronize()
        t = t0 = time.perf_counter()
        with autocast:
            ids, mask = docs.chunks(g, device)
            C = ids.shape[1]
            cache = model.encoder(ids.view(1, -1), mask.view(1, -1), return_cache=True, chunk_size=C).cache
            t = mark("document pass", t) if record else t
            q_tokens = [docs.question_tokens(q) for q in batch]
            scores = question_scores(model, q_tokens, cache, device)
            gold = docs.q_chunk[batch].to(device) - docs.ranges[g][0]
            retrieval = F.cross_entropy(scores.float(), gold)
            t = mark("question pass", t) if record else t
            n = args.read
            negatives = [docs.ranges[g][0] + rng.randrange(ids.shape[0]) for _ in range(n)]
            span = reader_loss(model, docs, batch[:n], negatives, cache, device, q_tokens[:n])
            t = mark("reader rows", t) if record else t
        (span + retrieval).backward()
        t = mark("backward", t) if record else t
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for p_ in params:
            p_.grad = None
        if record:
            mark("step", t0)
            times.setdefault("chunks", []).append(ids.shape[0])

    for k in range(2):
        step(k, False)
    for k in range(args.steps):
        step(2 + k, True)
    summary = {name: round(sum(v) / len(v), 4) for name, v in times.items()}
    summary["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    summary["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(summary), flush=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step(99, False)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
