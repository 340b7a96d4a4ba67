"""The per-row `score` (mean token log-probability) and seeded sampling, read back from Parquet.

hf and ctranslate2 run serve.translate in this process on the merged fine-tuned T5 (a
model that says something: a random one answers `</s>` alone). vLLM runs in a child
process (its engine core needs a `__main__` guard): run as a script, this file is
that child, translating twice with different shard sizes and so different batches.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, repo_env

from data.schema import OUTPUT_SCHEMA, conform
from serve.engines.base import SCORE_DEFINITION
from serve.sink import read_output
from serve.translate import main as translate

ROWS = 200
TOLERANCE = 1e-3
MIN_SCORE_AGREEMENT = 0.99


def write_input(fixture_dir: Path, path: Path, rows: int) -> Path:
    """The first `rows` mined fixture rows, then one row without an id (a row error)."""
    with open(fixture_dir / "conala-mined.jsonl") as lines:
        kept = [json.loads(next(lines)) for _ in range(rows)]
    kept.append({**kept[0], "id": None})
    path.write_text("".join(json.dumps(row) + "\n" for row in kept))
    return path


def translate_to(out: Path, model: Path, mined: Path, *extra) -> pa.Table:
    args = ["--model", model, "--input", mined, "--output_dir", out, "--precision", "float32",
            "--max_new_tokens", "32", "--rows_per_shard", "100", *extra]  # fmt: skip
    translate([str(a) for a in args])
    return read_output(out)


def check_scores(table: pa.Table) -> list[float | None]:
    """`score` is finite on every row without an error and null on every row with one."""
    scores, errors = table.column("score").to_pylist(), table.column("error").to_pylist()
    assert any(errors), "the input has a bad row"
    for score, error in zip(scores, errors):
        assert (score is None) == (error is not None)
        assert error is not None or (math.isfinite(score) and score <= 0)
    return scores


@pytest.mark.slow
def test_hf_and_ctranslate2_scores_agree(merged_models, fixture_dir, tmp_path):
    model = merged_models["t5"]
    mined = write_input(fixture_dir, tmp_path / "mined.jsonl", ROWS)
    hf = translate_to(tmp_path / "hf", model, mined, "--engine", "hf")
    ct2 = translate_to(tmp_path / "ct2", model, mined, "--engine", "ctranslate2")
    hf_scores, ct2_scores = check_scores(hf), check_scores(ct2)
    texts = hf.column("rewritten_intent").to_pylist()
    assert texts == ct2.column("rewritten_intent").to_pylist()
    assert len({t for t in texts if t}) > 10, "a model that says one thing tests little"
    pairs = [(a, b) for a, b in zip(hf_scores, ct2_scores) if a is not None]
    close = sum(abs(a - b) <= TOLERANCE for a, b in pairs) / len(pairs)
    worst = max(abs(a - b) for a, b in pairs)
    print(
        f"\nhf vs ctranslate2 scores: {close:.1%} of {len(pairs)} within {TOLERANCE}; max {worst}"
    )
    assert len(pairs) == ROWS and close >= MIN_SCORE_AGREEMENT
    assert len({round(s, 3) for _, s in pairs}) > 10, "scores that vary say something"
    manifest = json.loads((tmp_path / "ct2" / "manifest.json").read_text())
    assert manifest["params"]["score"] == SCORE_DEFINITION


def texts_and_scores(table: pa.Table) -> tuple[list, list]:
    rows = [row or [] for row in table.column("candidates").to_pylist()]
    return [[c["text"] for c in r] for r in rows], [[c["score"] for c in r] for r in rows]


@pytest.mark.slow
def test_hf_seeded_samples_repeat_whatever_the_batching(tiny_models, fixture_dir, tmp_path):
    mined = write_input(fixture_dir, tmp_path / "mined.jsonl", 24)
    sample = ["--engine", "hf", "--max_new_tokens", "8", "--do_sample", "--num_candidates", "3",
              "--temperature", "1.5", "--seed", "7", "--keep_candidates"]  # fmt: skip
    runs = [
        translate_to(tmp_path / name, tiny_models["t5"], mined, *sample, *batching)
        for name, batching in (("a", ["--max_batch_size", "5"]), ("b", ["--batch_tokens", "64"]))
    ]
    (texts, scores), (texts_again, scores_again) = map(texts_and_scores, runs)
    # Texts are equal; scores up to float noise (padding to another width moves the logits).
    assert texts == texts_again
    assert sum(scores, []) == pytest.approx(sum(scores_again, []), abs=1e-4)
    check_scores(runs[0])
    flat = sum(texts, [])
    assert len(set(flat)) > len(flat) // 2, "samples differ from each other"
    other = translate_to(tmp_path / "c", tiny_models["t5"], mined, *sample[:-3], "--seed", "8")
    assert (
        other.column("rewritten_intent").to_pylist()
        != runs[0].column("rewritten_intent").to_pylist()
    )


@pytest.mark.slow
def test_vllm_scores_and_seeded_samples(tiny_models, fixture_dir, tmp_path):
    mined = write_input(fixture_dir, tmp_path / "mined.jsonl", 40)
    child = subprocess.run(
        [sys.executable, __file__, tiny_models["llama"], mined, tmp_path],
        cwd=REPO,
        env=repo_env(PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")])),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-4000:]
    first, again = (read_output(tmp_path / name) for name in ("a", "b"))
    check_scores(first)
    (texts, scores), (texts_again, scores_again) = map(texts_and_scores, (first, again))
    assert texts == texts_again
    assert sum(scores, []) == pytest.approx(sum(scores_again, []), abs=1e-4)
    kept = first.column("candidates").to_pylist()
    assert all(len(row) == 2 for row in kept if row is not None)
    assert any(row[0]["text"] != row[1]["text"] for row in kept if row is not None)


def test_runs_written_before_scores_still_read(tmp_path):
    old_schema = pa.schema([f for f in OUTPUT_SCHEMA if f.name != "score"])
    old = pa.Table.from_pylist([{"id": "1", "rewritten_intent": "x"}], schema=old_schema)
    pq.write_table(old, tmp_path / "part-00000.parquet")
    read = conform(pq.read_table(tmp_path / "part-00000.parquet"), OUTPUT_SCHEMA, source="old")
    assert read.schema == OUTPUT_SCHEMA and read.column("score").to_pylist() == [None]
    with pytest.raises(ValueError, match="missing column 'rewritten_intent'"):
        conform(old.drop_columns(["rewritten_intent"]), OUTPUT_SCHEMA, source="old")


# Child process: argv = MODEL MINED OUT_DIR. The same seeded sampling twice, with different
# shard sizes (so different whole-shard calls); one vLLM start per run.
if __name__ == "__main__":
    model, mined, out = sys.argv[1:4]
    common = ["--model", model, "--input", mined, "--engine", "vllm", "--precision", "float32",
              "--max_new_tokens", "8", "--engine_args", '{"max_model_len": 512}']  # fmt: skip
    sample = ["--do_sample", "--num_candidates", "2", "--seed", "3", "--keep_candidates"]
    translate([*common, *sample, "--output_dir", f"{out}/a", "--rows_per_shard", "50"])
    translate([*common, *sample, "--output_dir", f"{out}/b", "--rows_per_shard", "17"])
