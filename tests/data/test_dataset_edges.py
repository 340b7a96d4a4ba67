"""Edges of the dataset stage and scripts/mutants.py: a NaN score, a lossy int
prob, shard order in messages, the card with no scored row, one-line fault errors."""

from __future__ import annotations

import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, run

from common.cli import UserError
from data.filters import Decontaminator, FilterSettings, RowFilter
from data.instruct import DATASET_SCHEMA
from data.loaders import iter_mined
from data.translations import check_run_ids
from tests.data.test_instruct import build, synthetic_rows, write_translations

BIG = 2**53 + 1  # the first int a float64 cannot hold


def test_min_score_drops_a_nan_or_infinite_score_like_a_null_one():
    row_filter = RowFilter(FilterSettings(min_score=-1.0), Decontaminator([], []))
    for score in (-0.5, None, float("nan"), float("-inf")):
        row_filter.keep("mined", 1, "total = sum(values)", "sum `values`", None, 0.9, score)
    funnel = row_filter.funnel
    assert funnel.dropped["min_score"] == 3 and funnel.output["mined"] == 1
    summary = funnel.score.summary()
    assert (summary["n"], summary["none"], summary["mean"]) == (1, 3, -0.5)


def test_an_int_prob_a_float_cannot_hold_is_its_rows_error(tmp_path):
    """Parquet (Arrow's safe cast refuses the column, then each value is judged) and JSONL."""
    probs = [1, BIG, 2**60, 10**400]  # 2**60 is exact; 10**400 overflows a float
    rows = [
        {"id": f"r{i}", "question_id": i, "parent_answer_post_id": i, "prob": prob,
         "intent": "i", "snippet": "s"}
        for i, prob in enumerate(probs)
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows[:3]), tmp_path / "in.parquet")
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    for name, count in (("in.parquet", 3), ("in.jsonl", 4)):
        read = [r for batch in iter_mined(str(tmp_path / name)) for r in batch.to_pylist()]
        assert [r["prob"] for r in read] == [1.0, None, 2.0**60, None][:count], name
        assert read[0]["error"] is None and read[2]["error"] is None
        assert f"prob has value '{BIG}', which double cannot hold exactly" in read[1]["error"]
    assert "prob has value '1000" in read[3]["error"]


def test_a_mixed_run_names_its_first_shard_in_numeric_order():
    shards = {str(i): {"run_id": "other" if i in (2, 10) else "run-1"} for i in range(12)}
    with pytest.raises(UserError, match="shard 2 was written by run other"):
        check_run_ids("d", {"run_id": "run-1", "format_version": 2, "shards": shards})


def test_card_says_no_row_was_scored_and_lists_every_column(fixture_dir, tmp_path):
    rows = [dict(row, error="engine failed") for row in synthetic_rows(0, 5)]
    build(write_translations(tmp_path / "mined", rows), tmp_path / "out", fixture_dir)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "`score`: no mined row reached the min_score step" in card
    assert "none of the 0" not in card
    for name in DATASET_SCHEMA.names:
        assert f"| `{name}` |" in card


@pytest.mark.parametrize(
    "fault, expected",
    [
        ({"name": "rotten", "file": "data/filters.py", "search": "no such text anywhere",
          "replace": "x", "tests": ["t"], "why": "w"},
         "fault rotten: search text not found in data/filters.py"),
        ({"file": "data/filters.py", "search": "a", "replace": "b", "tests": ["t"], "why": "w"},
         "faults.yaml: fault number 1: missing ['name']"),
    ],
)  # fmt: skip
def test_a_bad_fault_is_one_line_and_exit_2(tmp_path, fault, expected):
    faults = tmp_path / "faults.yaml"
    faults.write_text(json.dumps([fault]))  # JSON is YAML
    proc = run([sys.executable, str(REPO / "scripts" / "mutants.py"), "--faults", str(faults)],
               check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and expected in proc.stderr
