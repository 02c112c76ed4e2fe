#!/usr/bin/env bash
# Ingest throughput against the number of GPUs (issue 6): runs ingest-many over FOLDER once per count,
# each time into a fresh DOCQA_HOME (deleted after the run), and writes $OUT/ingest_scale_N.json (the
# run's summary without its per-document list: documents/s, tokens/s, seconds, stage totals, ...) with
# the full output in $OUT/ingest_scale_N.out and the log in $OUT/ingest_scale_N.log, and prints one
# table line per run.
#   bash scripts/scale_ingest.sh FOLDER "1 2 4" [ingest-many options, e.g. --workers 8]
# Environment: OUT (default /tmp/out), PYTHON (default python3), TIMEOUT (seconds per run, default
# none), KEEP_HOMES=1 keeps the stores. Exits non-zero when a run did.
set -uo pipefail
folder=${1:?usage: scale_ingest.sh FOLDER "1 2 4" [ingest-many options]}
counts=${2:?usage: scale_ingest.sh FOLDER "1 2 4" [ingest-many options]}
shift 2
# NVLink multicast off: it can take a shared host's GPUs out of service (device README)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
homes=$(mktemp -d "${TMPDIR:-/tmp}/scale_ingest.XXXXXX")
limit=()
[ -n "${TIMEOUT:-}" ] && limit=(timeout "$TIMEOUT")
status=0
printf '%4s %9s %8s %11s %10s %8s %10s %9s %s\n' gpus documents seconds documents/s tokens/s setup_s max_rank_s library_s workers
for n in $counts; do
  DOCQA_HOME="$homes/home_$n" "${limit[@]}" "$PYTHON" -m torch.distributed.run --standalone \
    --nproc_per_node="$n" -m app ingest-many "$folder" --json "$@" \
    >"$OUT/ingest_scale_$n.out" 2>"$OUT/ingest_scale_$n.log"
  rc=$?
  [ "$rc" -ne 0 ] && status=$rc
  "$PYTHON" - "$n" "$rc" "$OUT" <<'EOF'
import json, sys
from pathlib import Path

n, rc, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
text = (out / f"ingest_scale_{n}.out").read_text()
try:
    run = json.loads(text[text.index("{") :])
except ValueError:
    run = {"error": (out / f"ingest_scale_{n}.log").read_text()[-2000:]}
run.pop("documents", None)
summary = {"gpus": n, "exit_code": rc, **run}
(out / f"ingest_scale_{n}.json").write_text(json.dumps(summary, indent=1))
keys = ("new", "seconds", "documents_per_s", "tokens_per_s", "setup_seconds")
cells = [summary.get(k, "-") for k in keys]
cells.append(max(summary["rank_seconds"]) if summary.get("rank_seconds") else "-")
cells.append(summary.get("library_seconds", "-"))
print(f"{n:4d} {cells[0]:>9} {cells[1]:>8} {cells[2]:>11} {cells[3]:>10} {cells[4]:>8} {cells[5]:>10} {cells[6]:>9} "
      f"{summary.get('workers', '-')}")
EOF
  [ -n "${KEEP_HOMES:-}" ] || rm -rf "$homes/home_$n"
done
[ -n "${KEEP_HOMES:-}" ] || rmdir "$homes"
exit "$status"
