"""UL2-sized numbers on one NVIDIA GPU: translate-mined throughput and LoRA training.

    python -m bench.gpu_ul2              # one GPU: bench/results/gpu_ul2-<card>.json
    python -m bench.gpu_ul2 --skip_ct2   # without the CTranslate2 conversion (~40 GB RAM + disk)
    python -m bench.gpu_ul2 --dry-run    # CPU, scaled-down config, every code path (a test)

Needs only torch and transformers (CTranslate2, DeepSpeed and PEFT are used when
installed) and no hub access: the model is google/ul2's exact architecture, built from
the config values written below with random weights, in bf16 directly on the GPU
(~40 GB). The tokenizer is a byte-level BPE trained here on the data, unless
`--tokenizer DIR` names a local copy of UL2's (recommended: token counts then match
the real run; the JSON records which was used and the length percentiles it gave).

Translate (one process): >= 2,000 mined-shaped rows (data.fixtures), sources
`"[S2S] " + intent + "\\n" + snippet` as train/configs/ul2.yaml formats them, output
forced to `--new_tokens` (24) for every contender:
  baseline             the original loop: bf16 HF `generate`, chunks of 8 in dataset order
                       padded to the chunk's longest, outputs appended to JSONL
  hf                   serve.planner (dedup, length sort, token-budget batches) over
                       HFEngine.from_model, the engine translate-mined uses
  ctranslate2-<type>   the same planner over serve.engines.ctranslate2's `generate`, for
                       bfloat16 and int8_bfloat16; the model is converted in memory (it
                       moves to host RAM first) when RAM and disk allow, else skipped
Each contender gets a warm-up call first; model build and conversion are not timed.

Train (a second process, so memory peaks are its own): LoRA r=8 alpha=32 dropout 0.05
on q,v (train/configs/ul2.yaml), non-reentrant gradient checkpointing, AdamW, under
DeepSpeed ZeRO-3 with world size 1 (plain PyTorch if DeepSpeed is missing, recorded),
curated-shaped data (the real conala-train.json when present, else fixtures) truncated
at the config's 2048/2048 tokens, batch 16 in length-grouped batches (the Trainer's
LengthGroupedSampler). Reports tokens/s (non-pad source + target tokens), samples/s,
peak GPU memory and MFU:

    model FLOPs per step = 6 * (N_encoder * source_tokens + (N_decoder + N_lm_head) * target_tokens)

6 = forward (2) + checkpoint recompute (2) + input-gradient backward (2); the frozen
base weights get no weight gradient, LoRA's are negligible; attention-score FLOPs are
left out (< 1% at these lengths). MFU = that over elapsed time / the card's dense bf16
peak (table below, or `--peak_tflops`); `hfu_padded` counts padded tokens instead.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import socket
import sys
from pathlib import Path

from bench.common import (
    RESULTS,
    SHARED_CONALA_TRAIN,
    Stopwatch,
    child_env,
    machine,
    peak_rss_mb,
    run_child,
    table,
    tail,
    write_json,
)

# google/ul2's config.json, as published (T5ForConditionalGeneration, ~19.5B parameters).
UL2_CONFIG = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 256,
    "d_ff": 16384,
    "num_layers": 32,
    "num_decoder_layers": 32,
    "num_heads": 16,
    "feed_forward_proj": "gated-silu",
    "tie_word_embeddings": False,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "initializer_factor": 1.0,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}
DRY_RUN_CONFIG = {
    **UL2_CONFIG,
    "d_model": 64,
    "d_kv": 16,
    "d_ff": 256,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 4,
}
# train/configs/ul2.yaml
SOURCE_PREFIX = "[S2S] "
MAX_SOURCE_LENGTH = 2048
MAX_TARGET_LENGTH = 2048
TRAIN_BATCH_SIZE = 16
LORA = {"r": 8, "alpha": 32, "dropout": 0.05, "targets": ("q", "v")}
LEARNING_RATE = 5e-5
BASELINE_CHUNK = 8
# Dense (no sparsity) bf16 tensor-core peak, TFLOP/s; first match on the device name wins.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.4),
    ("H800", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_ul2", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--dry-run",
        "--dry_run",
        dest="dry_run",
        action="store_true",
        help="CPU, scaled-down config, few rows and steps: exercises every code path",
    )
    parser.add_argument("--out", type=Path, help="default bench/results/gpu_ul2-<card>.json")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench/gpu_ul2"))
    parser.add_argument("--sections", default="translate,train")
    parser.add_argument("--rows", type=int, help="mined rows (default 2000; dry run 24)")
    parser.add_argument("--baseline_rows", type=int, help="rows for the baseline (default all)")
    parser.add_argument("--new_tokens", type=int, default=24)
    parser.add_argument("--batch_tokens", type=int, default=16_384)
    parser.add_argument("--max_batch_size", type=int, default=256)
    parser.add_argument("--skip_ct2", action="store_true", help="leave CTranslate2 out")
    parser.add_argument("--keep_ct2", action="store_true", help="keep the converted model")
    parser.add_argument("--train_steps", type=int, help="timed steps (default 10; dry run 2)")
    parser.add_argument("--warmup_steps", type=int, help="untimed first steps (default 3)")
    parser.add_argument("--batch_size", type=int, help=f"default {TRAIN_BATCH_SIZE}; dry run 4")
    parser.add_argument("--peak_tflops", type=float, help="the card's dense bf16 peak")
    parser.add_argument("--tokenizer", help="a local tokenizer directory (e.g. UL2's)")
    parser.add_argument(
        "--train_file",
        type=Path,
        default=SHARED_CONALA_TRAIN if SHARED_CONALA_TRAIN.is_file() else None,
        help="curated JSON (default: the real conala-train.json when present, else fixtures)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=7200, help="seconds per section")
    parser.add_argument("--section", help=argparse.SUPPRESS)
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    dry = args.dry_run
    args.rows = args.rows or (24 if dry else 2000)
    args.baseline_rows = min(args.rows, args.baseline_rows or args.rows)
    args.train_steps = args.train_steps or (2 if dry else 10)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (1 if dry else 3)
    args.batch_size = args.batch_size or (4 if dry else TRAIN_BATCH_SIZE)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - {"translate", "train"}
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose translate, train")
    return args


# ------------------------------------------------------------------------ orchestrator


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.section:
        job = json.loads(args.job.read_text())
        result = SECTIONS[args.section](job)
        write_json(Path(job["result_dir"], f"{args.section}.json"), result)
        return result
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("bench.gpu_ul2 needs a CUDA GPU; --dry-run runs the same paths on CPU")
    wall = Stopwatch()
    info = machine()
    card = info["gpu"] if not args.dry_run else "dry-run"
    out = args.out or RESULTS / f"gpu_ul2-{_slug(card)}.json"
    workdir = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    job = prepare(args, workdir)
    report = {
        "card": card,
        "dry_run": args.dry_run,
        "machine": info,
        "config": job["config"],
        "parameters": None,
        "setup": {
            k: job[k]
            for k in ("rows", "baseline_rows", "new_tokens", "batch_tokens", "max_batch_size")
        }
        | {"tokenizer": job["tokenizer_kind"], "source_lengths": job["source_lengths"]},
        "failures": {},
    }
    for section in args.sections:
        print(f"[bench.gpu_ul2] {section} ...", flush=True)
        log = workdir / f"{section}.log"
        code = run_child(
            ["-m", "bench.gpu_ul2", "--section", section, "--job", workdir / "job.json"],
            log=log,
            timeout=args.timeout,
            env=child_env(TORCH_EXTENSIONS_DIR=_torch_extensions()),
            # CPU threads that spin while idle fight over a shared machine's cores.
            omp_wait_policy="PASSIVE" if args.dry_run else None,
        )
        result_file = workdir / "results" / f"{section}.json"
        if code != 0 or not result_file.is_file():
            report["failures"][section] = f"exit code {code}; log {log}:\n{tail(log, 40)}"
            print(f"[bench.gpu_ul2] {section} FAILED:\n{tail(log, 40)}", flush=True)
            continue
        report[section] = json.loads(result_file.read_text())
        report["parameters"] = report[section].get("parameters", report["parameters"])
    report["wall_seconds"] = round(wall(), 1)
    write_json(out, report)
    print()
    print(render(report))
    print(f"\nwrote {out} in {report['wall_seconds']:.0f}s")
    if report["failures"]:
        sys.exit(1)
    return report


def prepare(args, workdir: Path) -> dict:
    from data.fixtures import write_fixtures

    fixtures = write_fixtures(
        workdir / "data", seed=args.seed, mined_rows=args.rows, train_rows=2379, test_rows=10
    )
    train_file = args.train_file or fixtures["train"]
    tokenizer_dir = workdir / "tokenizer"
    if args.tokenizer:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(args.tokenizer).save_pretrained(tokenizer_dir)
        kind = f"{args.tokenizer} (given)"
    else:
        texts = [
            t
            for row in read_json_rows(fixtures["mined"]) + read_json_rows(train_file)
            for t in (row.get("intent"), row.get("snippet"), row.get("rewritten_intent"))
            if t
        ]
        train_bpe(texts).save_pretrained(tokenizer_dir)
        kind = "byte-level BPE (vocab 2048) trained here on the data; not UL2's sentencepiece"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    mined = read_json_rows(fixtures["mined"])
    lengths = sorted(len(x) for x in tokenizer(sources_of(mined))["input_ids"])
    job = {
        "config": DRY_RUN_CONFIG if args.dry_run else UL2_CONFIG,
        "dry_run": args.dry_run,
        "mined": str(fixtures["mined"]),
        "train_file": str(train_file),
        "real_train_data": train_file.resolve() == SHARED_CONALA_TRAIN.resolve(),
        "tokenizer": str(tokenizer_dir),
        "tokenizer_kind": kind,
        "source_lengths": _percentiles(lengths),
        "rows": args.rows,
        "baseline_rows": args.baseline_rows,
        "new_tokens": args.new_tokens,
        "batch_tokens": args.batch_tokens,
        "max_batch_size": args.max_batch_size,
        "skip_ct2": args.skip_ct2,
        "keep_ct2": args.keep_ct2,
        "train_steps": args.train_steps,
        "warmup_steps": args.warmup_steps,
        "batch_size": args.batch_size,
        "peak_tflops": args.peak_tflops,
        "seed": args.seed,
        "workdir": str(workdir),
        "result_dir": str(workdir / "results"),
    }
    (workdir / "job.json").write_text(json.dumps(job, indent=2))
    return job


def render(report: dict) -> str:
    lines = [f"card: {report['card']}, parameters: {report.get('parameters')}"]
    translate = report.get("translate")
    if translate:
        rows = [
            [
                name,
                c.get("precision"),
                c.get("rows"),
                c.get("rows_per_s"),
                c.get("tokens_per_s"),
                c.get("ratio_to_baseline"),
                c.get("peak_gpu_memory_gb"),
                c.get("skipped"),
            ]
            for name, c in translate["contenders"].items()
        ]
        headers = ["contender", "precision", "rows", "rows/s", "tokens/s", "ratio", "peak GB"]
        lines += ["", table([*headers, "skipped"], rows)]
    train = report.get("train")
    if train:
        lines += [
            "",
            table(
                ["train", "tokens/s", "samples/s", "s/step", "peak GB", "MFU", "zero3"],
                [
                    [
                        "LoRA q,v r8",
                        train["tokens_per_s"],
                        train["samples_per_s"],
                        train["seconds_per_step"],
                        train["peak_gpu_memory_gb"],
                        train["mfu"],
                        train["zero3"],
                    ]
                ],
            ),
            f"MFU: {train['mfu_formula']}; peak {train['peak_tflops']} TFLOP/s "
            f"({train['peak_source']})",
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- shared


def read_json_rows(path) -> list[dict]:
    """A JSON array (curated) or JSON lines (mined), without pyarrow."""
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def sources_of(rows: list[dict]) -> list[str]:
    """train/configs/ul2.yaml's source format (data.prompts without its pyarrow import)."""
    return [SOURCE_PREFIX + (r.get("intent") or "") + "\n" + (r.get("snippet") or "") for r in rows]


