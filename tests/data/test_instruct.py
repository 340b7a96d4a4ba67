"""data.instruct end to end: synthetic translations directories in, a loadable dataset out.

The translations directories are written here with the exact shape serve.translate
leaves (part-XXXXX.parquet in OUTPUT_SCHEMA + manifest.json), so these tests need no
model. Refusals run the real CLI in a subprocess: exit code 2 and one stderr line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from common.cli import UserError
from data.instruct import DATASET_SCHEMA, main
from data.loaders import load_curated
from data.schema import OUTPUT_SCHEMA
from tests.conftest import run

PARAMS = {
    "model": "/runs/tiny/merged",
    "model_fingerprint": "abc123",
    "engine": "hf",
    "precision": "float32",
    "generation": {
        "max_new_tokens": 32,
        "min_new_tokens": 0,
        "num_beams": 1,
        "max_source_length": 256,
    },
    "source_template": {"template": "{intent}\n{snippet}", "prefix": ""},
    "source_fingerprint": "f00d",
    "limit": None,
}


def synthetic_rows(start: int, count: int) -> list[dict]:
    """Distinct, clean mined rows whose ids and question ids do not meet the fixtures'."""
    return [
        {
            "id": f"m{i}",
            "question_id": 90_000_000 + i // 3,
            "parent_answer_post_id": 80_000_000 + i // 2,
            "prob": (i % 1000) / 1000,
            "intent": f"how to sort a list number {i}?",
            "snippet": f"result_{i} = sorted(items_{i % 977}, key=len)",
            "rewritten_intent": f"sort list `items_{i % 977}` by length into `result_{i}`",
            "error": None,
        }
        for i in range(start, start + count)
    ]


