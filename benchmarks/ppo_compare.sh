#!/usr/bin/env bash
# PPO iteration vs TRL 1.12, phase breakdown (tiny and ~90M) and reference-copy memory, on this machine's CPU.
#   bash benchmarks/ppo_compare.sh [ROUNDS]      (default 3 rounds; ~10 min on 2 cores)
# TRL 1.12 (the last release with PPOTrainer, under trl.experimental) goes into its own venv, benchmarks/.venv-trl,
# which sees this environment's packages through a .pth file: both sides run the same torch and transformers.
# Never run it beside other jobs: two processes spinning OpenMP threads on 2 cores slow each other ~20x.
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=offline HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/panacea_torch_extensions}
ROUNDS=${1:-3}
PY=${PYTHON:-python}
VENV=benchmarks/.venv-trl
if [ ! -x "$VENV/bin/python" ]; then
  $PY -m venv "$VENV"
  $PY -c "import site; print(site.getsitepackages()[0])" > "$($VENV/bin/python -c 'import site; print(site.getsitepackages()[0])')/main_env.pth"
  "$VENV/bin/pip" install -q trl==1.12.0
fi
W=${PPO_COMPARE_DIR:-runs/ppo_compare}
OUT=benchmarks/results/ppo_compare_cpu.jsonl
mkdir -p "$W" benchmarks/results
: > "$OUT"
for size in tiny 100m; do
  [ -f "$W/$size/meta.json" ] || $PY benchmarks/ppo_compare.py prepare --size "$size" --dir "$W/$size" > /dev/null
done
run() { echo "+ $*" >&2; "$@" 2>/dev/null | sed -n 's/^RESULT //p' | tee -a "$OUT"; }
for r in $(seq "$ROUNDS"); do   # alternate A/B within each round so drift hits every variant alike
  run $PY benchmarks/ppo_compare.py ours --dir "$W/tiny"
  run "$VENV/bin/python" benchmarks/ppo_compare.py trl --dir "$W/tiny"
  run "$VENV/bin/python" benchmarks/ppo_compare.py trl --dir "$W/tiny" --trl_peft
done
for v in "" --ref_copy; do      # ~90M: phases and the memory of a separate reference copy
  run $PY benchmarks/ppo_compare.py ours --dir "$W/100m" --batch 16 --new 32 --iters 3 $v
done
run $PY benchmarks/ppo_compare.py ours --dir "$W/tiny" --ref_copy
echo "machine: $(nproc) CPU cores, $(date -u +%F)"
$PY benchmarks/ppo_compare.py summarize --dir "$OUT"
