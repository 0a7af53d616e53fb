#!/usr/bin/env bash
# Train the paper's baselines on the SAME PPO loop as Panacea, at an equal PPO-step budget per method, and
# evaluate all fronts with one shared reference point.
#
#   bash scripts/baselines.sh CONFIG [STEPS] [OUT] [GRID]
#
# Budget (stated so that fronts are compared at equal compute): every method gets STEPS PPO steps in total.
#   panacea: one run of STEPS steps with lambda sampled each step;
#   rs:      D runs (one per objective, lambda fixed to a vertex), STEPS / D steps each;
#   dps:     one fixed-lambda run per grid point (GRID, default 0.25 -> 5 points for D=2), STEPS / N steps each.
# Extra arguments for train_ppo.py can be passed in PPO_ARGS; launcher in LAUNCH (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
CONFIG=${1:?usage: bash scripts/baselines.sh CONFIG [STEPS] [OUT] [GRID]}
STEPS=${2:-60}
OUT=${3:-runs/baselines}
GRID=${4:-0.25}
LAUNCH=${LAUNCH:-python}
PPO_ARGS=${PPO_ARGS:-}
EVAL_ARGS=${EVAL_ARGS:-}
D=$(python -c "import yaml,sys; print(len(yaml.safe_load(open('$CONFIG'))['objectives']))")
prefs_json=$(python -c "from rlhf.pareto import grid; import json; print(json.dumps(grid($D, $GRID)))")
N=$(python -c "import json; print(len($prefs_json))")
train() {  # name steps [overrides...]
  local name=$1 steps=$2; shift 2
  if [ -f "$OUT/$name/policy/run.json" ]; then echo "[baselines] $name done, skipping"; return; fi
  $LAUNCH rlhf/train_ppo.py --config "$CONFIG" --output_dir "$OUT/$name" --total_steps "$steps" $PPO_ARGS "$@" \
    $(again "$OUT/$name")
}
echo "[baselines] budget: $STEPS PPO steps per method (D=$D objectives, DPS on $N grid points)"
train panacea "$STEPS"
rs_runs=()
for i in $(seq 0 $((D - 1))); do
  vertex=$(python -c "print('[' + ','.join('1.0' if j == $i else '0.0' for j in range($D)) + ']')")
  train "rs_$i" $((STEPS / D)) --preference.name fixed --preference.value "$vertex"
  rs_runs+=(--run "$OUT/rs_$i")
done
dps_runs=()
for j in $(seq 0 $((N - 1))); do
  pref=$(python -c "import json; print(json.dumps(json.loads('$prefs_json')[$j]).replace(' ', ''))")
  train "dps_$j" $((STEPS / N)) --preference.name fixed --preference.value "$pref"
  dps_runs+=(--run "$OUT/dps_$j")
done
python rlhf/evaluate.py --run "$OUT/panacea" --grid "$GRID" --out "$OUT/eval_panacea" --name panacea $EVAL_ARGS
python rlhf/evaluate.py --method rs "${rs_runs[@]}" --grid "$GRID" --out "$OUT/eval_rs" --name rewarded_soups $EVAL_ARGS
python rlhf/evaluate.py --method dps "${dps_runs[@]}" --out "$OUT/eval_dps" --name dps $EVAL_ARGS
python rlhf/compare_fronts.py "$OUT"/eval_{panacea,rs,dps}/pareto.json --out "$OUT/compare" ${COMPARE_ARGS:-}
