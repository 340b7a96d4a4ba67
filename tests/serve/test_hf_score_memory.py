"""hf scores: step logits while they fit the budget, else a teacher-forced pass in chunks.

`generate(output_logits=True)` would hold steps x rows x vocab floats until it returns;
here the engine's peak memory stays near one chunk, and its scores equal the score
definition computed from HF's own per-step raw logits, whatever the chunk size.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from data.tiny_models import build_t5
from serve.engines import hf
from serve.engines.base import EngineSettings, GenerationOptions
from serve.engines.hf import HFEngine


def fixture_sources(fixture_dir: Path, rows: int) -> list[str]:
    """Fixture rows of varied length, so batches are padded."""
    with open(fixture_dir / "conala-mined.jsonl") as lines:
        return [f"{row['intent']} {row['snippet']}" for row in map(json.loads, lines)][:rows]


def reference_scores(engine: HFEngine, sources: list[str]) -> tuple[list[str], list[float]]:
    """Texts and scores from `generate`'s own raw step logits (`compute_transition_scores`):
    the mean log-probability of the tokens up to and including the first end token."""
    options, model = engine.options, engine.model
    batch = engine.tokenizer(sources, padding=True, return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=options.max_new_tokens,
                         num_beams=options.num_beams, num_return_sequences=options.num_candidates,
                         early_stopping=True, do_sample=False,
                         output_logits=True, return_dict_in_generate=True)  # fmt: skip
    log_probs = model.compute_transition_scores(
        out.sequences, out.logits, out.get("beam_indices"), normalize_logits=True
    )
    tokens = out.sequences[:, -log_probs.shape[1] :]
    ended = tokens == engine.tokenizer.eos_token_id
    kept = (ended.cumsum(1) - ended.int()) == 0  # up to and including the first end token
    scores = (log_probs * kept).sum(1) / kept.sum(1)
    return engine.tokenizer.batch_decode(tokens, skip_special_tokens=True), scores.tolist()


@pytest.mark.parametrize("name", ["t5", "llama"])
@pytest.mark.parametrize("beams, candidates", [(1, 1), (3, 2)])
def test_scores_match_generate_step_logits_in_any_chunks(
    name, beams, candidates, tiny_models, talking_t5, fixture_dir, monkeypatch
):
    path = talking_t5 if name == "t5" else tiny_models[name]
    options = GenerationOptions(max_new_tokens=12, num_beams=beams, num_candidates=candidates)
    engine = HFEngine(str(path), EngineSettings(options=options, precision="float32"))
    sources = fixture_sources(fixture_dir, 8)
    texts, expected = reference_scores(engine, sources)
    assert len({round(s, 3) for s in expected}) > 3, "scores that vary say something"
    for chunk_bytes in (hf.SCORE_CHUNK_BYTES, 1):  # one pass, then one row per pass
        monkeypatch.setattr(hf, "SCORE_CHUNK_BYTES", chunk_bytes)
        got = [c for g in engine.generate(sources) for c in g.candidates]
        assert [c.text for c in got] == texts
        assert [c.score for c in got] == pytest.approx(expected, abs=1e-5)


def vm_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())[1])


def test_scoring_memory_stays_near_one_chunk(tiny_models, monkeypatch):
    """A tiny T5 with a large vocabulary forced to many steps: the step logits that
    `output_logits` would hold dwarf the rest, so peak resident memory shows them."""
    rows, steps, vocab, chunk_bytes = 48, 64, 16000, 4 * 2**20
    model = build_t5(vocab, d_model=16, d_kv=8, d_ff=32, layers=1, heads=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["t5"])
    options = GenerationOptions(max_new_tokens=steps, min_new_tokens=steps)
    engine = HFEngine.from_model(model, tokenizer, options=options)
    monkeypatch.setattr(hf, "SCORE_CHUNK_BYTES", chunk_bytes)
    sources = [f"row {i} " * (i % 5 + 1) for i in range(rows)]
    engine.generate(sources[:8])  # warm-up: the allocator's and the threads' first buffers
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak, to now
    before = vm_kib("VmRSS")
    outputs = engine.generate(sources)
    grown = (vm_kib("VmHWM") - before) * 1024
    held = rows * steps * vocab * 4  # float32 step logits of the whole call
    print(f"\npeak grew {grown / 2**20:.0f} MiB; output_logits would hold {held / 2**20:.0f} MiB")
    assert [g.candidates[0].num_tokens for g in outputs] == [steps] * rows
    assert grown < held / 4  # one chunk's logits and logsumexp's temporaries: ~12 MiB
