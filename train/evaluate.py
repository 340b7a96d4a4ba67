"""Validation metrics from generation: sacreBLEU, chrF and exact match.

Generation never runs inside the sharded ZeRO-3 model: `generate` there needs
`synced_gpus` and gathers every layer's weights at every decoding step, which is
slow enough to look like a hang. Instead, after training, rank 0 loads an
unsharded copy of the base model with the saved adapter merged in and generates
through the same HF engine translate-mined uses. Other ranks wait at a barrier.
"""

from __future__ import annotations

import sacrebleu
from peft import PeftModel

from serve.engines.base import GenerationOptions
from serve.engines.hf import HFEngine, load_model, resolve_device, resolve_dtype
from serve.planner import generate_rows


def generation_metrics(predictions: list[str], references: list[str]) -> dict:
    exact = sum(p.strip() == r.strip() for p, r in zip(predictions, references))
    return {
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
        "exact_match": exact / len(references) if references else 0.0,
        "samples": len(references),
    }


def evaluate_adapter(
    base: str,
    adapter_dir: str,
    tokenizer,
    sources: list[str],
    references: list[str],
    *,
    options: GenerationOptions,
    batch_tokens: int = 16384,
    trust_remote_code: bool = False,
) -> tuple[dict, list[str]]:
    """Return (metrics, predictions) for `base` + adapter on the given pairs."""
    device = resolve_device("auto")
    model = load_model(
        base, dtype=resolve_dtype("auto", device), trust_remote_code=trust_remote_code
    )
    model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload().to(device)
    engine = HFEngine.from_model(model, tokenizer, options=options)
    result = generate_rows(engine, sources, batch_tokens=batch_tokens, max_batch_size=64)
    predictions = [output or "" for output in result.outputs]
    return generation_metrics(predictions, references), predictions
