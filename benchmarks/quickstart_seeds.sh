#!/usr/bin/env bash
# The quickstart's Panacea PPO on more seeds, with a chosen rollout backend, each evaluated and reported as the
# quickstart does (the same SFT, reward and cost models; HF decoding for every evaluation):
#   bash benchmarks/quickstart_seeds.sh BACKEND OUT SEED...        e.g.  bash benchmarks/quickstart_seeds.sh vllm /tmp/qs 0 1 2
# BACKEND: hf (the shipped settings: lambda merged into W0 while decoding) or vllm (adapter synced to the engine).
# Needs a finished quickstart in $QUICKSTART_OUT (default runs/quickstart).
set -euo pipefail
BACKEND=$1; OUT=$2; shift 2
QS=${QUICKSTART_OUT:-runs/quickstart}
case $BACKEND in
  hf) ARGS=() ;;
  vllm) ARGS=(--generation.backend vllm --generation.merge_adapter false) ;;
  *) echo "BACKEND must be hf or vllm, got $BACKEND" >&2; exit 2 ;;
esac
for S in "$@"; do
  D="$OUT/${BACKEND}_s$S"
  if [ ! -f "$D/ppo/policy/run.json" ]; then
    start=$(date +%s)
    python rlhf/train_ppo.py --config "$QS/configs/ppo.yaml" --seed "$S" --output_dir "$D/ppo" "${ARGS[@]}" \
      > "$D.ppo.log" 2>&1 || { mkdir -p "$D"; tail -20 "$D.ppo.log"; exit 1; }
    echo "seed $S: PPO $(( $(date +%s) - start )) s"
  fi
  [ -f "$D/eval/pareto.json" ] || python rlhf/evaluate.py --run "$D/ppo" --prompts "$QS/data/eval_prompts.jsonl" \
    --grid 0.1 --with_base --n_prompts 128 --batch_size 16 --max_prompt_length 32 --max_new_tokens 40 \
    --out "$D/eval" > "$D.eval.log" 2>&1
  echo "== $BACKEND seed $S"
  python -m hhbench --report "$D/eval/pareto.json" --prompts "$QS/data/eval_prompts.jsonl" | grep -i "spearman\|dominat"
done
