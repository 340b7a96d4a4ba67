"""CTranslate2's CPU precision default and its beam search against hf (issue 11, items 10-11).

- CPU `auto` is float32: int8 is opt-in, because on the demo's trained T5 int8 greedy
  output is identical to float32 on only 70-80% of mined rows (scripts/measure_agreement
  measures it; the README quotes the number).
- The T5 output scale follows the checkpoint: transformers 5 reports
  `tie_word_embeddings=True` for every T5, and CTranslate2's converter then scales the
  decoder output by d_model**-0.5, which HF does only when `scale_decoder_outputs`.
  Greedy decoding cannot see a constant logit scale; log-probabilities and beams can.
- Beam search is the same algorithm in both engines: the length penalty comes from the
  model's generation_config (HF's default where unset), and both stop once num_beams
  hypotheses have finished (hf early_stopping=True, CTranslate2 patience 1).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from serve.engines.base import EngineSettings, GenerationOptions

REPO = Path(__file__).resolve().parents[2]
INT8_ROWS = 200
# 200 rows: on 80, which near-ties a training run leaves varies the share too much.
BEAM_ROWS = 200
BEAMS = 4
MIN_BEAM_AGREEMENT = 0.97
# Exact greedy agreement depends on the CPU's int8 kernels: 80.5%, 79.0% and 69.5% of 200
# rows on an Intel Xeon (AVX-512), 25.0%, 29.0% and 34.5% on an AMD EPYC without AVX-512
# (three trainings each; the CPU training is not bit-reproducible). Broken int8 (empty or
# unrelated outputs) sits near 0%, which is what this bound catches.
MIN_INT8_AGREEMENT = 0.15


def _measure_module():
    # By path: tests/scripts is also a `scripts` directory on sys.path under pytest.
    spec = importlib.util.spec_from_file_location(
        "measure_agreement", REPO / "scripts" / "measure_agreement.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


measure = _measure_module()


def outputs(spec: str, model: Path, sources: list[str], cache: Path, **options) -> list[str]:
    return measure.run_side(spec, model, sources, cache_dir=cache, **options)["outputs"]


# --------------------------------------------------------------------------- precision


def test_cpu_auto_precision_is_float32(tiny_models, tmp_path):
    from serve.engines.ctranslate2 import CTranslate2Engine, resolve_compute_type

    assert resolve_compute_type("auto", "cpu") == "float32"
    assert resolve_compute_type("int8", "cpu") == "int8_float32"
    engine = CTranslate2Engine(
        str(tiny_models["t5"]), EngineSettings(device="cpu", cache_dir=tmp_path)
    )
    assert engine.compute_type == "float32"
    assert json.loads(next(tmp_path.glob(".ct2-*/ct2_cache.json")).read_text())["quantization"] == (
        "float32"
    )
    engine.close()


@pytest.mark.slow
def test_int8_agreement_is_measured_on_merged_t5(merged_models, fixture_dir, tmp_path):
    """int8 vs float32 greedy on the trained model: measured, printed, sane."""
    model = merged_models["t5"]
    report = measure.measure(
        model,
        fixture_dir,
        left="ctranslate2:int8",
        right="ctranslate2:float32",
        rows=INT8_ROWS,
        cache_dir=tmp_path,
    )
    print(
        f"\nctranslate2 int8 vs float32 greedy on merged T5: {report['identical']}/"
        f"{report['rows']} identical ({report['agreement']:.1%}); "
        f"empty outputs {report['empty']}"
    )
    assert report["left"]["resolved"] == "int8_float32"
    assert report["right"]["resolved"] == "float32"
    assert report["distinct"][1] > 1, "a model that says one thing tests little"
    # The failure int8 showed on a random model: empty strings where float32 has text.
    assert report["empty"][0] <= report["empty"][1]
    assert report["agreement"] >= MIN_INT8_AGREEMENT, report["mismatches"]


# --------------------------------------------------------------------------- output scale


@pytest.mark.slow
def test_t5_output_scale_follows_checkpoint(merged_models, fixture_dir, tmp_path):
    """CTranslate2's log-probabilities equal HF's for the same target tokens; the stock
    converter's (scaled) ones do not."""
    import ctranslate2
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

    from serve.engines.ctranslate2 import CTranslate2Engine

    model = merged_models["t5"]
    # The case the fix is for: an untied head saved as such, reported as tied.
    assert json.loads((model / "config.json").read_text())["tie_word_embeddings"] is False
    config = AutoConfig.from_pretrained(model)
    assert config.tie_word_embeddings is True and config.scale_decoder_outputs is False

    sources = measure.fixture_sources(model, fixture_dir, 8)
    tokenizer = AutoTokenizer.from_pretrained(model)
    hf = AutoModelForSeq2SeqLM.from_pretrained(model, dtype=torch.float32).eval()
    batch = tokenizer(sources, padding=True, return_tensors="pt")
    with torch.inference_mode():
        generated = hf.generate(**batch, max_new_tokens=16, do_sample=False)[:, 1:]
    # Targets end before the first </s>; both sides score them followed by </s>
    # (CTranslate2's score_batch appends it).
    targets = []
    for row in generated.tolist():
        end = row.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in row else len(row)
        targets.append(row[:end])
    expected = []
    with torch.inference_mode():
        for source, target in zip(sources, targets):
            encoded = tokenizer([source], return_tensors="pt")
            labels = torch.tensor([[*target, tokenizer.eos_token_id]])
            log_probs = hf(**encoded, labels=labels).logits.log_softmax(-1)[0]
            expected.append(log_probs.gather(1, labels[0][:, None])[:, 0].tolist())

    def scores(translator) -> list[list[float]]:
        results = translator.score_batch(
            [tokenizer.convert_ids_to_tokens(tokenizer(s).input_ids) for s in sources],
            [tokenizer.convert_ids_to_tokens(t) for t in targets],
        )
        return [r.log_probs for r in results]

    engine = CTranslate2Engine(
        str(model), EngineSettings(device="cpu", precision="float32", cache_dir=tmp_path)
    )
    for want, got in zip(expected, scores(engine.translator)):
        assert got == pytest.approx(want, abs=1e-3)
    engine.close()

    stock_dir = tmp_path / "stock"
    ctranslate2.converters.TransformersConverter(str(model)).convert(
        str(stock_dir), quantization="float32"
    )
    stock = ctranslate2.Translator(str(stock_dir), device="cpu", compute_type="float32")
    off = [abs(sum(g) - sum(w)) for w, g in zip(expected, scores(stock))]
    assert max(off) > 0.1, "the stock converter no longer scales: the fix may be obsolete"


