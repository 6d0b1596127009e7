#!/usr/bin/env sh
# What benchmarks/gpu_check.sh needs on a GPU machine that reaches no registry and has no ../shared, in .gpu/
# (ignored by git; carry it): the packages that the GPU image's own python3 (torch with CUDA, numba, numpy,
# pandas, pytest) lacks, as wheels for that image's Python (3.12, x86-64), and the corpora the benchmarks read.
#   sh tools/gpu_prepare.sh [PYTHON_VERSION]      # default 3.12
set -eu
cd "$(dirname "$0")/.."
version=${1:-3.12}
# the pins of pyproject.toml, so the GPU run uses the same compressors as every other machine
pins=$(python3 - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
wanted = {"zstandard", "brotli", "pyppmd"}
print(" ".join(d for d in deps if re.split(r"[=<>!~ ]", d, maxsplit=1)[0].lower() in wanted))
PY
)
mkdir -p .gpu/wheels
rm -f .gpu/wheels/*.whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .gpu/wheels $pins
rm -rf .gpu/shared && mkdir -p .gpu/shared && cp -r ../shared/corpora .gpu/shared/
du -sh .gpu/*
