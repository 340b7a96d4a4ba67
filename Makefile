# CoNaLa rewritten-intent pipeline. `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)

# train
CONFIG ?= train/configs/ul2.yaml
NUM_GPUS ?= 8
HOSTFILE ?=
ARGS ?=
# merge
ADAPTER ?=
OUT ?=
BASE ?=
# translate-mined
MODEL ?=
ENGINE ?= auto
INPUT ?= neulab/conala
TRANSLATE_GPUS ?= 1
# demo
DEMO_DIR ?= runs/demo

.PHONY: help setup test lint format demo train merge translate-mined bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup:  ## create .venv with the pinned stack (idempotent)
	@VENV=$(VENV) scripts/setup.sh

test: setup  ## run the whole test suite (slow tests included)
	$(PY) -m pytest -q

lint: setup  ## ruff check + format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup  ## ruff format + autofix
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

demo: setup  ## whole pipeline offline on tiny models, into DEMO_DIR
	@echo "make demo is not implemented yet (lands with the translate-mined stage)." >&2; exit 1

clean:  ## remove runs/ (not .venv)
	rm -rf runs
