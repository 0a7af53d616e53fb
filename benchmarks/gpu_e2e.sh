#!/usr/bin/env bash
# The GPU path end to end in one call (issue 21): bash benchmarks/gpu_e2e.sh [--tiny]
#   here, once:        bash benchmarks/gpu_e2e.sh --prepare-wheels   (wheels the GPU image lacks, into .whl/, ~7 MB)
#   on the GPU machine: bash benchmarks/gpu_e2e.sh                   (installs .whl/, runs every item, < 9 minutes)
#   on this CPU:        bash benchmarks/gpu_e2e.sh --tiny            (every item with tiny models: checks the script)
# Results: $OUT/gpu_e2e.json (OUT defaults to runs/gpu_e2e) and one table on stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare-wheels" ]; then
  # The GPU image (torch 2.11, transformers 5.17, peft, accelerate, pyarrow, pandas...) lacks these; pure-Python or
  # manylinux cp312 wheels, no dependencies pulled (each one named).
  rm -rf .whl && mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  python -m pip wheel -q --no-deps deepspeed==0.19.8 -w .whl
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.7.0 typing-inspection==0.4.2 \
    datasets==5.2.0 dill==0.4.0 multiprocess==0.70.18 moocore==0.3.2 cffi==2.1.1 pycparser==3.12 platformdirs==4.14.9
  ls -la .whl; du -sh .whl
  exit 0
fi
export OUT=${OUT:-runs/gpu_e2e} WANDB_MODE=disabled HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ] && ! python3 -c "import deepspeed" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
python3 benchmarks/gpu_e2e.py --out "$OUT" "$@" 2>&1 | tee "$OUT.log"
