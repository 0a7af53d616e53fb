#!/usr/bin/env bash
# The paper's 3-objective experiment on the embedded benchmark: helpful, harmless, concise.
#   bash scripts/three_objectives.sh [STEPS] [OUT]          (run scripts/quickstart.sh first: its data and models)
#   CONCISE=model bash scripts/three_objectives.sh ...      (a learned concise reward model instead of the rule)
# Conciseness is a rule (hhbench.task:concise_reward, a function objective) unless CONCISE=model, which first trains a
# concise reward model (configs/three/rm_concise.yaml). Trains Panacea PPO with D = 3 for STEPS steps, and Rewarded
# Soups at the same budget (one run per vertex, STEPS / 3 steps each); evaluates both on the 66-point simplex grid (step 0.1) scored by the learned
# models and by the oracles; compares them with one shared reference point; prints Spearman(lambda_i, oracle i).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
STEPS=${1:-150}; OUT=${2:-runs/three}; QS=${QUICKSTART_OUT:-runs/quickstart}
[ -f "$QS/cm_harmless/dimension.json" ] || { echo "run scripts/quickstart.sh first ($QS)" >&2; exit 1; }
mkdir -p "$OUT/configs"
for f in configs/three/*.yaml; do sed -e "s#runs/three#$OUT#g" -e "s#runs/quickstart#$QS#g" "$f" > "$OUT/configs/$(basename "$f")"; done
T0=$(date +%s)
CONCISE=${CONCISE:-function}
OBJ=()
case "$CONCISE" in
  function) ;;
  model)
    [ -f "$OUT/rm_concise/dimension.json" ] || python reward_models/train.py --config "$OUT/configs/rm_concise.yaml" \
      $(again "$OUT/rm_concise")
    M="kind: reward, normalize: true, max_length: 96, batch_size: 64"
    OBJ=(--objectives "[{name: helpful, model: $QS/rm_helpful, $M}, {name: harmless, model: $QS/cm_harmless, kind: cost,
      normalize: true, max_length: 96, batch_size: 64}, {name: concise, model: $OUT/rm_concise, $M}]") ;;
  *) echo "CONCISE must be function (the rule) or model (a learned concise reward model), got '$CONCISE'" >&2; exit 2 ;;
esac
ppo() {  # name steps [overrides...]
  local name=$1 steps=$2; shift 2
  [ -f "$OUT/$name/policy/run.json" ] || python rlhf/train_ppo.py --config "$OUT/configs/ppo.yaml" \
    --output_dir "$OUT/$name" --total_steps "$steps" "${OBJ[@]}" "$@" $(again "$OUT/$name")
}
ppo panacea "$STEPS"
ppo rs_0 $((STEPS / 3)) --preference.name fixed --preference.value "[1.0,0.0,0.0]"
ppo rs_1 $((STEPS / 3)) --preference.name fixed --preference.value "[0.0,1.0,0.0]"
ppo rs_2 $((STEPS / 3)) --preference.name fixed --preference.value "[0.0,0.0,1.0]"
EVAL="--prompts $QS/data/eval_prompts.jsonl --grid 0.1 --n_prompts 128 --batch_size 8 --max_prompt_length 32
      --max_new_tokens 40 --no_wandb"
[ -f "$OUT/eval_panacea/pareto.json" ] || python rlhf/evaluate.py --run "$OUT/panacea" --out "$OUT/eval_panacea" \
  --name panacea --with_base $EVAL
[ -f "$OUT/eval_rs/pareto.json" ] || python rlhf/evaluate.py --method rs --run "$OUT/rs_0" --run "$OUT/rs_1" \
  --run "$OUT/rs_2" --out "$OUT/eval_rs" --name rewarded_soups $EVAL
for scorer in oracle score_models; do
  python rlhf/compare_fronts.py "$OUT"/eval_{panacea,rs}/pareto.json --out "$OUT/compare_$scorer" \
    $([ "$scorer" = oracle ] && echo --scorer oracle) > /dev/null
  echo "== $scorer"; cat "$OUT/compare_$scorer/compare.md"
done
for m in panacea rs; do
  echo "== $m (oracles)"; python -m hhbench --report "$OUT/eval_$m/pareto.json" --prompts "$QS/data/eval_prompts.jsonl"
done
echo "plots: $OUT/eval_panacea/pareto_oracle.png $OUT/compare_oracle/compare.png; took $(( $(date +%s) - T0 )) s"
