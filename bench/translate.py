"""translate-mined throughput: the original research loop against this project's engines.

    python -m bench.translate            # 2,000 rows, 3 repeats: bench/results/translate.json
    python -m bench.translate --quick    # 64 rows, 1 repeat: a smoke run of every contender

Same work for all: data.fixtures mined rows minus repeated (intent, snippet) pairs, output
forced to `--new_tokens`, each repeat a fresh process, repeats interleaved. `findings`: a
cProfile of each engine, a sweep of CTranslate2's levers. An engine build + close (`load_s`)
is subtracted from the pipeline's wall time; vLLM's minute-long start cannot be, so the
decoder pair is timed on shard work (manifest `stats.seconds`).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import shutil
import sys
from pathlib import Path

from bench import common
from bench.common import RESULTS, median, read_jsonl, stopwatch, table

# contender -> (model, engine, precision, data set); None engine: not serve.translate.
# `-int8-tuned`: the sweep's best serve.translate settings. `-raw`: the engine's Translator
# alone on the same batches, pre-tokenized. `-duplicates`: real CoNaLa's duplicate rate. The
# decoder-only pair is 256 wide x 4 layers (at 128 x 2 both would time only per-step overhead).
CONTENDERS = {"baseline": ("t5", None, "float32", "unique"),
              "hf": ("t5", "hf", "float32", "unique"),
              "ctranslate2": ("t5", "ctranslate2", "auto", "unique"),
              "ctranslate2-int8": ("t5", "ctranslate2", "int8", "unique"),
              "ctranslate2-int8-tuned": ("t5", "ctranslate2", "int8", "unique"),
              "ctranslate2-raw": ("t5", None, "auto", "unique"),
              "ctranslate2-duplicates": ("t5", "ctranslate2", "auto", "duplicates"),
              "hf-llama": ("llama", "hf", "float32", "decoder"),
              "vllm": ("llama", "vllm", "float32", "decoder")}  # fmt: skip
PIPELINES = [n for n, (m, e, _, d) in CONTENDERS.items() if m == "t5" and e and d == "unique"]
NOTES = ["ctranslate2's CPU `auto` precision resolves to float32, so `ctranslate2` is the "
         "float32 contender (a separate ctranslate2-float32 run duplicated it)"]  # fmt: skip
# The sweep's fastest setting: CTranslate2 splits each planner batch into sub-batches of at
# most 2,048 tokens (on 2 cores smaller batches run faster and overlap host work).
TUNED_ENGINE_ARGS = {"ctranslate2-int8-tuned": {"max_batch_tokens": 2048}}
REFERENCE = {"hf-llama": "hf-llama", "vllm": "hf-llama"}  # the rest: baseline
BASELINE_CHUNK = 8
# Real CoNaLa train: 39 of 2,378 rows repeat a pair; recomputed when the file is at hand.
CONALA_DUPLICATE_RATE = 39 / 2378
TARGETS = {"speedup": 10.0, "overhead": 0.05, "vllm_vs_hf": 1.0}
# data.tiny_models' builder sizes for the bench models.
BENCH_T5 = {"d_model": 256, "d_kv": 64, "d_ff": 1024, "layers": 4, "heads": 4}
BENCH_LLAMA = {"hidden": 256, "intermediate": 768, "layers": 4, "heads": 4, "head_dim": 64}
LLAMA_TEMPLATE = "{intent}\n{snippet}\nRewritten intent: "
# CTranslate2 levers swept in `findings` (engine + planner, no I/O), on 2 cores.
SWEEP_KEYS = ("precision", "inter_threads", "intra_threads", "batch_tokens", "max_batch_size",
              "max_batch_tokens")  # fmt: skip
SWEEP = [("float32", 1, 2, 16384, 256, 0), ("float32", 2, 1, 16384, 256, 0),
         ("float32", 1, 2, 4096, 64, 0), ("int8", 1, 2, 16384, 256, 0),
         ("int8", 2, 1, 16384, 256, 0), ("int8", 1, 2, 4096, 64, 0), ("int8", 2, 1, 4096, 64, 0),
         ("int8", 1, 2, 2048, 32, 0), ("int8", 1, 2, 16384, 256, 2048)]  # fmt: skip


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.translate", description=__doc__)
    add = parser.add_argument
    add("--rows", type=int, help="mined rows (default 2000; --quick: 64)")
    add("--repeats", type=int, help="runs per contender (default 3; --quick: 1)")
    add("--quick", action="store_true", help="64 rows, 1 repeat: a smoke run")
    add("--out", type=Path, default=RESULTS / "translate.json")
    add("--workdir", type=Path, default=Path("runs/bench/translate"))
    add("--contenders", default=",".join(CONTENDERS))
    add("--new_tokens", type=int, default=24, help="forced output length")
    add("--batch_tokens", type=int, default=16_384, help="planner token budget")
    add("--max_batch_size", type=int, default=256, help="planner rows per call")
    add("--baseline_rows", type=int, help="rows for the baseline (default 400)")
    add("--decoder_rows", type=int, help="rows for the decoder pair (default 500)")
    add("--decoder_repeats", type=int, default=2, help="vLLM starts in 1-2 minutes here")
    add("--duplicate_rate", type=float, help="default: measured on real CoNaLa")
    add("--no_findings", action="store_true", help="skip the profile and the sweep")
    add("--threads", type=int, help="CPUs per contender (default: all usable)")
    add("--seed", type=int, default=0)
    add("--timeout", type=float, default=900, help="seconds per child")
    add("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.rows = args.rows or (64 if args.quick else 2000)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.baseline_rows = min(args.rows, args.baseline_rows or 400)
    args.decoder_rows = min(args.rows, args.decoder_rows or 500)
    args.contenders = [c for c in args.contenders.split(",") if c]
    if set(args.contenders) - set(CONTENDERS):
        parser.error(f"unknown contenders: {sorted(set(args.contenders) - set(CONTENDERS))}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker.read_text()))
    wall, info = stopwatch(), common.machine()
    workdir = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    spec = prepare(args, workdir)
    print(f"[bench.translate] {args.rows} rows, models and data in {workdir}", flush=True)
    runs, failures = {name: [] for name in args.contenders}, {}
    # Reversed on odd repeats, so no contender always follows the same neighbour.
    jobs = [(r, n) for r in range(args.repeats) for n in args.contenders[:: 1 - 2 * (r % 2)]]
    for repeat, name in jobs + ([] if args.no_findings else [(0, "findings")]):
        decoder = CONTENDERS.get(name, "")[-1:] == ("decoder",)
        if name in failures or (decoder and repeat >= args.decoder_repeats):
            continue
        # Each in a fresh process: its result, or an error text.
        run_dir = workdir / "runs" / f"{name}-{repeat}"
        run_dir.mkdir(parents=True)
        job = {**spec, **vars(args), "contender": name, "run_dir": str(run_dir)}
        for key in ("out", "workdir", "worker", "findings"):
            job.pop(key, None)
        (run_dir / "job.json").write_text(json.dumps(job, indent=2))
        result = common.run_child(["-m", "bench.translate", "--worker", run_dir / "job.json"],
                                  log=run_dir / "log.txt", timeout=args.timeout,
                                  threads=args.threads, result=run_dir / "result.json")  # fmt: skip
        if isinstance(result, str):
            failures[name] = result
            print(f"[bench.translate] {name} FAILED:\n{result}", flush=True)
        elif name == "findings":
            spec["findings"] = result
        else:
            runs[name].append(result)
            print(f"[bench.translate] repeat {repeat + 1}/{args.repeats} {name:22s} "
                  f"{result['rows_per_s']:8.1f} rows/s (timed {result['seconds']:.1f}s, "
                  f"load {result['load_s']:.1f}s)", flush=True)  # fmt: skip
    report = summarize(args, spec, info, runs, failures)
    report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report["wall_seconds"] = round(wall(), 1)
    common.write_json(args.out, report)
    print("\n" + render(report) + f"\n\nwrote {args.out} in {report['wall_seconds']:.0f}s")
    if failures:
        sys.exit(f"failed: {', '.join(sorted(failures))}")
    return report


def prepare(args, workdir: Path) -> dict:
    """Data sets, models and CTranslate2 conversions, all before any timing."""
    from data.fixtures import write_fixtures
    from data.prompts import SourceTemplate
    from data.tiny_models import build
    from serve.engines.ctranslate2 import convert, resolve_compute_type

    # Fixture rows repeat ~15% of pairs; draw more and keep each pair's first row.
    mined = write_fixtures(workdir / "data", seed=args.seed, mined_rows=args.rows * 3 // 2 + 64)
    first_of = {}
    for row in read_jsonl(mined["mined"]):
        first_of.setdefault((row["intent"], row["snippet"]), row)
    unique = list(first_of.values())[: args.rows]
    # The exact-duplicate (intent, snippet) rate of real CoNaLa, and where it came from.
    path, rate, rate_source = common.SHARED_CONALA_TRAIN, args.duplicate_rate, "--duplicate_rate"
    if rate is None and not path.is_file():
        rate, rate_source = CONALA_DUPLICATE_RATE, f"{path} (recorded: 39 of 2378 rows)"
    elif rate is None:
        pairs = [(r["intent"], r["snippet"]) for r in json.loads(path.read_text(encoding="utf-8"))]
        repeated = len(pairs) - len(set(pairs))
        rate = repeated / len(pairs)
        rate_source = f"{path}: {repeated} of {len(pairs)} rows repeat a pair"
    # The same row count at that rate: the chosen rows repeat an earlier row's pair.
    rng = random.Random(args.seed)
    repeats = set(rng.sample(range(1, len(unique)), round(rate * len(unique))))
    duplicates, fresh = [], iter(unique)
    for index in range(len(unique)):
        copy = index in repeats and dict(duplicates[rng.randrange(index)], id=f"dup-{index}")
        duplicates.append(copy or next(fresh))
    sets = {"unique": unique, "duplicates": duplicates, "decoder": unique[: args.decoder_rows]}
    for name, rows in sets.items():
        (workdir / "data" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    models = build(workdir / "models", seed=args.seed, t5=BENCH_T5, llama=BENCH_LLAMA)
    SourceTemplate(LLAMA_TEMPLATE).save(models["llama"])  # the decoder-only cue
    types = {precision: resolve_compute_type(precision, "cpu") for precision in ("auto", "int8")}
    cache = workdir / "ct2-cache"
    return {"data": {name: str(workdir / "data" / f"{name}.jsonl") for name in sets},
            "models": {k: str(v) for k, v in models.items()}, "compute_types": types,
            "conversions": {p: str(convert(models["t5"], t, cache)) for p, t in types.items()},
            "cache_dir": str(cache), "duplicate_rate": rate,
            "duplicate_rate_source": rate_source, "duplicates": len(repeats)}  # fmt: skip


def summarize(args, spec, info, runs, failures) -> dict:
    contenders = {}
    for name, results in runs.items():
        if results:
            keys = ("rows_per_s", "tokens_per_s", "seconds", "load_s", "peak_rss_mb")
            contenders[name] = {
                **{k: v for k, v in results[0].items() if isinstance(v, str)},
                **{key: median([r.get(key) for r in results]) for key in keys},
                "rows": results[0]["rows"], "sequences": results[0]["sequences"],
                "repeats": len(results),
                "rows_per_s_runs": [round(r["rows_per_s"], 2) for r in results],
            }  # fmt: skip
    for name, entry in contenders.items():
        base = contenders.get(REFERENCE.get(name, "baseline"))
        entry["ratio_to"] = REFERENCE.get(name, "baseline")
        entry["ratio_to_baseline"] = entry["rows_per_s"] / base["rows_per_s"] if base else None

    rps = lambda name: contenders.get(name, {}).get("rows_per_s")  # noqa: E731
    pair = ("ctranslate2", "ctranslate2-raw")
    overhead = 1 - rps(pair[0]) / rps(pair[1]) if rps(pair[0]) and rps(pair[1]) else None
    paired = median([1 - p["rows_per_s"] / r["rows_per_s"]
                     for p, r in zip(runs.get(pair[0], []), runs.get(pair[1], []))])  # fmt: skip
    pipelines = [n for n in PIPELINES if rps(n)]
    best = max(pipelines, key=rps) if pipelines else None
    speedup = contenders[best]["ratio_to_baseline"] if best else None
    vllm_ratio = contenders.get("vllm", {}).get("ratio_to_baseline")
    dedup, dup = None, contenders.get("ctranslate2-duplicates")
    if dup and rps(pair[0]):
        dedup = {"duplicate_rate": spec["duplicate_rate"], "source": spec["duplicate_rate_source"],
                 "rows": dup["rows"], "duplicate_rows": spec["duplicates"],
                 "unique_sources": dup["sequences"], "rows_per_s": dup["rows_per_s"],
                 "rows_per_s_duplicate_free": rps(pair[0]),
                 "gain": dup["rows_per_s"] / rps(pair[0]) - 1,
                 "gain_paired": median([d["rows_per_s"] / p["rows_per_s"] - 1 for d, p in
                                        zip(runs["ctranslate2-duplicates"], runs[pair[0]])]),
                 "generation_saved": 1 - dup["sequences"] / dup["rows"],
                 "definition": "ctranslate2 pipeline rows/s on the set with duplicates over rows/s "
                 "on the duplicate-free set (same row count), minus 1; generation_saved: the share "
                 "of rows dedup does not generate, the gain to expect without noise"}  # fmt: skip
    setup = {"data": f"data.fixtures mined rows, seed {args.seed}, first row of each pair only",
             "models": "data.tiny_models: bench.translate.BENCH_T5 and BENCH_LLAMA, random init",
             "threads": args.threads or info["cpus_usable"], "omp_wait_policy": "PASSIVE",
             **{k: getattr(args, k) for k in ("new_tokens", "batch_tokens", "max_batch_size",
                                              "baseline_rows", "decoder_rows")}}  # fmt: skip
    targets = {"best_pipeline_engine": best, "speedup_vs_baseline": speedup,
               "speedup_target": TARGETS["speedup"], "pipeline_overhead": overhead,
               "overhead_target": TARGETS["overhead"], "vllm_vs_hf": vllm_ratio,
               "vllm_vs_hf_target": TARGETS["vllm_vs_hf"],
               "speedup_met": (speedup or 0) >= TARGETS["speedup"],
               "overhead_met": overhead is not None and overhead <= TARGETS["overhead"],
               "vllm_vs_hf_met": (vllm_ratio or 0) >= TARGETS["vllm_vs_hf"]}  # fmt: skip
    return {"machine": info, "rows": args.rows, "duplicate_free": True,
            "unique_sources": contenders.get("ctranslate2", {}).get("sequences"), "setup": setup,
            "timing": "one-time work excluded from every contender: conversions before timing; "
            "engine build + close timed apart (load_s) and subtracted, after a warm-up build; the "
            "decoder pair on shard work (manifest stats.seconds) since vLLM's start cannot be "
            "subtracted. Medians over repeats; each repeat a fresh process, interleaved.",
            "repeats": args.repeats, "contenders": contenders,
            "pipeline_overhead": overhead, "pipeline_overhead_paired": paired,
            "pipeline_overhead_definition": "1 - rows_per_s(ctranslate2) / rows_per_s("
            "ctranslate2-raw): the same unique sources in the same batches; _paired: the median "
            "of per-repeat ratios", "dedup_gain": dedup, "targets": targets,
            "findings": spec.get("findings"), "notes": NOTES, "failures": failures}  # fmt: skip


def render(report: dict) -> str:
    keys = ("precision", "rows", "rows_per_s", "tokens_per_s", "peak_rss_mb",
            "ratio_to_baseline", "ratio_to")  # fmt: skip
    rows = [[name, *(e.get(k) for k in keys)] for name, e in report["contenders"].items()]
    headers = ["contender", "precision", "rows", "rows/s", "tokens/s", "peak RSS MB", "ratio"]
    lines, t = [table([*headers, "ratio to"], rows), ""], report["targets"]
    verdicts = (
        ("speedup_vs_baseline", "speedup_met", f"best encoder-decoder pipeline "
         f"{t['best_pipeline_engine']}: {t['speedup_vs_baseline'] or 0:.2f}x baseline, target "
         f">= {t['speedup_target']}x"),
        ("pipeline_overhead", "overhead_met", f"pipeline overhead vs ctranslate2-raw "
         f"{t['pipeline_overhead'] or 0:.1%} (paired {report['pipeline_overhead_paired'] or 0:.1%})"
         ", target <= 5%"),
        ("vllm_vs_hf", "vllm_vs_hf_met", f"vllm / hf-llama {t['vllm_vs_hf'] or 0:.2f}x, target 1"),
    )  # fmt: skip
    for key, met, text in verdicts:
        if t[key] is not None:
            lines.append(f"{text}: {'met' if t[met] else 'NOT met'}")
    if d := report["dedup_gain"]:
        lines.append(f"dedup gain at the real duplicate rate {d['duplicate_rate']:.2%}: "
                     f"{d['gain']:+.1%}")  # fmt: skip
    findings = report.get("findings") or {}
    if sweep := findings.get("sweep"):
        lines += ["", table(list(sweep[0]), [list(s.values()) for s in sweep])]
    for key, value in findings.get("profile", {}).items():
        lines.append(f"profile {key}: " + ", ".join(f"{k} {v:.0%}" for k, v in value.items()))
    m = report["machine"]
    lines.append(f"machine: {m['cpu']}, {m['cpus_usable']} usable CPUs, load average "
                 f"{m['load_average']} -> {m.get('load_average_end')}")  # fmt: skip
    return "\n".join(lines)


# ------------------------------------------------------------------------------ workers


def worker(job: dict) -> dict:
    name = job["contender"]
    import pandas  # noqa: F401  (pyarrow's from_pylist imports it lazily: a one-time cost)

    if name == "findings":
        result = findings(job)
    else:
        model, engine, _, data = CONTENDERS[name]
        run = {"baseline": run_baseline, "ctranslate2-raw": run_raw}.get(name)
        result = run(job) if run else run_pipeline(job, name, model, engine, data)
        # Output forced to new_tokens (engines count pad tokens differently); RSS: + vLLM's.
        result.update(rows_per_s=result["rows"] / result["seconds"],
                      tokens_per_s=result["sequences"] * job["new_tokens"] / result["seconds"],
                      peak_rss_mb=sum(common.peak_rss_mb().values()))  # fmt: skip
    Path(job["run_dir"], "result.json").write_text(json.dumps(result, indent=2))
    return result


def shard_sources(job: dict, model: str, data: str = "unique") -> list:
    """Sources exactly as serve.translate formats them (serve.runner.format_sources)."""
    from data.prompts import SourceTemplate
    from serve.runner import format_sources
    from serve.shards import iter_shards

    template = SourceTemplate.load(job["models"][model]) or SourceTemplate()
    sources = []
    for shard in iter_shards([job["data"][data]], 10**9, None):
        sources += format_sources(shard, template)[0]
    return [s for s in sources if s is not None]


def run_baseline(job: dict) -> dict:
    """The original loop (bench.common.original_loop), its outputs appended to JSONL."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    started = stopwatch()
    tokenizer = AutoTokenizer.from_pretrained(job["models"]["t5"])
    model = AutoModelForSeq2SeqLM.from_pretrained(job["models"]["t5"], dtype=torch.float32).eval()
    rows = read_jsonl(job["data"]["unique"], job["baseline_rows"])
    sources = [(r["intent"] or "") + "\n" + (r["snippet"] or "") for r in rows]
    common.original_loop(model, tokenizer, sources[:BASELINE_CHUNK], job["new_tokens"])  # warm-up
    load_s, clock = started(), stopwatch()
    texts = common.original_loop(model, tokenizer, sources, job["new_tokens"])
    with Path(job["run_dir"], "baseline.jsonl").open("a", encoding="utf-8") as out:
        out.writelines(json.dumps({**r, "rewritten_intent": t}) + "\n" for r, t in zip(rows, texts))
    return {"rows": len(rows), "sequences": len(rows), "seconds": clock(), "load_s": load_s,
            "precision": "float32", "engine": "transformers generate (original loop)",
            "batching": "8 rows in dataset order, padded to the chunk's longest"}  # fmt: skip


