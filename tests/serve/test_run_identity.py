"""A run's identity is its rows (issue 19): re-split inputs, foreign shards, a second
layout on a live run, late Parquet values, overlapping paths, engine knobs, typed manifests.

Runs are real (serve.translate on the tiny T5 through CTranslate2, in this process or
as a child process); nothing is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run

from common.cli import UserError
from data.fixtures import write_fixtures
from data.schema import OUTPUT_SCHEMA
from data.translations import open_translations
from serve.inspect import main as inspect
from serve.runner import check_tuning
from serve.shards import scan
from serve.sink import ForeignShard, ResumeMismatch, ShardSink, load_manifest, read_output
from serve.translate import main as translate

pytestmark = pytest.mark.slow
ROWS, PER_SHARD = 60, 20


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    out = tmp_path_factory.mktemp("mined")
    return write_fixtures(out, seed=3, train_rows=5, test_rows=5, mined_rows=ROWS)["mined"]


def args(model, inputs, out, tokens: int = 3) -> list[str]:
    inputs = inputs if isinstance(inputs, list) else [inputs]
    return ["--model", str(model), "--input", *map(str, inputs), "--output_dir", str(out),
            "--rows_per_shard", str(PER_SHARD), "--max_new_tokens", str(tokens)]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tiny_models, mined, tmp_path_factory):
    """Two complete runs of the same input with other generation settings."""
    runs = {}
    for tokens in (3, 2):
        runs[tokens] = tmp_path_factory.mktemp(f"run{tokens}")
        translate(args(tiny_models["t5"], mined, runs[tokens], tokens))
    return runs


def copy_run(source, target):
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".ct2-cache"))
    return target


def test_a_resplit_input_is_another_input(tiny_models, mined, tmp_path):
    """Class 1: the same bytes cut into files elsewhere read as other rows."""
    data = mined.read_bytes().rstrip(b"\n")
    cut = data.index(b"\n", len(data) // 2)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_bytes(data[:cut])  # no trailing newline: the last row ends the file
    second.write_bytes(data[cut:] + b"\n")
    out = tmp_path / "out"
    translate(args(tiny_models["t5"], [first, second], out))
    (out / "part-00002.parquet").unlink()  # as if killed before the last shard
    # `split -b` at another byte: the concatenation is unchanged, the rows are not.
    first.write_bytes(data[: cut - 7])
    second.write_bytes(data[cut - 7 :] + b"\n")
    with pytest.raises(ResumeMismatch, match="source_fingerprint"):
        translate(args(tiny_models["t5"], [first, second], out))
    assert sorted(p.name for p in out.glob("part-*")) == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]


def test_a_foreign_shard_is_refused_by_resume_inspect_and_instruct(
    finished, tiny_models, mined, tmp_path
):
    """Class 2: a part file of another run, its manifest entry deleted, is named."""
    out = copy_run(finished[3], tmp_path / "out")
    foreign = finished[2] / "part-00001.parquet"
    shutil.copy(foreign, out / "part-00001.parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["shards"]["1"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ForeignShard, match=r"part-00001\.parquet: written by run \w+, not by"):
        translate(args(tiny_models["t5"], mined, out))
    with pytest.raises(ForeignShard, match=r"part-00001\.parquet: written by run"):
        inspect([str(out)])
    with pytest.raises(UserError, match=r"--translations .*part-00001\.parquet: written by run"):
        open_translations([str(out)], allow_incomplete=True)
    # Without its stamp (rewritten by another tool) it is refused just the same.
    pq.write_table(pq.read_table(foreign).replace_schema_metadata(), out / "part-00001.parquet")
    with pytest.raises(ForeignShard, match="carries no run stamp"):
        translate(args(tiny_models["t5"], mined, out))


def test_finish_refuses_a_shard_planted_while_the_run_is_live(tmp_path):
    params = {"p": 1}
    sink = ShardSink(tmp_path, schema=OUTPUT_SCHEMA, params=params, rows_per_shard=2)
    other = ShardSink(tmp_path / "o", schema=OUTPUT_SCHEMA, params=params, rows_per_shard=2)
    table = pa.Table.from_pylist([{"id": "a"}, {"id": "b"}], schema=OUTPUT_SCHEMA)
    sink.write(0, table)
    shutil.copy(other.write(1, table), tmp_path / "part-00001.parquet")
    with pytest.raises(ForeignShard, match=r"part-00001\.parquet: written by run"):
        sink.finish(2)
    assert "complete" not in load_manifest(tmp_path)
    # The shard's index is part of its stamp: a renamed file is not that shard.
    os.replace(tmp_path / "part-00000.parquet", tmp_path / "part-00001.parquet")
    with pytest.raises(ForeignShard, match="written as shard 0 of the run, not shard 1"):
        sink.finish(2)


@pytest.mark.parametrize(
    ("change", "needle"),
    [({"complete": "no"}, "'complete' should be a bool"),
     ({"shard0": {"rows": "500"}}, "shard 0: 'rows' should be a int"),
     ({"shard0": {"run_id": None}}, "shard 0: 'run_id' should be a str"),
     ({"num_shards": -1}, "'num_shards' should be >= 0")],
)  # fmt: skip
def test_manifest_fields_are_type_checked_by_every_reader(finished, tmp_path, change, needle):
    """Class 9 (and 2: a nulled run_id is noticed)."""
    out = copy_run(finished[3], tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"]["0"].update(change.pop("shard0", {}))
    manifest.update(change)
    (out / "manifest.json").write_text(json.dumps(manifest))
    for read in (lambda: load_manifest(out), lambda: inspect([str(out)]),
                 lambda: open_translations([str(out)], allow_incomplete=False)):  # fmt: skip
        with pytest.raises((ValueError, UserError), match=needle):
            read()


def test_inspect_names_a_truncated_shard(finished, tmp_path):
    out = copy_run(finished[3], tmp_path / "out")
    part = out / "part-00001.parquet"
    part.write_bytes(part.read_bytes()[:-40])
    with pytest.raises(UserError, match=r"part-00001\.parquet: not a readable Parquet file"):
        inspect([str(out)])


def test_a_copy_of_a_run_given_twice_is_refused(finished, tmp_path):
    """Class 6 for data.instruct: one run under two paths."""
    copy = copy_run(finished[3], tmp_path / "copy")
    with pytest.raises(UserError, match="hold the same run .*a copy"):
        open_translations([str(finished[3]), str(copy)], allow_incomplete=False)
    with pytest.raises(UserError, match="mixed parameters"):  # two runs: not a copy
        open_translations([str(finished[3]), str(finished[2])], allow_incomplete=False)


def test_old_runs_are_read_with_a_warning_and_not_resumed(finished, tiny_models, mined, tmp_path):
    out = copy_run(finished[3], tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["format_version"] = 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    for part in out.glob("part-*.parquet"):
        pq.write_table(pq.read_table(part).replace_schema_metadata(), part)
    opened = open_translations([str(out)], allow_incomplete=False)
    assert "written before shards carried their run id" in opened.warnings[0]
    with pytest.raises(ResumeMismatch, match="older serve.translate .*cannot be resumed"):
        translate(args(tiny_models["t5"], mined, out))


def test_a_second_layout_on_a_live_run_is_refused_up_front(tiny_models, mined, tmp_path):
    """Class 3: a live rank of a two-process run; a one-process launch must not join."""
    out = tmp_path / "out"
    live = ShardSink(out, schema=OUTPUT_SCHEMA, params={}, rows_per_shard=PER_SHARD,
                     rank=1, world_size=2)  # fmt: skip
    before = sorted(p.name for p in out.iterdir())
    proc = run([sys.executable, "-m", "serve.translate", *args(tiny_models["t5"], mined, out)],
               check=False)  # fmt: skip
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "live process by a run of world size 2" in proc.stderr
    assert "rank 0 of 1" in proc.stderr
    live.close()
    after = sorted(p.name for p in out.iterdir() if not p.name.startswith(".rank-"))
    assert after == [name for name in before if not name.startswith(".rank-")]


def test_parquet_values_are_checked_at_scan_time(tmp_path):
    """Class 5: a late lossy value is its row's error; unreadable rows are counted."""
    n = 25
    table = pa.table({
        "id": [f"r{i}" for i in range(n)], "question_id": [float(i) for i in range(n - 1)] + [0.5],
        "parent_answer_post_id": [1] * n, "prob": [0.5] * n,
        "intent": ["i"] * n, "snippet": ["s"] * n,
    })  # fmt: skip
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=5)
    found = scan([str(tmp_path / "in.parquet")], limit=None, allow_empty=False)
    assert (found.rows, found.unreadable) == (n, 1)
    bad = tmp_path / "bad.parquet"
    pq.write_table(table.set_column(1, "question_id", pa.array([0.5] * n)), bad)
    with pytest.raises(UserError, match=r"no row of the input can be read, e\.g\. .*bad\.parquet"):
        scan([str(bad)], limit=None, allow_empty=False)


