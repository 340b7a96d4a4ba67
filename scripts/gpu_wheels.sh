#!/usr/bin/env bash
# Download, into .whl/, the wheels the GPU check machine lacks (scripts/gpu_check.sh
# installs them there with `pip install --no-index --no-deps --target /tmp/site`).
#
#   scripts/gpu_wheels.sh                 # -> .whl/*.whl, checks the total <= 64 MiB
#   WHEEL_DIR=/tmp/whl scripts/gpu_wheels.sh
#
# That machine: Python 3.12, torch 2.11+cu130, transformers 5.17, peft, accelerate,
# pyarrow, pandas, numpy, msgpack, ninja, py-cpuinfo, psutil, einops, fsspec, xxhash;
# no deepspeed, datasets, ctranslate2, vllm, and no network. So we carry:
#   deepspeed   an sdist only on PyPI: built here into a pure-Python wheel (its ops are
#               JIT-compiled there with the machine's nvcc + ninja)
#   hjson, pydantic (+ pydantic-core, annotated-types, typing-inspection,
#               typing-extensions): deepspeed's missing requirements
#   datasets (+ dill, multiprocess): train.features needs it
# Versions are those of requirements-cpu.lock. vLLM's and CTranslate2's CUDA wheels
# (hundreds of MB, plus cuBLAS 12) cannot travel in 64 MiB: their GPU tests skip there.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${WHEEL_DIR:-.whl}
PY=${PY:-.venv/bin/python}
LIMIT_MIB=64
pin() { grep -iE "^$1==" requirements-cpu.lock | head -1; }
PINNED=(hjson pydantic pydantic_core annotated-types typing-inspection typing_extensions datasets dill multiprocess)

mkdir -p "$DIR"
rm -f "$DIR"/*.whl
specs=()
for name in "${PINNED[@]}"; do
  spec=$(pin "$name") || { echo "gpu_wheels: $name is not in requirements-cpu.lock" >&2; exit 1; }
  specs+=("$spec")
done
# Python 3.12 manylinux x86_64 wheels, whatever this machine is; only PyPI (this machine's
# pip config adds a local folder of CPU builds, see scripts/lock_gpu.sh).
env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$PY" -m pip download --quiet --no-deps \
  --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DIR" "${specs[@]}"
# deepspeed: build the wheel from the sdist (pure Python; no ops prebuilt).
env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet \
  --no-deps -w "$DIR" "$(pin deepspeed)"

total=$(du -cb "$DIR"/*.whl | tail -1 | cut -f1)
ls -l "$DIR"/*.whl | awk '{printf "  %8.1f KiB  %s\n", $5 / 1024, $NF}'
echo "gpu_wheels: $(ls "$DIR"/*.whl | wc -l) wheels, $((total / 1024 / 1024)) MiB in $DIR (limit $LIMIT_MIB MiB)"
if [ "$total" -gt $((LIMIT_MIB * 1024 * 1024)) ]; then
  echo "gpu_wheels: over the $LIMIT_MIB MiB a device call carries" >&2
  exit 1
fi
