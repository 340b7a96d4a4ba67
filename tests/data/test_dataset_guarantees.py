"""The dataset stage's README guarantees, each shown to hold: its refusals leave no
output behind, and each quality step drops what it names (and only that)."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.cli import UserError
from data.schema import OUTPUT_SCHEMA
from tests.data.test_instruct import build, read_dataset, synthetic_rows, write_translations


def _twice(tmp_path):
    mined = write_translations(tmp_path / "mined", 10)
    return [mined, tmp_path / "." / "mined"], {}


def _missing_shard(tmp_path):
    return write_translations(tmp_path / "mined", 30, rows_per_shard=10, drop_shards=(1,)), {}


def _stray_part(tmp_path):
    mined = write_translations(tmp_path / "mined", 20, rows_per_shard=10)
    shutil.copy(mined / "part-00000.parquet", mined / "part-00002.parquet")
    return mined, {}


def _changed_rows(tmp_path):
    mined = write_translations(tmp_path / "mined", 20, rows_per_shard=10)
    table = pa.Table.from_pylist(synthetic_rows(0, 9), schema=OUTPUT_SCHEMA)
    pq.write_table(table, mined / "part-00000.parquet")
    return mined, {}


def _empty_curated_test(tmp_path):
    curated = tmp_path / "test.json"
    row = {"question_id": None, "intent": "x", "rewritten_intent": None, "snippet": None}
    curated.write_text(json.dumps([row]))
    return write_translations(tmp_path / "mined", 10), {"--curated_test": curated}


def _nothing_survives(tmp_path):
    rows = [dict(row, error="engine failed") for row in synthetic_rows(0, 10)]
    return write_translations(tmp_path / "mined", rows), {"--keep_curated_train": "false"}


REFUSALS = {
    "translations_given_twice": (_twice, "is given twice"),
    "complete_manifest_missing_shard": (_missing_shard, "shard(s) are missing"),
    "stray_part_file": (_stray_part, "part-00002.parquet is not a shard of this run"),
    "changed_row_count": (_changed_rows, "9 rows, the manifest recorded 10"),
    "empty_curated_test": (_empty_curated_test, "no row with a question_id or snippet"),
    "no_surviving_row": (_nothing_survives, "no row passed the filters"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_write_nothing(case, fixture_dir, tmp_path):
    make, message = REFUSALS[case]
    translations, flags = make(tmp_path)
    out = tmp_path / "out"
    extra = [item for flag in flags.items() for item in flag]
    if "--curated_test" in flags:  # build() names the fixture's; a later flag wins
        extra = ["--curated_test", str(flags["--curated_test"])]
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(translations, out, fixture_dir, *extra)
    assert not out.exists()
    assert not list(tmp_path.glob(".out.staging-*"))


def test_each_named_step_drops_its_row(fixture_dir, tmp_path):
    base = dict(synthetic_rows(0, 1)[0], prob=0.9)
    rows = [
        dict(base, id="ok"),
        dict(base, id="blank_snippet", snippet=" \n\t "),
        dict(base, id="invisible", rewritten_intent="\u200b\u200e\u2060 \ufeff"),
        dict(base, id="nan_prob", prob=float("nan"), snippet="other = 2"),
        # Two "words" of 3,100 characters: under 100 words, over 100 * 30 characters.
        dict(base, id="run_on", rewritten_intent=f"sort {'x' * 3100}", snippet="third = 3"),
    ]
    summary = build(
        write_translations(tmp_path / "mined", rows), tmp_path / "out", fixture_dir,
        "--keep_curated_train", "false", "--min_prob", 0.5,
    )  # fmt: skip
    dropped = {k: v for k, v in summary["funnel"]["dropped"].items() if v}
    assert dropped == {"empty_output": 1, "empty_instruction": 1, "min_prob": 1, "length": 1}
    assert read_dataset(tmp_path / "out").column("id").to_pylist() == ["ok"]
