"""Engine registry: pick an engine for a model and build it.

    select_engine(model_path, "auto", device="cpu")   # -> "hf" | "ctranslate2" | "vllm"
    create_engine("auto", model_path, device="cpu", options=GenerationOptions(...))

`auto` sends decoder-only models to vllm and encoder-decoders to ctranslate2 when
that engine can run on the device (serve.engines.probe, cached: installed, and its
native libraries load there) and runs the decoding mode asked for (no sampling on
ctranslate2, no beams on vllm), and falls back to hf, which runs everything, with
one warning that names the fix when the device was the reason. A named engine that
cannot run is refused before any work. Engine modules are imported only when chosen
(vllm alone takes seconds).
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import fields
from pathlib import Path

from common.cli import UserError
from serve.engines.base import (
    Capabilities,
    Engine,
    EngineSettings,
    Generation,
    GenerationOptions,
)

logger = logging.getLogger(__name__)

ENGINES = ("hf", "ctranslate2", "vllm")
CHOICES = ("auto", *ENGINES)
_CLASSES = {
    "hf": ("serve.engines.hf", "HFEngine"),
    "ctranslate2": ("serve.engines.ctranslate2", "CTranslate2Engine"),
    "vllm": ("serve.engines.vllm", "VLLMEngine"),
}
# Engines able to run each model family (keyed by "is encoder-decoder"), best first.
_RUNS = {True: ("ctranslate2", "hf"), False: ("vllm", "hf")}
# Decoding modes (GenerationOptions.mode) each engine runs. CTranslate2 samples from one
# random generator shared by a whole batch, so its samples could not be reproduced row
# by row; vLLM has no beam search in its generate API.
_MODES = {
    "hf": ("greedy", "beams", "sample"),
    "ctranslate2": ("greedy", "beams"),
    "vllm": ("greedy", "sample"),
}
_MODE_NAMES = {"beams": "beam search (--num_beams > 1)", "sample": "seeded sampling (--do_sample)"}

__all__ = [
    "CHOICES",
    "ENGINES",
    "Capabilities",
    "Engine",
    "EngineSettings",
    "Generation",
    "GenerationOptions",
    "check_generation",
    "create_engine",
    "engine_class",
    "is_encoder_decoder",
    "select_engine",
]


def is_encoder_decoder(model_path: str | Path, *, trust_remote_code: bool = False) -> bool:
    """Read the model's family from its config, refusing what is not a merged model."""
    path = Path(model_path)
    if not path.exists():
        raise FileNotFoundError(f"--model {path}: not found")
    if not (path / "config.json").is_file():
        if (path / "adapter_config.json").is_file():
            raise UserError(
                f"--model {path} is a LoRA adapter, not a model: merge it first with "
                f"`make merge ADAPTER={path} OUT=<merged dir>` and pass the merged dir"
            )
        raise UserError(f"--model {path}: no config.json; expected a merged model directory")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"--model {path}/config.json is not valid JSON ({err})") from err
    if "is_encoder_decoder" in config:
        return bool(config["is_encoder_decoder"])
    from transformers import AutoConfig

    return bool(
        AutoConfig.from_pretrained(
            str(path), trust_remote_code=trust_remote_code
        ).is_encoder_decoder
    )


def select_engine(
    model_path: str | Path,
    name: str = "auto",
    *,
    device: str = "auto",
    trust_remote_code: bool = False,
    mode: str = "greedy",
) -> str:
    """The engine `name` resolves to for this model on `device` and decoding `mode`
    (GenerationOptions.mode), or a refusal saying why."""
    if name not in CHOICES:
        raise UserError(f"Unsupported engine: {name} (choose from {', '.join(CHOICES)})")
    encoder_decoder = is_encoder_decoder(model_path, trust_remote_code=trust_remote_code)
    runs = _RUNS[encoder_decoder]
    family = "encoder-decoder" if encoder_decoder else "decoder-only"
    if name not in ("auto", *runs):
        reason = (
            "vLLM has dropped encoder-decoder models (other than Whisper)"
            if name == "vllm"
            else f"the {name} engine runs encoder-decoder models only"
        )
        raise UserError(
            f"--engine {name} cannot run {model_path}, a {family} model: {reason}; "
            f"use {' or '.join(runs)}"
        )
    from common.dist import local_device
    from serve.engines.probe import engine_probe

    device = local_device(device)
    # hf runs every mode, so auto always keeps a candidate; a named engine is checked by
    # check_generation, which names one that can.
    able = [engine for engine in runs if mode in _MODES[engine]]
    for candidate in able if name == "auto" else (name,):
        probe = engine_probe(candidate, device)
        if probe.runs:
            return candidate
        fix = f" Fix: {probe.fix}" if probe.fix else ""
        if name != "auto":
            raise UserError(f"--engine {name} cannot run on {device}: {probe.reason}.{fix}")
        if candidate != "hf":
            logger.warning(
                "engine %s cannot run on %s (%s); using hf.%s", candidate, device, probe.reason, fix
            )
    raise UserError(f"no engine can run {model_path} on {device}; see `make doctor`")


def check_generation(engine: str, options: GenerationOptions) -> None:
    """Refuse, before any work, a decoding mode `engine` cannot run, naming one that can."""
    if options.mode in _MODES[engine]:
        return
    family = _RUNS[True] if engine == "ctranslate2" else _RUNS[False]
    able = [name for name in family if options.mode in _MODES[name]]
    raise UserError(
        f"the {engine} engine has no {_MODE_NAMES[options.mode]}; use --engine {' or '.join(able)}"
    )


def engine_class(name: str) -> type[Engine]:
    if name not in _CLASSES:
        raise UserError(f"Unsupported engine: {name} (choose from {', '.join(ENGINES)})")
    module, cls = _CLASSES[name]
    return getattr(importlib.import_module(module), cls)


def create_engine(name: str, model_path: str | Path, **kwargs) -> Engine:
    """Build engine `name` (or the `auto` choice) for `model_path`.

    Keyword arguments are the fields of `EngineSettings` (`device`, `options`,
    `precision`, `cpu_threads`, `cache_dir`, `trust_remote_code`) plus, for a named
    engine, its tuning knobs. None means "the default".
    """
    shared = {f.name for f in fields(EngineSettings)}
    given = {key: value for key, value in kwargs.items() if value is not None}
    settings = EngineSettings(**{k: v for k, v in given.items() if k in shared})
    tuning = {k: v for k, v in given.items() if k not in shared}
    chosen = select_engine(
        model_path,
        name,
        device=settings.device,
        trust_remote_code=settings.trust_remote_code,
        mode=settings.options.mode,
    )
    check_generation(chosen, settings.options)
    logger.info("engine: %s%s", chosen, " (auto)" if name == "auto" else "")
    return engine_class(chosen)(str(model_path), settings, **tuning)
