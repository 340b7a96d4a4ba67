"""LoRA fine-tuning under DeepSpeed ZeRO-3: `intent + "\\n" + snippet` -> `rewritten_intent`.

One node, 8 GPUs (the real UL2 run):
    deepspeed --num_gpus 8 --module train.finetune --config train/configs/ul2.yaml
Several nodes (a hostfile lists `host slots=8` lines; the output dir should be on
storage every node sees):
    deepspeed --hostfile hostfile --module train.finetune --config train/configs/ul2.yaml
CPU smoke test with the tiny model (2 ranks, gloo):
    deepspeed --num_gpus 2 --module train.finetune --config train/configs/tiny.yaml
Any flag overrides the config, e.g. `--max_steps 10 --output_dir runs/x`; resume with
`--resume_from_checkpoint auto` (or a checkpoint path).

Encoder-decoders train with `Seq2SeqTrainer`; decoder-only models train as causal
LMs with the prompt masked out of the loss.
"""

from __future__ import annotations

# Before the slow imports: it makes a Ctrl-C during them one line.
from common.cli import UserError, refuse_overlap, run  # isort: skip
import logging
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import transformers
from peft import LoraConfig, TaskType, get_peft_model
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    Seq2SeqTrainer,
    T5ForConditionalGeneration,
    Trainer,
)
from transformers.integrations.deepspeed import (
    is_deepspeed_zero3_enabled,
    unset_hf_deepspeed_config,
)

from common.model_files import check_model_files
from data.loaders import HUB_DATASET, load_curated, resolve
from data.prompts import SourceTemplate, make_pairs
from train import args as arguments
from train.adapter import check_adapter
from train.checkpoints import check_resume_matches, resolve_checkpoint
from train.evaluate import evaluate_adapter
from train.features import CountingCollator, tokenize
from train.reports import eval_loss_curve, write_reports

logger = logging.getLogger("train.finetune")

# Activations in these families exceed fp16's range (65504) and turn the loss NaN.
FP16_UNSAFE = {"t5", "mt5", "umt5", "longt5", "switch_transformers"}


def main(argv: list[str] | None = None) -> None:
    single_process_world()
    defaults = prepare_cpu_deepspeed()
    model_args, data_args, lora_args, training_args = arguments.parse(argv, **defaults)
    check_inputs(model_args, data_args, training_args)
    setup_logging(training_args)
    checkpoint = resolve_checkpoint(training_args)
    check_resume_matches(checkpoint, model_args, lora_args)
    try:
        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.revision,
            trust_remote_code=model_args.trust_remote_code,
        )
    except OSError as err:  # a hub id while offline, a gated or missing repo
        raise UserError(
            f"--model_name_or_path {model_args.model_name_or_path}: cannot load its config "
            f"({' '.join(str(err).split())[:300]})"
        ) from err
    check_precision(config, training_args)
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.revision,
        trust_remote_code=model_args.trust_remote_code,
    )
    template = SourceTemplate(data_args.source_template, data_args.source_prefix)
    train_set, eval_set, eval_pairs = load_datasets(data_args, template, tokenizer, config)
    model, partition = load_model(model_args, lora_args, config, training_args)
    trainer = build_trainer(model, tokenizer, config, training_args, train_set, eval_set)

    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - start

    adapter_dir = save_adapter(trainer, tokenizer, template, training_args)
    metrics = {"eval_loss": eval_loss_curve(trainer)}
    if data_args.generation_eval and training_args.process_index == 0:
        metrics["generation"] = generation_eval(
            model_args, data_args, tokenizer, adapter_dir, eval_pairs
        )
    write_reports(trainer, training_args, data_args, metrics, seconds, partition, train_set, config)
    barrier()


def check_inputs(model_args, data_args, training_args) -> None:
    """Missing files, and an --output_dir that is, holds or lies inside an input (checkpoints
    rotate and files land there), are refused before the model loads (minutes for UL2)."""
    for source in (data_args.train_file, data_args.validation_file):
        if source != HUB_DATASET:
            resolve(source)
    model = model_args.model_name_or_path
    if not Path(model).exists() and (model.startswith((".", "/")) or model.count("/") != 1):
        raise FileNotFoundError(f"--model_name_or_path {model}: not found (and not a hub id)")
    deepspeed = training_args.deepspeed if isinstance(training_args.deepspeed, str) else None
    inputs = {
        "--model_name_or_path": [model],
        "--train_file": [data_args.train_file],
        "--validation_file": [data_args.validation_file],
        "--deepspeed": [deepspeed],
        "--config": [training_args.config],
    }
    refuse_overlap("--output_dir", training_args.output_dir, inputs)
    check_model_files(model, "--model_name_or_path")


