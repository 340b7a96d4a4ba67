"""CTranslate2: fast encoder-decoder inference (T5/UL2, BART) on CPU and CUDA.

The merged Hugging Face checkpoint is converted once and the conversion cached in
`cache_dir/.ct2-<hash>`. The hash covers the model's config.json, the names, sizes
and mtimes of its files, the weight quantization and the CTranslate2 version, so a
changed model or a different quantization converts anew. A conversion is written
to a temporary directory and renamed into place only when complete, under a file
lock, so a killed conversion is never reused and concurrent ranks convert once.

`compute_type` is `auto|int8|bfloat16|float32`; `auto` picks int8 on CPU and
bfloat16 on CUDA (never float16, which T5-family activations overflow). Weights are
stored at the quantization the compute type runs at, so loading converts nothing.

Sources are tokenized and truncated by the model's own tokenizer (as `hf` does, so
a cut source still ends in `</s>`), then decoded greedily (`num_beams == 1`) or with
CTranslate2's beam search. Decoder-only models belong to the vllm or hf engines.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from serve.engines.base import Capabilities, Engine, GenerationOptions

logger = logging.getLogger(__name__)

COMPUTE_TYPES = ("auto", "int8", "bfloat16", "float32")
CACHE_MARKER = "ct2_cache.json"
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "conala-ct2"
# Files beside the weights that never change what the conversion contains.
_IGNORED_FILES = {"source_template.json", "README.md", "generation_config.json"}


def resolve_device(device: str) -> tuple[str, int]:
    """`auto|cpu|cuda|cuda:N` -> CTranslate2's (device, device_index)."""
    import ctranslate2

    if device == "auto":
        device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    name, _, index = device.partition(":")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"Unsupported device for ctranslate2: {device} (choose auto, cpu, cuda)")
    return name, int(index or 0)


def resolve_compute_type(compute_type: str, device: str) -> str:
    """Map `auto|int8|bfloat16|float32` to a CTranslate2 compute type the device supports."""
    import ctranslate2

    if compute_type not in COMPUTE_TYPES:
        raise ValueError(
            f"Unsupported compute_type: {compute_type} (choose {', '.join(COMPUTE_TYPES)})"
        )
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
            "auto": ("int8_float32", "float32"),
            "int8": ("int8_float32",),
            "bfloat16": ("bfloat16",),
            "float32": ("float32",),
        }
    for choice in preferences[compute_type]:
        if choice in supported:
            return choice
    raise ValueError(
        f"compute_type {compute_type} is not supported by ctranslate2 on {device} "
        f"(supported: {', '.join(sorted(supported))})"
    )


def conversion_key(model_path: str | Path, quantization: str) -> str:
    """Hash of what the conversion depends on: config, model files, quantization, CT2 version."""
    import ctranslate2

    model_path = Path(model_path)
    digest = hashlib.sha256()
    digest.update(f"ctranslate2={ctranslate2.__version__}\nquantization={quantization}\n".encode())
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
            converter = ctranslate2.converters.TransformersConverter(
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


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class CTranslate2Engine(Engine):
    def __init__(
        self,
        model_path: str,
        *,
        device: str = "auto",
        options: GenerationOptions | None = None,
        compute_type: str = "auto",
        cache_dir: str | Path | None = None,
        intra_threads: int | None = None,
        inter_threads: int = 1,
        max_batch_tokens: int = 0,
        trust_remote_code: bool = False,
    ):
        """`intra_threads`: threads per batch on CPU (default: every core this process may
        use); `inter_threads`: batches run in parallel; `max_batch_tokens` > 0 splits a
        given batch by tokens inside CTranslate2 (0: the planner's batch runs whole)."""
        import ctranslate2

        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        if not config.is_encoder_decoder:
            raise ValueError(
                f"the ctranslate2 engine runs encoder-decoder models only; {model_path} is "
                f"decoder-only ({config.model_type}): use --engine vllm or --engine hf"
            )
        self.device, device_index = resolve_device(device)
        self.compute_type = resolve_compute_type(compute_type, self.device)
        self.options = options or GenerationOptions()
        self.max_batch_tokens = max_batch_tokens
        self.model_dir = convert(
            model_path,
            self.compute_type,
            cache_dir or DEFAULT_CACHE_DIR,
            trust_remote_code=trust_remote_code,
        )
        if intra_threads is None:
            intra_threads = len(os.sched_getaffinity(0)) if self.device == "cpu" else 1
        self.translator = ctranslate2.Translator(
            str(self.model_dir),
            device=self.device,
            device_index=device_index,
            compute_type=self.compute_type,
            intra_threads=intra_threads,
            inter_threads=inter_threads,
        )
        self.tokenizer = AutoTokenizer.from_pretrained(
            model_path, trust_remote_code=trust_remote_code
        )
        self.capabilities = Capabilities(
            name="ctranslate2",
            encoder_decoder=True,
            truncates_sources=True,
            device=self.device if self.device == "cpu" else f"cuda:{device_index}",
        )
        self.generated_tokens = 0

    def count_tokens(self, sources: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(sources)["input_ids"]]

    def generate(self, sources: list[str]) -> list[str]:
        if not sources:
            return []
        limit = self.options.max_source_length
        ids = self.tokenizer(sources, truncation=True, max_length=limit)["input_ids"]
        tokens = [self.tokenizer.convert_ids_to_tokens(row) for row in ids]
        results = self.translator.translate_batch(
            tokens,
            beam_size=self.options.num_beams,
            max_decoding_length=self.options.max_new_tokens,
            min_decoding_length=self.options.min_new_tokens,
            max_input_length=limit,
            max_batch_size=self.max_batch_tokens,
            batch_type="tokens",
            return_end_token=True,
        )
        outputs = []
        for result in results:
            hypothesis = result.hypotheses[0]
            self.generated_tokens += len(hypothesis)  # the end token included, as hf counts
            output_ids = self.tokenizer.convert_tokens_to_ids(hypothesis)
            outputs.append(self.tokenizer.decode(output_ids, skip_special_tokens=True))
        return outputs

    def close(self) -> None:
        del self.translator
