"""CTranslate2: fast encoder-decoder inference (T5/UL2, BART) on CPU and CUDA.

The merged Hugging Face checkpoint is converted once and the conversion cached in
`cache_dir/.ct2-<hash>`. The hash covers the model's config.json, the names, sizes
and mtimes of its files, the weight quantization and the CTranslate2 version, so a
changed model or a different quantization converts anew. A conversion is written
to a temporary directory and renamed into place only when complete, under a file
lock, so a killed conversion is never reused and concurrent ranks convert once.

`precision` is `auto|int8|bfloat16|float32`; `auto` picks float32 on CPU and
bfloat16 on CUDA (never float16, which T5-family activations overflow). int8 is
opt-in: its agreement with float32 is measured in the README. Weights are stored
at the quantization the compute type runs at, so loading converts nothing.

Two converter defects are corrected (`_Converter`): CTranslate2 4.8.5 scales the T5
decoder output by d_model**-0.5 whenever `config.tie_word_embeddings` is true,
which transformers 5 reports for every T5 config; the scale must follow the
checkpoint (HF's `scale_decoder_outputs`), else beam search and sampling differ
from HF. On CUDA the library needs cuBLAS 12, preloaded from the
`nvidia-cublas-cu12` wheel (serve.engines.cuda_libs) on a CUDA 13 stack.

Sources are tokenized and truncated by the model's own tokenizer (as `hf` does, so
a cut source still ends in `</s>`), then decoded greedily (`num_beams == 1`) or with
CTranslate2's beam search. Decoder-only models belong to the vllm or hf engines.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from serve.engines.base import (
    PRECISIONS,
    Candidate,
    Capabilities,
    Engine,
    EngineSettings,
    Generation,
    GenerationOptions,
    check_precision,
)

logger = logging.getLogger(__name__)

CACHE_MARKER = "ct2_cache.json"
# Bumped when our conversion changes (3: the T5-family output scale follows HF), so
# conversions cached by an older revision are not reused.
CONVERTER_REVISION = 3
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "conala-ct2"
# Files beside the weights that never change what the conversion contains.
_IGNORED_FILES = {"source_template.json", "README.md", "generation_config.json"}


def resolve_device(device: str) -> tuple[str, int]:
    """`auto|cpu|cuda|cuda:N` -> CTranslate2's (device, device_index)."""
    name, _, index = device.partition(":")
    if name not in ("auto", "cpu", "cuda") or (index and not index.isdigit()):
        raise ValueError(f"Unsupported device for ctranslate2: {device} (choose auto, cpu, cuda)")
    if name != "cpu":
        from serve.engines.cuda_libs import preload_cublas12

        preload_cublas12()  # before CTranslate2 first needs cuBLAS
    import ctranslate2

    if name == "auto":
        name = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    return name, int(index or 0)


def resolve_compute_type(precision: str, device: str) -> str:
    """Map `auto|int8|bfloat16|float32` to a CTranslate2 compute type the device supports."""
    import ctranslate2

    check_precision("ctranslate2", precision, PRECISIONS)
    supported = ctranslate2.get_supported_compute_types(device)
    if device == "cuda":
        preferences = {
            "auto": ("bfloat16", "int8_bfloat16", "int8_float32", "float32"),
            "int8": ("int8_bfloat16", "int8_float32"),
            "bfloat16": ("bfloat16",),
            "float32": ("float32",),
        }
    else:
        preferences = {
            "auto": ("float32",),
            "int8": ("int8_float32",),
            "bfloat16": ("bfloat16",),
            "float32": ("float32",),
        }
    for choice in preferences[precision]:
        if choice in supported:
            return choice
    raise ValueError(
        f"--precision {precision} is not supported by ctranslate2 on {device} "
        f"(supported: {', '.join(sorted(supported))})"
    )


