"""vLLM: continuous-batching inference for decoder-only models (Llama and the like).

vLLM no longer runs encoder-decoder models other than Whisper, so T5/UL2 and BART
go to the ctranslate2 or hf engines. One `LLM` per process: vLLM starts its engine
core in a child process, so a script that builds this engine needs an
`if __name__ == "__main__":` guard.

Prompts are tokenized here with the model's Hugging Face tokenizer and handed to
vLLM as token ids, and outputs are decoded by the same tokenizer, so
`count_tokens` is exactly what the model sees and the text matches the hf engine
token for token. Decoding is greedy (temperature 0) or sampling, one request per
candidate with its own seed (`row_seed`), so a row's samples never depend on what it
was batched with; beam search is refused. A candidate's score is vLLM's cumulative
log-probability (raw: before temperature and top_p) over its tokens, divided by their
count.

vLLM schedules its own work (continuous batching, prefix cache), so it takes a
whole de-duplicated shard in one `generate` call (`whole_shard=True`) rather than
the planner's static batches, and keeps the device full while sequences finish at
different lengths.

A prompt is never cut (`truncates_sources=False`): the planner turns a source over
`max_source_length` into a per-row error. One that fits that limit but not
`max_model_len` makes `generate` raise before anything is queued, and the planner
bisects the call, so only that row fails.
"""

from __future__ import annotations

import logging
import os

from transformers import AutoConfig, AutoTokenizer

from serve.engines import check_generation
from serve.engines.base import (
    Candidate,
    Capabilities,
    Engine,
    EngineSettings,
    Generation,
    check_precision,
    row_seed,
)

logger = logging.getLogger(__name__)

CPU_KV_CACHE_BYTES = 2 << 30
_MAX_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def model_max_length(config) -> int | None:
    for key in _MAX_LENGTH_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _pin_cuda_device(index: int) -> None:
    """Run on GPU `index` (of those visible): vLLM takes its device from CUDA_VISIBLE_DEVICES."""
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(index + 1)]
    if not 0 <= index < len(ids):
        raise ValueError(f"cuda:{index} is not among the visible devices ({visible})")
    if ids == [ids[index]]:
        return
    if torch.cuda.is_initialized():
        raise RuntimeError(
            f"cuda:{index} for vLLM must be chosen before CUDA starts in this process; "
            f"set CUDA_VISIBLE_DEVICES={ids[index]} instead"
        )
    os.environ["CUDA_VISIBLE_DEVICES"] = ids[index]


class VLLMEngine(Engine):
    """Tuning: `max_model_len` (prompt + output tokens per sequence; default
    max_source_length + max_new_tokens, capped at the model's position limit),
    `gpu_memory_utilization` (on CPU vLLM reads it as the fraction of RAM to reserve,
    so there the KV cache is sized by `kv_cache_memory_bytes` instead: default
    `CPU_KV_CACHE_BYTES`, or `VLLM_CPU_KVCACHE_SPACE` GiB when that is set),
    `tensor_parallel_size`, `enforce_eager`, `seed`, and `llm_kwargs` for any further
    `vllm.LLM` argument. `cpu_threads` and `cache_dir` are unused."""

    def __init__(
        self,
        model_path: str,
        settings: EngineSettings | None = None,
        *,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        kv_cache_memory_bytes: int | None = None,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = False,
        seed: int = 0,
        llm_kwargs: dict | None = None,
    ):
        settings = settings or EngineSettings()
        device, precision = settings.device, settings.precision
        trust_remote_code = settings.trust_remote_code
        self.options = settings.options
        check_generation("vllm", self.options)  # also built directly, not via create_engine
        check_precision("vllm", precision, ("auto", "bfloat16", "float32"))
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        max_model_len = self._model_len(config, max_model_len)
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        kind, _, index = device.partition(":")
        if kind == "cuda" and index:
            _pin_cuda_device(int(index))
        from vllm import LLM
        from vllm.platforms import current_platform

        platform = current_platform.device_type  # "cuda", "cpu", ...
        if device != "auto" and kind != platform:
            raise ValueError(f"this vLLM build runs on {platform}, not {device}")
        auto_dtype = "bfloat16" if platform == "cuda" else "float32"
        dtype = auto_dtype if precision == "auto" else precision
        if (
            kv_cache_memory_bytes is None
            and platform == "cpu"
            and not os.environ.get("VLLM_CPU_KVCACHE_SPACE")
        ):
            kv_cache_memory_bytes = CPU_KV_CACHE_BYTES
        self.tokenizer = AutoTokenizer.from_pretrained(
            model_path, trust_remote_code=trust_remote_code
        )
        self.llm = LLM(
            model=str(model_path),
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_memory_bytes=kv_cache_memory_bytes,
            tensor_parallel_size=tensor_parallel_size,
            enforce_eager=enforce_eager,
            trust_remote_code=trust_remote_code,
            seed=seed,
            **(llm_kwargs or {}),
        )
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.dtype = dtype
        self.capabilities = Capabilities(
            name="vllm",
            encoder_decoder=False,
            truncates_sources=False,
            device=device if device != "auto" else platform,
            whole_shard=True,
        )

    def _model_len(self, config, requested: int | None) -> int:
        wanted = self.options.max_source_length + self.options.max_new_tokens
        if requested is not None:
            if requested < wanted:
                logger.warning(
                    "max_model_len=%d < max_source_length + max_new_tokens (%d): longer "
                    "prompts fail or get fewer new tokens",
                    requested,
                    wanted,
                )
            return requested
        limit = model_max_length(config)
        if limit is not None and limit < wanted:
            logger.warning(
                "max_model_len capped at the model's %d positions: a prompt near "
                "max_source_length=%d gets fewer than max_new_tokens=%d new tokens",
                limit,
                self.options.max_source_length,
                self.options.max_new_tokens,
            )
            return limit
        return wanted

    def generate(self, sources: list[str]) -> list[Generation]:
        if not sources:
            return []
        from vllm import SamplingParams

        ids = self.tokenizer(sources)["input_ids"]
        for row in ids:
            # vLLM needs room for at least one new token; check all before queuing any.
            if len(row) >= self.max_model_len:
                raise ValueError(
                    f"prompt has {len(row)} tokens; max_model_len={self.max_model_len} "
                    f"leaves no room to generate"
                )
        options, n = self.options, self.options.num_candidates
        common = {
            "max_tokens": options.max_new_tokens,
            "min_tokens": options.min_new_tokens,
            "detokenize": False,
            "logprobs": 0,  # the chosen token's log-probability only
        }
        if options.do_sample:
            sampling = {"temperature": options.temperature, "top_p": options.top_p}
            params = [
                SamplingParams(**common, **sampling, seed=row_seed(options.seed, source, k))
                for source in sources
                for k in range(n)
            ]
            ids = [row for row in ids for _ in range(n)]
        else:
            params = SamplingParams(**common, temperature=0.0)
        results = self.llm.generate(
            [{"prompt_token_ids": row} for row in ids], params, use_tqdm=False
        )
        candidates = []
        for result in results:
            output = result.outputs[0]
            token_ids = list(output.token_ids)
            text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
            score = output.cumulative_logprob / len(token_ids)
            candidates.append(Candidate(text, len(token_ids), score))
        return [Generation(tuple(candidates[i : i + n])) for i in range(0, len(candidates), n)]

    def close(self) -> None:
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            engine_core = getattr(llm.llm_engine, "engine_core", None)
            if engine_core is not None and hasattr(engine_core, "shutdown"):
                engine_core.shutdown()
            del llm
