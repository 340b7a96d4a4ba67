"""Hugging Face `generate`: runs every architecture, the fallback for all of them.

bf16 on GPU and fp32 on CPU by default; never fp16, which T5-family activations
overflow. On CUDA OOM a batch is halved and retried, and the size that worked
becomes the ceiling for later batches, so one long batch doesn't kill the job.
"""

from __future__ import annotations

import logging

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from serve.engines.base import (
    Capabilities,
    Engine,
    EngineSettings,
    Generation,
    GenerationOptions,
    check_precision,
)

logger = logging.getLogger(__name__)
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(precision: str, device: str) -> torch.dtype:
    check_precision("hf", precision, ("auto", *DTYPES))
    if precision == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return DTYPES[precision]


def load_model(path: str, *, dtype: torch.dtype, trust_remote_code: bool = False):
    """Load weights from safetensors only, with the class the config calls for."""
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    return cls.from_pretrained(
        path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
    )


def _generated_length(ids: list[int], eos: int | None) -> int:
    """Tokens up to and including the first end token (the padding after it excluded);
    a pad id the model chose to generate counts like any other token."""
    return ids.index(eos) + 1 if eos is not None and eos in ids else len(ids)


class HFEngine(Engine):
    """`cpu_threads` sets torch's intra-op threads on CPU; `cache_dir` is unused."""

    def __init__(self, model_path: str, settings: EngineSettings | None = None):
        settings = settings or EngineSettings()
        device = resolve_device(settings.device)
        if settings.cpu_threads and device == "cpu":
            torch.set_num_threads(settings.cpu_threads)
        remote = settings.trust_remote_code
        dtype = resolve_dtype(settings.precision, device)
        model = load_model(model_path, dtype=dtype, trust_remote_code=remote)
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=remote)
        self._setup(model.to(device), tokenizer, settings.options)

    @classmethod
    def from_model(cls, model, tokenizer, *, options: GenerationOptions | None = None) -> HFEngine:
        """Wrap an already loaded model (used for validation metrics after training)."""
        engine = cls.__new__(cls)
        engine._setup(model, tokenizer, options or GenerationOptions())
        return engine

    def _setup(self, model, tokenizer, options: GenerationOptions) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.options = options
        self.encoder_decoder = bool(model.config.is_encoder_decoder)
        if not self.encoder_decoder:
            # Left padding keeps every prompt's last token next to its first new one.
            tokenizer.padding_side = "left"
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
        self.capabilities = Capabilities(
            name="hf",
            encoder_decoder=self.encoder_decoder,
            truncates_sources=self.encoder_decoder,
            device=str(model.device),
        )
        self.max_batch: int | None = None  # set by the OOM back-off

    def generate(self, sources: list[str]) -> list[Generation]:
        limit = self.max_batch or len(sources)
        outputs: list[Generation] = []
        for start in range(0, len(sources), limit):
            outputs += self._generate_with_backoff(sources[start : start + limit])
        return outputs

    def _generate_with_backoff(self, sources: list[str]) -> list[Generation]:
        try:
            return self._generate(sources)
        except torch.cuda.OutOfMemoryError:
            if len(sources) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(sources) // 2
            self.max_batch = half
            logger.warning("CUDA out of memory at batch %d; retrying at %d", len(sources), half)
            return self._generate_with_backoff(sources[:half]) + self._generate_with_backoff(
                sources[half:]
            )

    @torch.inference_mode()
    def _generate(self, sources: list[str]) -> list[Generation]:
        batch = self.tokenizer(
            sources,
            padding=True,
            truncation=True,
            max_length=self.options.max_source_length,
            return_tensors="pt",
        ).to(self.model.device)
        output = self.model.generate(
            **batch,
            max_new_tokens=self.options.max_new_tokens,
            min_new_tokens=self.options.min_new_tokens,
            num_beams=self.options.num_beams,
            # Beams stop once num_beams hypotheses have finished, as CTranslate2's do
            # (patience 1), so the two engines run the same search and agree.
            early_stopping=True,
            do_sample=False,
        )
        # Keep what was generated: not the decoder start token, not a causal LM's prompt.
        start = 1 if self.encoder_decoder else batch["input_ids"].shape[1]
        output = output[:, start:]
        texts = self.tokenizer.batch_decode(output, skip_special_tokens=True)
        counts = [_generated_length(row, self.tokenizer.eos_token_id) for row in output.tolist()]
        return [Generation(text, count) for text, count in zip(texts, counts)]

    def close(self) -> None:
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
