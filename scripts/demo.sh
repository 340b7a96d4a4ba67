#!/usr/bin/env bash
# `make demo`: the whole pipeline offline on tiny local models, into DEMO_DIR.
# data -> 2-rank CPU ZeRO-3 LoRA training -> merge -> translate-mined -> a look at the output.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-runs/demo}
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
step() { printf '\n=== %s\n' "$*"; }
start=$(date +%s)

if [ -e "$DEMO_DIR" ]; then echo "demo: removing the previous $DEMO_DIR"; rm -rf "$DEMO_DIR"; fi
step "1/5 data: synthetic CoNaLa files and tiny models"
"$PY" -m data.fixtures --out "$DEMO_DIR/data"
"$PY" -m data.tiny_models --out "$DEMO_DIR/tiny"
"$PY" -m data.stats --input "$DEMO_DIR/data/conala-train.json" --tokenizer "$DEMO_DIR/tiny/t5" \
  --max_source_length 256 --max_target_length 64 --json "$DEMO_DIR/data/stats.json"

step "2/5 train: LoRA on the tiny T5, ZeRO-3 over 2 CPU ranks"
"$VENV/bin/deepspeed" --num_gpus 2 --module train.finetune --config train/configs/tiny.yaml \
  --model_name_or_path "$DEMO_DIR/tiny/t5" \
  --train_file "$DEMO_DIR/data/conala-train.json" \
  --validation_file "$DEMO_DIR/data/conala-test.json" \
  --output_dir "$DEMO_DIR/train" --disable_tqdm true 2>&1 | grep -v "^\[20" || exit 1

step "3/5 merge: fold the adapter into a bf16 checkpoint, verified"
"$PY" -m train.merge --adapter "$DEMO_DIR/train/adapter" --output "$DEMO_DIR/merged"

step "4/5 translate-mined: every fixture mined row into Parquet shards"
"$PY" -m serve.translate --model "$DEMO_DIR/merged" --input "$DEMO_DIR/data/conala-mined.jsonl" \
  --output_dir "$DEMO_DIR/translations" --rows_per_shard 500 --max_new_tokens 32

step "5/5 dataset: decontaminated, filtered instruction dataset with its card (funnel + coverage below)"
"$PY" -m data.instruct --translations "$DEMO_DIR/translations" --output "$DEMO_DIR/dataset" \
  --curated_train "$DEMO_DIR/data/conala-train.json" --curated_test "$DEMO_DIR/data/conala-test.json" \
  >"$DEMO_DIR/dataset-summary.json"

step "done in $(( $(date +%s) - start ))s"
cat <<EOT
  data          $DEMO_DIR/data          (fixtures + stats.json)
  tiny models   $DEMO_DIR/tiny
  training      $DEMO_DIR/train         (adapter/, metrics.json, train_summary.json)
  merged model  $DEMO_DIR/merged
  translations  $DEMO_DIR/translations  (part-*.parquet, manifest.json)
  dataset       $DEMO_DIR/dataset       (data/*.parquet, README.md card, coverage_funnel.png, stats.json)
EOT
"$PY" -m serve.inspect "$DEMO_DIR/translations" --rows 3