def write_translations(
    directory: Path,
    rows: list[dict] | int,
    *,
    rows_per_shard: int = 1000,
    params: dict | None = None,
    complete: bool = True,
    drop_shards: tuple[int, ...] = (),
    shard_run_ids: dict[int, str] | None = None,
) -> Path:
    """A translations directory as serve.translate writes it; `rows` may be a count."""
    directory.mkdir(parents=True, exist_ok=True)
    total = rows if isinstance(rows, int) else len(rows)
    num_shards = max(1, -(-total // rows_per_shard))
    shards = {}
    for index in range(num_shards):
        lo, hi = index * rows_per_shard, min(total, (index + 1) * rows_per_shard)
        chunk = synthetic_rows(lo, hi - lo) if isinstance(rows, int) else rows[lo:hi]
        if index in drop_shards:
            continue
        name = f"part-{index:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(chunk, schema=OUTPUT_SCHEMA), directory / name)
        run_id = (shard_run_ids or {}).get(index, "run-1")
        shards[str(index)] = {"file": name, "rows": hi - lo, "stats": {}, "run_id": run_id}
    manifest = {
        "format_version": 1,
        "created": "2025-01-01T00:00:00+00:00",
        "updated": "2025-01-01T00:00:00+00:00",
        "run_id": "run-1",
        "params": params or PARAMS,
        "rows_per_shard": rows_per_shard,
        "schema": {"names": OUTPUT_SCHEMA.names, "types": [str(t) for t in OUTPUT_SCHEMA.types]},
        "shards": shards,
        "complete": complete,
    }
    if complete:
        manifest["num_shards"] = num_shards
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return directory


def build(translations, out, fixture_dir, *extra) -> dict:
    dirs = translations if isinstance(translations, list) else [translations]
    return main(
        [
            "--translations",
            *map(str, dirs),
            "--output",
            str(out),
            "--curated_train",
            str(fixture_dir / "conala-train.json"),
            "--curated_test",
            str(fixture_dir / "conala-test.json"),
            *map(str, extra),
        ]
    )


def cli(*args, **env):
    return run([sys.executable, "-m", "data.instruct", *args], check=False, timeout=600, **env)


def read_dataset(out: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(f) for f in sorted((out / "data").glob("*.parquet")))


def test_decontamination_drops_every_benchmark_row_and_counts_its_reason(fixture_dir, tmp_path):
    test = load_curated(str(fixture_dir / "conala-test.json"), split="test").to_pylist()
    clean = synthetic_rows(0, 50)
    by_question = [
        dict(
            clean[0],
            id=f"q{i}",
            question_id=row["question_id"],
            snippet=f"unique_{i} = {i}",
            rewritten_intent=f"set `unique_{i}` to {i}",
        )
        for i, row in enumerate(test)
    ]
    # Same snippets with the whitespace changed, under other ids and question ids.
    by_snippet = [
        dict(
            clean[0],
            id=f"s{i}",
            question_id=70_000_000 + i,
            snippet="  " + "\n".join(row["snippet"].split(" ")) + " \n",
            rewritten_intent=f"copy number {i}",
        )
        for i, row in enumerate(test)
        if row["snippet"].strip()
    ]
    rows = by_question + by_snippet + clean
    translations = write_translations(tmp_path / "mined", rows, rows_per_shard=64)
    summary = build(translations, tmp_path / "out", fixture_dir, "--keep_curated_train", "false")

    dropped = summary["funnel"]["dropped"]
    assert dropped["contaminated_question_id"] == len(by_question)
    assert dropped["contaminated_snippet"] == len(by_snippet)
    kept = read_dataset(tmp_path / "out")
    assert sorted(kept.column("id").to_pylist()) == sorted(r["id"] for r in clean)
    test_ids = {r["question_id"] for r in test}
    assert not test_ids & set(kept.column("question_id").to_pylist())


def test_dataset_loads_with_datasets_pandas_and_polars(fixture_dir, tmp_path):
    import datasets
    import pandas as pd
    import polars as pl

    translations = write_translations(tmp_path / "mined", 2500, rows_per_shard=1000)
    out = tmp_path / "dataset"
    summary = build(translations, out, fixture_dir, "--rows_per_shard", 1000)
    rows = summary["rows"]
    curated = summary["funnel"]["output"]["curated"]
    assert curated > 0 and rows == curated + 2500  # synthetic rows all pass the defaults
    assert len(list((out / "data").glob("train-*.parquet"))) == -(-rows // 1000)

    ds = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.column_names == DATASET_SCHEMA.names
    assert ds.num_rows == rows
    assert len(pd.read_parquet(out / "data")) == rows
    assert pl.read_parquet(str(out / "data" / "*.parquet")).height == rows

    table = read_dataset(out)
    curated_rows = table.filter(pc.equal(table.column("source"), "curated"))
    assert all(i.startswith("curated-") for i in curated_rows.column("id").to_pylist())
    assert curated_rows.column("prob").null_count == curated_rows.num_rows
    card = (out / "README.md").read_text()
    assert "path: data/train-*.parquet" in card and "license: cc-by-sa-4.0" in card
    assert "| contaminated_question_id |" in card and "human rewrite (curated train)" in card
    assert "coverage_funnel.png" in card
    assert (out / "coverage_funnel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rows"] == rows and stats["coverage"]["human_rewrite"]["mean"] > 0


def test_each_quality_filter_is_counted(fixture_dir, tmp_path):
    base = synthetic_rows(0, 1)[0]
    rows = [
        dict(base, id="ok", prob=0.9),
        dict(base, id="err", error="engine failed", rewritten_intent=None),
        dict(base, id="empty", rewritten_intent="   "),
        dict(base, id="loop", rewritten_intent="sort the list of list of list of list of"),
        dict(base, id="long", rewritten_intent=" ".join(f"w{i}" for i in range(101))),
        dict(base, id="lowprob", prob=0.1, snippet="a_1 = 1"),
        dict(base, id="lowcov", prob=0.9, snippet="q = zz(ww)", rewritten_intent="do it"),
        dict(base, id="dup", prob=0.9),
    ]
    translations = write_translations(tmp_path / "mined", rows)
    summary = build(
        translations,
        tmp_path / "out",
        fixture_dir,
        "--keep_curated_train",
        "false",
        "--min_prob",
        0.5,
        "--min_coverage",
        0.5,
    )
    dropped = summary["funnel"]["dropped"]
    expected = {
        "translate_error": 1,
        "empty_instruction": 1,
        "degenerate_repetition": 1,
        "length": 1,
        "min_prob": 1,
        "min_coverage": 1,
        "duplicate": 1,
    }
    assert {k: v for k, v in dropped.items() if v} == expected
    assert read_dataset(tmp_path / "out").column("id").to_pylist() == ["ok"]


def test_existing_output_needs_overwrite_and_is_replaced_whole(fixture_dir, tmp_path):
    translations = write_translations(tmp_path / "mined", 300)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old dataset")
    proc = cli(
        "--translations",
        translations,
        "--output",
        out,
        "--curated_train",
        fixture_dir / "conala-train.json",
        "--curated_test",
        fixture_dir / "conala-test.json",
    )
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert (out / "old.txt").exists()
    build(translations, out, fixture_dir, "--overwrite")
    assert not (out / "old.txt").exists() and (out / "README.md").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_incomplete_translations_refused_unless_allowed(fixture_dir, tmp_path):
    translations = write_translations(
        tmp_path / "mined", 3000, rows_per_shard=1000, complete=False, drop_shards=(1,)
    )
    args = [
        "--translations",
        translations,
        "--curated_train",
        fixture_dir / "conala-train.json",
        "--curated_test",
        fixture_dir / "conala-test.json",
    ]
    proc = cli(*args, "--output", tmp_path / "out")
    _one_line_error(proc, "incomplete", "--allow_incomplete", "2000 rows present")
    assert not (tmp_path / "out").exists()
    summary = build(
        translations,
        tmp_path / "out2",
        fixture_dir,
        "--allow_incomplete",
        "true",
        "--keep_curated_train",
        "false",
    )
    assert summary["rows"] == 2000
    card = (tmp_path / "out2" / "README.md").read_text()
    assert "**warning**" in card and "incomplete" in card


def test_mixed_parameters_refused(fixture_dir, tmp_path):
    a = write_translations(tmp_path / "a", 100)
    other = dict(PARAMS, generation=dict(PARAMS["generation"], num_beams=4))
    b = write_translations(tmp_path / "b", 100, params=other)
    curated = [
        "--curated_train",
        fixture_dir / "conala-train.json",
        "--curated_test",
        fixture_dir / "conala-test.json",
    ]
    proc = cli("--translations", a, b, "--output", tmp_path / "out", *curated)
    _one_line_error(proc, "mixed parameters", "generation", "num_beams")
    # Same params but another input (source_fingerprint) is one run split in two: accepted.
    c = write_translations(tmp_path / "c", 100, params=dict(PARAMS, source_fingerprint="beef"))
    assert cli("--translations", a, c, "--output", tmp_path / "ok", *curated).returncode == 0
    # A shard written by another run inside one directory.
    d = write_translations(tmp_path / "d", 300, rows_per_shard=100, shard_run_ids={2: "run-2"})
    proc = cli("--translations", d, "--output", tmp_path / "out", *curated)
    _one_line_error(proc, "mixed parameters", "shard 2", "run-2")


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--min_prob", "2"], "--min_prob"),
        (["--min_coverage", "-0.1"], "--min_coverage"),
        (["--repetition_repeats", "1"], "--repetition_repeats"),
        (["--rows_per_shard", "0"], "--rows_per_shard"),
        (["--no_such_flag", "1"], "--no_such_flag"),
    ],
)
def test_bad_flags_give_one_line(tmp_path, flags, needle):
    mined = write_translations(tmp_path / "mined", 10)
    proc = cli("--translations", mined, "--output", tmp_path / "out", *flags)
    _one_line_error(proc, needle)


def test_missing_or_wrong_translations_dir_named(tmp_path):
    missing = tmp_path / "nowhere"
    _one_line_error(cli("--translations", missing, "--output", tmp_path / "o"), str(missing))
    (tmp_path / "plain").mkdir()
    proc = cli("--translations", tmp_path / "plain", "--output", tmp_path / "o")
    _one_line_error(proc, str(tmp_path / "plain"), "manifest.json")


def test_push_to_hub_without_login_refused_before_any_work(fixture_dir, tmp_path):
    mined = write_translations(tmp_path / "mined", 100)
    home = tmp_path / "hf_home"
    home.mkdir()
    proc = cli(
        "--translations",
        mined,
        "--output",
        tmp_path / "out",
        "--curated_train",
        fixture_dir / "conala-train.json",
        "--curated_test",
        fixture_dir / "conala-test.json",
        "--push_to_hub",
        "someone/conala-instruct",
        HF_TOKEN="",
        HF_HOME=home,
    )
    _one_line_error(proc, "--push_to_hub", "not logged in", "hf auth login")
    assert not (tmp_path / "out").exists()


PEAK_RSS = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


@pytest.mark.slow
def test_peak_memory_is_flat_in_rows(fixture_dir, tmp_path):
    """100K rows must peak within 15% of 10K rows: rows are streamed, never all held."""
    peaks = {}
    for rows in (10_000, 100_000):
        mined = write_translations(tmp_path / f"mined{rows}", rows, rows_per_shard=10_000)
        # A fresh wrapper per size: RUSAGE_CHILDREN is the peak of the children it waited for.
        proc = run(
            [
                sys.executable,
                "-c",
                PEAK_RSS,
                sys.executable,
                "-m",
                "data.instruct",
                "--translations",
                mined,
                "--output",
                tmp_path / f"out{rows}",
                "--curated_train",
                fixture_dir / "conala-train.json",
                "--curated_test",
                fixture_dir / "conala-test.json",
            ],
            timeout=900,
        )
        peaks[rows] = int(proc.stdout.strip().splitlines()[-1])  # KiB on Linux
        kept = pq.ParquetDataset(str(tmp_path / f"out{rows}" / "data")).read(columns=["id"])
        assert kept.num_rows >= rows
    print(
        f"peak RSS: 10K rows {peaks[10_000] / 1024:.1f} MiB, "
        f"100K rows {peaks[100_000] / 1024:.1f} MiB"
    )
    assert peaks[100_000] <= 1.15 * peaks[10_000], peaks


def test_reads_what_the_real_sink_writes(fixture_dir, tmp_path):
    """The fixtures above mimic the sink; this one uses it, so a format drift fails here."""
    from serve.sink import ShardSink

    sink = ShardSink(tmp_path / "mined", schema=OUTPUT_SCHEMA, params=PARAMS, rows_per_shard=100)
    for index in range(3):
        rows = synthetic_rows(index * 100, 100)
        sink.write(index, pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA), {"rows": 100})
    args = ["--keep_curated_train", "false"]
    with pytest.raises(UserError, match="incomplete"):
        build(tmp_path / "mined", tmp_path / "out", fixture_dir, *args)
    sink.finish(3)
    assert build(tmp_path / "mined", tmp_path / "out", fixture_dir, *args)["rows"] == 300