# --------------------------------------------------------------------------- beams


@pytest.mark.slow
def test_beam_search_matches_hf_on_merged_t5(merged_models, fixture_dir, tmp_path):
    model = merged_models["t5"]
    sources = measure.fixture_sources(model, fixture_dir, BEAM_ROWS)
    for beams, minimum in ((BEAMS, MIN_BEAM_AGREEMENT), (1, 1.0)):
        hf = outputs("hf:float32", model, sources, tmp_path, num_beams=beams)
        ct2 = outputs("ctranslate2:float32", model, sources, tmp_path, num_beams=beams)
        report = measure.compare(hf, ct2)
        print(
            f"\nhf vs ctranslate2, {beams} beam(s), merged T5: {report['identical']}/"
            f"{report['rows']} identical ({report['agreement']:.1%})"
        )
        assert report["agreement"] >= minimum, report["mismatches"]
        assert report["distinct"][0] > 1, "a model that says one thing tests little"


@pytest.mark.slow
def test_beam_settings_come_from_generation_config(merged_models, fixture_dir, tmp_path):
    """A generation_config asking for early stopping and a length penalty: both engines
    follow its length penalty, and still run the same search."""
    from transformers import GenerationConfig

    from serve.engines.ctranslate2 import CTranslate2Engine

    model = tmp_path / "model"
    shutil.copytree(merged_models["t5"], model)
    config = GenerationConfig.from_pretrained(model)
    # num_beams too: transformers refuses to save beam settings without it.
    config.num_beams, config.early_stopping, config.length_penalty = BEAMS, True, 0.6
    config.save_pretrained(model)

    engine = CTranslate2Engine(
        str(model),
        EngineSettings(
            device="cpu",
            precision="float32",
            cache_dir=tmp_path / "cache",
            options=GenerationOptions(num_beams=BEAMS),
        ),
    )
    engine.generate(["x = 1"])
    assert engine._hf_decoding["patience"] == 1.0
    assert engine._hf_decoding["length_penalty"] == pytest.approx(0.6)
    engine.close()

    sources = measure.fixture_sources(model, fixture_dir, 40)
    hf = outputs("hf:float32", model, sources, tmp_path / "cache", num_beams=BEAMS)
    ct2 = outputs("ctranslate2:float32", model, sources, tmp_path / "cache", num_beams=BEAMS)
    report = measure.compare(hf, ct2)
    print(f"\nearly stopping, length penalty 0.6: {report['identical']}/{report['rows']}")
    assert report["agreement"] >= 0.95, report["mismatches"]
