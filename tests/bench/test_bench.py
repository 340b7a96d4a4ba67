"""The benchmarks run end to end and write the results their README section is built from.

Each runs as a user runs it (`python -m bench.X`), in its quick/dry-run form, into a
temporary directory. Speeds are not asserted (the machine is shared and tiny), only
that every number the results promise is there and positive.
"""

from __future__ import annotations

import json
import sys

import pytest
from conftest import run

pytestmark = pytest.mark.slow


def _positive(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def test_translate_quick(tmp_path):
    out = tmp_path / "translate.json"
    proc = run(
        [
            sys.executable, "-m", "bench.translate", "--quick", "--out", out,
            "--workdir", tmp_path / "work",
        ],
        timeout=1200,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_count"] > 0
    assert report["rows"] == 64 and report["repeats"] == 1
    expected = {"baseline", "hf", "ctranslate2", "ctranslate2-raw", "ctranslate2-float32"}
    expected |= {"hf-llama", "vllm"}
    assert set(report["contenders"]) == expected, report["failures"]
    for name, entry in report["contenders"].items():
        for key in ("rows_per_s", "tokens_per_s", "peak_rss_mb", "ratio_to_baseline"):
            assert _positive(entry[key]), (name, key, entry[key])
        assert entry["rows"] > 0 and entry["sequences"] > 0
    assert report["contenders"]["baseline"]["ratio_to_baseline"] == 1.0
    assert report["contenders"]["hf-llama"]["ratio_to_baseline"] == 1.0
    assert report["contenders"]["vllm"]["ratio_to"] == "hf-llama"
    assert report["contenders"]["ctranslate2"]["precision"] in ("int8_float32", "float32")
    assert isinstance(report["pipeline_overhead"], float)
    assert "excluded" in report["timing"]
    assert {"speedup_vs_baseline", "pipeline_overhead"} <= set(report["targets"])
    # The pipeline contenders wrote real Parquet output; the baseline its JSONL.
    work = tmp_path / "work" / "runs"
    assert list((work / "ctranslate2-0" / "out").glob("part-*.parquet"))
    assert (work / "baseline-0" / "baseline.jsonl").read_text().count("\n") == 64
    assert "| contender" in proc.stdout


def test_train_quick(tmp_path):
    out = tmp_path / "train.json"
    proc = run(
        [
            sys.executable, "-m", "bench.train", "--quick", "--out", out,
            "--workdir", tmp_path / "work",
        ],
        timeout=1200,
    )  # fmt: skip
    report = json.loads(out.read_text())
    training = report["training"]
    assert training["world_size"] == 2
    assert _positive(training["tokens_per_s"]) and _positive(training["samples_per_s"])
    (only,) = training["runs"]
    assert only["global_step"] == 4 and only["world_size"] == 2
    padding = report["padding_efficiency"]
    assert padding["pairs"] > 0
    for batch in padding["by_batch_size"].values():
        assert 0 < batch["random"] <= batch["grouped"] <= 1
    assert 0 < padding["random"] <= padding["grouped"] <= 1
    assert "| batch size" in proc.stdout


def test_gpu_ul2_dry_run(tmp_path):
    out = tmp_path / "gpu.json"
    run(
        [
            sys.executable, "-m", "bench.gpu_ul2", "--dry-run", "--out", out,
            "--workdir", tmp_path / "work",
        ],
        timeout=1200,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["card"] == "dry-run" and not report["failures"]
    # The real UL2 shape is what a GPU run builds; the dry run scales only the widths/depth.
    from bench.gpu_ul2 import UL2_CONFIG

    assert UL2_CONFIG["d_model"] == 4096 and UL2_CONFIG["num_layers"] == 32
    assert report["config"]["vocab_size"] == UL2_CONFIG["vocab_size"]
    contenders = report["translate"]["contenders"]
    assert {"baseline", "hf", "ctranslate2-float32", "ctranslate2-int8_float32"} <= set(contenders)
    for name, entry in contenders.items():
        assert "skipped" not in entry, (name, entry)
        assert _positive(entry["rows_per_s"]) and _positive(entry["tokens_per_s"]), name
    train = report["train"]
    assert train["zero3"] is True and train["lora"].startswith("peft")
    for key in ("tokens_per_s", "samples_per_s", "seconds_per_step", "model_tflops_per_s"):
        assert _positive(train[key]), key
    assert "mfu" in train and "6 *" in train["mfu_formula"]
    assert train["parameters"]["encoder_blocks"] > 0
