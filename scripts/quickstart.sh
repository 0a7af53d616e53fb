#!/usr/bin/env bash
# The README's main job. Until the embedded benchmark lands it runs the adapter demo (offline, CPU, seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
python scripts/adapter_demo.py