def test_a_symlinked_output_is_replaced_where_it_points(fixture_dir, tmp_path):
    """As train.merge does: --overwrite replaces the folder the link names, the link stays."""
    mined = write_translations(tmp_path / "mined", 100)
    target = tmp_path / "datasets" / "v1"
    target.mkdir(parents=True)
    (target / "old.txt").write_text("old dataset")
    link = tmp_path / "current"
    link.symlink_to(target)
    build(mined, link, fixture_dir, "--overwrite")
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert (target / "README.md").is_file() and not (target / "old.txt").exists()


@pytest.mark.slow
def test_kill_9_leaves_staging_that_the_next_run_removes(fixture_dir, tmp_path, caplog):
    import logging
    import os
    import signal
    import socket
    import subprocess
    import time

    from tests.conftest import REPO, repo_env

    mined = write_translations(tmp_path / "mined", 30_000, rows_per_shard=5000)
    out = tmp_path / "out"
    args = ["--translations", mined, "--output", out,
            "--curated_train", fixture_dir / "conala-train.json",
            "--curated_test", fixture_dir / "conala-test.json"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "data.instruct", *map(str, args)], cwd=REPO, env=repo_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob(".out.staging-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (left,) = tmp_path.glob(".out.staging-*")
    assert left.name == f".out.staging-{socket.gethostname()}-{proc.pid}"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    live = tmp_path / f".out.staging-{socket.gethostname()}-{sleeper.pid}"
    live.mkdir()  # a running process's: never touched
    try:
        with caplog.at_level(logging.WARNING, logger="common.cli"):
            build(mined, out, fixture_dir)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not left.exists() and live.is_dir()
    assert f"removed {left}" in caplog.text and "no longer runs" in caplog.text
    assert read_dataset(out).num_rows > 30_000
