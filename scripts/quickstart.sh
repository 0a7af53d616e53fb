#!/usr/bin/env bash
# The README's main job: the whole method on the embedded helpful-harmless benchmark, offline, on CPU.
#   data + tokenizer + random-init base -> SFT -> reward model (helpful) + cost model (harmless)
#   -> Panacea PPO -> Pareto front scored by the learned models and by the ground-truth oracles.
# Artefacts: $OUT/{data,init,sft,rm_helpful,cm_harmless,ppo,eval}. Re-running skips finished stages.
# Every stage can run alone with the commands printed below. Environment knobs (CI uses them to shorten):
#   QUICKSTART_OUT (runs/quickstart), SFT_ARGS, RM_ARGS, PPO_ARGS, EVAL_ARGS (extra --key value overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/panacea_torch_extensions}
OUT=${QUICKSTART_OUT:-runs/quickstart}
LAUNCH="deepspeed --num_gpus 1 --master_port ${MASTER_PORT:-29511}"
mkdir -p "$OUT/configs"
for f in configs/quickstart/*.yaml; do  # the shipped configs, re-rooted under $OUT
  sed "s#runs/quickstart#$OUT#g" "$f" > "$OUT/configs/$(basename "$f")"
done
stage() { echo; echo "=== [quickstart $(date +%T)] $1"; echo "+ ${*:2}"; }
source scripts/common.sh  # again DIR: how to restart an interrupted stage
T0=$(date +%s)

if [ ! -f "$OUT/init/config.json" ]; then
  stage "1/6 data, tokenizer, random-init base" python -m hhbench --out "$OUT"
  python -m hhbench --out "$OUT" > /dev/null
fi
if [ ! -f "$OUT/sft/sft_summary.json" ]; then
  stage "2/6 SFT" python rlhf/train_sft.py --config "$OUT/configs/sft.yaml" ${SFT_ARGS:-} $(again "$OUT/sft")
  python rlhf/train_sft.py --config "$OUT/configs/sft.yaml" ${SFT_ARGS:-} $(again "$OUT/sft")
fi
for dim in rm_helpful cm_harmless; do
  if [ ! -f "$OUT/$dim/dimension.json" ]; then
    stage "3/6 $dim" $LAUNCH reward_models/train.py --config "$OUT/configs/$dim.yaml" ${RM_ARGS:-} $(again "$OUT/$dim")
    $LAUNCH reward_models/train.py --config "$OUT/configs/$dim.yaml" ${RM_ARGS:-} $(again "$OUT/$dim")
  fi
done
if [ ! -f "$OUT/ppo/policy/run.json" ]; then
  stage "4/6 Panacea PPO" $LAUNCH rlhf/train_ppo.py --config "$OUT/configs/ppo.yaml" ${PPO_ARGS:-} $(again "$OUT/ppo")
  $LAUNCH rlhf/train_ppo.py --config "$OUT/configs/ppo.yaml" ${PPO_ARGS:-} $(again "$OUT/ppo")
fi
if [ ! -f "$OUT/eval/pareto.json" ]; then
  EVAL="python rlhf/evaluate.py --run $OUT/ppo --prompts $OUT/data/eval_prompts.jsonl --grid 0.1 --with_base
        --n_prompts 128 --batch_size 16 --max_prompt_length 32 --max_new_tokens 40 --out $OUT/eval ${EVAL_ARGS:-}"
  stage "5/6 Pareto front (learned models + oracles)" $EVAL
  $EVAL
fi
stage "6/6 report" python -m hhbench --report "$OUT/eval/pareto.json" --prompts "$OUT/data/eval_prompts.jsonl"
python -m hhbench --report "$OUT/eval/pareto.json" --prompts "$OUT/data/eval_prompts.jsonl"
python - "$OUT/eval/pareto.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("\n| scorer | hypervolume | inner product | sparsity | spacing |\n|---|---|---|---|---|")
for name, m in [("score models", d["metrics"])] + list(d["extra_metrics"].items()):
    print(f"| {name} | {m['hypervolume']:.4g} | {m['inner_product']:.4g} | {m['sparsity']:.4g} | {m['spacing']:.4g} |")
PY
# the front while PPO trained (eval.every in ppo.yaml), drawn from metrics.jsonl alone
TRAINING=""
if grep -q '"eval/front"' "$OUT/ppo/metrics.jsonl"; then
  python rlhf/plot_training.py "$OUT/ppo" --scorer oracle > /dev/null
  TRAINING="; during training: $OUT/ppo/training_fronts_oracle.png"
fi
echo
echo "front plot: $OUT/eval/pareto.png (oracle: $OUT/eval/pareto_oracle.png)$TRAINING; took $(( $(date +%s) - T0 )) s"
