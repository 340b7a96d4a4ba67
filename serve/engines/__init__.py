"""Engine registry: pick an engine for a model and build it.

    select_engine(model_path, "auto")    # -> "hf" | "ctranslate2" | "vllm"
    create_engine("auto", model_path, options=GenerationOptions(...), **engine_options)

`auto` sends decoder-only models to vllm and encoder-decoders to ctranslate2, each
when installed, and falls back to hf, which runs everything. Engine modules are
imported only when chosen (importing vllm alone takes seconds).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
from pathlib import Path

from serve.engines.base import Capabilities, Engine, GenerationOptions

logger = logging.getLogger(__name__)

ENGINES = ("hf", "ctranslate2", "vllm")
CHOICES = ("auto", *ENGINES)
_CLASSES = {
    "hf": ("serve.engines.hf", "HFEngine"),
    "ctranslate2": ("serve.engines.ctranslate2", "CTranslate2Engine"),
    "vllm": ("serve.engines.vllm", "VLLMEngine"),
}
# The third-party package each engine needs beyond transformers.
_REQUIRES = {"ctranslate2": "ctranslate2", "vllm": "vllm"}
# Engines able to run each model family, best first.
_RUNS = {True: ("ctranslate2", "hf"), False: ("vllm", "hf")}

__all__ = [
    "CHOICES",
    "ENGINES",
    "Capabilities",
    "Engine",
    "GenerationOptions",
    "create_engine",
    "engine_available",
    "engine_class",
    "is_encoder_decoder",
    "select_engine",
]


def engine_available(name: str) -> bool:
    """Whether the engine's backend is installed (checked without importing it)."""
    package = _REQUIRES.get(name)
    return package is None or importlib.util.find_spec(package) is not None


def is_encoder_decoder(model_path: str | Path, *, trust_remote_code: bool = False) -> bool:
    path = Path(model_path)
    if not path.exists():
        raise FileNotFoundError(f"model path not found: {path}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in model directory {path}")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    return bool(config.is_encoder_decoder)


def select_engine(
    model_path: str | Path, name: str = "auto", *, trust_remote_code: bool = False
) -> str:
    """The engine `name` resolves to for this model, or a ValueError saying why none can."""
    if name not in CHOICES:
        raise ValueError(f"Unsupported engine: {name} (choose from {', '.join(CHOICES)})")
    encoder_decoder = is_encoder_decoder(model_path, trust_remote_code=trust_remote_code)
    runs = _RUNS[encoder_decoder]
    family = "encoder-decoder" if encoder_decoder else "decoder-only"
    if name == "auto":
        return next(engine for engine in runs if engine_available(engine))
    if name not in runs:
        reason = (
            "vLLM has dropped encoder-decoder models (other than Whisper)"
            if name == "vllm"
            else f"the {name} engine runs encoder-decoder models only"
        )
        raise ValueError(
            f"--engine {name} cannot run {model_path}, a {family} model: {reason}; "
            f"use {' or '.join(runs)}"
        )
    if not engine_available(name):
        raise ValueError(
            f"--engine {name} needs the `{_REQUIRES[name]}` package, which is not installed; "
            f"use {' or '.join(e for e in runs if e != name and engine_available(e))}"
        )
    return name


def engine_class(name: str) -> type[Engine]:
    if name not in _CLASSES:
        raise ValueError(f"Unsupported engine: {name} (choose from {', '.join(ENGINES)})")
    module, cls = _CLASSES[name]
    return getattr(importlib.import_module(module), cls)


def create_engine(name: str, model_path: str | Path, **kwargs) -> Engine:
    """Build engine `name` (or the `auto` choice) for `model_path`.

    Keyword arguments are the engine's (`device`, `options`, then engine-specific ones
    such as `dtype` or `compute_type`). A value of None means "the engine's default"
    and is dropped. Under `auto`, options the chosen engine lacks are dropped with a
    warning, since the caller could not know which engine it would get; naming an
    engine makes them a TypeError.
    """
    chosen = select_engine(
        model_path, name, trust_remote_code=bool(kwargs.get("trust_remote_code"))
    )
    cls = engine_class(chosen)
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "model_path"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        if name != "auto":
            raise TypeError(
                f"the {chosen} engine has no option(s) {', '.join(unknown)} "
                f"(it takes {', '.join(sorted(accepted))})"
            )
        logger.warning("engine %s (auto) ignores option(s) %s", chosen, ", ".join(unknown))
        kwargs = {key: value for key, value in kwargs.items() if key in accepted}
    logger.info("engine: %s%s", chosen, " (auto)" if name == "auto" else "")
    return cls(str(model_path), **kwargs)
