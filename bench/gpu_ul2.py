"""UL2-sized numbers on one GPU: translate-mined throughput and LoRA training steps.

    python -m bench.gpu_ul2              # one GPU, ~5 minutes: bench/results/gpu/ul2.json
    python -m bench.gpu_ul2 --dry-run    # CPU, tiny widths, every code path (a test)

google/ul2's architecture (UL2_CONFIG) in random bf16, data.tiny_models' tokenizer, output
forced to `--new_tokens`; a contender whose package is missing is skipped with the reason.
Translate contenders are warmed up (compilation lands in `warmup_seconds`). Train: LoRA
with train.args' defaults, gradient checkpointing, batch 16. MFU = 6 * (N_encoder *
source_tokens + (N_decoder + N_lm_head) * target_tokens) / seconds_per_step / the card's
dense bf16 peak (forward 2 + checkpoint recompute 2 + input-gradient backward 2; frozen
weights get no weight gradient).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from bench import common
from bench.common import RESULTS, median, stopwatch

# google/ul2's config.json, as build_t5 arguments (T5ForConditionalGeneration, ~19.5B).
UL2_CONFIG = {"vocab_size": 32128, "d_model": 4096, "d_kv": 256, "d_ff": 16384, "layers": 32,
              "heads": 16}  # fmt: skip
DRY_RUN_CONFIG = {**UL2_CONFIG, "d_model": 64, "d_kv": 16, "d_ff": 256, "layers": 2, "heads": 4}
SOURCE_PREFIX = "[S2S] "  # train/configs/ul2.yaml
BASELINE_CHUNK = 8
# Dense bf16 tensor-core peak, TFLOP/s; the first name found in the card's name wins.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4),
                    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0))  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_ul2", description=__doc__)
    add = parser.add_argument
    add("--dry-run", "--dry_run", dest="dry_run", action="store_true")
    add("--out", type=Path, default=RESULTS / "gpu" / "ul2.json")
    add("--workdir", type=Path, default=Path("runs/bench/gpu_ul2"))
    add("--sections", default="translate,train")
    add("--rows", type=int, help="mined rows (default 256; dry run 16)")
    add("--baseline_rows", type=int, help="default 64; dry run 8")
    add("--compile_rows", type=int, default=64, help="rows for hf-static-compile")
    add("--no_compile", action="store_true", help="skip hf-static-compile")
    add("--new_tokens", type=int, default=24)
    add("--batch_tokens", type=int, default=16_384)
    add("--max_batch_size", type=int, default=256)
    add("--train_steps", type=int, help="optimizer steps (default 6; dry run 3)")
    add("--peak_tflops", type=float, help="the card's dense bf16 peak")
    add("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.rows = args.rows or (16 if args.dry_run else 256)
    args.baseline_rows = args.baseline_rows or (8 if args.dry_run else 64)
    args.train_steps = args.train_steps or (3 if args.dry_run else 6)
    import torch

    from data.tiny_models import build_t5, tokenizers

    wall, info = stopwatch(), common.machine()
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench.gpu_ul2: no CUDA device; use --dry-run on CPU")
    dtype, dims = (torch.float32, DRY_RUN_CONFIG) if args.dry_run else (torch.bfloat16, UL2_CONFIG)
    workdir = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    tokenizer = tokenizers(args.seed)["t5"]
    torch.manual_seed(args.seed)
    clock = stopwatch()
    model = build_t5(**dims, dtype=dtype, device=device).eval()
    report = {"dry_run": args.dry_run, "card": info["gpu"] or ("dry-run" if args.dry_run else None),
              "machine": info, "config": {**dims, "dtype": str(dtype).replace("torch.", "")},
              "parameters": count_parameters(model), "build_seconds": round(clock(), 1),
              "tokenizer": "data.tiny_models byte-level BPE", "failures": {}}  # fmt: skip
    for section in args.sections.split(","):
        try:
            report[section] = SECTIONS[section](model, tokenizer, args, device, workdir)
        except Exception as error:  # one section failing still leaves the other's numbers
            report["failures"][section] = f"{type(error).__name__}: {error}"[:2000]
    report["wall_seconds"] = round(wall(), 1)
    common.write_json(args.out, report)
    print(f"wrote {args.out} in {report['wall_seconds']:.0f}s; failures: {report['failures']}")
    return report


def count_parameters(model) -> dict:
    parts = {"total": model, "encoder_blocks": model.encoder.block,
             "decoder_blocks": model.decoder.block, "lm_head": model.lm_head}  # fmt: skip
    return {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}


def sync(device: str) -> float:
    """The time (perf_counter) once the GPU's queued work is done."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()


