"""Edges of the serve stage: sink clean-up and messages, CTranslate2 threads and an
empty first call, the coverage snippet cap, and `--engine auto` per decoding mode."""

from __future__ import annotations

import json
import os
import resource
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.cli import UserError
from data.prompts import SourceTemplate
from data.schema import MINED_SCHEMA, OUTPUT_SCHEMA, with_error
from serve.engines import create_engine, select_engine
from serve.engines.base import EngineSettings, GenerationOptions
from serve.engines.ctranslate2 import cpu_split
from serve.runner import Plan, check_tuning, prepare, translate_shard
from serve.sink import ForeignShard, ResumeMismatch, ShardSink
from serve.translate import TranslateArguments

PARAMS = {"model": "tiny-t5"}
CORES = len(os.sched_getaffinity(0))


def sink(path, **kwargs) -> ShardSink:
    return ShardSink(path, schema=OUTPUT_SCHEMA, params=PARAMS, rows_per_shard=10, **kwargs)


def output_rows(start: int, n: int) -> pa.Table:
    ids = list(range(start, start + n))
    return pa.table(
        {"id": [str(i) for i in ids], "question_id": ids, "parent_answer_post_id": ids,
         "prob": [0.5] * n, "intent": ["i"] * n, "snippet": ["s"] * n,
         "rewritten_intent": ["r"] * n, "score": [-1.0] * n, "error": [None] * n},
        schema=OUTPUT_SCHEMA,
    )  # fmt: skip


def temps(path) -> list[str]:
    return sorted(p.name for p in path.glob(".part-*.tmp"))


# --------------------------------------------------------------------------- sink


def test_a_foreign_shard_is_fixed_by_removing_it_and_rerunning(tmp_path):
    first = sink(tmp_path)
    first.write(0, output_rows(0, 10))
    first.close()
    part = tmp_path / "part-00000.parquet"
    pq.write_table(pq.read_table(part).replace_schema_metadata(), part)  # stamp lost
    with pytest.raises(ForeignShard, match="remove it and rerun"):
        sink(tmp_path)
    part.unlink()
    assert sink(tmp_path).done() == set()  # the advice works: the rerun starts


def test_overwrite_removes_every_temp_of_a_shard(tmp_path):
    """Temps carry their writer's pid, so one shard index can have several."""
    old = sink(tmp_path, world_size=2)
    old.write(0, output_rows(0, 10))
    old.close()
    # Shard 1 is rank 1's, and these pids live: only the wipe may remove them.
    for pid in (os.getpid(), os.getppid()):
        (tmp_path / f".part-00001.parquet.{pid}.tmp").write_bytes(b"partial")
    new = ShardSink(tmp_path, schema=OUTPUT_SCHEMA, params={"model": "other"},
                    rows_per_shard=10, world_size=2, overwrite=True)  # fmt: skip
    assert new.done() == set() and temps(tmp_path) == []


def test_a_failed_write_leaves_no_temp_file(tmp_path):
    """A full disk (here: a file size limit, EFBIG) must not keep a partial temp."""
    writer = sink(tmp_path)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (512, limits[1]))
    try:
        with pytest.raises(OSError):
            writer.write(0, output_rows(0, 10))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    assert temps(tmp_path) == [] and writer.done() == set()


def test_a_newer_format_is_named_as_newer(tmp_path):
    first = sink(tmp_path)
    first.write(0, output_rows(0, 10))
    first.close()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ResumeMismatch, match=r"a newer serve.translate \(format 99;"):
        sink(tmp_path)


# --------------------------------------------------------------------------- threads


def test_intra_threads_0_is_passed_on_and_unset_knobs_split_the_cores():
    assert cpu_split(4, None, 0) == (2, 0)
    assert cpu_split(4) == (2, 2) and cpu_split(1) == (1, 1)
    check_tuning("ctranslate2", {"intra_threads": 0})


@pytest.mark.skipif(CORES < 2, reason="needs 2 cores for a product over the cores")
def test_thread_product_over_the_cores_is_refused():
    for tuning in ({"inter_threads": 2, "intra_threads": CORES}, {"intra_threads": CORES}):
        with pytest.raises(UserError, match=rf"--engine_args: inter_threads 2 x intra.* {CORES} "):
            check_tuning("ctranslate2", tuning)
    check_tuning("ctranslate2", {"inter_threads": 2, "intra_threads": CORES // 2})


# --------------------------------------------------------------------------- engines


@pytest.fixture(scope="module")
def ct2_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ct2-cache")


def ct2(model, cache, **options):
    return create_engine("ctranslate2", model, device="cpu", precision="float32",
                         cache_dir=cache, options=GenerationOptions(**options))  # fmt: skip


def test_ctranslate2_generates_nothing_as_its_first_call(tiny_models, ct2_cache):
    engine = ct2(tiny_models["t5"], ct2_cache)
    assert engine.generate([]) == []
    assert len(engine.generate(["x = 1"])) == 1
    engine.close()


def test_coverage_reads_the_snippet_only_as_far_as_the_source_cap(tiny_models, ct2_cache):
    """max_source_length 2 keeps 128 characters: the padded snippet's only term is past them."""
    options = {"max_new_tokens": 2, "max_source_length": 2, "keep_candidates": True}
    engine = ct2(tiny_models["t5"], ct2_cache, **options)
    snippets = ["zebra = 1", "print()" + " " * 200 + "+ zebra"]
    table = pa.Table.from_pylist(
        [{"id": str(i), "question_id": i, "parent_answer_post_id": i, "prob": 0.5,
          "intent": "do", "snippet": s} for i, s in enumerate(snippets)],
        schema=with_error(MINED_SCHEMA),
    )  # fmt: skip
    plan = Plan(SimpleNamespace(batch_tokens=4096, max_batch_size=8), engine.options,
                SourceTemplate(), "ctranslate2", "cpu", None, 0, 1)  # fmt: skip
    output, _ = translate_shard(engine, table, plan, lambda rows: None)
    engine.close()
    short, padded = (row["candidates"][0]["coverage"] for row in output.to_pylist())
    assert short is not None and padded is None


def test_auto_picks_an_engine_that_runs_the_decoding_mode(tiny_models):
    assert select_engine(tiny_models["t5"], mode="sample") == "hf"
    assert select_engine(tiny_models["t5"], mode="beams") == "ctranslate2"
    assert select_engine(tiny_models["llama"], mode="beams") == "hf"


def test_translate_auto_with_do_sample_on_a_t5_plans_hf(tiny_models, tmp_path):
    source = tmp_path / "in.jsonl"
    row = {"id": "1", "question_id": 1, "parent_answer_post_id": 1, "prob": 0.5,
           "intent": "a", "snippet": "b"}  # fmt: skip
    source.write_text(json.dumps(row) + "\n")
    args = TranslateArguments(model=str(tiny_models["t5"]), input=[str(source)],
                              output_dir=str(tmp_path / "out"), device="cpu")  # fmt: skip
    options = GenerationOptions(do_sample=True, num_candidates=2)
    assert prepare(args, options, 0, 1).engine == "hf"


def test_vllm_refuses_beams_when_built_directly(tiny_models):
    from serve.engines.vllm import VLLMEngine

    settings = EngineSettings(options=GenerationOptions(num_beams=2))
    with pytest.raises(UserError, match="vllm engine has no beam search.*--engine hf$"):
        VLLMEngine(str(tiny_models["llama"]), settings)