def train_bpe(texts: list[str], vocab_size: int = 2048):
    """data.tiny_models' tokenizer recipe (T5 template: `$A </s>`), with only `tokenizers`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>", "<s>"],  # ids 0, 1 as UL2's pad, eos
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B:1", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", eos_token="</s>"
    )


def device_and_dtype():
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


def build_model(config_values: dict, device: str, dtype):
    """Random init straight on `device` in `dtype`: no fp32 copy, no host round trip.

    The weights' values do not matter for throughput: output length is forced and the
    work per token depends only on the shapes."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(**config_values)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = T5ForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    # An untied T5 head starts at unit variance (logits ~ sqrt(d_model)); scale it once as
    # data.tiny_models does, so a random model's loss starts near ln(vocab).
    with torch.no_grad():
        model.lm_head.weight.mul_(config.d_model**-0.5)
    return model.to(dtype)


def count_parameters(model) -> dict:
    def numel(module):
        return sum(p.numel() for p in module.parameters())

    return {
        "total": numel(model),
        "encoder_blocks": numel(model.encoder.block) + numel(model.encoder.final_layer_norm),
        "decoder_blocks": numel(model.decoder.block) + numel(model.decoder.final_layer_norm),
        "lm_head": model.lm_head.weight.numel(),
        "embeddings": model.shared.weight.numel(),
    }


