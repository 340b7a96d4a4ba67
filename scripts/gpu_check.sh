#!/usr/bin/env bash
# The GPU check: on one H100/H200, in at most 9 minutes, the doctor, the GPU tests and
# the UL2-architecture bench, with their JSON under bench/results/gpu/.
#
#   scripts/gpu_check.sh                    # on the GPU machine (or `make gpu-check`)
#   scripts/gpu_check.sh --rows 4000        # extra arguments go to bench.gpu_ul2
#   scripts/gpu_check.sh --dry-run          # the same steps, CPU-sized, here (a test)
#
# Writes to RESULTS (default bench/results/gpu; runs/gpu_check_dry under --dry-run):
#   doctor.json   devices (card name, memory), torch/CUDA, each engine's probe + a real run
#   pytest.xml    `pytest -m gpu tests/gpu` (JUnit; skips carry their reasons)
#   ul2.json      python -m bench.gpu_ul2: rows/s, MFU, peak memory (bench's own format)
#   check.json    card, each step's exit status and seconds, test counts
#
# The GPU machine has Python 3.12 + torch/transformers/peft/accelerate/pyarrow but no
# deepspeed, datasets, ctranslate2 or vllm, and no network. Wheels in .whl/ (made here by
# scripts/gpu_wheels.sh) are installed into /tmp/site first; whatever still does not
# import makes its tests skip with the reason. Steps time out (DOCTOR_TIMEOUT,
# PYTEST_TIMEOUT, BENCH_TIMEOUT seconds: 60 + 210 + 270 = 9 minutes at most).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=$(command -v python3); fi
fi
DOCTOR_TIMEOUT=${DOCTOR_TIMEOUT:-60}
PYTEST_TIMEOUT=${PYTEST_TIMEOUT:-210}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-270}
if [ "$DRY" = 1 ]; then
  RESULTS=${RESULTS:-runs/gpu_check_dry}
  DOCTOR_ENGINES=hf,ctranslate2 # vLLM's CPU start (~40 s+) is covered by test_doctor.py
  DOCTOR_TIMEOUT=${DRY_DOCTOR_TIMEOUT:-240}
else
  RESULTS=${RESULTS:-bench/results/gpu}
  DOCTOR_ENGINES=hf,ctranslate2,vllm
fi
mkdir -p "$RESULTS"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=offline
log() { echo "gpu_check: $*" >&2; }

# 1. Carried wheels (never under --dry-run: they are built for the GPU machine's 3.12).
shopt -s nullglob
wheels=(.whl/*.whl)
if [ ${#wheels[@]} -gt 0 ] && [ "$DRY" = 0 ]; then
  SITE=${SITE:-/tmp/site}
  log "installing ${#wheels[@]} wheels from .whl/ into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "${wheels[@]}" || log "wheel install failed; their tests will skip"
  export PYTHONPATH="$PYTHONPATH:$SITE" PATH="$SITE/bin:$PATH"
elif [ ${#wheels[@]} -gt 0 ]; then
  log "dry run: would install ${#wheels[@]} wheels from .whl/"
fi

declare -A RC SECONDS_TAKEN
step() { # step NAME TIMEOUT CMD...: run with a timeout, record exit status and time
  local name=$1 limit=$2 start
  shift 2
  start=$(date +%s)
  log "$name (at most ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@"
  RC[$name]=$?
  SECONDS_TAKEN[$name]=$(($(date +%s) - start))
  [ "${RC[$name]}" = 124 ] && log "$name timed out after ${limit}s"
  log "$name: exit ${RC[$name]} in ${SECONDS_TAKEN[$name]}s"
}

# 2. What runs here, and the card.
step doctor "$DOCTOR_TIMEOUT" bash -c \
  "'$PY' -m serve.doctor --json --engines $DOCTOR_ENGINES --timeout 120 > '$RESULTS/doctor.json'"
[ "${RC[doctor]}" = 1 ] && RC[doctor]=0 # 1 = some family lacks an engine: reported, not fatal

# 3. The GPU tests (skipped, with reasons, where CUDA or a package is missing).
step pytest "$PYTEST_TIMEOUT" "$PY" -m pytest -p no:cacheprovider -q -rs -m gpu tests/gpu \
  --junitxml "$RESULTS/pytest.xml"
[ "${RC[pytest]}" = 5 ] && RC[pytest]=0 # 5 = nothing collected/selected

# 4. UL2-architecture translate + training bench.
if [ "$DRY" = 1 ]; then
  step bench "$BENCH_TIMEOUT" "$PY" -m bench.gpu_ul2 --dry-run --out "$RESULTS/ul2.json" "$@"
else
  step bench "$BENCH_TIMEOUT" "$PY" -m bench.gpu_ul2 --out "$RESULTS/ul2.json" "$@"
fi

# 5. Summary.
status=0
for name in doctor pytest bench; do [ "${RC[$name]}" = 0 ] || status=1; done
"$PY" - "$RESULTS" "$DRY" "$status" \
  "doctor=${RC[doctor]}:${SECONDS_TAKEN[doctor]}" \
  "pytest=${RC[pytest]}:${SECONDS_TAKEN[pytest]}" \
  "bench=${RC[bench]}:${SECONDS_TAKEN[bench]}" <<'PY'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path

results, dry, status, *steps = sys.argv[1:]
results = Path(results)
summary = {"dry_run": dry == "1", "ok": status == "0", "steps": {}}
for item in steps:
    name, rest = item.split("=", 1)
    rc, seconds = rest.split(":")
    summary["steps"][name] = {"exit": int(rc), "seconds": int(seconds)}
try:
    doctor = json.loads((results / "doctor.json").read_text())
    gpus = doctor["devices"]["gpus"]
    summary["card"] = gpus[0]["name"] if gpus else "cpu"
    summary["torch"] = doctor["devices"]["torch"]
    summary["torch_cuda"] = doctor["devices"]["torch_cuda"]
    summary["engines"] = {k: {"runs": v["runs"], "reason": v["reason"]} for k, v in doctor["engines"].items()}
except (OSError, ValueError, KeyError) as err:
    summary["doctor_error"] = str(err)
try:
    suite = ET.parse(results / "pytest.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    summary["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    summary["tests"]["skip_reasons"] = sorted(
        {s.get("message", "") for s in suite.iter("skipped")}
    )
except (OSError, ET.ParseError) as err:
    summary["tests_error"] = str(err)
try:
    summary["bench"] = json.loads((results / "ul2.json").read_text())
except (OSError, ValueError) as err:
    summary["bench_error"] = str(err)
(results / "check.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps({k: v for k, v in summary.items() if k != "bench"}, indent=2))
PY
log "results in $RESULTS ($([ $status = 0 ] && echo ok || echo FAILED))"
exit $status