def conversion_key(model_path: str | Path, quantization: str) -> str:
    """Hash of what the conversion depends on: config, model files, quantization, CT2 version."""
    import ctranslate2

    model_path = Path(model_path)
    digest = hashlib.sha256()
    digest.update(
        f"ctranslate2={ctranslate2.__version__}\nquantization={quantization}\n"
        f"converter={CONVERTER_REVISION}\n".encode()
    )
    digest.update((model_path / "config.json").read_bytes())
    for path in sorted(model_path.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.name not in _IGNORED_FILES:
            stat = path.stat()
            digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def conversion_dir(model_path: str | Path, quantization: str, cache_dir: str | Path) -> Path:
    return Path(cache_dir) / f".ct2-{conversion_key(model_path, quantization)}"


def convert(
    model_path: str | Path,
    quantization: str,
    cache_dir: str | Path,
    *,
    trust_remote_code: bool = False,
) -> Path:
    """Return the cached conversion of `model_path`, converting it first if need be."""
    target = conversion_dir(model_path, quantization, cache_dir)
    if (target / CACHE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.with_name(target.name + ".lock")):
        if (target / CACHE_MARKER).is_file():  # another process converted it meanwhile
            return target
        # Without the marker, or as a temporary directory, it is a killed conversion
        # (a live one would hold the lock): free the space before converting.
        for stale in [target, *target.parent.glob(target.name + ".tmp-*")]:
            if stale.exists():
                logger.warning("removing incomplete conversion %s", stale)
                shutil.rmtree(stale)
        import ctranslate2

        started = time.monotonic()
        logger.info("converting %s to CTranslate2 (%s) in %s", model_path, quantization, target)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
        try:
            converter = _converter_class()(
                str(model_path), low_cpu_mem_usage=True, trust_remote_code=trust_remote_code
            )
            converter.convert(str(tmp), quantization=quantization, force=True)
            marker = {
                "model_path": str(Path(model_path).resolve()),
                "quantization": quantization,
                "ctranslate2": ctranslate2.__version__,
                "seconds": round(time.monotonic() - started, 1),
            }
            (tmp / CACHE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("converted in %.1fs", time.monotonic() - started)
    return target


def _converter_class():
    import ctranslate2

    class _Converter(ctranslate2.converters.TransformersConverter):
        """Scale T5-family decoder outputs exactly where HF does: T5 per the checkpoint's
        own tying (`scale_decoder_outputs`), umT5 per `tie_word_embeddings`, mT5 never."""

        def _load(self):
            spec = super()._load()
            config = AutoConfig.from_pretrained(
                self._model_name_or_path, trust_remote_code=self._trust_remote_code
            )
            scaled = {
                "t5": getattr(config, "scale_decoder_outputs", True),
                "mt5": False,
                "umt5": config.tie_word_embeddings,
            }.get(config.model_type, True)
            if not scaled:
                from ctranslate2.specs import model_spec

                spec.decoder.scale_outputs = model_spec.OPTIONAL
            return spec

    return _Converter


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


CPU_MAX_BATCH_TOKENS = 2048  # the default sub-batch on CPU (see CTranslate2Engine)


def cpu_split(threads: int, inter: int | None = None, intra: int | None = None) -> tuple:
    """`(inter_threads, intra_threads)` for `threads` CPU cores: unset (None) knobs split
    them; intra 0 is passed on (CTranslate2 then picks its own count)."""
    inter = inter or min(2, threads)
    return inter, max(1, threads // inter) if intra is None else intra


class CTranslate2Engine(Engine):
    """Tuning: `inter_threads` (batches run in parallel), `intra_threads` (threads per
    batch; 0 lets CTranslate2 pick), `max_batch_tokens` (> 0 splits a planner batch by
    tokens inside CTranslate2; 0 runs it whole). CPU defaults, from bench.translate's
    sweep on 2 cores (same float32 text): two workers on half the cores each
    (`cpu_split`; one-thread workers never wait on OpenMP barriers, which a loaded
    machine turns into 5x slowdowns) and sub-batches of CPU_MAX_BATCH_TOKENS that the
    two share (1.1-1.2x whole planner batches in two bench sweeps)."""

    def __init__(
        self,
        model_path: str,
        settings: EngineSettings | None = None,
        *,
        inter_threads: int | None = None,
        intra_threads: int | None = None,
        max_batch_tokens: int | None = None,
    ):
        import ctranslate2

        settings = settings or EngineSettings()
        device, device_index = resolve_device(settings.device)
        compute_type = resolve_compute_type(settings.precision, device)
        remote = settings.trust_remote_code
        model_dir = convert(
            model_path, compute_type, settings.cache_dir or DEFAULT_CACHE_DIR,
            trust_remote_code=remote,
        )  # fmt: skip
        threads = settings.cpu_threads or len(os.sched_getaffinity(0))
        inter, intra = cpu_split(threads, inter_threads, intra_threads)
        translator = ctranslate2.Translator(
            str(model_dir),
            device=device,
            device_index=device_index,
            compute_type=compute_type,
            intra_threads=intra if device == "cpu" else 1,
            inter_threads=inter if device == "cpu" else inter_threads or 1,
        )
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=remote)
        if max_batch_tokens is None:
            max_batch_tokens = CPU_MAX_BATCH_TOKENS if device == "cpu" else 0
        self._setup(translator, tokenizer, settings.options, max_batch_tokens)
        self.model_dir = model_dir

    def _setup(self, translator, tokenizer, options, max_batch_tokens: int) -> None:
        self.translator = translator
        self.tokenizer = tokenizer
        self.options = options or GenerationOptions()
        self.max_batch_tokens = max_batch_tokens
        device = translator.device
        self.compute_type = translator.compute_type
        self.capabilities = Capabilities(
            name="ctranslate2",
            encoder_decoder=True,
            truncates_sources=True,
            device=device if device == "cpu" else f"cuda:{translator.device_index[0]}",
        )

    def generate(self, sources: list[str]) -> list[Generation]:
        return self._collect(self._submit(sources, asynchronous=False))

    def generate_batches(self, batches):
        """Submit batch k+1 before collecting batch k, so tokenizing and detokenizing on
        the host overlap CTranslate2's work on the previous batch."""
        pending = None
        for batch in batches:
            try:
                submitted = self._submit(batch, asynchronous=True)
            except Exception as error:
                submitted = error
            if pending is not None:
                yield self._collect_or_error(pending)
            pending = submitted
        if pending is not None:
            yield self._collect_or_error(pending)

    def _submit(self, sources: list[str], *, asynchronous: bool):
        if not sources:
            return []
        limit = self.options.max_source_length
        # The model's own tokenizer truncates, so a cut source still ends in </s>.
        ids = self.tokenizer(sources, truncation=True, max_length=limit)["input_ids"]
        return self.translator.translate_batch(
            [self.tokenizer.convert_ids_to_tokens(row) for row in ids],
            beam_size=self.options.num_beams,
            num_hypotheses=self.options.num_candidates,
            return_scores=True,
            max_decoding_length=self.options.max_new_tokens,
            min_decoding_length=self.options.min_new_tokens,
            max_input_length=limit,
            max_batch_size=self.max_batch_tokens,
            batch_type="tokens",
            return_end_token=True,
            asynchronous=asynchronous,
            **self._hf_decoding,
        )

    @functools.cached_property
    def _hf_decoding(self) -> dict:
        """Decode as `hf` does. HF's generate() takes what GenerationOptions leaves unset
        from the model's generation_config, else HF's defaults; read them once."""
        from transformers import GenerationConfig

        model_path = self.tokenizer.name_or_path  # the model dir, for either constructor
        config = GenerationConfig()
        if os.path.isdir(model_path):  # never a hub lookup
            try:
                config = GenerationConfig.from_pretrained(model_path)
            except (OSError, ValueError):  # no generation_config.json: HF uses config.json
                with contextlib.suppress(OSError, ValueError):
                    config = GenerationConfig.from_model_config(
                        AutoConfig.from_pretrained(model_path)
                    )
        hf_defaults = {"length_penalty": 1.0, "repetition_penalty": 1.0,
                       "no_repeat_ngram_size": 0}  # fmt: skip
        hf = {
            key: default if getattr(config, key, None) is None else getattr(config, key)
            for key, default in hf_defaults.items()
        }
        # Both normalize a finished beam's log-probability by its length, end token
        # included (return_end_token=True), raised to length_penalty, and both stop
        # once num_beams hypotheses have finished: patience 1 here, early_stopping=True
        # in the hf engine. The same algorithm, so the engines agree on beams
        # (HF's default instead searches on until no running beam can win, which
        # CTranslate2 cannot express: 88-98% agreement on the demo model).
        return {
            "length_penalty": float(hf["length_penalty"]),
            "patience": 1.0,
            "repetition_penalty": float(hf["repetition_penalty"]),
            "no_repeat_ngram_size": int(hf["no_repeat_ngram_size"]),
        }

    def _collect(self, results) -> list[Generation]:
        outputs = []
        penalty = self._hf_decoding["length_penalty"]
        for result in results:
            if not hasattr(result, "hypotheses"):  # an AsyncTranslationResult
                result = result.result()
            candidates = []
            for hypothesis, score in zip(result.hypotheses, result.scores):
                ids = self.tokenizer.convert_tokens_to_ids(hypothesis)
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                count = len(hypothesis)  # end token included, as hf
                # CTranslate2 reports sum(log-probs) / count**length_penalty, greedy too
                # (measured against score_batch: equal within 1e-6 at 1.0 and 0.6).
                candidates.append(Candidate(text, count, score * count**penalty / max(count, 1)))
            outputs.append(Generation(tuple(candidates)))
        return outputs

    def _collect_or_error(self, submitted) -> list[Generation] | Exception:
        if isinstance(submitted, Exception):
            return submitted
        try:
            return self._collect(submitted)
        except Exception as error:
            return error

    def close(self) -> None:
        del self.translator