def single_process_world() -> None:
    """Let `python -m train.finetune` run as rank 0 of 1, as a launcher would set it up.

    Without launcher variables DeepSpeed goes looking for MPI (and dies on a missing
    mpi4py) before any of our own checks can speak.
    """
    if any(var in os.environ for var in ("LOCAL_RANK", "RANK", "OMPI_COMM_WORLD_RANK")):
        return
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip


def prepare_cpu_deepspeed() -> dict:
    """Make Accelerate see all ranks when the `deepspeed` launcher runs on CPU.

    Without a GPU, Accelerate finds no collective backend for a DeepSpeed launch and
    falls back to one process: every rank then believes it is rank 0 of 1, reads the
    whole dataset and writes every file. Creating the process state first, on gloo,
    and telling TrainingArguments to reuse it gives the Trainer the true world.
    """
    if torch.cuda.is_available() or "LOCAL_RANK" not in os.environ:
        return {}
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    return {"accelerator_config": {"use_configured_state": True}}


def setup_logging(training_args) -> None:
    """Rank 0 logs at INFO, other ranks at WARNING; every rank says who it is once."""
    rank = training_args.process_index
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
        level=level,
        stream=sys.stdout,
    )
    # Config and tokenizer dumps at INFO bury the run's own lines; the Trainer's stay.
    transformers.utils.logging.set_verbosity(logging.WARNING)
    transformers.utils.logging.get_logger("transformers.trainer").setLevel(level)
    logger.warning(
        "rank %d/%d on %s, precision %s",
        rank,
        training_args.world_size,
        training_args.device,
        "bf16" if training_args.bf16 else "fp32",
    )
    if "wandb" in training_args.report_to and not wandb_logged_in():
        # No credentials: log locally; `wandb sync <output_dir>/wandb/offline-run-*` uploads later.
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", training_args.output_dir)
        logger.info(
            "wandb: not logged in, logging offline under %s/wandb", training_args.output_dir
        )


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def check_precision(config, training_args) -> None:
    if training_args.fp16 and config.model_type in FP16_UNSAFE:
        raise ValueError(
            f"--fp16 is refused for {config.model_type}: T5-family activations overflow fp16's "
            "range and the loss becomes NaN. Use --bf16 true on a GPU that supports it "
            "(A100/H100), or fp32."
        )
    if (training_args.bf16 or training_args.fp16) and not torch.cuda.is_available():
        raise ValueError(
            "--bf16/--fp16 need a CUDA GPU; on CPU train in fp32 (set bf16: false in the config)"
        )


def load_datasets(data_args, template, tokenizer, config):
    """Tokenized train/eval sets plus the raw eval pairs for generation metrics."""
    splits = {}
    for name, source, split, limit in (
        ("train", data_args.train_file, "train", data_args.max_train_samples),
        ("validation", data_args.validation_file, "test", data_args.max_eval_samples),
    ):
        pairs = make_pairs(load_curated(source, split=split), template)
        logger.info("%s (%s): %s", name, source, pairs.report())
        if not pairs.sources:
            raise ValueError(
                f"the {name} set from {source} is empty after filtering: {pairs.report()}"
            )
        if limit is not None:
            pairs.sources, pairs.targets = pairs.sources[:limit], pairs.targets[:limit]
        splits[name] = pairs
    features = {
        name: tokenize(
            pairs.sources,
            pairs.targets,
            tokenizer,
            encoder_decoder=config.is_encoder_decoder,
            max_source_length=data_args.max_source_length,
            max_target_length=data_args.max_target_length,
        )
        for name, pairs in splits.items()
    }
    return features["train"], features["validation"], splits["validation"]


