"""Training throughput and padding efficiency on CPU.

    python -m bench.train             # bench/results/train.json
    python -m bench.train --quick     # one short run: a smoke test of the same path

1. Throughput: the tiny T5 of data.tiny_models under 2-rank CPU ZeRO-3, launched as a
   user launches it (`deepspeed --num_gpus 2 --module train.finetune --config
   train/configs/tiny.yaml`), eval, checkpoints and generation metrics off. Tokens/s and
   samples/s are what `train_summary.json` reports (non-pad tokens the model read,
   over `trainer.train()`'s wall time, DeepSpeed engine start included). Two runs of
   different lengths with the same seed read the same first batches, so the difference
   between them gives the steady-state rate with that fixed start cost removed.
   Each rank gets `cores // ranks` threads (OMP_NUM_THREADS); `--compare_default_threads`
   also measures the launcher's default, where every rank sizes its pool to all cores.
2. Padding efficiency (non-pad / padded tokens over one epoch) with and without length
   grouping, from `train.features.padding_efficiency`, on the real curated train file
   (`../shared/data/conala/conala-train.json` when present, else the fixtures),
   tokenized by the tiny tokenizer with the UL2 config's template and length limits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
from pathlib import Path

from bench.common import (
    REPO,
    RESULTS,
    SHARED_CONALA_TRAIN,
    Stopwatch,
    child_env,
    machine,
    table,
    tail,
    write_json,
)

RANKS = 2
TORCH_EXTENSIONS = REPO / "runs" / "bench" / "torch_extensions"
BATCH_SIZES = (8, 16, 32, 64)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.train", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="one short run: a smoke test")
    parser.add_argument("--out", type=Path, default=RESULTS / "train.json")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench/train"))
    parser.add_argument(
        "--steps",
        default=None,
        help="comma-separated max_steps of the runs (default 5,30; --quick: 4)",
    )
    parser.add_argument(
        "--train_file",
        type=Path,
        default=SHARED_CONALA_TRAIN if SHARED_CONALA_TRAIN.is_file() else None,
        help="curated train file (default: the real one when present, else the fixtures)",
    )
    parser.add_argument(
        "--compare_default_threads",
        action="store_true",
        help="also time the launcher's default thread count (every rank sizes its pool to "
        "all cores): one more launch, about 2 minutes here",
    )
    parser.add_argument("--omp_wait_policy", default="PASSIVE", help="'inherit' to leave it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1200)
    args = parser.parse_args(argv)
    steps = args.steps or ("4" if args.quick else "5,30")
    args.steps = sorted({int(s) for s in steps.split(",")})
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    wall = Stopwatch()
    info = machine()
    workdir = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    from data.fixtures import write_fixtures
    from data.tiny_models import build

    fixtures = write_fixtures(workdir / "data", seed=args.seed)
    train_file = args.train_file or fixtures["train"]
    models = build(workdir / "tiny", seed=args.seed)
    print(f"[bench.train] data {train_file}, model {models['t5']}", flush=True)

    threads = max(1, info["cpus_usable"] // RANKS)
    runs = []
    failures = {}
    plan = [(steps, threads) for steps in args.steps]
    if args.compare_default_threads:
        plan.append((args.steps[-1], None))
    for steps, per_rank in plan:
        name = f"steps{steps}-threads{per_rank or 'default'}"
        result = train_run(name, steps, per_rank, train_file, fixtures, models["t5"], args)
        if "error" in result:
            failures[name] = result["error"]
            print(f"[bench.train] {name} FAILED:\n{result['error']}", flush=True)
            continue
        runs.append(result)
        print(
            f"[bench.train] {name}: {result['tokens_per_s']:.0f} tokens/s, "
            f"{result['samples_per_s']:.1f} samples/s in {result['train_seconds']:.1f}s "
            f"(launch to exit {result['wall_seconds']:.0f}s)",
            flush=True,
        )

    report = {
        "machine": info,
        "training": summarize_training(runs, args, threads, train_file),
        "padding_efficiency": padding_report(train_file, models["t5"]),
        "failures": failures,
    }
    report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report["wall_seconds"] = round(wall(), 1)
    write_json(args.out, report)
    print()
    print(render(report))
    print(f"\nwrote {args.out} in {report['wall_seconds']:.0f}s")
    if failures or not runs:
        sys.exit(1)
    return report


def train_run(name, steps, threads, train_file, fixtures, model, args) -> dict:
    out = args.workdir.resolve() / "runs" / name
    env = child_env()
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if args.omp_wait_policy != "inherit":
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    # DeepSpeed JIT-builds a CPU op at start; a cache shared with another checkout (or
    # venv) is rebuilt whenever the two alternate, which costs minutes on 2 cores.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(TORCH_EXTENSIONS))
    command = [
        str(Path(sys.executable).parent / "deepspeed"),
        "--num_gpus", str(RANKS), "--master_port", str(_free_port()),
        "--module", "train.finetune", "--config", "train/configs/tiny.yaml",
        "--model_name_or_path", str(model), "--train_file", str(train_file),
        "--validation_file", str(fixtures["test"]), "--output_dir", str(out),
        "--max_steps", str(steps), "--eval_strategy", "no", "--save_strategy", "no",
        "--generation_eval", "false", "--logging_steps", "1", "--disable_tqdm", "true",
        "--report_to", "none", "--seed", str(args.seed),
    ]  # fmt: skip
    import subprocess

    log = out.parent / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    clock = Stopwatch()
    with log.open("w") as handle:
        try:
            code = subprocess.run(
                command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                timeout=args.timeout,
            ).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            code = 124
    summary_file = out / "train_summary.json"
    if code != 0 or not summary_file.is_file():
        return {"error": f"exit code {code}; log {log}:\n{tail(log)}"}
    summary = json.loads(summary_file.read_text())
    collated = summary["padding_efficiency"]
    return {
        "name": name,
        "max_steps": steps,
        "threads_per_rank": threads or "default",
        "global_step": summary["global_step"],
        "train_seconds": summary["train_seconds"],
        "tokens_per_s": summary["tokens_per_s"],
        "samples_per_s": summary["samples_per_s"],
        "tokens": summary["tokens_per_s"] * summary["train_seconds"],
        "samples": summary["samples_per_s"] * summary["train_seconds"],
        "padding_efficiency_measured": collated["measured"],
        "peak_memory_mb_rank0": summary["peak_memory_mb"],
        "world_size": summary["world_size"],
        "final_loss": summary["loss_curve"][-1]["loss"] if summary["loss_curve"] else None,
        "wall_seconds": clock(),
    }


def summarize_training(runs, args, threads, train_file) -> dict:
    tuned = [r for r in runs if r["threads_per_rank"] == threads]
    longest = max(tuned, key=lambda r: r["max_steps"]) if tuned else None
    steady = None
    if len(tuned) >= 2:
        short, long = min(tuned, key=lambda r: r["max_steps"]), longest
        seconds = long["train_seconds"] - short["train_seconds"]
        if seconds > 0:
            steady = {
                "tokens_per_s": (long["tokens"] - short["tokens"]) / seconds,
                "samples_per_s": (long["samples"] - short["samples"]) / seconds,
                "seconds_per_step": seconds / (long["global_step"] - short["global_step"]),
                "from_runs": [short["name"], long["name"]],
            }
    default = [r for r in runs if r["threads_per_rank"] == "default"]
    return {
        "model": "data.tiny_models T5 (d_model 128, 2+2 layers, gated-SiLU), LoRA r16 all-linear",
        "config": "train/configs/tiny.yaml (batch 16 per rank, fp32, ZeRO-3)",
        "launch": f"deepspeed --num_gpus {RANKS} --module train.finetune (gloo, CPU)",
        "world_size": RANKS,
        "data": str(train_file),
        "threads_per_rank": threads,
        "tokens_per_s": longest["tokens_per_s"] if longest else None,
        "samples_per_s": longest["samples_per_s"] if longest else None,
        "steady_state": steady,
        "default_threads_tokens_per_s": default[0]["tokens_per_s"] if default else None,
        "definition": "train_summary.json: non-pad tokens (encoder input + labels) and samples "
        "over trainer.train() wall time, DeepSpeed engine start included; steady_state is the "
        "difference of two runs with the same seed (fixed start cost removed)",
        "runs": runs,
    }


def padding_report(train_file: Path, tokenizer_dir: Path) -> dict:
    """Padding efficiency of one epoch, per batch size, grouped and random."""
    import yaml
    from transformers import AutoTokenizer

    from data.loaders import load_curated
    from data.prompts import SourceTemplate, make_pairs
    from train.features import padding_efficiency, tokenize

    config = yaml.safe_load((REPO / "train/configs/ul2.yaml").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    pairs = make_pairs(
        load_curated(str(train_file)), SourceTemplate(prefix=config.get("source_prefix", ""))
    )
    features = tokenize(
        pairs.sources,
        pairs.targets,
        tokenizer,
        encoder_decoder=True,
        max_source_length=config["max_source_length"],
        max_target_length=config["max_target_length"],
    )
    lengths = [(len(a), len(b)) for a, b in zip(features["input_ids"], features["labels"])]
    per_batch = {}
    for batch in BATCH_SIZES:
        grouped = padding_efficiency(lengths, batch, grouped=True)
        shuffled = padding_efficiency(lengths, batch, grouped=False)
        per_batch[str(batch)] = {
            "grouped": grouped,
            "random": shuffled,
            "padded_tokens_saved": 1 - shuffled / grouped,
        }
    sources = sorted(a for a, _ in lengths)
    targets = sorted(b for _, b in lengths)
    return {
        "data": str(train_file),
        "real_data": train_file.resolve() == SHARED_CONALA_TRAIN.resolve(),
        "pairs": len(lengths),
        "tokenizer": "data.tiny_models byte-level BPE (vocab 2048), not UL2's sentencepiece",
        "template": f"{config.get('source_prefix', '')!r} + intent + '\\n' + snippet",
        "headline_batch_size": config["per_device_train_batch_size"],
        "grouped": per_batch[str(config["per_device_train_batch_size"])]["grouped"],
        "random": per_batch[str(config["per_device_train_batch_size"])]["random"],
        "by_batch_size": per_batch,
        "length_percentiles": {
            "source": _percentiles(sources),
            "target": _percentiles(targets),
        },
        "definition": "non-pad / padded tokens over one epoch (source and target padded "
        "separately); grouped = the Trainer's LengthGroupedSampler scheme (mega-batches of 50 "
        "batches sorted by source length), random = shuffled batches",
    }


def _percentiles(values: list[int]) -> dict:
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": values[-1]}


def render(report: dict) -> str:
    training = report["training"]
    rows = [
        [
            r["name"],
            r["threads_per_rank"],
            r["global_step"],
            r["tokens_per_s"],
            r["samples_per_s"],
            r["train_seconds"],
            r["padding_efficiency_measured"],
        ]
        for r in training["runs"]
    ]
    if training["steady_state"]:
        steady = training["steady_state"]
        rows.append(
            [
                "steady state (difference)",
                training["threads_per_rank"],
                None,
                steady["tokens_per_s"],
                steady["samples_per_s"],
                None,
                None,
            ]
        )
    lines = [
        table(
            [
                "run",
                "threads/rank",
                "steps",
                "tokens/s",
                "samples/s",
                "train s",
                "padding eff. (measured)",
            ],
            rows,
        ),
        "",
    ]
    padding = report["padding_efficiency"]
    lines.append(
        table(
            ["batch size", "grouped", "random", "padded tokens saved"],
            [
                [size, v["grouped"], v["random"], v["padded_tokens_saved"]]
                for size, v in padding["by_batch_size"].items()
            ],
        )
    )
    lines.append(
        f"padding efficiency on {padding['pairs']} pairs of {padding['data']} "
        f"({'real CoNaLa' if padding['real_data'] else 'fixtures'}), tiny tokenizer"
    )
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    main()