def build_engine(job: dict, model: str, engine: str, precision: str, cpu_threads=None, **tuning):
    from common.dist import cores_per_local_rank
    from serve.engines import create_engine
    from serve.engines.base import GenerationOptions

    options = GenerationOptions(max_new_tokens=job["new_tokens"], min_new_tokens=job["new_tokens"])
    return create_engine(
        engine, job["models"][model], device="cpu", options=options, precision=precision,
        cpu_threads=cpu_threads or cores_per_local_rank(), cache_dir=job["cache_dir"], **tuning,
    )  # fmt: skip


def run_pipeline(job: dict, name: str, model: str, engine: str, data: str) -> dict:
    """`serve.translate.main` as a user runs it; the engine's build and close subtracted."""
    import serve.translate

    precision, out, decoder = CONTENDERS[name][2], Path(job["run_dir"], "out"), data == "decoder"
    window = (job["batch_tokens"], job["max_batch_size"])
    engine_args = TUNED_ENGINE_ARGS.get(name, {})
    load_s = 0.0
    if not decoder:  # vLLM's minute-long start is not repeatable to the second: see above
        warm = build_engine(job, model, engine, precision)
        warm.generate(shard_sources(job, model, data)[:BASELINE_CHUNK])
        warm.close()
        clock = stopwatch()
        build_engine(job, model, engine, precision).close()
        load_s = clock()
    # The pipeline finds the conversion made before timing in OUT/.ct2-cache.
    if engine == "ctranslate2":
        (out / ".ct2-cache").mkdir(parents=True)
        conversion = Path(job["conversions"][precision])
        (out / ".ct2-cache" / conversion.name).symlink_to(conversion)
    argv = [
        "--model", job["models"][model], "--engine", engine, "--input", job["data"][data],
        "--output_dir", str(out), "--precision", precision,
        "--max_new_tokens", str(job["new_tokens"]), "--min_new_tokens", str(job["new_tokens"]),
        "--batch_tokens", str(window[0]), "--max_batch_size", str(window[1]),
        "--engine_args", json.dumps(engine_args),
    ]  # fmt: skip
    clock = stopwatch()
    summary = serve.translate.main(argv)
    wall = clock()
    shards = json.loads((out / "manifest.json").read_text())["shards"].values()
    shard_seconds = sum(s["stats"]["seconds"] for s in shards)
    return {"rows": summary["rows"], "generated_tokens": summary["generated_tokens"],
            "sequences": sum(s["stats"]["unique_sources"] for s in shards),
            "errors": summary["errors"], "wall_seconds": wall, "shard_seconds": shard_seconds,
            "seconds": shard_seconds if decoder else wall - load_s,
            "load_s": wall - shard_seconds if decoder else load_s,
            "precision": job["compute_types"][precision] if engine == "ctranslate2" else "float32",
            "engine": f"serve.translate --engine {engine}",
            "timed": "shard work (manifest stats.seconds)" if decoder else "wall - load_s",
            "batching": "vllm: the whole shard in one call" if engine == "vllm" else
            f"planner: batch_tokens {window[0]}, max_batch_size {window[1]}"
            + (f"; --engine_args {json.dumps(engine_args)}" if engine_args else "")}  # fmt: skip


