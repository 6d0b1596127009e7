#!/usr/bin/env bash
# One prepared run on a CUDA machine: the CUDA-marked tests; the GPU training recipe for TIME_BUDGET seconds
# (tokens/s, model FLOPs utilisation, validation bits/byte on tiny-shakespeare); portable compression on
# CUDA against the CPU (identical files, each decoded on the other device); the compression benchmark on CUDA.
#   bash benchmarks/gpu_check.sh            # TIME_BUDGET=300 by default
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ ! -x "$PY" ]; then
    python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'
    PY=.venv/bin/python
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
"$PY" -m pytest -q -m cuda tests/test_cuda.py
"$PY" benchmarks/bench_train.py --recipe gpu --time-budget "${TIME_BUDGET:-300}" --output-dir outputs/gpu_bench --force --no-progress
"$PY" benchmarks/portable_check.py --model outputs/gpu_bench/best.pt
"$PY" benchmarks/bench_compress.py --model outputs/gpu_bench/best.pt --device cuda --skip segments
