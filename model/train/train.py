"""The training loop: an optional reader phase, the joint steps, then validation and the delta.

python -m model.train --data .carry/train.safetensors --out runs/qa --steps 1500
torchrun --nproc_per_node=8 -m model.train --data .carry/train.safetensors --docs-per-step 8 ...
python -m model.train --config runs/qa/train_config.json      # the same run again
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TextIO

import torch

from model.qa import DocQAModel, QAConfig
from model.train.checkpoint import load_checkpoint, save_checkpoint
from model.train.config import TrainConfig
from model.train.data import Documents, ReaderPlan, StepPlan, load_data
from model.train.distributed import (
    StepLoss,
    average_gradients,
    from_rank0,
    leave,
    setup_distributed,
    sum_over_ranks,
    sync_after,
    wrap_for_ranks,
)
from model.train.losses import reader_loss
from model.train.validation import validate

# --fit-minutes: speed measured from step FIT_FIRST on (earlier steps pay warm-up costs), first used at
# FIT_LAST and re-measured every FIT_EVERY steps (the first steps of a run are slower than the rest).
FIT_FIRST, FIT_LAST, FIT_EVERY = 10, 30, 50


def main(argv: list[str] | None = None) -> dict:
    """`python -m model.train ...`: options from `argv`, the packaged MiniLM (or --init), --data."""
    config = TrainConfig.from_cli(argv)
    torch.manual_seed(config.seed)
    docs = Documents(load_data(config.data))
    return train(initial_model(config), docs, config)


def initial_model(config: TrainConfig) -> DocQAModel:
    """The packaged MiniLM with a fresh delta or, with --init, with a trained delta to go on from (its
    config.json gives the LoRA rank and alpha). A checkpoint in --out still takes precedence (resume)."""
    if config.init:
        model = DocQAModel.from_pretrained(config.init, merge=False).train()
        for flag, asked, saved in (
            ("--lora-rank", config.lora_rank, model.config.lora_rank),
            ("--lora-alpha", config.lora_alpha, model.config.lora_alpha),
            ("--reader-lora-rank", config.reader_lora_rank, model.config.reader_lora_rank),
        ):
            if asked is not None and asked != saved:
                raise ValueError(f"{flag} {asked} differs from the {saved} of --init {config.init}")
        if config.output_level and not model.config.output_level:
            model.add_output_level()
        return model
    rank = 16 if config.lora_rank is None else config.lora_rank
    alpha = config.lora_alpha if config.lora_alpha is not None else 2.0 * rank
    qa_config = QAConfig(
        lora_rank=rank,
        lora_alpha=alpha,
        output_level=config.output_level,
        reader_lora_rank=config.reader_lora_rank or 0,
    )
    return DocQAModel.from_minilm(qa_config)


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps to `peak`, then linear decay to 0 at `steps`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (steps - step) / max(1, steps - warmup))


@dataclasses.dataclass
class Run:
    """What the phases of one training call share."""

    config: TrainConfig
    rank: int
    world: int
    device: torch.device
    out: Path
    log: TextIO | None  # log.jsonl, opened for appending on rank 0; None on the others
    autocast: torch.autocast
    start_time: float

    def write(self, row: dict, opt: torch.optim.Optimizer) -> None:
        """Rank 0: a JSON line with the learning rate and seconds so far, printed and appended to
        log.jsonl."""
        if self.log is None:
            return
        row |= {"lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - self.start_time, 1)}
        print(json.dumps(row), flush=True)
        self.log.write(json.dumps(row) + "\n")

    def out_of_time(self) -> bool:
        """--max-minutes, decided by rank 0 so that all ranks stop at the same step."""
        if not self.config.max_minutes:
            return False
        elapsed = time.time() - self.start_time
        stop = torch.tensor([float(elapsed > self.config.max_minutes * 60)], device=self.device)
        return bool(from_rank0(stop, self.world).item())


def train(model: DocQAModel, docs: Documents, config: TrainConfig) -> dict:
    """Train `model` on `docs` (one process, or one rank under torchrun); rank 0 returns the metrics.

    Resumes from a checkpoint in --out if there is one; rank 0 writes train_config.json there first.
    """
    rank, world = setup_distributed()
    device = torch.device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    model = model.to(device)
    out = Path(config.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out)
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01)
    step, reader_step = load_checkpoint(model, opt, out)
    run = Run(
        config=config,
        rank=rank,
        world=world,
        device=device,
        out=out,
        log=(out / "log.jsonl").open("a") if rank == 0 else None,
        autocast=torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"),
        start_time=time.time(),
    )
    model.train()
    if step == 0 and reader_step < config.reader_steps:
        reader_step = reader_phase(model, opt, docs, run, reader_step)
    step = joint_phase(model, opt, docs, run, step, reader_step)
    metrics = finish(model, opt, docs, run, step, reader_step) if rank == 0 else {}
    if run.log is not None:
        run.log.close()
    leave(world)
    return metrics


def reader_phase(
    model: DocQAModel, opt: torch.optim.Optimizer, docs: Documents, run: Run, reader_step: int
) -> int:
    """--reader-steps of the reader alone (rows without a document cache, so no document pass), before
    the joint steps: many cheap updates of the span reader. Several ranks average their gradients with
    an all-reduce (the reader leaves the retrieval weights without gradients, which DDP would reject).
    Returns the reader steps done (fewer if --max-minutes ran out)."""
    config = run.config
    plan = ReaderPlan(
        docs, seed=config.seed, questions=config.reader_questions, rank=run.rank, world=run.world
    )
    params = model.trainable_parameters()
    while reader_step < config.reader_steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(reader_step, config.reader_steps, config.lr, config.warmup)
        opt.zero_grad(set_to_none=True)
        questions, negatives = plan(reader_step)
        with run.autocast:
            loss = reader_loss(
                model, docs, questions, negatives, None, run.device, shared_norm=config.shared_norm
            )
        loss.backward()
        average_gradients(params, run.world)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        reader_step += 1
        if reader_step % config.log_every == 0 or reader_step == 1:
            span = loss.detach().float().reshape(1)
            sum_over_ranks(span, run.world)  # every rank logs at the same steps, so all join
            span /= run.world
            run.write({"reader_step": reader_step, "span": round(span.item(), 4)}, opt)
        done = reader_step == config.reader_steps or run.out_of_time()
        if run.rank == 0 and (reader_step % config.save_every == 0 or done):
            save_checkpoint(model, opt, 0, run.out, reader_step)
        if done:
            break
    return reader_step


def joint_phase(
    model: DocQAModel, opt: torch.optim.Optimizer, docs: Documents, run: Run, step: int, reader_step: int
) -> int:
    """The joint steps from `step` on, up to --steps (or as many as --fit-minutes fits, or until
    --max-minutes); returns the steps done."""
    config = run.config
    plan = StepPlan(
        docs,
        seed=config.seed,
        docs_per_step=config.docs_per_step,
        questions=max(config.questions_per_step, config.retrieval_questions or 0),
        rank=run.rank,
        world=run.world,
    )
    step_fn = wrap_for_ranks(
        StepLoss(model, config.reader_negatives, config.shared_norm), run.device, run.world
    )
    params = model.trainable_parameters()
    steps = config.steps  # --fit-minutes may lower it
    fit_start, first_step = 0.0, step
    while step < steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, config.lr, config.warmup)
        opt.zero_grad(set_to_none=True)
        totals = accumulate(step_fn, plan(step), docs, run, config.questions_per_step)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % config.log_every == 0 or step == 1:
            loss, span, retrieval = (round(v, 4) for v in sum_over_ranks(totals, run.world).tolist())
            run.write({"step": step, "loss": loss, "span": span, "retrieval": retrieval}, opt)
        if step % config.save_every == 0 and run.rank == 0:
            save_checkpoint(model, opt, step, run.out, reader_step)
        done = step - first_step
        if done == FIT_FIRST:
            fit_start = time.time() - run.start_time
        if config.fit_minutes and (done == FIT_LAST or (done > FIT_LAST and done % FIT_EVERY == 0)):
            elapsed = time.time() - run.start_time
            fitted = steps_that_fit(config.fit_minutes, config.steps, step, done, elapsed, fit_start)
            fitted = int(from_rank0(torch.tensor([fitted], device=run.device), run.world).item())
            if run.rank == 0 and fitted != steps:
                print(f"--fit-minutes {config.fit_minutes}: training for {fitted} steps", flush=True)
            steps = fitted
        if run.out_of_time():
            if run.rank == 0:
                print(f"stopping at step {step}: --max-minutes reached", flush=True)
            break
    return step


def accumulate(step_fn, plan, docs: Documents, run: Run, n_read: int) -> torch.Tensor:
    """Backward of this rank's documents, each loss / K: with DDP's average over ranks the gradient is
    the mean over the step's K documents. Returns this rank's share of (loss, span, retrieval) means."""
    totals = torch.zeros(3, device=run.device)
    for j, (g, batch, rng) in enumerate(plan):
        with sync_after(step_fn, last=j == len(plan) - 1):
            with run.autocast:
                loss, parts = step_fn(docs, g, batch, rng, run.device, n_read)
            (loss / len(plan)).backward()
        totals += torch.tensor([loss.item(), parts["span"], parts["retrieval"]], device=run.device)
    return totals / run.config.docs_per_step


def steps_that_fit(
    fit_minutes: float, cap: int, step: int, done: int, elapsed: float, fit_start: float
) -> int:
    """How many steps fit in `fit_minutes` at the speed since step FIT_FIRST of this call (`done` steps
    done in it, the `step`-th in all, `elapsed` seconds since it began, `fit_start` at FIT_FIRST);
    never fewer than `step` nor more than `cap` (--steps)."""
    per_step = (elapsed - fit_start) / (done - FIT_FIRST)
    steps = step + int((fit_minutes * 60 - elapsed) / per_step)
    return min(cap, max(step, steps))


def finish(
    model: DocQAModel, opt: torch.optim.Optimizer, docs: Documents, run: Run, step: int, reader_step: int
) -> dict:
    """Rank 0: last checkpoint, validation + abstention threshold, the delta (with train_config.json
    beside it) and metrics.json."""
    config = run.config
    save_checkpoint(model, opt, step, run.out, reader_step)
    metrics: dict = {}
    if config.val_questions > 0:
        with run.autocast:
            metrics = validate(model, docs, run.device, config.val_questions, config.seed)
        if metrics["abstain_threshold"] is not None:
            model.config.abstain_threshold = metrics["abstain_threshold"]
        model.config.rerank_retrieval_weight = metrics["rerank_retrieval_weight"]
    metrics |= {"steps": step, "reader_steps": reader_step}
    metrics["train_seconds"] = round(time.time() - run.start_time, 1)
    meta = {"steps": step, "reader_steps": reader_step, "seed": config.seed}
    if config.init:
        meta["init"] = config.init
        metrics["init"] = config.init
    model.save_delta(run.out / "model", metadata=meta)
    config.save(run.out / "model")
    (run.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps({"validation": metrics}), flush=True)
    return metrics