def run_raw(job: dict) -> dict:
    """CTranslate2 alone: the engine's translator on the planner's batches, pre-tokenized."""
    from serve.planner import plan_batches

    started = stopwatch()
    engine = build_engine(job, "t5", "ctranslate2", "auto")
    tokenizer, limit = engine.tokenizer, engine.options.max_source_length
    sources = list(dict.fromkeys(shard_sources(job, "t5")))
    ids = tokenizer(sources, truncation=True, max_length=limit)["input_ids"]
    plan = plan_batches([len(x) for x in ids], batch_tokens=job["batch_tokens"],
                        max_batch_size=job["max_batch_size"])  # fmt: skip
    batches = [[tokenizer.convert_ids_to_tokens(ids[i]) for i in batch] for batch in plan]

    def translate(tokens):  # the arguments serve.engines.ctranslate2 passes
        return engine.translator.translate_batch(
            tokens, beam_size=1, max_decoding_length=job["new_tokens"],
            min_decoding_length=job["new_tokens"], max_input_length=limit,
            max_batch_size=0, batch_type="tokens", return_end_token=True,
        )  # fmt: skip

    translate(batches[-1][:BASELINE_CHUNK])  # warm-up
    load_s, clock = started(), stopwatch()
    tokens = sum(len(r.hypotheses[0]) for batch in batches for r in translate(batch))
    return {"rows": len(read_jsonl(job["data"]["unique"])), "sequences": len(sources),
            "generated_tokens": tokens, "seconds": clock(), "load_s": load_s,
            "precision": engine.compute_type, "engine": "ctranslate2.Translator.translate_batch",
            "batching": f"the planner's {len(batches)} batches, one call at a time"}  # fmt: skip


