#!/usr/bin/env bash
# Two nodes, simulated on this machine (issue 21): two torchrun "node" processes over loopback, one worker each,
# ZeRO-3 over gloo. PPO and the reward-model trainer each: train, checkpoint, resume exactly on the same topology,
# and refuse another topology with a clear message. Prints one PASS/FAIL line per check.
#   bash benchmarks/two_nodes.sh [WORKDIR]
# On real nodes the same command runs once per node, with the first node's address (and a shared filesystem for
# output_dir: every rank writes its ZeRO partition into the run's checkpoints):
#   torchrun --nnodes 2 --nproc_per_node 8 --node_rank R --master_addr NODE0 --master_port 29500 \
#       rlhf/train_ppo.py --config configs/ppo_paper_hh.yaml
set -uo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/panacea_torch_extensions}
W=${1:-runs/two_nodes}
rm -rf "$W"; mkdir -p "$W"
python - "$W" <<'PY'
import sys, json
from pathlib import Path
import torch, yaml
sys.path.insert(0, ".")
from tests.helpers import write_pku_pairs, write_tiny_base
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from reward_models.score_model import write_dimension
w = Path(sys.argv[1])
base = write_tiny_base(w / "base"); tok = AutoTokenizer.from_pretrained(base)
for name, kind, seed in (("rm", "reward", 1), ("cm", "cost", 2)):
    torch.manual_seed(seed)
    m = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1); m.config.pad_token_id = tok.pad_token_id
    m.save_pretrained(w / name); tok.save_pretrained(w / name); write_dimension(w / name, name=name, kind=kind)
write_pku_pairs(w / "pairs.jsonl", 256, seed=3)
common = {"precision": "fp32", "ds_config": "ds_configs/zero3.json", "save_every": 2, "wandb": {"mode": "disabled"}}
(w / "ppo.yaml").write_text(yaml.safe_dump({**common, "actor_model": str(base), "output_dir": str(w / "ppo"),
    "objectives": [{"name": "helpful", "model": str(w / "rm"), "kind": "reward"},
                   {"name": "harmless", "model": str(w / "cm"), "kind": "cost"}],
    "adapter": {"rank": 4, "pref_dim": 2}, "prompts": {"path": str(w / "pairs.jsonl"), "max_prompt_length": 64},
    "generation": {"max_new_tokens": 8}, "rollout_batch_size": 4, "mini_batch_size": 4, "micro_batch_size": 2,
    "total_steps": 4, "sample_every": 0, "seed": 7, "world_size": 2}))
(w / "rm.yaml").write_text(yaml.safe_dump({**common, "model_name_or_path": str(base), "output_dir": str(w / "rm_out"),
    "data": {"path": str(w / "pairs.jsonl"), "schema": "pku_saferlhf", "max_length": 64}, "max_steps": 4,
    "micro_batch_size": 8, "eval_every": 100, "log_every": 1, "world_size": 2}))
PY
PORT=29611
two() {  # script config [args...]: both "nodes", concurrently
  local script=$1 cfg=$2; shift 2; PORT=$((PORT + 1))
  for r in 0 1; do
    torchrun --nnodes 2 --nproc_per_node 1 --node_rank $r --master_addr 127.0.0.1 --master_port $PORT \
      "$script" --config "$cfg" "$@" > "$W/log.$(basename "$cfg" .yaml).$PORT.$r" 2>&1 &
  done
  wait
}
one() {  # another topology: one node, one process
  local script=$1 cfg=$2; shift 2; PORT=$((PORT + 1))
  torchrun --nnodes 1 --nproc_per_node 1 --master_addr 127.0.0.1 --master_port $PORT "$script" --config "$cfg" "$@" \
    > "$W/log.one.$PORT" 2>&1
}
check() { if eval "$2"; then echo "PASS $1"; else echo "FAIL $1"; fi; }
strip='import json,sys; rows=[json.loads(l) for l in open(sys.argv[1]) if l.strip()]; print(json.dumps([{k:v for k,v in r.items() if not k.startswith(("time/","perf/"))} for r in rows], sort_keys=True))'
T0=$(date +%s)
# PPO: uninterrupted 4 steps, vs 2 steps then a resume to 4, both on 2 nodes x 1 process
two rlhf/train_ppo.py "$W/ppo.yaml" --output_dir "$W/ppo_full"
two rlhf/train_ppo.py "$W/ppo.yaml" --output_dir "$W/ppo_split" --total_steps 2
check "ppo trains on two nodes (4 steps logged)" '[ "$(wc -l < $W/ppo_full/metrics.jsonl)" = 4 ]'
one rlhf/train_ppo.py "$W/ppo.yaml" --output_dir "$W/ppo_split" --resume_from latest --world_size 1
check "ppo refuses to resume on 1 process" 'grep -q "written by 2 processes but 1 were launched" $W/log.one.$PORT'
two rlhf/train_ppo.py "$W/ppo.yaml" --output_dir "$W/ppo_split" --resume_from latest
check "ppo resumes exactly on the same topology" \
  '[ "$(python -c "$strip" $W/ppo_full/metrics.jsonl)" = "$(python -c "$strip" $W/ppo_split/metrics.jsonl)" ]'
# the reward-model trainer: the same three checks
two reward_models/train.py "$W/rm.yaml" --output_dir "$W/rm_full"
two reward_models/train.py "$W/rm.yaml" --output_dir "$W/rm_split" --max_steps 4 --save_every 2 --eval_every 100
check "reward model trains on two nodes" '[ -f $W/rm_full/dimension.json ]'
rm -rf "$W/rm_resume" && cp -r "$W/rm_split" "$W/rm_resume" && rm -f "$W/rm_resume/dimension.json"
one reward_models/train.py "$W/rm.yaml" --output_dir "$W/rm_resume" --resume_from "$W/rm_resume/checkpoints/step_00000002" --world_size 1
check "reward model refuses to resume on 1 process" 'grep -q "written by 2 processes but 1 were launched" $W/log.one.$PORT'
two reward_models/train.py "$W/rm.yaml" --output_dir "$W/rm_resume" --resume_from "$W/rm_resume/checkpoints/step_00000002"
check "reward model resumes exactly on the same topology" \
  "python -c \"import json; a, b = (json.load(open(p + '/dimension.json')) for p in ('$W/rm_full', '$W/rm_resume')); assert abs(a['final_loss'] - b['final_loss']) < 1e-5 and a['accuracy'] == b['accuracy'], (a, b)\""
echo "took $(( $(date +%s) - T0 )) s on $(nproc --all) CPU cores, $(date -u +%F)"
