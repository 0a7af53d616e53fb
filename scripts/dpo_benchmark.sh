#!/usr/bin/env bash
# Panacea-DPO (LS and Tche) vs Rewarded Soups with DPO on the embedded benchmark, at an equal number of DPO
# steps per method (RS: STEPS / 2 per objective), compared on the oracles with one shared reference point.
#   bash scripts/dpo_benchmark.sh [STEPS] [OUT] [SEED]      (run scripts/quickstart.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
STEPS=${1:-90}; OUT=${2:-runs/dpo_benchmark}; SEED=${3:-0}; QS=${QUICKSTART_OUT:-runs/quickstart}
COMMON="--config configs/dpo_hh.yaml --model_name_or_path $QS/sft --data.path $QS/data/preferences.jsonl
        --seed $SEED --wandb.mode disabled"
OBJ="[{name: helpful, model: $QS/rm_helpful, kind: reward}, {name: harmless, model: $QS/cm_harmless, kind: cost}]"
EVAL="--prompts $QS/data/eval_prompts.jsonl --n_prompts 64 --max_new_tokens 40 --max_prompt_length 32 --grid 0.25
      --no_wandb --seed $SEED"
run() { [ -f "$OUT/$1/policy/run.json" ] || python rlhf/train_dpo.py $COMMON --objectives "$OBJ" --output_dir "$OUT/$1" \
  "${@:2}" $(again "$OUT/$1"); }
run ls --max_steps "$STEPS" --aggregation ls
run tche --max_steps "$STEPS" --aggregation tche
run rs_0 --max_steps $((STEPS / 2)) --preference.name fixed --preference.value "[1.0,0.0]"
run rs_1 --max_steps $((STEPS / 2)) --preference.name fixed --preference.value "[0.0,1.0]"
python rlhf/evaluate.py --run "$OUT/ls" --out "$OUT/eval_ls" --name panacea_dpo_ls $EVAL
python rlhf/evaluate.py --run "$OUT/tche" --out "$OUT/eval_tche" --name panacea_dpo_tche $EVAL
python rlhf/evaluate.py --method rs --run "$OUT/rs_0" --run "$OUT/rs_1" --out "$OUT/eval_rs" --name rs_dpo $EVAL
python rlhf/compare_fronts.py "$OUT"/eval_{ls,tche,rs}/pareto.json --out "$OUT/compare" --scorer oracle
