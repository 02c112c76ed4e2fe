"""Train the BSBR QA model on SQuAD v1.1 train as long documents (one H200: a few minutes).

    python -m model.data --out .carry/train.safetensors          # CPU, once: chunk + tokenise
    python -m model.train --data .carry/train.safetensors --out runs/qa --steps 1500
    torchrun --nproc_per_node=8 -m model.train --data .carry/train.safetensors --docs-per-step 8 ...

Each step reads one long training document (24 concatenated articles, ~750 chunks) with gradients,
then a batch of its questions: a retrieval loss (cross-entropy of the question chunk's block-retrieval
scores over all the document's chunks, gold = the chunk holding the answer) and a span loss on reader
rows for the gold chunk and one in-document negative (the best-scoring wrong chunk, or a random one),
whose target is [CLS] ("not here"). With --reader-steps N, N cheaper steps of the reader alone come first
(gold chunk and one in-document negative per question, no document pass, no cache): run 4 found the
reader under-trained by the joint steps alone (F1 75.3 -> 78.8 on dev gold chunks). --init DIR starts
from a trained delta instead (more joint steps for an earlier run, in a later call). --output-level adds
the retrieval level on the last layer's output (model/qa.py), also to an --init delta without it.
--reader-lora-rank R gives the reader rows LoRA adapters of their own (model/qa.py): the reader phase then
leaves the document and question passes as MiniLM made them, and the span loss reaches them only through
the document cache the reader rows read. Only the delta trains: LoRA adapters, meta projections, gates,
span head, retrieval temperatures. Seeded; logs JSON lines; checkpoints (safetensors, no pickle) every
--save-every steps and resumes from --out when a checkpoint is there. At the end it validates on the
held-out articles, calibrates the abstention threshold and writes the delta to --out/model. Every option
goes to --out/train_config.json and --out/model/train_config.json (`--config FILE` runs it again).

Several GPUs (issue 6): `torchrun --nproc_per_node=N -m model.train ... --docs-per-step K` trains with
DistributedDataParallel (NCCL on GPUs, gloo on CPU). A step then reads K documents (the global batch),
K / N on each rank: a DistributedSampler over the training documents, reshuffled per epoch, picks them,
and each document's questions and negatives are drawn from a generator seeded by (seed, step, document),
so the step's work, and DDP's averaged gradient, are the same whatever N is (tests/model/test_ddp.py).
Rank 0 alone logs, checkpoints, validates and saves. --docs-per-step 1 on one process keeps the original
sampling stream (one shared generator), so earlier runs reproduce.

One module per job:
    config.py        TrainConfig: every option, checked, the command line, train_config.json
    data.py          load_data, Documents, StepPlan and ReaderPlan (which documents/questions a step reads)
    losses.py        step_loss, question_scores, reader_loss
    validation.py    validate, held_out_questions, pick, RERANK_WEIGHTS, gold_exact
    checkpoint.py    save_checkpoint, load_checkpoint
    distributed.py   setup_distributed, StepLoss and the DDP helpers
    train.py         main, initial_model, train (the loop)
"""
