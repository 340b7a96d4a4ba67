"""The benchmarks run end to end and write the results their README section is built from.

Each runs as a user runs it (`python -m bench.X`), in its quick/dry-run/small form, into
a temporary directory. Speeds are not asserted (the machine is shared and tiny), only
that every number the results promise is there and positive, and that the checks hold.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
from conftest import REPO, run

pytestmark = pytest.mark.slow


def _positive(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def test_bench_uses_only_public_product_names():
    """No private names imported across modules, no __new__, no monkeypatching."""
    for path in (REPO / "bench").glob("*.py"):
        source = path.read_text()
        assert "__new__" not in source, path
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, (path, node.module, private)
            if isinstance(node, ast.Assign):  # product_module.attr = ... is monkeypatching
                for target in node.targets:
                    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
                        assert target.value.id not in ("serve", "train", "data", "translate")


def test_bench_is_small():
    """The benchmarks stay lean: at most 1,300 lines in all."""
    lines = sum(len(p.read_text().splitlines()) for p in (REPO / "bench").glob("*.py"))
    assert lines <= 1300, lines


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
    assert report["rows"] == 64 and report["repeats"] == 1 and report["duplicate_free"] is True
    from bench.translate import CONTENDERS

    assert set(report["contenders"]) == set(CONTENDERS), report["failures"]
    for name, entry in report["contenders"].items():
        for key in ("rows_per_s", "tokens_per_s", "peak_rss_mb", "ratio_to_baseline"):
            assert _positive(entry[key]), (name, key, entry[key])
        assert entry["rows"] > 0 and entry["sequences"] > 0
    contenders = report["contenders"]
    assert contenders["baseline"]["ratio_to_baseline"] == 1.0
    assert contenders["hf-llama"]["ratio_to_baseline"] == 1.0
    assert contenders["vllm"]["ratio_to"] == "hf-llama"
    assert contenders["ctranslate2"]["precision"] == "float32"
    assert contenders["ctranslate2-int8"]["precision"] == "int8_float32"
    assert '"max_batch_tokens": 2048' in contenders["ctranslate2-int8-tuned"]["batching"]
    # Duplicate-free: every row of the headline set is its own source.
    assert contenders["ctranslate2"]["sequences"] == report["unique_sources"] > 60
    dedup = report["dedup_gain"]
    assert 0 < dedup["duplicate_rate"] < 0.1 and dedup["unique_sources"] < dedup["rows"]
    assert isinstance(report["pipeline_overhead"], float)
    assert {"speedup_vs_baseline", "pipeline_overhead", "vllm_vs_hf"} <= set(report["targets"])
    findings = report["findings"]
    assert findings["sweep"] and all(_positive(s["rows_per_s"]) for s in findings["sweep"])
    assert set(findings["profile"]) == {"ctranslate2", "hf"}
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
    assert "| batch size" in proc.stdout


def test_gpu_ul2_dry_run(tmp_path):
    out = tmp_path / "gpu" / "ul2.json"
    run(
        [
            sys.executable, "-m", "bench.gpu_ul2", "--dry-run", "--out", out,
            "--workdir", tmp_path / "work",
        ],
        timeout=600,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["card"] == "dry-run" and not report["failures"]
    from bench.gpu_ul2 import UL2_CONFIG

    # The real UL2 shape is what a GPU run builds; the dry run scales only widths and depth.
    assert (UL2_CONFIG["d_model"], UL2_CONFIG["layers"], UL2_CONFIG["d_ff"]) == (4096, 32, 16384)
    assert report["config"]["vocab_size"] == UL2_CONFIG["vocab_size"]
    contenders = report["translate"]["contenders"]
    for name in ("baseline", "hf", "hf-static", "ctranslate2"):
        assert "skipped" not in contenders[name], (name, contenders[name])
        assert _positive(contenders[name]["rows_per_s"]), name
    train = report["train"]
    assert train["lora"].startswith("peft r8")
    for key in ("tokens_per_s", "samples_per_s", "seconds_per_step", "model_tflops_per_s"):
        assert _positive(train[key]), key
    assert "6 *" in train["mfu_formula"] and report["parameters"]["encoder_blocks"] > 0


def test_scale_small(tmp_path):
    out = tmp_path / "scale.json"
    run(
        [
            sys.executable, "-m", "bench.scale", "--rows", "3000", "--rows_per_shard", "300",
            "--out", out, "--workdir", tmp_path / "work",
        ],
        timeout=600,
        check=False,  # throughput or RSS may wobble on a shared machine at this size
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["rows"] == 3000 and report["shards_written"] == 10
    assert report["checks"]["every_id_once"]["passed"], report["checks"]["every_id_once"]
    assert {"throughput_flat", "rss_flat"} <= set(report["checks"])
    assert len(report["shards"]) == 10 and all(_positive(s["rows_per_s"]) for s in report["shards"])
    assert report["samples"] and _positive(report["peak_rss_mb"])
    assert Path(out.with_suffix(".png")).stat().st_size > 1000
