# CoNaLa rewritten-intent pipeline. `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)

# train (NUM_GPUS defaults to 8 here, 1 for translate-mined)
CONFIG ?= train/configs/ul2.yaml
HOSTFILE ?=
ARGS ?=
# merge
ADAPTER ?=
OUT ?=
BASE ?=
# translate-mined
MODEL ?=
ENGINE ?= auto
INPUT ?=
# dataset
TRANSLATIONS ?=
CURATED ?= neulab/conala
CURATED_TRAIN ?= $(CURATED)
CURATED_TEST ?= $(CURATED)
# demo
DEMO_DIR ?= runs/demo
# Recipes read these from the environment ("$$OUT"), never pasted into the shell line, so
# a path with spaces stays one argument and `;` or `$(...)` in a value is not run.
# INPUT and TRANSLATIONS are lists: split on spaces. ARGS is shell text, as typed.
export CONFIG HOSTFILE ADAPTER OUT BASE MODEL ENGINE INPUT TRANSLATIONS CURATED_TRAIN \
  CURATED_TEST DEMO_DIR VENV NUM_GPUS

.PHONY: help setup lock test mutants lint format demo train merge translate-mined dataset doctor gpu-check bench bench-scale clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup:  ## create .venv with the pinned stack (idempotent)
	@scripts/setup.sh

test: setup  ## run the whole test suite (slow tests included)
	$(PY) -m pytest -q

mutants: setup  ## plant each fault of scripts/mutants.yaml in a temp copy, run its tests -> bench/results/mutants.json
	$(PY) scripts/mutants.py $(ARGS)

lint: setup  ## ruff check + format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup  ## ruff format + autofix
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

lock: setup  ## rewrite requirements-cpu.lock from the current .venv
	{ head -2 requirements-cpu.lock; $(VENV)/bin/pip freeze; } > requirements-cpu.lock.new
	mv requirements-cpu.lock.new requirements-cpu.lock

demo: setup  ## whole pipeline offline on tiny models, into DEMO_DIR
	@scripts/demo.sh

train: setup  ## LoRA fine-tuning: CONFIG, NUM_GPUS | HOSTFILE, ARGS
	$(VENV)/bin/deepspeed $${HOSTFILE:+--hostfile "$$HOSTFILE"} $${HOSTFILE:---num_gpus "$${NUM_GPUS:-8}"} \
	  --module train.finetune --config "$$CONFIG" $(ARGS)

merge: setup  ## fold an adapter into a bf16 checkpoint: ADAPTER, OUT, [BASE], ARGS
	@test -n "$$ADAPTER" -a -n "$$OUT" || { echo "usage: make merge ADAPTER=runs/ul2/adapter OUT=runs/ul2/merged [BASE=...]" >&2; exit 2; }
	$(PY) -m train.merge --adapter "$$ADAPTER" --output "$$OUT" $${BASE:+--base "$$BASE"} $(ARGS)

translate-mined: setup  ## mined rows -> Parquet: MODEL, OUT, [ENGINE], [NUM_GPUS], [INPUT], ARGS
	@test -n "$$MODEL" -a -n "$$OUT" || { echo "usage: make translate-mined MODEL=runs/ul2/merged OUT=runs/ul2/mined [ENGINE=auto] [NUM_GPUS=1]" >&2; exit 2; }
	$$([ "$${NUM_GPUS:-1}" = 1 ] && echo $(PY) || echo "$(VENV)/bin/torchrun --standalone --nproc_per_node $$NUM_GPUS") \
	  -m serve.translate --model "$$MODEL" --output_dir "$$OUT" --engine "$$ENGINE" \
	  $${INPUT:+--input $$INPUT} $(ARGS)

dataset: setup  ## translations -> instruction dataset: TRANSLATIONS, OUT, [CURATED | CURATED_TRAIN + CURATED_TEST], ARGS
	@test -n "$$TRANSLATIONS" -a -n "$$OUT" || { echo "usage: make dataset TRANSLATIONS=runs/ul2/mined OUT=runs/ul2/dataset [CURATED=neulab/conala]" >&2; exit 2; }
	$(PY) -m data.instruct --translations $$TRANSLATIONS --output "$$OUT" \
	  --curated_train "$$CURATED_TRAIN" --curated_test "$$CURATED_TEST" $(ARGS)

doctor: setup  ## what runs on this machine: devices, engines (a real generation each), RAM, disk
	$(PY) -m serve.doctor $(ARGS)

gpu-check:  ## (no setup: the GPU box is offline) GPU tests + UL2-architecture bench on one card -> bench/results/gpu/
	scripts/gpu_check.sh $(ARGS)

bench: setup  ## CPU benchmarks -> bench/results/{translate,train}.json (ARGS for both)
	$(PY) -m bench.translate $(ARGS)
	$(PY) -m bench.train $(ARGS)

bench-scale: setup  ## 594,000 rows through serve.translate (up to an hour) -> bench/results/scale.json
	$(PY) -m bench.scale $(ARGS)

clean:  ## remove runs/ (not .venv)
	rm -rf runs
