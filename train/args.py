"""Fine-tuning arguments: dataclasses are the one home of every default.

A YAML file given with `--config` supplies values; flags on the command line
override it. The original research script's flag names are accepted as aliases so
its documented command runs unchanged.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from transformers import Seq2SeqTrainingArguments

from common.cli import arg, parse_with_config, read_json
from common.hub import check_login
from serve.engines.base import GenerationOptions

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
    model_name_or_path: str = arg(
        "google/ul2", "Hub id or local directory of the base model (any T5/BART or causal LM)."
    )
    revision: str = arg("main", "Hub revision of the base model.")
    trust_remote_code: bool = arg(
        False, "Allow custom modeling code from the hub. Off unless you trust it."
    )


@dataclass
class DataArguments:
    train_file: str = arg(
        "neulab/conala", "Curated train split: hub id, or a .json/.jsonl/.parquet file."
    )
    validation_file: str = arg(
        "neulab/conala", "Validation split: hub id (its curated test split is used) or a file."
    )
    source_template: str = arg(
        "{intent}\n{snippet}",
        "Source format; fields {intent} and {snippet}. Recorded for inference.",
    )
    source_prefix: str = arg("", "Text put before every source, e.g. UL2's '[S2S] '.")
    max_source_length: int = arg(2048, "Truncate sources to this many tokens.")
    max_target_length: int = arg(2048, "Truncate targets to this many tokens.")
    max_train_samples: int | None = arg(None, "Use only the first N training pairs (debugging).")
    max_eval_samples: int | None = arg(None, "Use only the first N validation pairs.")
    generation_eval: bool = arg(
        True, "After training, compute BLEU/chrF/exact match on the validation split."
    )
    generation_max_new_tokens: int | None = arg(
        None,
        "Generation length limit for the validation metrics (default: "
        "translate's --max_new_tokens default).",
    )

    def __post_init__(self):
        for name in ("max_source_length", "max_target_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_train_samples", "max_eval_samples", "generation_max_new_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        from data.prompts import SourceTemplate

        SourceTemplate(self.source_template, self.source_prefix)  # refuses a broken template

    def generation_options(self) -> GenerationOptions:
        """Options for the validation metrics: serving's defaults, training's source limit."""
        length = {"max_new_tokens": self.generation_max_new_tokens}
        return GenerationOptions(
            max_source_length=self.max_source_length,
            **{key: value for key, value in length.items() if value is not None},
        )


@dataclass
class LoraArguments:
    lora_r: int = arg(8, "LoRA rank.")
    lora_alpha: int = arg(32, "LoRA scaling numerator (alpha / r).")
    lora_dropout: float = arg(0.05, "Dropout on the LoRA input.")
    lora_target_modules: str = arg(
        "q,v",
        "Comma-separated module names to adapt ('q,v' is PEFT's T5 default), "
        "or 'all-linear' for every linear layer but the output head.",
    )

    def __post_init__(self):
        if self.lora_r < 1:
            raise ValueError(f"--lora_r must be >= 1, got {self.lora_r}")
        if not self.lora_alpha > 0:  # also NaN
            raise ValueError(f"--lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.targets:
            raise ValueError("--lora_target_modules names no module")

    @property
    def targets(self) -> str | list[str]:
        if self.lora_target_modules == "all-linear":
            return "all-linear"
        return [name.strip() for name in self.lora_target_modules.split(",") if name.strip()]


REPO = Path(__file__).resolve().parents[1]
ZERO3_CONFIG = str(REPO / "deepspeed_configs" / "zero3.json")


@dataclass
class TrainingArguments(Seq2SeqTrainingArguments):
    deepspeed: str | None = arg(
        ZERO3_CONFIG, "DeepSpeed JSON config (default: ZeRO-3); zero3_offload.json offloads."
    )
    config: str | None = arg(None, "YAML file of values; command-line flags override it.")
    # transformers 5.19 scales each rank's loss by the world size for this option and,
    # under DeepSpeed, the scaled value is what gets logged and clipped: eval and
    # train loss read W times too high. Each rank's mean token loss, averaged by
    # DeepSpeed across ranks, is the standard objective and reports truthfully.
    average_tokens_across_devices: bool = arg(
        False, "Normalise the loss by the token count summed over all ranks."
    )
    overwrite_output_dir: bool = arg(
        False, "Train into a non-empty --output_dir that holds no checkpoint."
    )

    def __post_init__(self):
        self.check_values()
        # Configs name DeepSpeed files relative to the repo, so they work from any cwd.
        if isinstance(self.deepspeed, str) and not Path(self.deepspeed).exists():
            if (REPO / self.deepspeed).is_file():
                self.deepspeed = str(REPO / self.deepspeed)
            elif not self.deepspeed.lstrip().startswith("{"):
                raise FileNotFoundError(f"--deepspeed {self.deepspeed}: file not found")
        if isinstance(self.deepspeed, str) and Path(self.deepspeed).is_file():
            check_deepspeed_config(self.deepspeed)
        super().__post_init__()

    def check_values(self) -> None:
        """What the Trainer would only trip over after the model loads (or never)."""
        if self.hub_token:  # the Trainer pickles its arguments into training_args.bin
            raise ValueError(
                "--hub_token would be saved in every checkpoint's training_args.bin; "
                "log in with `hf auth login` or set HF_TOKEN instead"
            )
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size",
                     "gradient_accumulation_steps"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"--max_steps must be >= 1 (or -1: epochs), got {self.max_steps}")
        for name in ("save_steps", "logging_steps", "eval_steps"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"--{name} must be > 0, got {value}")
        if not self.max_grad_norm >= 0:  # also NaN
            raise ValueError(f"--max_grad_norm must be >= 0, got {self.max_grad_norm}")
        if Path(self.output_dir).is_file():
            raise ValueError(f"--output_dir {self.output_dir} is a file; give a directory")
        if self.push_to_hub:
            if not self.hub_model_id:
                raise ValueError("--push_to_hub needs --hub_model_id owner/name")
            check_login("--push_to_hub", self.hub_model_id)


def check_deepspeed_config(path: str) -> None:
    read_json(path, "--deepspeed")  # a DeepSpeed config is a JSON object


ARGUMENT_CLASSES = (ModelArguments, DataArguments, LoraArguments, TrainingArguments)


def rewrite_original_flags(argv: list[str]) -> list[str]:
    """Map the original script's flag names (also in `--flag=value` form) to ours."""
    out = []
    for item in argv:
        name, sep, value = item.partition("=")
        out.append(ORIGINAL_FLAGS.get(name, name) + sep + value)
    return out


def parse(argv: list[str] | None = None, **defaults):
    """Return (model, data, lora, training) arguments from YAML + command line."""
    argv = rewrite_original_flags(sys.argv[1:] if argv is None else argv)
    return parse_with_config(ARGUMENT_CLASSES, argv, **defaults)
