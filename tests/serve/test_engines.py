"""Engines against each other on real tiny models: hf, ctranslate2 and vllm.

Agreement is measured on the merged fine-tuned checkpoints of the session fixtures
(real outputs that stop at `</s>`), over 200 mined fixture rows formatted with each
model's own SourceTemplate and batched by the planner, as translate-mined does.

vLLM runs in a child process (it spawns its own engine core, which needs a
`__main__` guard): run as a script, this file is that child. One vLLM start serves
both the agreement and the over-long-prompt tests.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import repo_env
from transformers import AutoTokenizer

from common.cli import UserError
from data.prompts import SourceTemplate
from scripts import measure_agreement
from serve.engines import ENGINES, create_engine, engine_class, select_engine
from serve.engines.base import EngineSettings, GenerationOptions
from serve.planner import generate_rows

REPO = Path(__file__).resolve().parents[2]
ROWS = 200
BATCH = {"batch_tokens": 4096, "max_batch_size": 32}
# vLLM child: sources up to 400 tokens pass the planner, but only prompts under
# 256 tokens fit the model length. Fixture prompts stay under 150 tokens, so 64 new
# tokens always fit and nothing is cut short relative to hf.
VLLM_SOURCE_LIMIT = 400
VLLM_MODEL_LEN = 256
VLLM_MIN_AGREEMENT = 0.95


def fixture_sources(model: Path, fixture_dir: Path, n: int = ROWS) -> list[str]:
    """The first `n` mined rows that have a source, formatted as the model was trained."""
    return measure_agreement.fixture_sources(model, fixture_dir, n)


def run_planner(engine, sources: list[str]):
    return generate_rows(engine, sources, **BATCH)


def agreement(a: list, b: list) -> float:
    assert len(a) == len(b)
    return sum(x == y for x, y in zip(a, b)) / len(a)


def first_mismatches(a: list, b: list, k: int = 3) -> str:
    pairs = [(i, x, y) for i, (x, y) in enumerate(zip(a, b)) if x != y][:k]
    return "\n".join(f"row {i}: {x!r} != {y!r}" for i, x, y in pairs)


# --------------------------------------------------------------------------- selection


def test_auto_selection(tiny_models):
    assert select_engine(tiny_models["t5"]) == "ctranslate2"
    assert select_engine(tiny_models["llama"], "auto") == "vllm"
    assert select_engine(tiny_models["t5"], "hf") == "hf"
    assert select_engine(tiny_models["llama"], "hf") == "hf"
    assert engine_class("ctranslate2").__name__ == "CTranslate2Engine"
    assert engine_class("vllm").__name__ == "VLLMEngine"
    assert ENGINES == ("hf", "ctranslate2", "vllm")


def test_vllm_refuses_encoder_decoder(tiny_models):
    with pytest.raises(UserError, match="encoder-decoder") as error:
        create_engine("vllm", tiny_models["t5"])
    assert "hf" in str(error.value) and "ctranslate2" in str(error.value)


def test_ctranslate2_refuses_decoder_only(tiny_models, tmp_path):
    with pytest.raises(UserError, match="vllm or hf"):
        create_engine("ctranslate2", tiny_models["llama"], cache_dir=tmp_path)
    assert not any(tmp_path.iterdir()), "nothing is converted for a refused model"


def test_unknown_engine_and_bad_model_paths(tiny_models, tmp_path):
    with pytest.raises(UserError, match="Unsupported engine: trt .*auto, hf, ctranslate2, vllm"):
        create_engine("trt", tiny_models["t5"])
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        create_engine("auto", missing)
    with pytest.raises(UserError, match="no config.json"):
        select_engine(tmp_path, "hf")
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match="is a LoRA adapter.*make merge"):
        select_engine(tmp_path, "auto")


def test_precision_is_one_option_for_every_engine(tiny_models, tmp_path):
    engine = create_engine("auto", tiny_models["t5"], precision="float32", cache_dir=tmp_path)
    assert engine.capabilities.name == "ctranslate2" and engine.compute_type == "float32"
    engine.close()
    hf = create_engine("hf", tiny_models["t5"], precision="bfloat16")
    assert next(hf.model.parameters()).dtype == torch.bfloat16
    hf.close()
    with pytest.raises(ValueError, match="--precision int8 is not available with the hf engine"):
        create_engine("hf", tiny_models["t5"], precision="int8")


# --------------------------------------------------------------------------- ctranslate2


def ct2_dirs(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.glob(".ct2-*") if p.is_dir())


def test_conversion_cache(tiny_models, tmp_path):
    from serve.engines.ctranslate2 import CACHE_MARKER, CTranslate2Engine

    model = tmp_path / "model"
    shutil.copytree(tiny_models["t5"], model)
    cache = tmp_path / "cache"
    first = CTranslate2Engine(str(model), EngineSettings(precision="float32", cache_dir=cache))
    [converted] = ct2_dirs(cache)
    assert first.model_dir == converted and (converted / "model.bin").is_file()
    marker = (converted / CACHE_MARKER).stat().st_mtime_ns
    first.close()

    # Same model and quantization: the cached conversion is reused as it is.
    second = CTranslate2Engine(str(model), EngineSettings(precision="float32", cache_dir=cache))
    assert second.model_dir == converted
    assert (converted / CACHE_MARKER).stat().st_mtime_ns == marker
    assert ct2_dirs(cache) == [converted]
    second.close()

    # Another quantization converts anew, beside the first.
    int8 = CTranslate2Engine(str(model), EngineSettings(precision="int8", cache_dir=cache))
    assert int8.compute_type == "int8_float32"
    assert int8.model_dir != converted and len(ct2_dirs(cache)) == 2
    assert json.loads((int8.model_dir / CACHE_MARKER).read_text())["quantization"] == (
        "int8_float32"
    )
    int8.close()

    # A changed model (new weights file) converts anew.
    weights = model / "model.safetensors"
    os.utime(weights, ns=(time.time_ns(), weights.stat().st_mtime_ns + 1_000_000_000))
    changed = CTranslate2Engine(str(model), EngineSettings(precision="float32", cache_dir=cache))
    assert changed.model_dir not in (converted, int8.model_dir) and len(ct2_dirs(cache)) == 3
    changed.close()

    # No temporary directory is left behind, and a directory without the marker
    # (a conversion killed before it finished) is converted again, not loaded.
    assert not list(cache.glob("*.tmp-*"))
    stale = changed.model_dir
    shutil.rmtree(stale)
    stale.mkdir()
    (stale / "model.bin").write_bytes(b"truncated")
    killed_tmp = cache / f"{stale.name}.tmp-killed"
    killed_tmp.mkdir()
    again = CTranslate2Engine(str(model), EngineSettings(precision="float32", cache_dir=cache))
    assert again.model_dir == stale and (stale / CACHE_MARKER).is_file()
    assert not killed_tmp.exists()
    assert isinstance(again.generate(["x = 1"])[0].text, str)
    again.close()


def test_ctranslate2_int8_runs(tiny_models, fixture_dir, tmp_path):
    from serve.engines.ctranslate2 import CTranslate2Engine

    sources = fixture_sources(tiny_models["t5"], fixture_dir, n=40)
    engine = CTranslate2Engine(
        str(tiny_models["t5"]),
        EngineSettings(
            precision="int8",
            cache_dir=tmp_path,
            options=GenerationOptions(max_new_tokens=16, min_new_tokens=4),
            cpu_threads=1,
        ),
    )
    assert engine.capabilities.truncates_sources and engine.capabilities.device == "cpu"
    result = run_planner(engine, sources)
    assert not any(result.errors)
    assert all(isinstance(out, str) for out in result.outputs)
    assert 4 * result.unique_sources <= result.generated_tokens <= 16 * result.unique_sources
    engine.close()


@pytest.mark.slow
def test_ctranslate2_matches_hf_on_merged_t5(merged_models, fixture_dir, tmp_path):
    """fp32 greedy on both sides: the same tokens, so the same text, on every row."""
    from serve.engines.ctranslate2 import CTranslate2Engine
    from serve.engines.hf import HFEngine

    model = merged_models["t5"]
    sources = fixture_sources(model, fixture_dir)
    # Default lengths, then forced lengths (min/max new tokens) with sources cut short.
    for options in (
        GenerationOptions(max_new_tokens=64),
        GenerationOptions(max_new_tokens=6, min_new_tokens=4, max_source_length=12),
    ):
        hf = HFEngine(str(model), EngineSettings(options=options, precision="float32"))
        ct2 = CTranslate2Engine(
            str(model), EngineSettings(options=options, precision="float32", cache_dir=tmp_path)
        )
        expected, got = run_planner(hf, sources), run_planner(ct2, sources)
        match = agreement(expected.outputs, got.outputs)
        print(f"\nhf vs ctranslate2 on merged T5 ({options}): {match:.1%} of {len(sources)} rows")
        assert match == 1.0, first_mismatches(expected.outputs, got.outputs)
        assert got.truncated == expected.truncated
        assert got.generated_tokens == expected.generated_tokens
        assert len(set(expected.outputs)) > 1, "a model that says one thing tests little"
        hf.close()
        ct2.close()


# --------------------------------------------------------------------------- vllm


def long_source(tokenizer, template: SourceTemplate, tokens: int) -> str:
    snippet = "x = 1"
    while len(tokenizer(template.format("sum the list", snippet)).input_ids) < tokens:
        snippet += "\ny = x + 1"
    return template.format("sum the list", snippet)


@pytest.fixture(scope="module")
def vllm_run(merged_models, fixture_dir, tmp_path_factory):
    """The vLLM child's results, hf's outputs on the same rows, and what was sent."""
    from serve.engines.hf import HFEngine

    model = merged_models["llama"]
    tmp = tmp_path_factory.mktemp("vllm")
    tokenizer = AutoTokenizer.from_pretrained(model)
    template = SourceTemplate.load(model)
    sources = fixture_sources(model, fixture_dir)
    # One prompt between the model length and the source limit (vLLM cannot take it),
    # one over the source limit (the planner refuses it before any engine call).
    between = long_source(tokenizer, template, VLLM_MODEL_LEN + 20)
    over = long_source(tokenizer, template, VLLM_SOURCE_LIMIT + 20)
    sent = [*sources, between, over]
    (tmp / "sources.json").write_text(json.dumps(sent))
    child = subprocess.Popen(
        [sys.executable, __file__, model, tmp / "sources.json", tmp / "out.json"],
        cwd=REPO,
        env=repo_env(PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")])),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # hf meanwhile, on the rows both can answer, with the same limits.
        options = GenerationOptions(max_new_tokens=64, max_source_length=VLLM_SOURCE_LIMIT)
        hf = HFEngine(str(model), EngineSettings(options=options, precision="float32"))
        started = time.monotonic()
        expected = run_planner(hf, sources)
        hf_seconds = time.monotonic() - started
        hf.close()
        log, _ = child.communicate(timeout=900)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, f"vLLM child exited {child.returncode}\n{log[-8000:]}"
    vllm = json.loads((tmp / "out.json").read_text())
    print(f"\nhf {hf_seconds:.1f}s, vllm {vllm['seconds']:.1f}s for {len(sent)} rows")
    return {"sent": sent, "hf": expected, "vllm": vllm, "tokenizer": tokenizer}


@pytest.mark.slow
def test_vllm_agrees_with_hf_on_merged_llama(vllm_run):
    hf, vllm = vllm_run["hf"], vllm_run["vllm"]
    got = vllm["outputs"][:ROWS]
    assert not any(vllm["errors"][:ROWS]) and not any(hf.errors)
    match = agreement(hf.outputs, got)
    print(f"\nhf vs vllm on merged Llama: {match:.1%} of {ROWS} rows")
    if match < 1:
        print(first_mismatches(hf.outputs, got))
    assert match >= VLLM_MIN_AGREEMENT, first_mismatches(hf.outputs, got)
    assert len(set(got)) > 1, "a model that says one thing tests little"
    assert vllm["capabilities"] == {
        "name": "vllm",
        "encoder_decoder": False,
        "truncates_sources": False,
        "device": "cpu",
        "whole_shard": True,
    }
    # count_tokens is the HF tokenizer's count, special tokens included.
    tokenizer = vllm_run["tokenizer"]
    assert vllm["counts"] == [len(tokenizer(s).input_ids) for s in vllm_run["sent"]]
    assert vllm["generated_tokens"] > 0
    # The whole de-duplicated shard went to vLLM in one planned call.
    assert vllm["batches"] == 1


@pytest.mark.slow
def test_vllm_over_long_prompts_are_row_errors(vllm_run):
    vllm = vllm_run["vllm"]
    errors, outputs = vllm["errors"], vllm["outputs"]
    between, over = errors[-2], errors[-1]
    assert outputs[-2] is None and outputs[-1] is None
    # Over the source limit: refused by the planner before generation.
    assert over is not None and f"over the {VLLM_SOURCE_LIMIT}-token limit" in over
    # Within the source limit but over max_model_len: the whole-shard call raised, and
    # the planner's bisection confined the failure to this row in a few extra calls.
    assert between is not None and f"max_model_len={VLLM_MODEL_LEN}" in between
    assert vllm["max_model_len"] == VLLM_MODEL_LEN
    assert 1 < vllm["calls"] <= 1 + 2 * math.ceil(math.log2(ROWS + 1))
    assert all(e is None for e in errors[:ROWS]) and all(o is not None for o in outputs[:ROWS])
    # vLLM's own check raises too, and the engine still answers afterwards.
    assert (
        vllm["vllm_raised"]
        and f"maximum context length is {VLLM_MODEL_LEN}" in (vllm["vllm_raised"])
    )
    assert vllm["after"] == outputs[0]


# Child process: argv = MODEL SOURCES_JSON OUT_JSON. Builds one VLLMEngine, runs the
# planner over every source, then checks vLLM's own refusal leaves the engine usable.
if __name__ == "__main__":
    model, sources_file, out_file = sys.argv[1:4]
    options = GenerationOptions(max_new_tokens=64, max_source_length=VLLM_SOURCE_LIMIT)
    engine = create_engine(
        "vllm", model, options=options, precision="float32", max_model_len=VLLM_MODEL_LEN
    )
    sources = json.loads(Path(sources_file).read_text())
    started = time.monotonic()
    result = run_planner(engine, sources)
    seconds = time.monotonic() - started
    # Bypassing the engine's own length check: vLLM raises, aborts what it had queued,
    # and the next call answers as before.
    ok, too_long = sources[0], sources[-1]
    try:
        engine.llm.generate(
            [{"prompt_token_ids": engine.tokenizer(s)["input_ids"]} for s in (ok, too_long)],
            use_tqdm=False,
        )
        vllm_raised = None
    except Exception as error:
        vllm_raised = f"{type(error).__name__}: {error}"
    after = engine.generate([ok])[0].text
    out = {
        "outputs": result.outputs,
        "errors": result.errors,
        "capabilities": engine.capabilities.__dict__,
        "generated_tokens": result.generated_tokens,
        "batches": result.batches,
        "calls": result.calls,
        "counts": engine.count_tokens(sources),
        "max_model_len": engine.max_model_len,
        "vllm_raised": vllm_raised,
        "after": after,
        "seconds": seconds,
    }
    Path(out_file).write_text(json.dumps(out))
    engine.close()
    sys.exit(0)
