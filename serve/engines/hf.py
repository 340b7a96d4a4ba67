"""Hugging Face `generate`: runs every architecture, the fallback for all of them.

bf16 on GPU and fp32 on CPU by default; never fp16, which T5-family activations
overflow. On CUDA OOM a batch is halved and retried, and the size that worked
becomes the ceiling for later batches, so one long batch doesn't kill the job.

Scores are the log-softmax of the model's own distribution, before any processor, at
each generated token: from the step logits `generate` returns while they fit in
SCORE_CHUNK_BYTES, else from a teacher-forced pass over the kept hypotheses after
`generate`, in row chunks of that size. Sampling draws by Gumbel-max with one torch generator per
row (`SeededSampler`), so a row's draws depend on its seed alone, not on its batch.
"""

from __future__ import annotations

import inspect
import logging

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)
from transformers.modeling_outputs import BaseModelOutput

from serve.engines.base import (
    Candidate,
    Capabilities,
    Engine,
    EngineSettings,
    Generation,
    GenerationOptions,
    check_precision,
    row_seed,
)

logger = logging.getLogger(__name__)
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
# float32 logits kept for scoring at once (logsumexp's temporaries take twice as much
# again). `output_logits` holds steps x rows x vocab floats until generate returns (8 GB
# at 256 rows, 64 steps and a 128K vocabulary), so larger calls rescore after generate:
# a second forward pass, 18-40% more time on CPU for tiny models.
SCORE_CHUNK_BYTES = 256 * 2**20


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


def token_log_probs(logits: tuple, tokens: torch.Tensor, beam_indices) -> torch.Tensor:
    """Log-probability of each generated token under the raw logits of its own beam.

    `logits[t]` holds one row per live beam at step t; `beam_indices[i, t]` names the
    beam hypothesis i came from there (-1 once it has ended). Greedy rows are their own
    beams. One step at a time: no second (steps x rows x vocab) stack is built.
    """
    steps = min(len(logits), tokens.shape[1])
    out = torch.zeros(tokens.shape[0], steps, device=tokens.device)
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    for t in range(steps):
        beams = rows if beam_indices is None else beam_indices[:, t].clamp(min=0)
        step = logits[t][beams].float()
        out[:, t] = step.gather(1, tokens[:, t : t + 1])[:, 0] - step.logsumexp(-1)
    return out


class SeededSampler(LogitsProcessor):
    """Sampling as a logits processor for greedy search: temperature, top_p, then
    Gumbel-max (argmax of scores + Gumbel noise samples softmax(scores)), the noise drawn
    from a generator per row seeded by `row_seed`, so batch composition never matters."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device):
        self.warpers = [TemperatureLogitsWarper(temperature)] if temperature != 1 else []
        self.warpers += [TopPLogitsWarper(top_p)] if top_p < 1 else []
        self.generators = [torch.Generator(device).manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids, scores):
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        noise = torch.stack(
            [torch.empty_like(scores[0]).exponential_(generator=g) for g in self.generators]
        )
        return scores - noise.log()  # -log(Exp(1)) is Gumbel(0, 1)


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
        self.forward_args = set(inspect.signature(model.forward).parameters)
        self.vocab_size = model.config.get_text_config().vocab_size
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
        options, n = self.options, self.options.num_candidates
        sampler = None
        if options.do_sample:  # one input per candidate, each with its own generator
            seeds = [row_seed(options.seed, s, k) for s in sources for k in range(n)]
            sources = [s for s in sources for _ in range(n)]
        batch = self.tokenizer(
            sources,
            padding=True,
            truncation=True,
            max_length=options.max_source_length,
            return_tensors="pt",
        ).to(self.model.device)
        if options.do_sample:
            device = self.model.device
            sampler = SeededSampler(seeds, options.temperature, options.top_p, device)
        # Encoded once, for generate and for scoring. generate gets its own wrapper because
        # it expands that in place for beams; `encoded` keeps one row per source.
        encoded, reused = None, {}
        if self.encoder_decoder:
            encoded = self.model.get_encoder()(**batch).last_hidden_state
            reused = {"encoder_outputs": BaseModelOutput(encoded)}
        held = len(sources) * options.num_beams * options.max_new_tokens * self.vocab_size * 4
        keep_logits = held <= SCORE_CHUNK_BYTES
        output = self.model.generate(
            **batch,
            **reused,
            max_new_tokens=options.max_new_tokens,
            min_new_tokens=options.min_new_tokens,
            num_beams=options.num_beams,
            num_return_sequences=1 if options.do_sample else n,
            # Beams stop once num_beams hypotheses have finished, as CTranslate2's do
            # (patience 1), so the two engines run the same search and agree.
            early_stopping=True,
            do_sample=False,
            logits_processor=LogitsProcessorList([sampler] if sampler else []),
            return_dict_in_generate=True,
            output_logits=keep_logits,
        )
        # Keep what was generated: not the decoder start token, not a causal LM's prompt.
        sequences = output.sequences
        start = 1 if self.encoder_decoder else batch["input_ids"].shape[1]
        tokens = sequences[:, start:]
        if keep_logits:
            log_probs = token_log_probs(output.logits, tokens, output.get("beam_indices"))
        else:
            log_probs = self._token_log_probs(sequences, tokens.shape[1], batch, encoded)
        log_probs = log_probs.tolist()
        texts = self.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        candidates = []
        for text, row, row_log_probs in zip(texts, tokens.tolist(), log_probs):
            count = _generated_length(row, self.tokenizer.eos_token_id)
            candidates.append(Candidate(text, count, sum(row_log_probs[:count]) / count))
        return [Generation(tuple(candidates[i : i + n])) for i in range(0, len(candidates), n)]

    def _token_log_probs(self, sequences, steps: int, batch, encoded) -> torch.Tensor:
        """Log-probability of each of the last `steps` tokens of `sequences` under the raw
        logits of the model fed the tokens before it: the distribution `generate` drew from,
        before any processor. Rows go in chunks of at most SCORE_CHUNK_BYTES of logits."""
        chunk = max(1, SCORE_CHUNK_BYTES // (4 * steps * self.vocab_size))
        per_source = len(sequences) // len(batch["input_ids"])  # beams/candidates per source
        out = []
        for rows in torch.arange(len(sequences), device=sequences.device).split(chunk):
            inputs, sources = sequences[rows, :-1], rows // per_source
            mask = batch["attention_mask"][sources]
            if self.encoder_decoder:
                hidden = BaseModelOutput(encoded[sources])
                args = {"decoder_input_ids": inputs, "encoder_outputs": hidden}
            else:  # the prompt's mask, then its new tokens; positions as generate counts them
                mask = torch.cat([mask, mask.new_ones(len(rows), steps - 1)], dim=1)
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                args = {"input_ids": inputs, "position_ids": positions, "logits_to_keep": steps}
                # Only what forward takes, as generate does (no logits_to_keep: the prompt's
                # logits are computed too, over the chunk budget).
                args = {k: v for k, v in args.items() if k in self.forward_args}
            logits = self.model(**args, attention_mask=mask, use_cache=False).logits
            logits, targets = logits[:, -steps:].float(), sequences[rows, -steps:]
            out.append(logits.gather(-1, targets[..., None])[..., 0] - logits.logsumexp(-1))
        return torch.cat(out)

    def close(self) -> None:
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
