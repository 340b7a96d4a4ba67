"""Fine-tuning arguments: dataclasses are the one home of every default.

A YAML file given with `--config` supplies values; flags on the command line
override it. The original research script's flag names are accepted as aliases so
its documented command runs unchanged.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from transformers import HfArgumentParser, Seq2SeqTrainingArguments

# Original training.py flag -> flag here.
ORIGINAL_FLAGS = {
    "--max_input_length": "--max_source_length",
    "--max_output_length": "--max_target_length",
    "--batch_size": "--per_device_train_batch_size",
    "--num_warmup_steps": "--warmup_steps",
    "--log_freq": "--logging_steps",
    "--eval_freq": "--eval_steps",
    "--save_freq": "--save_steps",
    "--num_epochs": "--num_train_epochs",
}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="google/ul2",
        metadata={
            "help": "Hub id or local directory of the base model (any T5/BART or causal LM)."
        },
    )
    revision: str = field(default="main", metadata={"help": "Hub revision of the base model."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow custom modeling code from the hub. Off unless you trust it."},
    )


@dataclass
class DataArguments:
    train_file: str = field(
        default="neulab/conala",
        metadata={"help": "Curated train split: hub id, or a .json/.jsonl/.parquet file."},
    )
    validation_file: str = field(
        default="neulab/conala",
        metadata={"help": "Validation split: hub id (its curated test split is used) or a file."},
    )
    source_template: str = field(
        default="{intent}\n{snippet}",
        metadata={"help": "Source format; fields {intent} and {snippet}. Recorded for inference."},
    )
    source_prefix: str = field(
        default="", metadata={"help": "Text put before every source, e.g. UL2's '[S2S] '."}
    )
    max_source_length: int = field(
        default=2048, metadata={"help": "Truncate sources to this many tokens."}
    )
    max_target_length: int = field(
        default=2048, metadata={"help": "Truncate targets to this many tokens."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training pairs (debugging)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N validation pairs."}
    )
    generation_eval: bool = field(
        default=True,
        metadata={"help": "After training, compute BLEU/chrF/exact match on the validation split."},
    )
    generation_max_new_tokens: int = field(
        default=64, metadata={"help": "Generation length limit for the validation metrics."}
    )


@dataclass
class LoraArguments:
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: str = field(
        default="q,v",
        metadata={
            "help": "Comma-separated module names to adapt ('q,v' is PEFT's T5 default), "
            "or 'all-linear' for every linear layer but the output head."
        },
    )

    def __post_init__(self):
        if self.lora_r < 1:
            raise ValueError(f"--lora_r must be >= 1, got {self.lora_r}")

    @property
    def targets(self) -> str | list[str]:
        if self.lora_target_modules == "all-linear":
            return "all-linear"
        return [name.strip() for name in self.lora_target_modules.split(",") if name.strip()]


ZERO3_CONFIG = str(Path(__file__).resolve().parents[1] / "deepspeed_configs" / "zero3.json")


@dataclass
class TrainingArguments(Seq2SeqTrainingArguments):
    deepspeed: str | None = field(
        default=ZERO3_CONFIG,
        metadata={"help": "DeepSpeed JSON config (default: ZeRO-3); zero3_offload.json offloads."},
    )
    config: str | None = field(
        default=None, metadata={"help": "YAML file of values; command-line flags override it."}
    )
    # transformers 5.19 scales each rank's loss by the world size for this option and,
    # under DeepSpeed, the scaled value is what gets logged and clipped: eval and
    # train loss read W times too high. Each rank's mean token loss, averaged by
    # DeepSpeed across ranks, is the standard objective and reports truthfully.
    average_tokens_across_devices: bool = field(
        default=False,
        metadata={"help": "Normalise the loss by the token count summed over all ranks."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into a non-empty --output_dir that holds no checkpoint."},
    )


ARGUMENT_CLASSES = (ModelArguments, DataArguments, LoraArguments, TrainingArguments)


def rewrite_original_flags(argv: list[str]) -> list[str]:
    """Map the original script's flag names (also in `--flag=value` form) to ours."""
    out = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        out.append(ORIGINAL_FLAGS.get(name, name) + sep + value)
    return out


def parse(argv: list[str] | None = None, **defaults):
    """Return (model, data, lora, training) arguments from YAML + command line."""
    argv = rewrite_original_flags(sys.argv[1:] if argv is None else argv)
    return parse_with_config(ARGUMENT_CLASSES, argv, **defaults)


def parse_with_config(classes: tuple, argv: list[str] | None = None, **defaults):
    """Parse dataclasses from `--config FILE.yaml` plus flags.

    Precedence: command line, then the YAML file, then `defaults`, then the fields.
    """
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser(classes)
    parser.set_defaults(**defaults)
    config_path = _config_path(argv)
    if config_path:
        parser.set_defaults(**load_config(config_path, classes))
    return parser.parse_args_into_dataclasses(args=argv)


def load_config(path: str, classes: tuple = ARGUMENT_CLASSES) -> dict:
    """Read a YAML config, refusing keys no argument class defines."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--config: file not found: {path}")
    values = yaml.safe_load(Path(path).read_text()) or {}
    known = {f.name for cls in classes for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; see `--help` for the valid names")
    return values


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None