def memory(device: str) -> dict:
    """Peak torch allocation, plus device-wide use now (CTranslate2 allocates outside torch,
    and its caching allocator keeps what the run needed)."""
    import torch

    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        return {
            "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_gpu_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 2),
            "device_memory_used_gb": round((total - free) / 2**30, 2),
        }
    return {"peak_gpu_memory_gb": None, "peak_rss_mb": peak_rss_mb()["self"]}


def _percentiles(values: list[int]) -> dict:
    if not values:
        return {}
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": values[-1]}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def _torch_extensions() -> str:
    from bench.common import REPO

    return os.environ.get("TORCH_EXTENSIONS_DIR") or str(
        REPO / "runs" / "bench" / "torch_extensions"
    )


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# -------------------------------------------------------------------------- translate


def section_translate(job: dict) -> dict:
    import torch
    from transformers import AutoTokenizer

    from serve.engines.base import GenerationOptions

    device, dtype = device_and_dtype()
    torch.manual_seed(job["seed"])
    tokenizer = AutoTokenizer.from_pretrained(job["tokenizer"])
    clock = Stopwatch()
    model = build_model(job["config"], device, dtype).eval()
    build_s = clock()
    parameters = count_parameters(model)
    rows = read_json_rows(job["mined"])[: job["rows"]]
    sources = sources_of(rows)
    options = GenerationOptions(
        max_new_tokens=job["new_tokens"], min_new_tokens=job["new_tokens"], max_source_length=512
    )
    contenders = {"baseline": baseline_loop(model, tokenizer, rows, job, device)}
    contenders["hf"] = hf_engine_path(model, tokenizer, sources, options, job, device)
    if job["skip_ct2"]:
        contenders["ctranslate2"] = {"skipped": "--skip_ct2"}
    else:
        holder = [model]
        del model
        contenders.update(ctranslate2_paths(holder, tokenizer, sources, options, job, device))
    base = contenders["baseline"]["rows_per_s"]
    for entry in contenders.values():
        if entry.get("rows_per_s"):
            entry["ratio_to_baseline"] = entry["rows_per_s"] / base
    return {
        "device": device,
        "dtype": str(dtype).replace("torch.", ""),
        "model_build_s": round(build_s, 1),
        "parameters": parameters,
        "contenders": contenders,
        "timing": "warm-up call first; model build, conversion and engine load not timed; "
        "rows_per_s counts input rows, tokens_per_s new_tokens per generated sequence",
    }


