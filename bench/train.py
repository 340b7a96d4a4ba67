"""Training throughput and padding efficiency on CPU.

    python -m bench.train             # bench/results/train.json
    python -m bench.train --quick     # one short run: a smoke test of the same path

1. Throughput: data.tiny_models' T5 under 2-rank CPU ZeRO-3, launched as a user does
   (deepspeed --module train.finetune, train/configs/tiny.yaml); two runs of different
   lengths give the steady state by difference. Each rank gets `cores // ranks` threads.
2. Padding efficiency with and without length grouping (train.features) on the real
   curated train file when present, with the UL2 config's template and limits.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
from pathlib import Path

from bench import common
from bench.common import REPO, RESULTS, SHARED_CONALA_TRAIN, percentiles, stopwatch, table

RANKS = 2
TORCH_EXTENSIONS = REPO / "runs" / "bench" / "torch_extensions"
BATCH_SIZES = (8, 16, 32, 64)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__)
    add = parser.add_argument
    add("--quick", action="store_true", help="one short run: a smoke test")
    add("--out", type=Path, default=RESULTS / "train.json")
    add("--workdir", type=Path, default=Path("runs/bench/train"))
    add("--steps", help="comma-separated max_steps of the runs (default 5,30; --quick: 4)")
    real = SHARED_CONALA_TRAIN if SHARED_CONALA_TRAIN.is_file() else None
    add("--train_file", type=Path, default=real, help="default: the real one, else fixtures")
    add("--compare_default_threads", action="store_true", help="one more run (~2 minutes)")
    add("--omp_wait_policy", default="PASSIVE", help="'inherit' to leave it")
    add("--seed", type=int, default=0)
    add("--timeout", type=float, default=1200)
    args = parser.parse_args(argv)
    steps = args.steps or ("4" if args.quick else "5,30")
    args.steps = sorted({int(s) for s in steps.split(",")})
    wall, info = stopwatch(), common.machine()
    workdir = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    from data.fixtures import write_fixtures
    from data.tiny_models import build

    fixtures = write_fixtures(workdir / "data", seed=args.seed)
    train_file = args.train_file or fixtures["train"]
    model = build(workdir / "tiny", seed=args.seed)["t5"]
    print(f"[bench.train] data {train_file}, model {model}", flush=True)
    threads = max(1, info["cpus_usable"] // RANKS)
    plan = [(steps, threads) for steps in args.steps]
    plan += [(args.steps[-1], None)] if args.compare_default_threads else []
    runs, failures = [], {}
    for steps, per_rank in plan:
        name = f"steps{steps}-threads{per_rank or 'default'}"
        result = train_run(name, steps, per_rank, train_file, fixtures, model, args)
        if "error" in result:
            failures[name] = result["error"]
            print(f"[bench.train] {name} FAILED:\n{result['error']}", flush=True)
        else:
            runs.append(result)
            print(f"[bench.train] {name}: {result['tokens_per_s']:.0f} tokens/s", flush=True)
    report = {"machine": info, "training": summarize_training(runs, threads, train_file),
              "padding_efficiency": padding_report(train_file, model),
              "failures": failures}  # fmt: skip
    report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report["wall_seconds"] = round(wall(), 1)
    common.write_json(args.out, report)
    print(f"\n{render(report)}\n\nwrote {args.out} in {report['wall_seconds']:.0f}s")
    if failures or not runs:
        sys.exit(1)
    return report


def train_run(name, steps, threads, train_file, fixtures, model, args) -> dict:
    out = args.workdir.resolve() / "runs" / name
    env = common.child_env()
    env.pop("OMP_NUM_THREADS", None)
    env.update({"OMP_NUM_THREADS": str(threads)} if threads else {})
    # DeepSpeed JIT-builds a CPU op at start; a cache shared with another checkout (or
    # venv) is rebuilt whenever the two alternate, which costs minutes on 2 cores.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(TORCH_EXTENSIONS))
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        "-m", "deepspeed.launcher.runner", "--num_gpus", RANKS, "--master_port",
        port, "--module", "train.finetune", "--config", "train/configs/tiny.yaml",
        "--model_name_or_path", model, "--train_file", train_file,
        "--validation_file", fixtures["test"], "--output_dir", out, "--max_steps", steps,
        "--eval_strategy", "no", "--save_strategy", "no", "--generation_eval", "false",
        "--logging_steps", "1", "--disable_tqdm", "true", "--report_to", "none",
        "--seed", args.seed,
    ]  # fmt: skip
    log, clock = out.parent / f"{name}.log", stopwatch()
    policy = None if args.omp_wait_policy == "inherit" else args.omp_wait_policy
    summary = common.run_child(command, log=log, result=out / "train_summary.json", env=env,
                               timeout=args.timeout, omp_wait_policy=policy)  # fmt: skip
    if isinstance(summary, str):
        return {"error": summary}
    seconds = summary["train_seconds"]
    copied = {k: summary[k] for k in ("global_step", "tokens_per_s", "samples_per_s", "world_size")}
    return {"name": name, "max_steps": steps, "threads_per_rank": threads or "default", **copied,
            "train_seconds": seconds, "tokens": summary["tokens_per_s"] * seconds,
            "samples": summary["samples_per_s"] * seconds,
            "padding_efficiency_measured": summary["padding_efficiency"]["measured"],
            "peak_memory_mb_rank0": summary["peak_memory_mb"], "wall_seconds": clock(),
            "final_loss": (summary["loss_curve"] or [{"loss": None}])[-1]["loss"]}  # fmt: skip


def summarize_training(runs, threads, train_file) -> dict:
    tuned = [r for r in runs if r["threads_per_rank"] == threads]  # in max_steps order
    longest, steady = (tuned[-1] if tuned else None), None
    if len(tuned) >= 2 and tuned[-1]["train_seconds"] > tuned[0]["train_seconds"]:
        short, long = tuned[0], tuned[-1]
        seconds = long["train_seconds"] - short["train_seconds"]
        steady = {"tokens_per_s": (long["tokens"] - short["tokens"]) / seconds,
                  "samples_per_s": (long["samples"] - short["samples"]) / seconds,
                  "seconds_per_step": seconds / (long["global_step"] - short["global_step"]),
                  "from_runs": [short["name"], long["name"]]}  # fmt: skip
    default = [r["tokens_per_s"] for r in runs if r["threads_per_rank"] == "default"]
    return {"model": "data.tiny_models T5 (d_model 128, 2+2 layers, gated-SiLU), LoRA r16 "
            "all-linear", "config": "train/configs/tiny.yaml (batch 16 per rank, fp32, ZeRO-3)",
            "launch": f"deepspeed --num_gpus {RANKS} --module train.finetune (gloo, CPU)",
            "world_size": RANKS, "data": common.portable(train_file.resolve()),
            "threads_per_rank": threads,
            **{k: longest[k] if longest else None for k in ("tokens_per_s", "samples_per_s")},
            "steady_state": steady, "definition": "train_summary.json: non-pad tokens (encoder "
            "input + labels) and samples over trainer.train() wall time, DeepSpeed engine start "
            "included; steady_state is the difference of two runs with the same seed (fixed "
            "start cost removed)", "runs": runs,
            "default_threads_tokens_per_s": default[0] if default else None}  # fmt: skip


def padding_report(train_file: Path, tokenizer_dir: Path) -> dict:
    """Padding efficiency of one epoch, per batch size, grouped and random."""
    import yaml
    from transformers import AutoTokenizer

    from data.loaders import load_curated
    from data.prompts import SourceTemplate, make_pairs
    from train.features import padding_efficiency, tokenize

    config = yaml.safe_load((REPO / "train/configs/ul2.yaml").read_text())
    template = SourceTemplate(prefix=config.get("source_prefix", ""))
    pairs = make_pairs(load_curated(str(train_file)), template)
    limits = {k: config[k] for k in ("max_source_length", "max_target_length")}
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    features = tokenize(pairs.sources, pairs.targets, tokenizer, encoder_decoder=True, **limits)
    lengths = [(len(a), len(b)) for a, b in zip(features["input_ids"], features["labels"])]
    per_batch = {}
    for batch in BATCH_SIZES:
        grouped, shuffled = (padding_efficiency(lengths, batch, grouped=g) for g in (True, False))
        per_batch[str(batch)] = {"grouped": grouped, "random": shuffled,
                                 "padded_tokens_saved": 1 - shuffled / grouped}  # fmt: skip
    headline = str(config["per_device_train_batch_size"])
    return {"data": common.portable(train_file.resolve()),  # portable: no machine's dirs
            "real_data": train_file.resolve() == SHARED_CONALA_TRAIN.resolve(),
            "pairs": len(lengths),
            "tokenizer": "data.tiny_models byte-level BPE (vocab 2048), not UL2's sentencepiece",
            "template": f"{config.get('source_prefix', '')!r} + intent + '\\n' + snippet",
            "headline_batch_size": int(headline), "grouped": per_batch[headline]["grouped"],
            "random": per_batch[headline]["random"], "by_batch_size": per_batch,
            "length_percentiles": {"source": percentiles([a for a, _ in lengths]),
                                   "target": percentiles([b for _, b in lengths])},
            "definition": "non-pad / padded tokens over one epoch (source and target padded "
            "separately); grouped = the Trainer's LengthGroupedSampler scheme (mega-batches of "
            "50 batches sorted by source length), random = shuffled batches"}  # fmt: skip


def render(report: dict) -> str:
    training, padding = report["training"], report["padding_efficiency"]
    keys = ("name", "threads_per_rank", "global_step", "tokens_per_s", "samples_per_s")
    rows = [[r[k] for k in keys] + [r["train_seconds"], r["padding_efficiency_measured"]]
            for r in training["runs"]]  # fmt: skip
    if steady := training["steady_state"]:
        rows.append(["steady state (difference)", training["threads_per_rank"], None,
                     steady["tokens_per_s"], steady["samples_per_s"], None, None])  # fmt: skip
    headers = ["run", "threads/rank", "steps", "tokens/s", "samples/s", "train s", "padding eff."]
    sizes = [[k, v["grouped"], v["random"], v["padded_tokens_saved"]]
             for k, v in padding["by_batch_size"].items()]  # fmt: skip
    kind = "real CoNaLa" if padding["real_data"] else "fixtures"
    return "\n".join([table(headers, rows), "", table(["batch size", "grouped", "random",
        "padded tokens saved"], sizes), f"padding efficiency on {padding['pairs']} pairs of "
        f"{padding['data']} ({kind}), tiny tokenizer"])  # fmt: skip


if __name__ == "__main__":
    main()
