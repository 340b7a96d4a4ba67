"""translate-mined README guarantees: a shard is on disk before its name is, rows cross
input-file boundaries unchanged, and a resume may use another number of processes."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest
from conftest import assert_says_something

from data.schema import OUTPUT_SCHEMA
from serve.shards import iter_shards
from serve.sink import ShardSink, read_output
from serve.translate import main as translate


def _rows(start: int, count: int) -> list[dict]:
    return [
        {"id": f"r{i}", "question_id": i, "parent_answer_post_id": 1, "prob": 0.5,
         "intent": f"intent {i}", "snippet": f"x_{i} = {i}"}
        for i in range(start, start + count)
    ]  # fmt: skip


def test_a_shard_is_fsynced_before_its_final_name_exists(tmp_path, monkeypatch):
    """Rename-before-fsync can leave, after a power loss, a final name over an empty file."""
    events = []
    fsync, replace = os.fsync, os.replace

    def traced_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def traced_replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", traced_fsync)
    monkeypatch.setattr(os, "replace", traced_replace)
    sink = ShardSink(tmp_path, schema=OUTPUT_SCHEMA, params={"p": 1}, rows_per_shard=10)
    table = pa.Table.from_pylist(
        [dict(row, rewritten_intent="t", error=None) for row in _rows(0, 3)], schema=OUTPUT_SCHEMA
    )
    sink.write(0, table)
    sink.close()
    final = str(tmp_path / "part-00000.parquet")
    (renamed,) = [
        i for i, event in enumerate(events) if event[0] == "replace" and event[2] == final
    ]
    temp = events[renamed][1]
    assert ("fsync", temp) in events[:renamed], events


def test_rows_cross_input_file_boundaries_unchanged(tmp_path):
    files = []
    for name, start, count in (("a.jsonl", 0, 7), ("b.jsonl", 7, 5), ("c.jsonl", 12, 3)):
        path = tmp_path / name
        path.write_text("".join(json.dumps(row) + "\n" for row in _rows(start, count)))
        files.append(str(path))
    shards = list(iter_shards(files, 4, None))
    assert [shard.num_rows for shard in shards] == [4, 4, 4, 3]
    ids = [i for shard in shards for i in shard.column("id").to_pylist()]
    assert ids == [f"r{i}" for i in range(15)]
    assert [shard.num_rows for shard in iter_shards(files, 4, 9)] == [4, 4, 1]


@pytest.mark.slow
def test_a_resume_may_use_another_number_of_processes(
    talking_t5, fixture_dir, tmp_path, monkeypatch
):
    """Rank 1 of 2 writes its shards and stops; one process finishes the run; the result
    equals one uninterrupted process."""
    args = ["--model", str(talking_t5), "--engine", "hf", "--input",
            str(fixture_dir / "conala-mined.jsonl"), "--rows_per_shard", "50",
            "--max_new_tokens", "4", "--limit", "200"]  # fmt: skip
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    first = translate([*args, "--output_dir", str(tmp_path / "split")])
    assert first["rows"] == 100 and not first["complete"]
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    resumed = translate([*args, "--output_dir", str(tmp_path / "split")])
    assert resumed["rows"] == 100 and resumed["complete"]
    translate([*args, "--output_dir", str(tmp_path / "whole")])
    split, whole = read_output(tmp_path / "split"), read_output(tmp_path / "whole")
    assert split.equals(whole)
    assert_says_something(whole.column("rewritten_intent").to_pylist())
    manifest = json.loads((tmp_path / "split" / "manifest.json").read_text())
    assert sorted(entry["stats"]["rank"] for entry in manifest["shards"].values()) == [0, 0, 1, 1]
