#!/usr/bin/env bash
# One prepared run on a CUDA machine: the CUDA-marked tests; the GPU training recipe for TIME_BUDGET seconds
# (tokens/s, model FLOPs utilisation, validation bits/byte on tiny-shakespeare); portable compression on
# CUDA against the CPU (identical files, each decoded on the other device); the compression benchmark on CUDA.
#
# It runs on the GPU image's own python3 (its torch with CUDA, numba, numpy), with blm_lab from this tree on
# PYTHONPATH: that machine reaches no package registry, so the project's pins do not apply there. The few
# packages the image lacks travel as wheels, and the corpora with them: here, `sh tools/gpu_prepare.sh` fills
# .gpu/; then run it with carry [".gpu"].
#   bash benchmarks/gpu_check.sh            # TIME_BUDGET=120 by default; logs also under $OUT when it is set
# Where a project venv exists (a machine that can install the pins), PY=.venv/bin/python uses it instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if compgen -G ".gpu/wheels/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/blm_site .gpu/wheels/*.whl
    export PYTHONPATH="/tmp/blm_site${PYTHONPATH:+:$PYTHONPATH}"
fi
# the benchmarks read ../shared/corpora; where it is not beside the checkout, the carried copy stands in
[ -d ../shared/corpora ] || { [ -d .gpu/shared/corpora ] && ln -sfn "$PWD/.gpu/shared" ../shared; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
missing=$("$PY" -c "
import importlib.util as u
print(' '.join(m for m in ('torch', 'numba', 'numpy', 'pandas', 'pytest', 'zstandard', 'brotli', 'pyppmd', 'tqdm', 'yaml')
               if u.find_spec(m) is None))")
if [ -n "$missing" ]; then
    echo "error: $PY lacks $missing; run 'sh tools/gpu_prepare.sh' where pip works and carry .gpu" >&2
    exit 2
fi
LOG=${OUT:-outputs/gpu_check}
mkdir -p "$LOG"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -c "import torch, numba, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), '| numba', numba.__version__, '| numpy', numpy.__version__)"
"$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py 2>&1 | tee "$LOG/cuda_tests.log"
"$PY" benchmarks/bench_train.py --recipe gpu --time-budget "${TIME_BUDGET:-120}" --output-dir outputs/gpu_bench --force \
    --no-progress 2>&1 | tee "$LOG/train.log"
"$PY" benchmarks/portable_check.py --model outputs/gpu_bench/best.pt 2>&1 | tee "$LOG/portable.log"
"$PY" benchmarks/bench_compress.py --model outputs/gpu_bench/best.pt --device cuda --skip segments,canterbury 2>&1 \
    | tee "$LOG/compress.log"