def test_rows_not_bytes_make_the_fingerprint(tmp_path):
    row = {"question_id": 1, "parent_answer_post_id": 1, "prob": 0.5, "intent": "i", "snippet": "s"}
    lines = [json.dumps({"id": str(i), **row}) for i in range(4)]
    whole, a, b = tmp_path / "w.jsonl", tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    whole.write_text("\n".join(lines) + "\n")
    a.write_text("\n".join(lines[:2]))
    b.write_text("\n".join(lines[2:]) + "\n")

    def fingerprint(*paths):
        return scan([str(p) for p in paths], limit=None, allow_empty=False).fingerprint

    assert fingerprint(whole) != fingerprint(a, b)  # same rows, other files
    assert fingerprint(whole) == fingerprint(shutil.copy(whole, tmp_path / "moved.jsonl"))


@pytest.mark.parametrize("where", ["equal", "output inside model", "model inside output"])
def test_output_and_model_may_not_hold_one_another(tiny_models, mined, tmp_path, where):
    """Class 6 for serve.translate: the model's files are its fingerprint."""
    model = tmp_path / "model"
    out = {"equal": model, "output inside model": model / "out"}.get(where, tmp_path / "o")
    if where == "model inside output":
        model = out / "model"
    shutil.copytree(tiny_models["t5"], model)
    with pytest.raises(UserError, match="lies inside|pick another"):
        translate(args(model, mined, out))
    assert not any(p.name.startswith(("part-", "manifest")) for p in out.glob("*"))


@pytest.mark.parametrize(
    "tuning",
    [{"inter_threads": 0}, {"inter_threads": len(os.sched_getaffinity(0)) + 1},
     {"intra_threads": len(os.sched_getaffinity(0)) + 1}, {"max_batch_tokens": 2**31}],
)  # fmt: skip
def test_engine_knobs_are_bounded(tuning):
    """Class 7: values the engine aborts or fails every call on."""
    with pytest.raises(UserError, match=f"--engine_args: {next(iter(tuning))} must be in"):
        check_tuning("ctranslate2", tuning)


def test_engine_knobs_within_bounds_pass():
    check_tuning("ctranslate2", {"inter_threads": 1, "max_batch_tokens": 0})
    check_tuning("ctranslate2", {"max_batch_tokens": 4096})


def test_outputs_read_back_without_their_stamps(finished):
    table = read_output(finished[3])
    assert table.num_rows == ROWS and not table.schema.metadata
