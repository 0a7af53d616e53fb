#!/usr/bin/env bash
# Critic-free (group) vs GAE on our loop, and ours vs TRL's GRPOTrainer, on this machine's CPU (issue 19).
#   bash benchmarks/group_compare.sh [ROUNDS]      (default 2 rounds; ~15 min on 2 cores)
# Never run it beside other jobs: two processes spinning OpenMP threads on 2 cores slow each other ~20x.
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=offline HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/panacea_torch_extensions}
ROUNDS=${1:-2}
PY=${PYTHON:-python}
W=${PPO_COMPARE_DIR:-runs/ppo_compare}
OUT=benchmarks/results/group_compare_cpu.jsonl
mkdir -p "$W" benchmarks/results
: > "$OUT"
for size in tiny 100m; do
  [ -f "$W/$size/meta.json" ] || $PY benchmarks/ppo_compare.py prepare --size "$size" --dir "$W/$size" > /dev/null
done
run() { echo "+ $*" >&2; "$@" 2>/dev/null | sed -n 's/^RESULT //p' | tee -a "$OUT"; }
for r in $(seq "$ROUNDS"); do   # alternate within each round so drift hits every variant alike
  for v in "ours --estimator gae" "ours --estimator group" "trl"; do
    run $PY benchmarks/group_compare.py $v --dir "$W/tiny" --batch 64 --new 40 --iters 6
  done
  for v in "ours --estimator gae" "ours --estimator group" "trl"; do
    run $PY benchmarks/group_compare.py $v --dir "$W/100m" --batch 16 --new 32 --iters 4
  done
done
echo "machine: $(nproc) CPU cores, $(date -u +%F)"
$PY benchmarks/group_compare.py summarize --dir "$OUT"
