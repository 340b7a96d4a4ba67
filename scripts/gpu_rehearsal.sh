#!/usr/bin/env bash
# Rehearse `make gpu-check` on a CPU machine, in the GPU card's own software, so that a
# lent card's 15 minutes are not spent finding an import error.
#
#   scripts/gpu_rehearsal.sh                  # venv in /tmp/card-venv, results in runs/gpu_rehearsal
#   CARD_VENV=/data/card PY312=~/.pyenv/versions/3.12.1/bin/python scripts/gpu_rehearsal.sh
#
# The card has Python 3.12, torch 2.11.0+cu130, transformers 5.17, peft, accelerate,
# pyarrow, sacrebleu and pytest (scripts/gpu_wheels.sh lists the rest it has). PyPI's
# torch 2.11.0 is that same CUDA 13 build; it imports without a GPU. The venv is ~5 GB.
# 1. scripts/gpu_check.sh with those packages and the carried .whl/ wheels: the doctor and
#    the GPU tests must pass (the tests skip, "no CUDA device"); the bench refuses (no CUDA).
# 2. The CPU train / merge / translate tests (real deepspeed launcher, 2 ranks) in that
#    stack: the code paths the card's GPU tests take, on transformers 5.17 and torch 2.11.
set -euo pipefail
cd "$(dirname "$0")/.."

PY312=${PY312:-$(command -v python3.12 || true)}
VENV=${CARD_VENV:-/tmp/card-venv}
RESULTS=${RESULTS:-runs/gpu_rehearsal}
CARD_PACKAGES=(torch==2.11.0 transformers==5.17.0 peft accelerate pyarrow sacrebleu pandas
  numpy msgpack ninja py-cpuinfo psutil pyyaml tqdm safetensors tokenizers pytest)
[ -n "$PY312" ] || { echo "gpu_rehearsal: no python3.12 (set PY312=...)" >&2; exit 2; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "gpu_rehearsal: building the card's stack in $VENV (~5 GB)" >&2
  "$PY312" -m venv "$VENV"
  # PyPI only: this machine's pip config adds a folder of CPU torch builds for 3.11.
  env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$VENV/bin/pip" install -q "${CARD_PACKAGES[@]}"
fi
[ -n "$(ls .whl/*.whl 2>/dev/null)" ] || scripts/gpu_wheels.sh

rm -rf "$RESULTS"
PY="$VENV/bin/python" RESULTS="$RESULTS" scripts/gpu_check.sh || true
"$VENV/bin/python" - "$RESULTS/check.json" <<'PY'
import json, sys

check = json.load(open(sys.argv[1]))
steps, tests = check["steps"], check.get("tests", {})
problems = [f"{name} exited {steps[name]['exit']}" for name in ("doctor", "pytest")
            if steps[name]["exit"] != 0]  # fmt: skip
if tests.get("tests", 0) == 0 or tests.get("skipped") != tests.get("tests"):
    problems.append(f"GPU tests should all skip without CUDA: {tests}")
if not check.get("engines", {}).get("hf", {}).get("runs"):
    problems.append(f"the doctor says hf does not run: {check.get('engines')}")
print(f"gpu_rehearsal: card stack torch {check.get('torch')}: "
      + ("; ".join(problems) if problems else "doctor and GPU tests ok, bench refused (no CUDA)"))
sys.exit(1 if problems else 0)
PY

# The test suite launches `deepspeed` from the interpreter's bin/, so install there too.
"$VENV/bin/pip" install -q --no-index --no-deps --upgrade .whl/*.whl
"$VENV/bin/python" -m pytest -p no:cacheprovider -q tests/train tests/serve/test_translate.py \
  -k "not vllm and not ctranslate2"