def baseline_loop(model, tokenizer, rows: list[dict], job: dict, device: str) -> dict:
    """The original research loop: 8 rows at a time, in order, one `generate` each."""
    import torch

    rows = rows[: job["baseline_rows"]]
    out_path = Path(job["workdir"], "baseline.jsonl")
    n = job["new_tokens"]

    def run_chunk(chunk):
        batch = tokenizer(
            sources_of(chunk), return_tensors="pt", padding=True, truncation=True, max_length=512
        ).to(device)
        with torch.no_grad():
            generated = model.generate(
                **batch, max_new_tokens=n, min_new_tokens=n, num_beams=1, do_sample=False
            )
        return tokenizer.batch_decode(generated, skip_special_tokens=True)

    run_chunk(rows[:BASELINE_CHUNK])  # warm-up
    _reset_peak(device)
    _sync(device)
    clock = Stopwatch()
    with out_path.open("w", encoding="utf-8") as out:
        for start in range(0, len(rows), BASELINE_CHUNK):
            chunk = rows[start : start + BASELINE_CHUNK]
            for row, text in zip(chunk, run_chunk(chunk)):
                out.write(json.dumps({**row, "rewritten_intent": text}) + "\n")
    seconds = clock()
    return {
        "rows": len(rows),
        "sequences": len(rows),
        "seconds": seconds,
        "rows_per_s": len(rows) / seconds,
        "tokens_per_s": len(rows) * n / seconds,
        "precision": str(model.dtype).replace("torch.", ""),
        **memory(device),
    }


