#!/usr/bin/env bash
# Build vLLM's own environment, the one `generation.backend: vllm` starts its server with:
#   bash scripts/setup_vllm.sh [cpu|gpu] [VENV]      (default: cpu .venv-vllm, which the trainer finds by itself;
#                                                    another VENV: set generation.backend.python or PANACEA_VLLM_PYTHON)
# ~2.5 min and ~3.5 GB on CPU. vLLM's pins differ from ours (requirements-vllm.txt says which), so it never shares
# the main venv; the trainer talks to it over HTTP only.
set -euo pipefail
cd "$(dirname "$0")/.."
KIND=${1:-cpu}; VENV=${2:-.venv-vllm}
case "$KIND" in
  cpu) REQ=requirements-vllm.txt ;;
  gpu) REQ=requirements-vllm-gpu.txt ;;
  *) echo "usage: bash scripts/setup_vllm.sh [cpu|gpu] [VENV]; got '$KIND'" >&2; exit 2 ;;
esac
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
if [ "$KIND" = cpu ]; then
  # They come broken beside the CPU torch ("operator torchvision::nms does not exist") and break `from vllm import
  # LLM`; the engine needs none of them.
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
"$VENV/bin/python" - <<'PY'
import sys
import vllm
from vllm import LLM  # noqa: F401  (fails if a broken companion package is still installed)
print(f"vLLM {vllm.__version__} ready: {sys.executable}")
PY
