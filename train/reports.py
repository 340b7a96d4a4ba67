"""What a training run reports: metrics.json and train_summary.json on rank 0."""

from __future__ import annotations

import json
import logging
import resource
from pathlib import Path

import torch
import torch.distributed as dist

from train.features import padding_efficiency

logger = logging.getLogger("train.finetune")


def eval_loss_curve(trainer) -> list[dict]:
    return [
        {"step": entry["step"], "eval_loss": entry["eval_loss"]}
        for entry in trainer.state.log_history
        if "eval_loss" in entry
    ]


def write_reports(
    trainer, training_args, data_args, metrics, seconds, partition, train_set, config
) -> None:
    collator = trainer.data_collator
    counts = torch.tensor(
        [collator.real_tokens, collator.total_tokens, trainer.state.global_step],
        dtype=torch.float64,
    )
    partitions = [partition]
    if dist.is_initialized():
        dist.all_reduce(counts[:2])
        partitions = [None] * dist.get_world_size()
        dist.all_gather_object(partitions, partition)
    if training_args.process_index != 0:
        return
    real, total, steps = counts.tolist()
    output = Path(training_args.output_dir)
    output.joinpath("metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    batch = training_args.per_device_train_batch_size
    lengths = _length_pairs(train_set, config.is_encoder_decoder)
    summary = {
        "global_step": int(steps),
        "train_seconds": seconds,
        "tokens_per_s": real / seconds,
        "samples_per_s": trainer.state.global_step
        * batch
        * training_args.world_size
        * training_args.gradient_accumulation_steps
        / seconds,
        "loss_curve": [
            {"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e
        ],
        "padding_efficiency": {
            "measured": real / total if total else None,
            "sampler": training_args.train_sampling_strategy,
            "estimate_grouped": padding_efficiency(lengths, batch, grouped=True),
            "estimate_random": padding_efficiency(lengths, batch, grouped=False),
        },
        "peak_memory_mb": peak_memory_mb(),
        "partition_after_load": partitions,
        "world_size": training_args.world_size,
        "train_file": data_args.train_file,
        "validation_file": data_args.validation_file,
    }
    output.joinpath("train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("wrote %s and %s", output / "metrics.json", output / "train_summary.json")


def _length_pairs(dataset, encoder_decoder: bool) -> list[tuple[int, ...]]:
    if encoder_decoder:
        return [(len(a), len(b)) for a, b in zip(dataset["input_ids"], dataset["labels"])]
    return [(len(a),) for a in dataset["input_ids"]]


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
