"""ShardSink: real Parquet readers, real SIGKILLs and real concurrent ranks.

Run as a script (``python test_sink.py MODE DIR ...``) this file is the child process that
the crash and concurrency tests launch, so child and tests share one table builder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.cli import UserError
from data.schema import OUTPUT_SCHEMA
from serve.sink import ResumeMismatch, RunReplaced, ShardSink, load_manifest, read_output

REPO = Path(__file__).resolve().parents[2]
# A tuple on purpose: the manifest stores it as a JSON list, and resuming must still match.
PARAMS = {"model": "tiny-t5", "engine": "hf", "stop": ("\n\n",), "source": "sha256:abc"}
GLOB = "part-*.parquet"
CRASH_ROWS_PER_SHARD = 1_000_000  # room for the slow shard
NUM_SHARDS = 40  # many small shards: lost manifest updates would show without the lock


def rows(start: int, n: int, *, errors: bool = False) -> pa.Table:
    """Input rows [start, start+n) as generated output. With ``errors`` every generation
    failed: rewritten_intent is all None, which pyarrow infers as the null type."""
    ids = range(start, start + n)
    return pa.table(
        {
            "id": [f"{i}_{i + 1}" for i in ids],
            "question_id": list(ids),
            "parent_answer_post_id": [i + 1 for i in ids],
            "prob": [0.5] * n,
            "intent": [f"intent {i}" for i in ids],
            "snippet": [f"print({i})" for i in ids],
            "rewritten_intent": [None] * n if errors else [f"rewritten {i}" for i in ids],
            "error": ["CUDA out of memory"] * n if errors else [None] * n,
        }
    )


def slow_shard(n: int = 500_000, width: int = 200) -> pa.Table:
    """Incompressible text, so writing it takes about a second: the window for the kill."""
    letters = np.random.default_rng(0).integers(97, 123, n * width, dtype=np.uint8)
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    text = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(letters))
    ids = pa.array(np.arange(n))
    return pa.table(
        {
            "id": ids.cast(pa.string()),
            "question_id": ids,
            "parent_answer_post_id": ids,
            "prob": pa.array(np.zeros(n)),
            "intent": text,
            "snippet": text,
            "rewritten_intent": text,
            "error": pa.nulls(n, pa.string()),
        }
    )


def make_sink(output_dir: Path, **kwargs) -> ShardSink:
    kwargs = {"params": PARAMS, "rows_per_shard": 10, **kwargs}
    return ShardSink(output_dir, schema=OUTPUT_SCHEMA, **kwargs)


def manifest(output_dir: Path) -> dict:
    return json.loads((output_dir / "manifest.json").read_text())


def spawn(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, __file__, *args], text=True, env=env, **kwargs)


# --- readers: each returns (rewritten_intent is a string column, question_ids, nulls) ---


def read_pyarrow(output_dir: Path, _cache: Path):
    table = read_output(output_dir)
    column = table["rewritten_intent"]
    return column.type == pa.string(), table["question_id"].to_pylist(), column.null_count


def read_pandas(output_dir: Path, _cache: Path):
    # The pyarrow backend keeps the Arrow type visible; NumPy would show `object` either way.
    parts = sorted(output_dir.glob(GLOB))
    frames = [pd.read_parquet(p, dtype_backend="pyarrow") for p in parts]
    df = pd.concat(frames, ignore_index=True)
    column = df["rewritten_intent"]
    return (
        column.dtype == pd.ArrowDtype(pa.string()),
        df["question_id"].tolist(),
        column.isna().sum(),
    )


def read_polars(output_dir: Path, _cache: Path):
    df = pl.read_parquet(output_dir / GLOB)
    column = df["rewritten_intent"]
    return column.dtype == pl.String, df["question_id"].to_list(), column.null_count()


def read_duckdb(output_dir: Path, _cache: Path):
    con = duckdb.connect()
    source = f"read_parquet('{output_dir / GLOB}')"
    types = {row[0]: row[1] for row in con.sql(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    qids = [row[0] for row in con.sql(f"SELECT question_id FROM {source}").fetchall()]
    [(nulls,)] = con.sql(f"SELECT count(*) FROM {source} WHERE rewritten_intent IS NULL").fetchall()
    return types["rewritten_intent"] == "VARCHAR", qids, nulls


def read_datasets(output_dir: Path, cache: Path):
    ds = datasets.load_dataset(
        "parquet", data_files=str(output_dir / GLOB), split="train", cache_dir=str(cache)
    )
    column = list(ds["rewritten_intent"])
    is_string = ds.features["rewritten_intent"] == datasets.Value("string")
    return is_string, list(ds["question_id"]), sum(v is None for v in column)


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory) -> Path:
    """Shard 0 generated fine; shard 1 is 600 rows that all failed."""
    output_dir = tmp_path_factory.mktemp("out")
    sink = make_sink(output_dir, rows_per_shard=600)
    sink.write(0, rows(0, 600), stats={"errors": 0})
    sink.write(1, rows(600, 600, errors=True), stats={"errors": 600})
    return output_dir


@pytest.mark.parametrize(
    "reader", [read_pyarrow, read_pandas, read_polars, read_duckdb, read_datasets]
)
def test_every_reader_sees_all_rows_and_a_string_column(two_shards, reader, tmp_path):
    is_string, question_ids, nulls = reader(two_shards, tmp_path)
    assert is_string
    assert question_ids == list(range(1200))
    assert nulls == 600


def test_parts_have_the_output_schema_and_the_manifest_records_them(two_shards):
    assert [p.name for p in sorted(two_shards.glob(GLOB))] == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    for part in two_shards.glob(GLOB):
        assert pq.read_schema(part).equals(OUTPUT_SCHEMA)
    recorded = manifest(two_shards)
    assert recorded["params"] == json.loads(json.dumps(PARAMS))
    assert recorded["rows_per_shard"] == 600
    assert recorded["schema"]["names"] == OUTPUT_SCHEMA.names
    assert len(recorded["run_id"]) == 32
    assert recorded["shards"]["1"] == {
        "file": "part-00001.parquet",
        "rows": 600,
        "run_id": recorded["run_id"],
        "stats": {"errors": 600},
    }


def test_resume_with_same_params_keeps_done_shards(tmp_path):
    first = make_sink(tmp_path)
    first.write(0, rows(0, 10))
    first.write(1, rows(10, 10))
    written = (tmp_path / "part-00000.parquet").read_bytes()
    # A second live writer of the same rank is refused, not raced.
    with pytest.raises(UserError, match="already being written by a live process as rank 0"):
        make_sink(tmp_path)
    first.close()
    # overwrite=True with identical params resumes too (so concurrent ranks can't wipe).
    for overwrite in (False, True):
        assert make_sink(tmp_path, overwrite=overwrite).done() == {0, 1}
    assert (tmp_path / "part-00000.parquet").read_bytes() == written
    make_sink(tmp_path).write(2, rows(20, 10))
    assert set(manifest(tmp_path)["shards"]) == {"0", "1", "2"}


def test_resume_with_different_params_raises_naming_each_key(tmp_path):
    make_sink(tmp_path).write(0, rows(0, 10))
    with pytest.raises(ResumeMismatch) as err:
        make_sink(tmp_path, params={**PARAMS, "model": "big-t5"}, rows_per_shard=20)
    message = str(err.value)
    assert "model: 'tiny-t5' -> 'big-t5'" in message
    assert "rows_per_shard: 10 -> 20" in message
    assert "--overwrite" in message and "--output_dir" in message
    assert "engine" not in message
    assert make_sink(tmp_path).done() == {0}


def test_overwrite_with_different_params_wipes_the_old_run(tmp_path):
    old = make_sink(tmp_path)
    old.write(0, rows(0, 10))
    old.write(1, rows(10, 10))
    (tmp_path / ".part-00002.parquet.tmp").write_bytes(b"left by a killed writer")
    # While the old run's writer is alive, its run cannot be replaced under it (by the
    # same rank, or by a run of another shape).
    with pytest.raises(UserError, match="already being written by a live process"):
        make_sink(tmp_path, params={**PARAMS, "model": "big-t5"}, overwrite=True)
    with pytest.raises(UserError, match="live process by a run of world size 1"):
        make_sink(tmp_path, params={**PARAMS, "model": "big-t5"}, world_size=2, overwrite=True)
    assert old.done() == {0, 1}
    old.close()
    new = make_sink(tmp_path, params={**PARAMS, "model": "big-t5"}, overwrite=True)
    assert new.done() == set()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".rank-")) == [
        ".manifest.lock",
        ".run.lock",
        "manifest.json",
    ]
    assert manifest(tmp_path)["params"]["model"] == "big-t5"
    assert manifest(tmp_path)["shards"] == {}
    assert manifest(tmp_path)["run_id"] != old.run_id


def test_a_run_that_never_finished_a_shard_is_replaced_without_overwrite(tmp_path):
    make_sink(tmp_path).close()  # a failed start: manifest written, no shard
    fixed = make_sink(tmp_path, params={**PARAMS, "model": "big-t5"})
    assert manifest(tmp_path)["params"]["model"] == "big-t5"
    fixed.write(0, rows(0, 10))
    fixed.close()
    with pytest.raises(ResumeMismatch, match="model: 'big-t5' -> 'tiny-t5'"):
        make_sink(tmp_path)


@pytest.mark.parametrize(
    "text",
    ["[1]", '{"params": null, "shards": {}, "rows_per_shard": 10}',
     '{"params": {}, "shards": [], "rows_per_shard": 10}',
     '{"params": {}, "shards": {"0": 3}, "rows_per_shard": 10}',
     '{"params": {}, "shards": {}, "rows_per_shard": "10"}',
     '{"params": {}, "shards": {}, "rows_per_shard": 10, "num_shards": "2"}'],
)  # fmt: skip
def test_a_manifest_of_the_wrong_shape_is_named_not_crashed_on(tmp_path, text):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises((ValueError, UserError), match="not a translate manifest|a JSON object"):
        load_manifest(tmp_path)
    with pytest.raises(ResumeMismatch, match="--overwrite"):
        make_sink(tmp_path)


def test_a_writer_whose_run_was_replaced_stops_without_writing(tmp_path):
    sink = make_sink(tmp_path)
    sink.write(0, rows(0, 10))
    # Another run took the directory by a path the run lock cannot see (say, storage
    # without flock): the manifest now names another run id.
    replaced = {**manifest(tmp_path), "run_id": "f" * 32, "shards": {}}
    (tmp_path / "manifest.json").write_text(json.dumps(replaced))
    with pytest.raises(RunReplaced, match="replaced by another process"):
        sink.write(1, rows(10, 10))
    assert not (tmp_path / "part-00001.parquet").exists()
    assert not list(tmp_path.glob(".part-*.tmp"))
    with pytest.raises(RunReplaced):
        sink.finish(2)


def test_part_files_without_a_manifest_are_not_adopted(tmp_path):
    make_sink(tmp_path).write(0, rows(0, 10))
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(ResumeMismatch, match="no manifest.json"):
        make_sink(tmp_path)
    assert make_sink(tmp_path, overwrite=True).done() == set()


def test_write_rejects_a_table_that_does_not_match_the_schema(tmp_path):
    sink = make_sink(tmp_path)
    good = rows(0, 10)
    with pytest.raises(ValueError, match="shard 0: missing column 'error'"):
        sink.write(0, good.drop_columns(["error"]))
    with pytest.raises(ValueError, match="shard 0: unexpected column 'extra'"):
        sink.write(0, good.append_column("extra", pa.array(range(10))))
    with pytest.raises(ValueError, match="column 'question_id' has type string"):
        sink.write(0, good.set_column(1, "question_id", pa.array(["x"] * 10)))
    assert sink.done() == set()
    assert not list(tmp_path.glob(".part-*"))


def test_write_enforces_ownership_shard_size_and_exactly_once(tmp_path):
    sink = make_sink(tmp_path, rank=1, world_size=2)
    assert [sink.owns(i) for i in range(4)] == [False, True, False, True]
    with pytest.raises(ValueError, match="rank 1 of 2 does not own shard 0"):
        sink.write(0, rows(0, 10))
    with pytest.raises(ValueError, match="11 rows, more than rows_per_shard 10"):
        sink.write(1, rows(10, 11))
    sink.write(1, rows(10, 10))
    with pytest.raises(FileExistsError, match="shard 1 is already written"):
        sink.write(1, rows(10, 10))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rows_per_shard": 0}, "rows_per_shard must be >= 1"),
        ({"world_size": 0}, "world_size must be >= 1"),
        ({"rank": 2, "world_size": 2}, "rank must be in [0, world_size)"),
        ({"rank": -1}, "rank must be in [0, world_size)"),
    ],
)
def test_constructor_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError) as err:
        make_sink(tmp_path, **kwargs)
    assert str(err.value) == message


def test_sigkill_mid_write_leaves_only_complete_shards(tmp_path):
    child = spawn("crash", str(tmp_path), stdout=subprocess.PIPE)
    try:
        for index in range(3):
            assert child.stdout.readline() == f"wrote {index}\n"
        temp = tmp_path / f".part-00003.parquet.{child.pid}.tmp"  # the writer's own name
        deadline = time.monotonic() + 60
        while not temp.exists():  # shard 3 is being written now
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.002)
    finally:
        child.kill()  # SIGKILL: no cleanup handlers run
        child.wait()
    assert child.returncode == -signal.SIGKILL

    assert temp.exists(), "the kill should have landed mid-write"
    assert not (tmp_path / "part-00003.parquet").exists()
    for index in range(3):
        table = pq.read_table(tmp_path / f"part-{index:05d}.parquet")
        assert table["question_id"].to_pylist() == list(range(10 * index, 10 * index + 10))
    assert set(manifest(tmp_path)["shards"]) == {"0", "1", "2"}

    rerun = make_sink(tmp_path, rows_per_shard=CRASH_ROWS_PER_SHARD)
    assert not temp.exists()
    assert rerun.done() == {0, 1, 2}
    rerun.write(3, rows(30, 10))
    assert rerun.finish(4)["complete"]
    assert read_output(tmp_path)["question_id"].to_pylist() == list(range(40))


def test_concurrent_ranks_share_one_directory(tmp_path):
    output_dir = tmp_path / "out"
    # A previous run with other params and more shards, which both ranks must replace
    # (both pass overwrite=True; the second must join the first, not wipe it).
    old = make_sink(output_dir, params={**PARAMS, "model": "old"})
    for index in range(NUM_SHARDS + 4):
        old.write(index, rows(10 * index, 10))
    old.close()  # that run's process has ended: a live one could not be replaced
    children = [spawn("rank", str(output_dir), str(rank), "2") for rank in (0, 1)]
    assert [child.wait(timeout=120) for child in children] == [0, 0]

    recorded = manifest(output_dir)
    assert recorded["params"] == json.loads(json.dumps(PARAMS))
    assert list(recorded["shards"]) == [str(i) for i in range(NUM_SHARDS)]
    assert [entry["stats"]["rank"] for entry in recorded["shards"].values()] == [
        i % 2 for i in range(NUM_SHARDS)
    ]
    # Each rank calls finish; whichever ran last saw every shard.
    assert recorded["num_shards"] == NUM_SHARDS and recorded["complete"] is True
    assert read_output(output_dir)["question_id"].to_pylist() == list(range(10 * NUM_SHARDS))


def test_finish_counts_files_and_fills_manifest_gaps(tmp_path):
    sink = make_sink(tmp_path)
    sink.write(0, rows(0, 10))
    assert sink.finish(2)["complete"] is False
    sink.write(1, rows(10, 7), stats={"errors": 1})
    # A kill between the rename and the manifest update leaves the shard unrecorded.
    lagging = manifest(tmp_path)
    del lagging["shards"]["1"]
    (tmp_path / "manifest.json").write_text(json.dumps(lagging))
    result = sink.finish(2)
    assert result["complete"] is True and result["num_shards"] == 2
    assert result["shards"]["1"] == {
        "file": "part-00001.parquet",
        "rows": 7,
        "run_id": sink.run_id,
        "stats": {},
    }
    assert manifest(tmp_path) == result


# --- child processes ---


def crash_child(output_dir: str) -> None:
    """Write three small shards, then one slow one that the test kills mid-write."""
    sink = make_sink(Path(output_dir), rows_per_shard=CRASH_ROWS_PER_SHARD)
    for index in range(3):
        sink.write(index, rows(10 * index, 10))
        print(f"wrote {index}", flush=True)
    sink.write(3, slow_shard())
    os._exit(1)  # not reached: the test kills us first


def rank_child(output_dir: str, rank: str, world_size: str) -> None:
    # Imports take seconds; start together so constructors and writes really overlap.
    barrier = Path(output_dir).parent
    (barrier / f"ready-{rank}").touch()
    while len(list(barrier.glob("ready-*"))) < int(world_size):
        time.sleep(0.001)
    sink = make_sink(Path(output_dir), rank=int(rank), world_size=int(world_size), overwrite=True)
    for index in range(NUM_SHARDS):
        if sink.owns(index) and index not in sink.done():
            sink.write(index, rows(10 * index, 10), stats={"rank": int(rank)})
    sink.finish(NUM_SHARDS)


if __name__ == "__main__":
    {"crash": crash_child, "rank": rank_child}[sys.argv[1]](*sys.argv[2:])
