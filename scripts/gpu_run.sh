#!/usr/bin/env bash
# Runs on the GPU machine (the `device` tool), from the repo root, with .carry (and .whl) carried:
#   bash scripts/gpu_run.sh tests bench smoke train eval-all eval-article book      # one GPU
#   bash scripts/gpu_run.sh train-ddp | eval-par | train-scale | library ingest-scale  # all its GPUs
# TRAIN_ARGS="--reader-steps 1200 --reader-questions 128 ..." adds the reader-only phase before the joint one.
# Carry what the steps read: .carry/minilm always; .carry/train.safetensors.xz (training);
# .carry/dev-v1.1.json.gz (evals, library); .carry/faiss_site.tar.xz and .whl (anything using app/);
# .carry/pride_and_prejudice.txt (library).
# Each step logs to $OUT. The machine has no package index: wheels in .whl/ are installed to /tmp/site,
# the base MiniLM is unpacked from .carry/minilm (see scripts/gpu_carry.py).
set -uo pipefail
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 DOCQA_MINILM_DIR=/tmp/minilm
# NVLink multicast off: it can take a shared host's GPUs out of service (device README)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
OUT=${OUT:-/tmp/out}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
# faiss-cpu's wheel (18.8 MB) unzipped and re-packed with xz (9.4 MB), to fit the 64 MiB a call carries:
#   unzip -q faiss_cpu-*.whl -d site && tar cf - -C site . | xz -9e > .carry/faiss_site.tar.xz
if [ -f .carry/faiss_site.tar.xz ]; then
  mkdir -p /tmp/site && tar xJf .carry/faiss_site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site
