"""translate-mined end to end: exactly-once shards, kills, ranks, refusals, bad rows, memory.

Tests that compare generated text use `talking_t5` (tests/conftest.py), whose greedy
output is visible and differs row to row, and check that precondition: on the plain
random T5 every output is "", so text equality would hold whatever row it landed in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, assert_says_something, repo_env, run

from common.cli import UserError
from data.fixtures import write_fixtures
from data.prompts import SourceTemplate
from data.schema import OUTPUT_SCHEMA
from serve.engines.base import EngineSettings, GenerationOptions
from serve.engines.hf import HFEngine
from serve.sink import ResumeMismatch, read_output
from serve.translate import main as translate

pytestmark = pytest.mark.slow
ROWS = 1000


def _args(model, mined, out, *extra) -> list[str]:
    return [
        "--model", str(model), "--engine", "hf", "--input", str(mined), "--output_dir", str(out),
        "--rows_per_shard", "200", "--max_new_tokens", "8", "--limit", str(ROWS), *map(str, extra),
    ]  # fmt: skip


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "serve.translate", *args]


@pytest.fixture(scope="module")
def mined(fixture_dir):
    return fixture_dir / "conala-mined.jsonl"


@pytest.fixture(scope="module")
def reference(talking_t5, mined, tmp_path_factory) -> pa.Table:
    """An uninterrupted single-process run: the output every other run must equal."""
    out = tmp_path_factory.mktemp("reference")
    summary = translate(_args(talking_t5, mined, out))
    assert summary["rows"] == ROWS and summary["complete"]
    output = read_output(out)
    assert_says_something(output.column("rewritten_intent").to_pylist())
    return output


def test_each_stored_output_is_its_own_rows_generation(reference, talking_t5):
    """A direct engine call per row's source, in input order (not the planner's
    length-sorted, de-duplicated batches): an output stored on the wrong row fails."""
    template = SourceTemplate.load(talking_t5) or SourceTemplate()
    rows = reference.select(["intent", "snippet", "rewritten_intent"]).to_pylist()
    sources = [template.format(row["intent"], row["snippet"]) for row in rows]
    engine = HFEngine(str(talking_t5), EngineSettings(options=GenerationOptions(max_new_tokens=8)))
    direct = [g.text for i in range(0, ROWS, 200) for g in engine.generate(sources[i : i + 200])]
    engine.close()
    stored = [row["rewritten_intent"] for row in rows]
    wrong = [i for i in range(ROWS) if stored[i] != direct[i]]
    assert not wrong, [(i, stored[i], direct[i]) for i in wrong[:5]]


def test_reference_output_contract(reference, mined, tmp_path):
    assert reference.schema == OUTPUT_SCHEMA
    assert reference.num_rows == ROWS
    source = pd.read_json(mined, lines=True, nrows=ROWS, dtype={"id": str})
    assert reference.column("id").to_pylist() == source["id"].tolist()
    assert reference.column("snippet").to_pylist() == source["snippet"].tolist()
    assert reference.column("error").null_count == ROWS
    assert all(isinstance(text, str) for text in reference.column("rewritten_intent").to_pylist())


def test_readers_see_declared_schema(reference, tiny_models, mined, tmp_path):
    import datasets

    translate(_args(tiny_models["t5"], mined, tmp_path))
    files = sorted(str(p) for p in tmp_path.glob("part-*.parquet"))
    assert len(files) == ROWS // 200
    loaded = datasets.load_dataset("parquet", data_files=files, split="train")
    assert loaded.num_rows == ROWS and loaded.features["rewritten_intent"].dtype == "string"
    frame = pd.concat(pd.read_parquet(f) for f in files)
    assert list(frame.columns) == OUTPUT_SCHEMA.names
    assert pq.read_table(files[0]).schema == OUTPUT_SCHEMA
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] and manifest["rows_per_shard"] == 200
    assert manifest["params"]["engine"] == "hf"
    assert {"seconds", "rows", "errors"} <= set(manifest["shards"]["0"]["stats"])


def test_kill_twice_then_resume_equals_uninterrupted(reference, talking_t5, mined, tmp_path):
    args = _args(talking_t5, mined, tmp_path)
    for shards_before_kill in (1, 3):
        proc = subprocess.Popen(
            _cli(args), cwd=REPO, env=repo_env(), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        target = tmp_path / f"part-{shards_before_kill - 1:05d}.parquet"
        deadline = time.monotonic() + 300
        while not target.exists():
            assert proc.poll() is None, "translate ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # into the next shard
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert len(list(tmp_path.glob("part-*.parquet"))) < ROWS // 200
    run(_cli(args))
    output = read_output(tmp_path)
    ids = output.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == ROWS
    assert output.equals(reference)


def test_two_ranks_equal_one_process(reference, talking_t5, mined, tmp_path):
    args = _cli(_args(talking_t5, mined, tmp_path))
    procs = [
        subprocess.Popen(
            args,
            cwd=REPO,
            env=repo_env(RANK=rank, WORLD_SIZE=2),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output[-3000:]
    assert read_output(tmp_path).equals(reference)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"]
    assert {entry["stats"]["rank"] for entry in manifest["shards"].values()} == {0, 1}


def test_changed_parameters_are_refused_unless_overwrite(tiny_models, mined, tmp_path):
    args = _args(tiny_models["t5"], mined, tmp_path)
    translate(args + ["--limit", "200"])
    with pytest.raises(ResumeMismatch, match="generation"):
        translate(args + ["--limit", "200", "--max_new_tokens", "4"])
    summary = translate(args + ["--limit", "200", "--max_new_tokens", "4", "--overwrite"])
    assert summary["rows"] == 200
    again = translate(args + ["--limit", "200", "--max_new_tokens", "4"])
    assert again["rows"] == 0 and again["complete"]  # resumed: nothing left to do


def test_bad_rows_never_stop_the_run(talking_t5, tmp_path):
    rows = [
        {"intent": None, "snippet": "print(x)"},
        {"intent": "empty snippet", "snippet": ""},
        {"intent": None, "snippet": None},
        {"intent": "", "snippet": "   "},
        {"intent": "huge", "snippet": "x = 1\n" * 5000},
        {"intent": "controls \x00\x07\x1b", "snippet": "a\x0bb\x7f"},
        {"intent": "unicode ü 字 🙂 \u202e", "snippet": "s = 'ñ'"},
        {"intent": "dup id", "snippet": "len(a)"},
        {"intent": "dup id", "snippet": "len(a)"},
    ]
    table = pa.Table.from_pylist(
        [
            {
                "id": "7_1_0" if i >= 7 else f"{i}_1_0",
                "question_id": i,
                "parent_answer_post_id": 1,
                "prob": 0.5,
                **row,
            }
            for i, row in enumerate(rows)
        ]  # fmt: skip
    )
    source = tmp_path / "bad.parquet"
    pq.write_table(table, source)
    out = tmp_path / "out"
    summary = translate(
        ["--model", str(talking_t5), "--engine", "hf", "--input", str(source),
         "--output_dir", str(out), "--max_new_tokens", "4", "--max_source_length", "64"]
    )  # fmt: skip
    output = read_output(out)
    assert output.num_rows == len(rows) and summary["rows"] == len(rows)
    errors = output.column("error").to_pylist()
    texts = output.column("rewritten_intent").to_pylist()
    assert [i for i, e in enumerate(errors) if e] == [2, 3]
    assert all("both intent and snippet are empty" in errors[i] for i in (2, 3))
    assert_says_something([texts[i] for i in (0, 1, 4, 5, 6, 7, 8)])
    assert texts[7] == texts[8]  # a duplicate shares its twin's output, not a neighbour's
    stats = json.loads((out / "manifest.json").read_text())["shards"]["0"]["stats"]
    assert stats["truncated"] == 1 and stats["duplicate_ids"] == 1
    assert output.column("intent").to_pylist()[6] == rows[6]["intent"]  # stored unchanged


def test_all_error_shard_keeps_declared_types(tmp_path, tiny_models):
    table = pa.Table.from_pylist(
        [
            {
                "id": f"{i}_0_0",
                "question_id": i,
                "parent_answer_post_id": 0,
                "prob": 0.1,
                "intent": None,
                "snippet": "",
            }
            for i in range(600)
        ]  # fmt: skip
    )
    pq.write_table(table, tmp_path / "empty.parquet")
    translate(["--model", str(tiny_models["t5"]), "--engine", "hf", "--input",
               str(tmp_path / "empty.parquet"), "--output_dir", str(tmp_path / "out")])  # fmt: skip
    part = pq.read_table(tmp_path / "out" / "part-00000.parquet")
    assert part.schema == OUTPUT_SCHEMA
    assert part.column("rewritten_intent").null_count == 600
    frame = pd.read_parquet(sorted((tmp_path / "out").glob("part-*.parquet")))
    assert frame["rewritten_intent"].isna().all() and frame["error"].notna().all()


def test_missing_model_and_wrong_engine_are_clear(tiny_models, mined, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        translate(_args(tmp_path / "nope", mined, tmp_path / "a"))
    args = _args(tiny_models["t5"], mined, tmp_path / "b")
    args[args.index("hf")] = "vllm"
    with pytest.raises(UserError, match="ctranslate2"):
        translate(args)


_RSS_SCRIPT = """
import json, resource, sys
from serve.translate import main
main(sys.argv[1:])
print("RSS_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def test_peak_memory_does_not_grow_with_rows(tiny_models, tmp_path):
    files = write_fixtures(tmp_path / "data", train_rows=10, test_rows=10, mined_rows=20_000)
    mined = files["mined"]
    peaks = {}
    for rows in (2_000, 20_000):
        proc = run(
            [sys.executable, "-c", _RSS_SCRIPT, "--model", tiny_models["t5"], "--engine", "hf",
             "--input", mined, "--output_dir", tmp_path / f"out{rows}", "--limit", rows,
             "--rows_per_shard", 1000, "--max_new_tokens", 1, "--max_source_length", 64],
            timeout=900,
        )  # fmt: skip
        peaks[rows] = float(proc.stdout.rsplit("RSS_MB", 1)[1])
    assert peaks[20_000] <= 1.15 * peaks[2_000], peaks
