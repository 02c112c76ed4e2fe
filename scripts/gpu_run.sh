#!/usr/bin/env bash
# Runs on the GPU machine (the `device` tool), from the repo root, with .carry (and .whl) carried:
#   bash scripts/gpu_run.sh tests bench smoke train eval-all eval-article book
# Each step logs to $OUT. The machine has no package index: wheels in .whl/ are installed to /tmp/site,
# the base MiniLM is unpacked from .carry/minilm (see scripts/gpu_carry.py).
set -uo pipefail
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 DOCQA_MINILM_DIR=/tmp/minilm NCCL_NVLS_ENABLE=0
OUT=${OUT:-/tmp/out}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
[ -d /tmp/minilm ] || python3 scripts/gpu_carry.py unpack .carry/minilm /tmp/minilm
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/gpu.txt"
STEPS=${TRAIN_STEPS:-1500}
for step in "$@"; do
  echo "=== $step $(date +%T)"
  case $step in
    tests) timeout 120 python3 -m pytest -q -m gpu tests/model 2>&1 | tee "$OUT/gpu_tests.log" ;;
    bench) timeout 300 python3 -m model.bench --device cuda --backward --json "$OUT/bench.json" \
             --plot "$OUT/bench.png" 2>&1 | tee "$OUT/bench.log" ;;
    smoke) timeout 150 python3 -m model.train --data .carry/train.safetensors.xz --out /tmp/smoke --steps 30 \
             --log-every 5 --val-questions 300 2>&1 | tee "$OUT/smoke.log" ;;
    train) timeout 560 python3 -m model.train --data .carry/train.safetensors.xz --out /tmp/qa \
             --steps "$STEPS" --max-minutes "${TRAIN_MINUTES:-7}" 2>&1 | tee "$OUT/train.log"
           mkdir -p "$OUT/qa" && cp -r /tmp/qa/model /tmp/qa/metrics.json /tmp/qa/log.jsonl "$OUT/qa/" ;;
    eval-all) DOCQA_HOME=/tmp/home DOCQA_MODEL_DIR=${MODEL_DIR:-assets/qa_model} timeout 560 python3 -m app eval \
             --data .carry/dev-v1.1.json.gz --group all --methods bsbr,faiss,bm25 --json "$OUT/eval_all.json" \
             --max-minutes "${EVAL_MINUTES:-8}" \
             2>&1 | tee "$OUT/eval_all.log" ;;
    eval-article) DOCQA_HOME=/tmp/home DOCQA_MODEL_DIR=${MODEL_DIR:-assets/qa_model} timeout 560 python3 -m app eval \
             --data .carry/dev-v1.1.json.gz --group article --methods bsbr,faiss,bm25 \
             --json "$OUT/eval_article.json" --unanswerable 300 --max-minutes "${EVAL_MINUTES:-8}" 2>&1 | tee "$OUT/eval_article.log" ;;
    book) DOCQA_HOME=/tmp/home DOCQA_MODEL_DIR=${MODEL_DIR:-assets/qa_model} timeout 300 python3 \
             scripts/book_latency.py --json "$OUT/book.json" 2>&1 | tee "$OUT/book.log" ;;
    *) echo "unknown step $step" ;;
  esac
done