def memory(device: str, reset: bool = False) -> float:
    """Peak GPU memory allocated (MiB) on CUDA, peak RSS on CPU; `reset` starts anew."""
    import torch

    if device != "cuda":
        return sum(common.peak_rss_mb().values())
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def section_translate(model, tokenizer, args, device: str, workdir: Path) -> dict:
    from data.fixtures import write_fixtures
    from data.prompts import SourceTemplate
    from serve.engines.base import GenerationOptions
    from serve.engines.hf import HFEngine

    mined = write_fixtures(workdir / "data", seed=args.seed, mined_rows=args.rows * 2)["mined"]
    fmt = SourceTemplate(prefix=SOURCE_PREFIX).format
    rows = [fmt(r["intent"], r["snippet"]) for r in common.read_jsonl(mined) if r["intent"]]
    sources = list(dict.fromkeys(rows))[: args.rows]
    options = GenerationOptions(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    generation = model.generation_config

    def hf(cache: str | None, compile_off: bool, rows: int):
        def run():  # transformers compiles the decoding step itself for a static cache on CUDA
            generation.cache_implementation, generation.disable_compile = cache, compile_off
            engine = HFEngine.from_model(model, tokenizer, options=options)
            return planned(engine, sources[:rows], args, device)

        return (lambda: {"skipped": "--no_compile"}) if args.no_compile and not compile_off else run

    contenders = {
        "baseline": lambda: baseline(model, tokenizer, sources, args, device),
        "hf": hf(None, True, len(sources)),
        "hf-static": hf("static", True, len(sources)),
        "hf-static-compile": hf("static", False, args.compile_rows),
        "ctranslate2": lambda: ctranslate2_run(model, tokenizer, sources, options, args, device,
                                               workdir),
    }  # fmt: skip
    results = {}
    for name, run in contenders.items():
        try:
            results[name] = run()
        except Exception as error:  # recorded; the other contenders still run
            results[name] = {"skipped": f"{type(error).__name__}: {error}"[:1000]}
        print(f"[bench.gpu_ul2] {name}: {results[name]}", flush=True)
    generation.cache_implementation, generation.disable_compile = None, False
    measured = {n: r for n, r in results.items() if "rows_per_s" in r and n.startswith("hf")}
    fastest = max(measured, key=lambda n: measured[n]["rows_per_s"]) if measured else None
    lengths = [len(x) for x in tokenizer(sources)["input_ids"]]
    return {"rows": len(sources), "new_tokens": args.new_tokens, "contenders": results,
            "fastest_hf": fastest, "source_tokens": common.percentiles(lengths)}  # fmt: skip


def timed(device: str, call) -> tuple[float, object]:
    start, result = sync(device), call()
    return sync(device) - start, result


def planned(engine, sources, args, device: str) -> dict:
    """serve.planner over `engine`, twice: the first pass compiles for every batch shape."""
    from serve.planner import generate_rows

    memory(device, reset=True)
    budget = {"batch_tokens": args.batch_tokens, "max_batch_size": args.max_batch_size}
    warmup, _ = timed(device, lambda: generate_rows(engine, sources, **budget))
    seconds, result = timed(device, lambda: generate_rows(engine, sources, **budget))
    return {"rows": len(sources), "rows_per_s": len(sources) / seconds,
            "tokens_per_s": len(sources) * args.new_tokens / seconds, "seconds": seconds,
            "warmup_seconds": warmup, "engine_calls": result.calls,
            "peak_memory_mb": memory(device)}  # fmt: skip


def baseline(model, tokenizer, sources, args, device: str) -> dict:
    rows = sources[: args.baseline_rows]
    common.original_loop(model, tokenizer, rows[:BASELINE_CHUNK], args.new_tokens, device)
    seconds, _ = timed(device, lambda: common.original_loop(model, tokenizer, rows,
                                                            args.new_tokens, device))  # fmt: skip
    return {"rows": len(rows), "rows_per_s": len(rows) / seconds,
            "tokens_per_s": len(rows) * args.new_tokens / seconds, "seconds": seconds}  # fmt: skip


def ctranslate2_run(model, tokenizer, sources, options, args, device, workdir: Path) -> dict:
    from data.tiny_models import save
    from serve.doctor import engine_probe
    from serve.engines import create_engine

    probe = engine_probe("ctranslate2", device)
    if not probe.runs:
        return {"skipped": f"ctranslate2 cannot run on {device}: {probe.reason}"}
    need = 3 * sum(p.numel() * p.element_size() for p in model.parameters())  # save + convert
    free = shutil.disk_usage(workdir.parent if workdir.parent.exists() else ".").free
    if need > free:
        return {"skipped": f"needs ~{need / 2**30:.0f} GiB of disk to save and convert, "
                f"{free / 2**30:.0f} GiB free"}  # fmt: skip
    path = save(model, tokenizer, workdir / "model")
    engine = create_engine("ctranslate2", path, device=device, options=options,
                           cache_dir=workdir / "ct2")  # fmt: skip
    try:
        return {**planned(engine, sources, args, device), "precision": engine.compute_type}
    finally:
        engine.close()


def section_train(model, tokenizer, args, device: str, workdir: Path) -> dict:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, TrainerCallback

    from data.fixtures import write_fixtures
    from data.loaders import load_curated
    from data.prompts import SourceTemplate, make_pairs
    from train.args import LoraArguments, TrainingArguments

    try:
        from train.finetune import build_trainer, check_lora_targets

        path = "train.finetune.build_trainer"
    except ImportError as error:  # `datasets` is not installed on every GPU image
        build_trainer = check_lora_targets = None
        path = f"transformers Seq2SeqTrainer (train.finetune: {error})"
    curated = write_fixtures(workdir / "train-data", seed=args.seed)["train"]
    pairs = make_pairs(load_curated(str(curated)), SourceTemplate(prefix=SOURCE_PREFIX))
    n = 16 * args.train_steps
    features = [{"input_ids": tokenizer(s, truncation=True, max_length=2048)["input_ids"],
                 "labels": tokenizer(text_target=t, truncation=True, max_length=2048)["input_ids"]}
                for s, t in list(zip(pairs.sources, pairs.targets))[:n]]  # fmt: skip
    lora_args = LoraArguments()
    if check_lora_targets:
        check_lora_targets(model, lora_args)
    model.train()
    model.enable_input_require_grads()  # frozen embeddings + checkpointing need this
    lora = LoraConfig(r=lora_args.lora_r, lora_alpha=lora_args.lora_alpha,
                      lora_dropout=lora_args.lora_dropout, target_modules=lora_args.targets,
                      task_type=TaskType.SEQ_2_SEQ_LM)  # fmt: skip
    peft_model = get_peft_model(model, lora)
    training_args = TrainingArguments(
        output_dir=str(workdir / "train"), deepspeed=None, per_device_train_batch_size=16,
        max_steps=args.train_steps, learning_rate=5e-5, bf16=device == "cuda", seed=args.seed,
        use_cpu=device == "cpu", gradient_checkpointing=True, save_strategy="no",
        gradient_checkpointing_kwargs={"use_reentrant": False}, logging_steps=1,
        eval_strategy="no", report_to="none", disable_tqdm=True)  # fmt: skip
    steps = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, *_, **__):
            steps.append(sync(device))

    if build_trainer:
        trainer = build_trainer(peft_model, tokenizer, model.config, training_args, features, None)
    else:
        collator = DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8)
        trainer = Seq2SeqTrainer(model=peft_model, args=training_args, train_dataset=features,
                                 data_collator=collator)  # fmt: skip
    trainer.add_callback(StepTimes())
    memory(device, reset=True)
    trainer.train()
    per_step = median([b - a for a, b in zip(steps[1:], steps[2:])] or [steps[-1] - steps[0]])
    params = count_parameters(model)
    source, target = (sum(len(f[k]) for f in features) / len(features) * 16
                      for k in ("input_ids", "labels"))  # fmt: skip
    flops = 6 * (params["encoder_blocks"] * source
                 + (params["decoder_blocks"] + params["lm_head"]) * target)  # fmt: skip
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS if k in (
        torch.cuda.get_device_name(0) if device == "cuda" else "")), None)  # fmt: skip
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"path": path, "zero3": False, "lora": f"peft r{lora.r} alpha{lora.lora_alpha} "
            f"{','.join(sorted(lora.target_modules))}", "trainable_parameters": trainable,
            "steps": len(steps), "seconds_per_step": per_step, "samples_per_s": 16 / per_step,
            "tokens_per_s": (source + target) / per_step,
            "model_tflops_per_s": flops / per_step / 1e12,
            "mfu": flops / per_step / 1e12 / peak if peak else None, "peak_tflops": peak,
            "mfu_formula": "6 * (N_encoder * source_tokens + (N_decoder + N_lm_head) * "
            "target_tokens) / seconds_per_step / peak", "peak_memory_mb": memory(device),
            "final_loss": losses[-1] if losses else None}  # fmt: skip


SECTIONS = {"translate": section_translate, "train": section_train}

if __name__ == "__main__":
    main()
