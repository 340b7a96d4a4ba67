#!/usr/bin/env bash
# Regenerate requirements-gpu.lock: the CUDA stack for Linux x86_64, CPython 3.11,
# resolved here (any machine, no GPU needed) with pip's cross-platform resolver.
#
#   scripts/lock_gpu.sh            # writes requirements-gpu.lock (a few minutes: pip
#                                  # fetches each candidate wheel's metadata)
#
# Inputs: requirements.txt, vllm==0.32.0 (CUDA) and nvidia-cublas-cu12 (cuBLAS 12 for
# CTranslate2, which is built against CUDA 12; the torch/vllm stack is CUDA 13).
# deepspeed ships only an sdist, which a --platform resolve cannot take, so it is left
# out of the resolve, its runtime needs are resolved in its place, and its pin is
# appended (setup builds it from the sdist in ~15 s, against the pinned torch).
set -euo pipefail
cd "$(dirname "$0")/.."

PIP=${PIP:-.venv/bin/pip}
OUT=${OUT:-requirements-gpu.lock}
EXTRA=("vllm==0.32.0" "nvidia-cublas-cu12")
DEEPSPEED_PIN=$(grep -E '^deepspeed==' requirements.txt)
# deepspeed 0.19.8's Requires-Dist (no extras).
DEEPSPEED_DEPS=(einops hjson msgpack ninja numpy "packaging>=20.0" psutil py-cpuinfo "pydantic>=2.0.0" tqdm)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
grep -vE '^deepspeed([=<>~ ]|$)' requirements.txt > "$tmp/requirements.txt"

# This machine's pip config adds a find-links folder holding a CPU torch (+cpu) and
# caps torch; both would leak into a lock meant for CUDA machines. PIP_CONFIG_FILE=
# /dev/null makes pip read no config file at all; PIP_FIND_LINKS is unset for the same
# reason. Only PyPI is consulted.
platforms=()
for n in $(seq 39 -1 17); do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
for p in manylinux2014 manylinux1 linux; do
  platforms+=(--platform "${p}_x86_64")
done
env -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL \
  PIP_CONFIG_FILE=/dev/null "$PIP" install --quiet --dry-run --ignore-installed \
  --report "$tmp/report.json" --only-binary=:all: "${platforms[@]}" \
  --python-version 3.11 --implementation cp \
  -r "$tmp/requirements.txt" "${EXTRA[@]}" "${DEEPSPEED_DEPS[@]}"

python3 - "$tmp/report.json" "$OUT" "$DEEPSPEED_PIN" <<'PY'
import json, re, sys
from pathlib import Path

report, out, deepspeed_pin = sys.argv[1:]
pins = {
    item["metadata"]["name"].lower(): item["metadata"]["version"]
    for item in json.loads(Path(report).read_text())["install"]
}
name, version = deepspeed_pin.split("==")
pins[name] = version
for required in ("torch", "vllm", "ctranslate2", "nvidia-cublas-cu12", "deepspeed"):
    assert required in pins, f"{required} missing from the resolution"
assert "+" not in pins["torch"], f"torch resolved to a local build: {pins['torch']}"
path = Path(out)
# Keep the hand-written header (every leading comment line) of an existing lock.
header = []
if path.exists():
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
body = [f"{n}=={v}" for n, v in sorted(pins.items(), key=lambda kv: re.sub(r"[-_.]+", "-", kv[0]))]
path.write_text("\n".join(header + body) + "\n")
print(f"{out}: {len(body)} packages pinned")
PY
