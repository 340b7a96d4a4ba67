"""Which checkpoint a run resumes from, and which checkpoints are complete."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from common.cli import read_json

logger = logging.getLogger("train.finetune")


def resolve_checkpoint(training_args) -> str | None:
    """Explicit path wins, then `auto` (the last checkpoint, if any), else a fresh start.

    A fresh start into a directory that already holds a run is refused, so a
    forgotten flag never trains over someone's checkpoints.
    """
    output = Path(training_args.output_dir)
    requested = training_args.resume_from_checkpoint
    last = last_complete_checkpoint(output)
    if requested and requested != "auto":
        if not Path(requested).is_dir():
            raise FileNotFoundError(f"--resume_from_checkpoint: no such directory: {requested}")
        return requested
    if requested == "auto":
        logger.info("resuming from %s", last or "scratch (no checkpoint found)")
        return last
    if last:
        raise ValueError(
            f"{output} already holds {Path(last).name}; pass --resume_from_checkpoint auto to "
            "continue it, or choose a new --output_dir"
        )
    if output.is_dir() and any(output.iterdir()) and not training_args.overwrite_output_dir:
        raise ValueError(
            f"--output_dir {output} is not empty and holds no checkpoint; "
            "pass --overwrite_output_dir true to train into it anyway"
        )
    return None


def last_complete_checkpoint(output: Path) -> str | None:
    """The newest checkpoint whose save finished.

    The Trainer writes trainer_state.json last, after the adapter, the DeepSpeed
    shards and the RNG states; a run killed mid-save leaves a newer directory
    without it, which must not be picked for resume.
    """
    steps = sorted(output.glob(f"{PREFIX_CHECKPOINT_DIR}-*"), key=_step, reverse=True)
    for path in steps:
        if (path / TRAINER_STATE_NAME).is_file():
            return str(path)
        logger.warning("ignoring %s: its save did not finish", path)
    return None


def _step(path: Path) -> int:
    suffix = path.name.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1


def check_resume_matches(checkpoint: str | None, model_args, lora_args) -> None:
    """Refuse to resume a checkpoint trained on another base or with other LoRA shapes:
    PEFT would fail deep in loading with a size mismatch, or (same shapes) silently
    continue someone else's run."""
    if checkpoint is None or not (Path(checkpoint) / "adapter_config.json").is_file():
        return
    saved = read_json(Path(checkpoint) / "adapter_config.json", "--resume_from_checkpoint")
    now = {"base_model_name_or_path": model_args.model_name_or_path, "r": lora_args.lora_r,
           "lora_alpha": lora_args.lora_alpha}  # fmt: skip
    if lora_args.targets != "all-linear":  # PEFT saves all-linear resolved to names
        now["target_modules"] = sorted(lora_args.targets)
        saved["target_modules"] = sorted(saved.get("target_modules") or [])
    differ = [f"{key}: {saved.get(key)!r} -> {value!r}" for key, value in now.items()
              if saved.get(key) != value]  # fmt: skip
    if differ:
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint} was trained with other settings "
            f"({'; '.join(differ)}); resume with the same ones or start a new --output_dir"
        )