def findings(job: dict) -> dict:
    """What limits the engines: a cProfile of each, and CTranslate2's levers swept."""
    from serve.planner import generate_rows

    sources = list(dict.fromkeys(shard_sources(job, "t5")))[: 800 if job["rows"] > 100 else 64]

    def timed_run(engine, batch_tokens, max_batch_size) -> float:
        engine.generate(sources[:BASELINE_CHUNK])
        clock = stopwatch()
        generate_rows(engine, sources, batch_tokens=batch_tokens, max_batch_size=max_batch_size)
        return clock()

    def profiled(engine, count: int) -> dict:
        engine.generate(sources[:BASELINE_CHUNK])
        profile = cProfile.Profile()
        profile.runcall(generate_rows, engine, sources[:count], batch_tokens=job["batch_tokens"],
                        max_batch_size=job["max_batch_size"])  # fmt: skip
        stats = sorted(pstats.Stats(profile).stats.items(), key=lambda kv: -kv[1][3])
        total = stats[0][1][3]  # generate_rows itself
        return {f"{Path(file).name}:{line}({func})": round(row[3] / total, 3)
                for (file, line, func), row in stats[1:9]}  # fmt: skip

    sweep = []
    for config in SWEEP[: 3 if job["quick"] else None]:
        precision, inter, intra, batch_tokens, max_batch_size, max_batch_tokens = config
        engine = build_engine(job, "t5", "ctranslate2", precision, cpu_threads=intra,
                              inter_threads=inter, max_batch_tokens=max_batch_tokens)  # fmt: skip
        rows_per_s = len(sources) / timed_run(engine, batch_tokens, max_batch_size)
        engine.close()
        sweep.append({**dict(zip(SWEEP_KEYS, config)), "rows_per_s": rows_per_s})
    profile = {"ctranslate2": profiled(build_engine(job, "t5", "ctranslate2", "auto"), 800),
               "hf": profiled(build_engine(job, "t5", "hf", "float32"), 160)}  # fmt: skip
    return {
        "sources": len(sources), "sweep": sweep, "profile": profile,
        "best": max(sweep, key=lambda s: s["rows_per_s"]),
        "definition": "sweep: rows/s of serve.planner.generate_rows over the ctranslate2 engine "
        "from create_engine (no reading or writing) on the first unique sources; profile: "
        "cumulative-time share of the top functions in one generate_rows call (cProfile)",
    }  # fmt: skip


if __name__ == "__main__":
    main()