def hf_engine_path(model, tokenizer, sources, options, job, device) -> dict:
    from serve.engines.hf import HFEngine

    engine = HFEngine.from_model(model, tokenizer, options=options)
    engine.generate(sources[:BASELINE_CHUNK])  # warm-up
    _reset_peak(device)
    return _planner_run(engine, sources, job, device, str(model.dtype).replace("torch.", ""))


def _planner_run(engine, sources, job, device, precision) -> dict:
    from serve.planner import generate_rows

    _sync(device)
    clock = Stopwatch()
    result = generate_rows(
        engine, sources, batch_tokens=job["batch_tokens"], max_batch_size=job["max_batch_size"]
    )
    seconds = clock()
    failed = sum(e is not None for e in result.errors)
    if failed:
        raise RuntimeError(f"{failed} rows failed: {next(e for e in result.errors if e)}")
    return {
        "rows": len(sources),
        "sequences": result.unique_sources,
        "batches": result.batches,
        "seconds": seconds,
        "rows_per_s": len(sources) / seconds,
        "tokens_per_s": result.unique_sources * job["new_tokens"] / seconds,
        "precision": precision,
        **memory(device),
    }


def ctranslate2_paths(holder: list, tokenizer, sources, options, job, device) -> dict:
    """Convert the in-memory model once, then run the planner over each compute type."""
    try:
        import ctranslate2
    except ImportError:
        return {"ctranslate2": {"skipped": "ctranslate2 is not installed"}}
    import torch

    model = holder.pop()
    ct2_device = "cuda" if device == "cuda" and ctranslate2.get_cuda_device_count() else "cpu"
    supported = ctranslate2.get_supported_compute_types(ct2_device)
    if ct2_device == "cuda":
        quantization, compute_types = "bfloat16", ("bfloat16", "int8_bfloat16")
    else:
        quantization, compute_types = "float32", ("float32", "int8_float32")
    compute_types = [c for c in compute_types if c in supported]
    need = sum(p.numel() for p in model.parameters()) * (2 if quantization == "bfloat16" else 4)
    target = Path(job["workdir"], "ct2")
    reason = _no_room(need, target.parent)
    if reason or not compute_types:
        del model
        return {"ctranslate2": {"skipped": reason or f"no compute type among {supported}"}}

    clock = Stopwatch()
    model.to("cpu")
    if device == "cuda":
        torch.cuda.empty_cache()
    convert_in_memory(model, tokenizer, target, quantization)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    conversion_s = clock()
    results = {}
    for compute_type in compute_types:
        name = f"ctranslate2-{compute_type}"
        try:
            translator = ctranslate2.Translator(
                str(target),
                device=ct2_device,
                compute_type=compute_type,
                intra_threads=len(os.sched_getaffinity(0)) if ct2_device == "cpu" else 1,
            )
            engine = preloaded_ct2_engine(translator, tokenizer, options, ct2_device, compute_type)
            engine.generate(sources[:BASELINE_CHUNK])  # warm-up
            _reset_peak(device)
            results[name] = _planner_run(engine, sources, job, device, compute_type)
            results[name]["conversion_s"] = round(conversion_s, 1)
            results[name]["conversion"] = quantization
            del engine, translator
        except Exception as error:  # one compute type failing must not lose the others
            results[name] = {"skipped": f"{type(error).__name__}: {error}"[:500]}
        gc.collect()
    if not job["keep_ct2"]:
        shutil.rmtree(target, ignore_errors=True)
    return results