def load_model(model_args, lora_args, config, training_args):
    """Load the base (partitioned across ranks as it loads) and wrap it with LoRA.

    The DeepSpeed-enabled TrainingArguments already exist, so `from_pretrained`
    runs inside `deepspeed.zero.Init`: each rank materialises only its slice and a
    20B model is never whole on any rank.
    """
    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    if config.model_type == "t5" and not config.scale_decoder_outputs:
        cls = UntiedT5ForConditionalGeneration
    model = cls.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        revision=model_args.revision,
        dtype=torch.bfloat16 if training_args.bf16 else torch.float32,
        use_safetensors=True,
        trust_remote_code=model_args.trust_remote_code,
    )
    partition = partition_report(model)
    logger.info("parameters held by this rank after load: %s", partition)
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings + checkpointing need this
    check_lora_targets(model, lora_args)
    lora = LoraConfig(
        r=lora_args.lora_r,
        lora_alpha=lora_args.lora_alpha,
        lora_dropout=lora_args.lora_dropout,
        target_modules=lora_args.targets,
        task_type=TaskType.SEQ_2_SEQ_LM if config.is_encoder_decoder else TaskType.CAUSAL_LM,
    )
    model = get_peft_model(model, lora)
    if training_args.process_index == 0:
        model.print_trainable_parameters()
    return model, partition


class UntiedT5ForConditionalGeneration(T5ForConditionalGeneration):
    """T5 v1.1 and UL2 have an output head separate from the embeddings.

    transformers 5 builds every T5 tied and unties only when the checkpoint's two
    tensors differ; under ZeRO-3 it compares empty placeholders, which always look
    equal, so UL2 would silently train with its embeddings as the output head.
    """

    _tied_weights_keys = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }


def partition_report(model) -> dict:
    total = local = 0
    for param in model.parameters():
        if hasattr(param, "ds_numel"):  # a ZeRO-3 placeholder; ds_tensor is this rank's slice
            total += param.ds_numel
            local += param.ds_tensor.numel()
        else:
            total += param.numel()
            local += param.numel()
    return {"zero3": is_deepspeed_zero3_enabled(), "local_elements": local, "total_elements": total}


def check_lora_targets(model, lora_args) -> None:
    targets = lora_args.targets
    if targets == "all-linear":
        return
    linear = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    unknown = sorted(set(targets) - linear)
    if unknown:
        raise ValueError(
            f"--lora_target_modules: {unknown} are not linear layers of this model; "
            f"choose from {sorted(linear)} or use 'all-linear'"
        )


def build_trainer(model, tokenizer, config, training_args, train_set, eval_set):
    collator = CountingCollator(
        tokenizer, encoder_decoder=config.is_encoder_decoder, pad_to_multiple_of=8
    )
    cls = Seq2SeqTrainer if config.is_encoder_decoder else Trainer
    return cls(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collator,
        processing_class=tokenizer,
    )


def save_adapter(trainer, tokenizer, template, training_args) -> Path:
    """Save the final adapter (every rank joins the ZeRO-3 gather), then verify it on disk."""
    adapter_dir = Path(training_args.output_dir, "adapter")
    trainer.save_model(str(adapter_dir))
    if training_args.process_index == 0:
        tokenizer.save_pretrained(adapter_dir)
        template.save(adapter_dir)
        logger.info("adapter saved to %s: %s", adapter_dir, check_adapter(adapter_dir))
    barrier()
    return adapter_dir


def generation_eval(model_args, data_args, tokenizer, adapter_dir, pairs) -> dict:
    """BLEU/chrF/exact match on rank 0 with an unsharded copy (see train.evaluate)."""
    unset_hf_deepspeed_config()  # otherwise from_pretrained would partition again
    options = data_args.generation_options()
    metrics, predictions = evaluate_adapter(
        model_args.model_name_or_path,
        str(adapter_dir),
        tokenizer,
        pairs.sources,
        pairs.targets,
        options=options,
        trust_remote_code=model_args.trust_remote_code,
    )
    metrics["examples"] = [
        {"source": s, "reference": r, "prediction": p}
        for s, r, p in list(zip(pairs.sources, pairs.targets, predictions))[:5]
    ]
    logger.info(
        "validation generation: bleu %.2f chrf %.2f exact %.3f",
        metrics["bleu"],
        metrics["chrf"],
        metrics["exact_match"],
    )
    return metrics


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


if __name__ == "__main__":
    run(main, "train.finetune")