fi
[ -d /tmp/minilm ] || python3 -m scripts.gpu_carry unpack .carry/minilm /tmp/minilm
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/gpu.txt"
STEPS=${TRAIN_STEPS:-1500}
for step in "$@"; do
  echo "=== $step $(date +%T)"
  # train and train-ddp write /tmp/qa, which a warm machine keeps from the last call: start afresh unless
  # RESUME=1 (--init goes on from a delta instead)
  case $step in train|train-ddp) [ "${RESUME:-0}" = 1 ] || rm -rf /tmp/qa ;; esac
  case $step in
    tests) timeout 120 python3 -m pytest -q -m gpu tests/model 2>&1 | tee "$OUT/gpu_tests.log" ;;
    bench) timeout 300 python3 -m model.bench --device cuda --backward --json "$OUT/bench.json" \
             --plot "$OUT/bench.png" 2>&1 | tee "$OUT/bench.log" ;;
    smoke) timeout 150 python3 -m model.train --data .carry/train.safetensors.xz --out /tmp/smoke --steps 30 \
             --log-every 5 --val-questions 300 2>&1 | tee "$OUT/smoke.log" ;;
    train) timeout 560 python3 -m model.train --data .carry/train.safetensors.xz --out /tmp/qa \
             --steps "$STEPS" --max-minutes "${TRAIN_MINUTES:-7}" 2>&1 | tee "$OUT/train.log"
           mkdir -p "$OUT/qa" && cp -r /tmp/qa/model /tmp/qa/metrics.json /tmp/qa/log.jsonl "$OUT/qa/" ;;
    train-ddp) # TRAIN_DATA, TRAIN_MINUTES, LORA_RANK; TRAIN_ARGS adds options (e.g. --retrieval-questions 512)
           timeout 590 python3 -m torch.distributed.run --standalone --nproc_per_node="$GPUS" -m model.train \
             --data "${TRAIN_DATA:-.carry/train.safetensors.xz}" --out /tmp/qa --steps 100000 --docs-per-step "$GPUS" \
             --fit-minutes "${TRAIN_MINUTES:-7.5}" --max-minutes "$(python3 -c "print(${TRAIN_MINUTES:-7.5}+0.4)")" \
             --lora-rank "${LORA_RANK:-16}" --save-every 200 ${TRAIN_ARGS:-} 2>&1 | tee "$OUT/train.log"
           mkdir -p "$OUT/qa" && cp -r /tmp/qa/model /tmp/qa/metrics.json /tmp/qa/log.jsonl "$OUT/qa/" ;;
    eval-par) # evals at once, one GPU each, time-boxed (4 GPUs: four jobs; 2 GPUs: two; 1 GPU: the two share it)
           par() { local gpu=$1 name=$2; shift 2
             CUDA_VISIBLE_DEVICES=$gpu DOCQA_HOME=/tmp/home_$name DOCQA_MODEL_DIR=${MODEL_DIR:-assets/qa_model} \
               timeout 560 python3 -m app eval --data .carry/dev-v1.1.json.gz --json "$OUT/eval_$name.json" \
               --max-minutes "${EVAL_MINUTES:-6.5}" "$@" > "$OUT/eval_$name.log" 2>&1; }
           book() { CUDA_VISIBLE_DEVICES=$1 DOCQA_HOME=/tmp/home_book DOCQA_MODEL_DIR=${MODEL_DIR:-assets/qa_model} \
               timeout 200 python3 -m scripts.book_latency --json "$OUT/book.json" > "$OUT/book.log" 2>&1; }
           if [ "$GPUS" -ge 4 ]; then
             par 0 all_bsbr --group all --methods bsbr &
             par 1 all_hybrid --group all --methods hybrid &
             par 2 all_bm25 --group all --methods bm25,reader &
             (par 3 article --group article --methods bsbr,hybrid,bm25 --unanswerable 300 \
                --max-minutes "${ARTICLE_MINUTES:-5}"; book 3) &
           else # BSBR_MINUTES (all) then ARTICLE_MINUTES (article) then the book on GPU 0; the rest on GPU 1
             # (one GPU: both jobs share it, so their latencies are those of a shared GPU)
             other=$(( GPUS > 1 ? 1 : 0 ))
             (par 0 all_bsbr --group all --methods bsbr --max-minutes "${BSBR_MINUTES:-4}"
              par 0 article --group article --methods bsbr,hybrid,bm25 --unanswerable 300 \
                --max-minutes "${ARTICLE_MINUTES:-2}"; book 0) &
             par "$other" all_rest --group all --methods hybrid,bm25,faiss,reader &
           fi
           wait; tail -n 8 "$OUT"/eval_*.log "$OUT/book.log" ;;
    eval-books) # issue 19, all at once on one GPU (latencies are a shared GPU's): FairytaleQA test per story
           # and as one document, every method; the same with the gates at 0 (BSBR, no between-chunk
           # retrieval); SQuAD dev as one document with and without answer aggregation; the sample book.
           # Reads .carry/data/{test.jsonl.gz,dev-v1.1.json.gz}.
           python3 -m scripts.ablate_gates "${MODEL_DIR:-assets/qa_model}" /tmp/qa_nogate
           # (results in /tmp/evals, packed as one evals.tgz: a call brings back only 8 files)
           E=/tmp/evals; rm -rf $E; mkdir -p $E
           ev() { local name=$1 model=$2; shift 2
             DOCQA_HOME=/tmp/home_$name DOCQA_MODEL_DIR=$model timeout 560 python3 -m app eval \
               --json "$E/eval_$name.json" --max-minutes "${EVAL_MINUTES:-6.5}" "$@" > "$E/eval_$name.log" 2>&1; }
           m=${MODEL_DIR:-assets/qa_model} ft=".carry/data/test.jsonl.gz --format jsonl"
           ev ft_story "$m" --data $ft --methods bsbr,hybrid,bm25,faiss &
           ev ft_all "$m" --data $ft --group all --methods bsbr,hybrid,bm25,faiss &
           ev ft_story_nogate /tmp/qa_nogate --data $ft --methods bsbr &
           ev ft_all_nogate /tmp/qa_nogate --data $ft --group all --methods bsbr &
           DOCQA_AGGREGATE=0 ev ft_all_noagg "$m" --data $ft --group all --methods bsbr,hybrid &
           ev squad_all "$m" --data .carry/data/dev-v1.1.json.gz --group all --methods bsbr,hybrid --limit 1500 &
           DOCQA_AGGREGATE=0 ev squad_all_noagg "$m" --data .carry/data/dev-v1.1.json.gz --group all \
             --methods bsbr,hybrid --limit 1500 &
           DOCQA_HOME=/tmp/home_book DOCQA_MODEL_DIR=$m timeout 300 python3 -m scripts.book_latency \
             --repeat 1 --json "$E/book.json" > "$E/book.log" 2>&1 &
           wait; for f in $E/eval_*.log $E/book.log; do echo "## $f"; grep -v -e 'it/s' "$f" | tail -n 9; done
           tar czf "$OUT/evals.tgz" -C $E . ;;
    eval-article) DOCQA_HOME=/tmp/home DOCQA_MODEL_DIR=${MODEL_DIR:-assets/qa_model} timeout 560 python3 -m app eval \
             --data .carry/dev-v1.1.json.gz --group article --methods bsbr,hybrid,bm25 \
             --json "$OUT/eval_article.json" --unanswerable 300 --max-minutes "${EVAL_MINUTES:-8}" 2>&1 | tee "$OUT/eval_article.log" ;;
    train-scale) # training step time on 1, 2, ... GPUs: one document per GPU per step, 40 steps each
           for n in ${SCALE_GPUS:-1 2 4}; do [ "$n" -le "$GPUS" ] || continue
             timeout 120 python3 -m torch.distributed.run --standalone --nproc_per_node="$n" -m model.train \
               --data .carry/train.safetensors.xz --out "/tmp/scale_$n" --steps 40 --docs-per-step "$n" \
               --val-questions 0 --log-every 10 --save-every 100000 --lora-rank "${LORA_RANK:-16}" \
               > "$OUT/train_scale_$n.log" 2>&1; grep -E '"step": (10|20|30|40),' "$OUT/train_scale_$n.log"; done ;;
    library) timeout 200 python3 -m scripts.make_library --out /tmp/library --books "${BOOKS:-200}" \
               --novel .carry/pride_and_prejudice.txt --squad .carry/dev-v1.1.json.gz 2>&1 | tee "$OUT/library.log" ;;
    ingest-scale) TIMEOUT=${INGEST_TIMEOUT:-240} bash scripts/scale_ingest.sh /tmp/library "${SCALE_GPUS:-1 2 4}" \
               2>&1 | tee "$OUT/ingest_scale.txt" ;;
    eval-all) DOCQA_HOME=/tmp/home DOCQA_MODEL_DIR=${MODEL_DIR:-assets/qa_model} timeout 560 python3 -m app eval \
             --data .carry/dev-v1.1.json.gz --group all --methods bsbr,hybrid,bm25 --json "$OUT/eval_all.json" \
             --max-minutes "${EVAL_MINUTES:-8}" \
             2>&1 | tee "$OUT/eval_all.log" ;;
    book) DOCQA_HOME=/tmp/home DOCQA_MODEL_DIR=${MODEL_DIR:-assets/qa_model} timeout 300 python3 \
             -m scripts.book_latency --json "$OUT/book.json" 2>&1 | tee "$OUT/book.log" ;;
    *) echo "unknown step $step" ;;
  esac
done
