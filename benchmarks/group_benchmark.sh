#!/usr/bin/env bash
# The group (critic-free) estimator on the embedded benchmark at the shipped PPO stage's wall-clock (issue 19):
# the quickstart's SFT, reward and cost models; G = 4 samples per prompt, STEPS steps (default 214: the shipped
# 150 GAE steps x 1.67 s / 1.17 s per step, measured side by side on this machine). Evaluates each front like the
# quickstart and compares it with the shipped PPO front on the oracles with one shared reference point.
#   bash benchmarks/group_benchmark.sh [STEPS] [SEEDS...]       (run scripts/quickstart.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
QS=${QUICKSTART_OUT:-runs/quickstart}; OUT=${OUT:-runs/group_benchmark}; STEPS=${1:-214}; shift || true
SEEDS=${*:-42}; STD=${STD:-false}; BASELINE=${BASELINE:-mean}
EVAL="--prompts $QS/data/eval_prompts.jsonl --grid 0.1 --with_base --n_prompts 128 --batch_size 16
      --max_prompt_length 32 --max_new_tokens 40 --no_wandb"
[ -f "$QS/ppo/policy/run.json" ] || { echo "run scripts/quickstart.sh first" >&2; exit 1; }
mkdir -p "$OUT"
# the shipped PPO front, evaluated exactly like the group runs' (same prompts, noise and settings)
[ -f "$OUT/shipped/pareto.json" ] || python rlhf/evaluate.py --run "$QS/ppo" --out "$OUT/shipped" --name shipped_ppo \
  $EVAL > /dev/null 2>&1
fronts=("$OUT/shipped/pareto.json")
for seed in $SEEDS; do
  run="$OUT/std_${STD}_${BASELINE}_seed$seed"
  if [ ! -f "$run/policy/run.json" ]; then
    T0=$(date +%s)
    python rlhf/train_ppo.py --config "$QS/configs/ppo.yaml" --output_dir "$run" --total_steps "$STEPS" --seed "$seed" \
      --advantage.name group --advantage.group_size 4 --advantage.std_normalize "$STD" \
      --advantage.baseline "$BASELINE" --eval.every 0 --save_every 0 --wandb.mode disabled $(again "$run") > "$run.log" 2>&1
    echo "$run: trained in $(( $(date +%s) - T0 )) s"
  fi
  [ -f "$run/eval/pareto.json" ] || python rlhf/evaluate.py --run "$run" --out "$run/eval" --name "group_std${STD}_s$seed" \
    $EVAL > /dev/null 2>&1
  echo "== $run"; python -m hhbench --report "$run/eval/pareto.json" --prompts "$QS/data/eval_prompts.jsonl" \
    | python -c "import json,sys; r=json.load(sys.stdin); print({k: r[k] for k in ('spearman', 'dominates_base', 'dominates_base_learned_models')})"
  fronts+=("$run/eval/pareto.json")
done
python rlhf/compare_fronts.py "${fronts[@]}" --out "$OUT/compare_std_${STD}_${BASELINE}" --scorer oracle
