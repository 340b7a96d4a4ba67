"""What a local model directory must hold before an engine is built on it.

Without these checks a broken directory fails mid-run, after the output directory
is written, or worse, runs: transformers builds an empty default tokenizer when
none is saved (every source becomes unknown tokens), and CTranslate2's converter
falls back to unpickling `pytorch_model.bin`. So, before anything is written:

- tokenizer files are present;
- weights are safetensors (pickle checkpoints are refused, never opened);
- every safetensors file, and every shard its index names, has a readable header.

A hub id (no such local directory) is left to the engines, which load safetensors only.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError, safe_open

from common.cli import UserError, read_json

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json",
                   "sentencepiece.bpe.model", "vocab.txt")  # fmt: skip
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
INDEX = "model.safetensors.index.json"


def check_model_files(model: str, flag: str = "--model", *, tokenizer: bool = True) -> None:
    """Refuse (one line naming `flag`) a local model directory an engine cannot load.
    `tokenizer=False` when the tokenizer comes from elsewhere (a merge's adapter)."""
    path = Path(model)
    if not path.is_dir():
        return
    if tokenizer and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(
            f"{flag} {path}: no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer with the weights (train.merge does)"
        )
    weights = sorted(p for p in path.glob("*.safetensors") if p.name != ADAPTER_WEIGHTS)
    if not weights:
        raise UserError(f"{flag} {path}: no *.safetensors weights{_why_none(path)}")
    for name in _indexed_shards(path, flag):
        if not (path / name).is_file():
            raise UserError(f"{flag} {path}: {INDEX} names {name}, which is missing")
    for file in weights:
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError, ValueError) as err:
            raise UserError(f"{flag} {file}: not a readable safetensors file ({err})") from None


def _why_none(path: Path) -> str:
    if (path / "adapter_config.json").is_file():
        return (
            f"; it is a LoRA adapter: merge it first with `make merge ADAPTER={path} "
            "OUT=<merged dir>` and pass the merged dir"
        )
    pickles = sorted(p.name for pattern in PICKLE_PATTERNS for p in path.glob(pattern))
    if pickles:
        return (
            f" (only pickle weights: {', '.join(pickles[:3])}); pickles are never loaded: "
            "re-save with `save_pretrained(dir)`, which writes safetensors"
        )
    return ""


def _indexed_shards(path: Path, flag: str) -> set[str]:
    index = path / INDEX
    if not index.is_file():
        return set()
    weight_map = read_json(index, flag).get("weight_map")
    if not isinstance(weight_map, dict):
        raise UserError(f"{flag} {index}: not a safetensors index (no weight_map object)")
    return set(map(str, weight_map.values()))