def _no_room(need_bytes: int, directory: Path) -> str | None:
    """Why a conversion needing `need_bytes` cannot run here, or None."""
    available_ram = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available_ram = int(line.split()[1]) * 1024
    except OSError:
        pass
    directory.mkdir(parents=True, exist_ok=True)
    free_disk = shutil.disk_usage(directory).free
    # The model in host RAM plus the converter's fused copies (about a quarter more).
    if available_ram is not None and available_ram < 1.5 * need_bytes:
        return (
            f"conversion needs ~{1.5 * need_bytes / 2**30:.0f} GiB of RAM; "
            f"{available_ram / 2**30:.0f} GiB available"
        )
    if free_disk < 1.1 * need_bytes:
        return (
            f"conversion needs ~{1.1 * need_bytes / 2**30:.0f} GiB of disk in {directory}; "
            f"{free_disk / 2**30:.0f} GiB free"
        )
    return None


def convert_in_memory(model, tokenizer, target: Path, quantization: str) -> None:
    """CTranslate2's Transformers converter, fed the model already in memory.

    The converter normally loads `from_pretrained`; for a 40 GB model that means saving
    it first. Overriding its two loaders hands it the (host-resident) model and tokenizer.
    """
    import ctranslate2

    config_dir = target.with_name(target.name + "-config")
    config_dir.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(config_dir)

    class InMemoryConverter(ctranslate2.converters.TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            return model

        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return tokenizer

    InMemoryConverter(str(config_dir)).convert(str(target), quantization=quantization, force=True)
    shutil.rmtree(config_dir, ignore_errors=True)


def preloaded_ct2_engine(translator, tokenizer, options, device: str, compute_type: str):
    """serve.engines.ctranslate2's engine around a translator built here (its generate and
    count_tokens unchanged; only the conversion-from-disk constructor is bypassed)."""
    from serve.engines.base import Capabilities
    from serve.engines.ctranslate2 import CTranslate2Engine

    engine = CTranslate2Engine.__new__(CTranslate2Engine)
    engine.translator = translator
    engine.tokenizer = tokenizer
    engine.options = options
    engine.device = device
    engine.compute_type = compute_type
    engine.max_batch_tokens = 0
    engine.generated_tokens = 0
    engine.capabilities = Capabilities(
        name="ctranslate2", encoder_decoder=True, truncates_sources=True, device=device
    )
    return engine


def _reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


# ------------------------------------------------------------------------------ train


def section_train(job: dict) -> dict:
    import torch
    from transformers import AutoTokenizer

    device, dtype = device_and_dtype()
    torch.manual_seed(job["seed"])
    tokenizer = AutoTokenizer.from_pretrained(job["tokenizer"])
    batches, data = training_batches(tokenizer, job)
    model = build_model(job["config"], device, dtype)
    parameters = count_parameters(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.config.use_cache = False
    model, lora_kind = add_lora(model)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LEARNING_RATE, weight_decay=0.01)
    step, zero3 = make_step(model, optimizer, trainable, job, device)

    warmup, timed = job["warmup_steps"], job["train_steps"]
    if len(batches) < warmup + timed:
        batches = (batches * (1 + (warmup + timed) // max(1, len(batches))))[: warmup + timed]
    losses = []
    for batch in batches[:warmup]:
        losses.append(step(_to(batch, device)))
    _sync(device)
    totals = {"source": 0, "target": 0, "source_padded": 0, "target_padded": 0, "samples": 0}
    clock = Stopwatch()
    for batch in batches[warmup : warmup + timed]:
        losses.append(step(_to(batch, device)))
        totals["source"] += int(batch["attention_mask"].sum())
        totals["target"] += int((batch["labels"] != -100).sum())
        totals["source_padded"] += batch["input_ids"].numel()
        totals["target_padded"] += batch["labels"].numel()
        totals["samples"] += batch["input_ids"].shape[0]
    _sync(device)
    seconds = clock()

    def model_flops(source_tokens, target_tokens):
        decoder = parameters["decoder_blocks"] + parameters["lm_head"]
        return 6 * (parameters["encoder_blocks"] * source_tokens + decoder * target_tokens)

    peak_tflops, peak_source = peak_flops(job, device)
    useful = model_flops(totals["source"], totals["target"]) / seconds
    padded = model_flops(totals["source_padded"], totals["target_padded"]) / seconds
    return {
        "device": device,
        "dtype": str(dtype).replace("torch.", ""),
        "parameters": parameters,
        "zero3": zero3,
        "lora": f"{lora_kind}: r={LORA['r']} alpha={LORA['alpha']} dropout={LORA['dropout']} "
        f"on {','.join(LORA['targets'])}",
        "trainable_parameters": sum(p.numel() for p in trainable),
        "gradient_checkpointing": "non-reentrant",
        "data": data,
        "batch_size": job["batch_size"],
        "warmup_steps": warmup,
        "timed_steps": timed,
        "seconds": seconds,
        "seconds_per_step": seconds / timed,
        "tokens_per_s": (totals["source"] + totals["target"]) / seconds,
        "samples_per_s": totals["samples"] / seconds,
        "padding_efficiency": (totals["source"] + totals["target"])
        / (totals["source_padded"] + totals["target_padded"]),
        "tokens": totals,
        "losses": [round(x, 4) for x in losses],
        "model_tflops_per_s": useful / 1e12,
        "mfu": useful / (peak_tflops * 1e12) if peak_tflops else None,
        "hfu_padded": padded / (peak_tflops * 1e12) if peak_tflops else None,
        "mfu_formula": "6 * (N_encoder_blocks * source_tokens + (N_decoder_blocks + N_lm_head) "
        "* target_tokens) per step over elapsed time, non-pad tokens; 6 = forward + "
        "checkpoint recompute + input-gradient backward (frozen weights get no weight "
        "gradient); attention-score FLOPs left out",
        "peak_tflops": peak_tflops,
        "peak_source": peak_source,
        **memory(device),
    }


def training_batches(tokenizer, job: dict):
    """Curated pairs, tokenized at the config's limits, in length-grouped batches of 16."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    rows = [
        r
        for r in read_json_rows(job["train_file"])
        if (r.get("rewritten_intent") or "").strip()
        and ((r.get("intent") or "").strip() or (r.get("snippet") or "").strip())
    ]
    sources = tokenizer(sources_of(rows), max_length=MAX_SOURCE_LENGTH, truncation=True)
    targets = tokenizer(
        text_target=[r["rewritten_intent"] for r in rows],
        max_length=MAX_TARGET_LENGTH,
        truncation=True,
    )["input_ids"]
    lengths = [len(x) for x in sources["input_ids"]]
    generator = torch.Generator().manual_seed(job["seed"])
    order = list(LengthGroupedSampler(job["batch_size"], lengths=lengths, generator=generator))
    pad = tokenizer.pad_token_id
    batches = []
    needed = job["warmup_steps"] + job["train_steps"]
    for start in range(0, len(order), job["batch_size"]):
        index = order[start : start + job["batch_size"]]
        source_width = _round_up(max(lengths[i] for i in index), 8)
        target_width = _round_up(max(len(targets[i]) for i in index), 8)
        input_ids = [sources["input_ids"][i] + [pad] * (source_width - lengths[i]) for i in index]
        mask = [[1] * lengths[i] + [0] * (source_width - lengths[i]) for i in index]
        labels = [targets[i] + [-100] * (target_width - len(targets[i])) for i in index]
        batches.append(
            {
                "input_ids": torch.tensor(input_ids),
                "attention_mask": torch.tensor(mask),
                "labels": torch.tensor(labels),
            }
        )
        if len(batches) == needed:
            break
    data = {
        "file": job["train_file"],
        "real": job["real_train_data"],
        "pairs": len(rows),
        "source_lengths": _percentiles(sorted(lengths)),
        "target_lengths": _percentiles(sorted(len(t) for t in targets)),
        "limits": [MAX_SOURCE_LENGTH, MAX_TARGET_LENGTH],
        "batching": "LengthGroupedSampler, padded to a multiple of 8 (as the project's collator)",
    }
    return batches, data


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _to(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def add_lora(model):
    """PEFT's LoRA on q,v when installed (the project's path), else an equivalent here."""
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        return _manual_lora(model), "manual LoRA (peft not installed)"
    config = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=list(LORA["targets"]),
        task_type=TaskType.SEQ_2_SEQ_LM,
    )
    return get_peft_model(model, config), "peft"


def _manual_lora(model):
    import torch
    from torch import nn

    class LoRALinear(nn.Module):
        def __init__(self, base: nn.Linear):
            super().__init__()
            self.base = base
            kw = {"device": base.weight.device, "dtype": base.weight.dtype}
            self.lora_A = nn.Linear(base.in_features, LORA["r"], bias=False, **kw)
            self.lora_B = nn.Linear(LORA["r"], base.out_features, bias=False, **kw)
            nn.init.kaiming_uniform_(self.lora_A.weight, a=5**0.5)
            nn.init.zeros_(self.lora_B.weight)
            self.dropout = nn.Dropout(LORA["dropout"])
            self.scale = LORA["alpha"] / LORA["r"]

        def forward(self, x):
            return self.base(x) + self.lora_B(self.lora_A(self.dropout(x))) * self.scale

    for param in model.parameters():
        param.requires_grad_(False)
    for module in list(model.modules()):
        for name in LORA["targets"]:
            child = getattr(module, name, None)
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, LoRALinear(child))
    return model


def make_step(model, optimizer, trainable, job: dict, device: str):
    """One optimizer step: DeepSpeed ZeRO-3 (world size 1) when installed, else PyTorch."""
    try:
        import deepspeed
    except ImportError:
        deepspeed = None
    if deepspeed is None:

        def plain_step(batch):
            loss = model(**batch).loss
            loss.backward()
            torch_clip(trainable)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(loss)

        return plain_step, False

    for key, value in (
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", str(_free_port())),
        ("RANK", "0"),
        ("LOCAL_RANK", "0"),
        ("WORLD_SIZE", "1"),
    ):
        os.environ.setdefault(key, value)
    deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo")
    config = {
        "train_micro_batch_size_per_gpu": job["batch_size"],
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        "bf16": {"enabled": device == "cuda"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)

    def zero3_step(batch):
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        return float(loss)

    return zero3_step, True


def torch_clip(parameters) -> None:
    import torch

    torch.nn.utils.clip_grad_norm_(parameters, 1.0)


def peak_flops(job: dict, device: str) -> tuple[float | None, str]:
    if job.get("peak_tflops"):
        return job["peak_tflops"], "--peak_tflops"
    if device != "cuda":
        return None, "no GPU: MFU not computed"
    import torch

    name = torch.cuda.get_device_name(0)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return tflops, f"dense bf16 peak of {key} (matched '{name}')"
    return None, f"unknown card '{name}': pass --peak_tflops"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SECTIONS = {"translate": section_translate, "train": section_train}

if __name__ == "__main__":
    main()
