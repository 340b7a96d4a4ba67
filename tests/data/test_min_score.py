"""The model's score in the dataset stage: --min_score as a funnel step, its quantiles in
stats.json and the card, the selection rule named, and old runs (no score) still built."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.filters import Decontaminator, FilterSettings, RowFilter
from data.schema import MINED_SCHEMA
from tests.data.test_instruct import PARAMS, build, read_dataset, synthetic_rows, write_translations

N_BEST = dict(PARAMS, generation=dict(PARAMS["generation"], num_candidates=4, select="coverage"))


def scored_rows() -> list[dict]:
    rows = synthetic_rows(0, 40)
    for i, row in enumerate(rows):
        row["score"] = None if i % 10 == 9 else -0.1 * (i % 10)  # 0, -0.1, ... -0.8, null
    rows[0].update(error="engine failed", rewritten_intent=None, score=None)
    return rows


def test_min_score_drops_exactly_the_rows_below_it_and_those_without_a_score(fixture_dir, tmp_path):
    rows = scored_rows()
    mined = write_translations(tmp_path / "mined", rows, params=N_BEST)
    out = tmp_path / "out"
    summary = build(mined, out, fixture_dir, "--keep_curated_train", "false", "--min_score", -0.45)

    ok = [r for r in rows if r["error"] is None]
    expected = [r["id"] for r in ok if r["score"] is not None and r["score"] >= -0.45]
    dataset = read_dataset(out).to_pydict()
    assert sorted(dataset["id"]) == sorted(expected)
    by_id = {r["id"]: r["score"] for r in ok}
    assert dataset["score"] == [by_id[i] for i in dataset["id"]]  # each row keeps its own
    dropped = summary["funnel"]["dropped"]
    assert dropped["min_score"] == len(ok) - len(expected) and dropped["translate_error"] == 1

    stats = json.loads((out / "stats.json").read_text())
    scores = [r["score"] for r in ok if r["score"] is not None]
    assert stats["score"]["n"] == len(scores) and stats["score"]["none"] == 4
    assert stats["score"]["mean"] == pytest.approx(sum(scores) / len(scores), abs=1e-4)
    assert stats["score"]["p50"] == pytest.approx(-0.4, abs=0.011)
    assert sum(stats["score"]["histogram"]) == len(scores)
    card = (out / "README.md").read_text()
    assert "`coverage` candidate of 4" in card and "min_score=-0.45" in card
    assert "| min_score |" in card


def test_an_old_run_without_scores_still_builds(fixture_dir, tmp_path):
    rows = synthetic_rows(0, 30)
    (tmp_path / "old").mkdir()
    old_schema = pa.schema(
        [*MINED_SCHEMA, ("rewritten_intent", pa.string()), ("error", pa.string())]
    )
    mined = write_translations(tmp_path / "old", rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=old_schema), mined / "part-00000.parquet")

    summary = build(mined, tmp_path / "out", fixture_dir, "--keep_curated_train", "false")
    assert summary["rows"] == 30
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["score"]["n"] == 0 and stats["score"]["none"] == 30
    assert stats["selection"]["num_candidates"] == 1 and stats["selection"]["select"] == "first"
    assert (
        "has one (translations written before scores existed)"
        in (tmp_path / "out" / "README.md").read_text()
    )

    # With --min_score none of them can show it meets the bar; curated rows are unaffected.
    summary = build(mined, tmp_path / "out2", fixture_dir, "--min_score", -2)
    assert summary["funnel"]["dropped"]["min_score"] == 30
    assert summary["funnel"]["output"] == {"curated": summary["rows"], "mined": 0}


def test_selection_compares_the_kept_text_with_the_first_candidate():
    row_filter = RowFilter(FilterSettings(), Decontaminator([], []))
    snippet, kept = "total = sum(values)", "sum `values` into `total`"
    first = {"text": "add them up", "score": -0.2, "coverage": 0.0}
    chosen = {"text": kept, "score": -0.6, "coverage": 1.0}
    assert row_filter.keep("mined", 1, snippet, kept, None, 0.5, -0.6, [first, chosen])[0]
    funnel = row_filter.funnel.as_dict()
    assert funnel["coverage_selected"]["mean"] == 1.0
    assert funnel["coverage_first_candidate"]["mean"] == 0.0


@pytest.mark.parametrize("value", ["0.5", "nan", "-inf"])
def test_min_score_must_be_a_log_probability(tmp_path, value):
    from data.instruct import InstructArguments

    with pytest.raises(ValueError, match="--min_score"):
        InstructArguments(translations=["t"], output="o", min_score=float(value))
