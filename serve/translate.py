"""translate-mined: stream CoNaLa mined rows through a batched engine into Parquet shards.

One process (engine chosen from the model's architecture):
    python -m serve.translate --model runs/ul2/merged --output_dir runs/ul2/mined
One process per GPU (each rank takes shards r, r+W, ...; results equal one process):
    torchrun --nproc_per_node 8 -m serve.translate --model ... --output_dir ...
Local files instead of the hub, a quick look at 1,000 rows:
    python -m serve.translate --model M --output_dir OUT --input conala-mined.jsonl --limit 1000

Rerunning the same command resumes: finished shards are skipped, and a run killed
at any point leaves every input id exactly once across the shards. Changed
parameters are refused unless `--overwrite` is given.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from data.loaders import HUB_DATASET, iter_mined, resolve
from data.prompts import SourceTemplate
from data.schema import OUTPUT_SCHEMA
from serve.engines import create_engine, select_engine
from serve.engines.base import Engine, GenerationOptions
from serve.planner import generate_rows
from serve.sink import ShardSink
from train.args import parse_with_config

logger = logging.getLogger("serve.translate")
# C0 controls other than tab/newline, and DEL: some tokenizers and engines choke on
# them and they carry no meaning in an intent or a snippet.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass
class TranslateArguments:
    model: str = field(
        default=None, metadata={"help": "Merged model directory (or hub id) to generate with."}
    )
    output_dir: str = field(default=None, metadata={"help": "Directory for the Parquet shards."})
    input: list[str] | None = field(
        default=None,
        metadata={
            "help": "Mined files (.jsonl/.json/.parquet), read in order. Default: --dataset."
        },
    )
    dataset: str = field(
        default=HUB_DATASET, metadata={"help": "Hub dataset whose mined split is read."}
    )
    engine: str = field(
        default="auto",
        metadata={
            "help": "auto, hf, ctranslate2 or vllm. auto: vLLM for decoder-only models, "
            "CTranslate2 for encoder-decoders, HF generate when those are not installed.",
            "choices": ["auto", "hf", "ctranslate2", "vllm"],
        },
    )
    limit: int | None = field(default=None, metadata={"help": "Translate only the first N rows."})
    rows_per_shard: int = field(default=10_000, metadata={"help": "Rows per Parquet shard."})
    max_new_tokens: int = field(default=64, metadata={"help": "Generation length limit."})
    min_new_tokens: int = field(default=0, metadata={"help": "Force at least this many tokens."})
    num_beams: int = field(default=1, metadata={"help": "1 is greedy decoding."})
    max_source_length: int = field(
        default=512,
        metadata={
            "help": "Source token limit. Encoder-decoders truncate longer sources (counted in "
            "the manifest); decoder-only engines give such rows an error."
        },
    )
    batch_tokens: int = field(
        default=16_384, metadata={"help": "Padded source tokens per engine call."}
    )
    max_batch_size: int = field(default=256, metadata={"help": "Rows per engine call, at most."})
    dtype: str = field(
        default="auto",
        metadata={
            "help": "hf/vllm weights: auto (bf16 on GPU, fp32 on CPU), bfloat16 or float32.",
            "choices": ["auto", "bfloat16", "float32"],
        },
    )
    compute_type: str = field(
        default="auto",
        metadata={
            "help": "CTranslate2 compute type: auto (int8 on CPU), int8, bfloat16 or float32.",
            "choices": ["auto", "int8", "bfloat16", "float32"],
        },
    )
    source_template: str | None = field(
        default=None,
        metadata={"help": "Source format; default: the one the merge recorded with the model."},
    )
    source_prefix: str | None = field(
        default=None, metadata={"help": "Source prefix; default: the one recorded with the model."}
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda[:N]."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom model code from the hub."}
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Discard shards written with different parameters."}
    )
    config: str | None = field(default=None, metadata={"help": "YAML file of these flags."})

    def __post_init__(self):
        if not self.model:
            raise ValueError("--model is required: the merged model directory (see `make merge`)")
        if not self.output_dir:
            raise ValueError("--output_dir is required")
        for name in ("rows_per_shard", "batch_tokens", "max_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1")
        if self.limit is not None and self.limit < 0:
            raise ValueError("--limit must be >= 0")


def main(argv: list[str] | None = None) -> dict:
    (args,) = parse_with_config((TranslateArguments,), argv)
    rank, world = rank_and_world()
    setup_logging(rank, world)
    sources = [str(resolve(s, subset="mined")) for s in (args.input or [args.dataset])]
    template = resolve_template(args)
    engine_name = select_engine(args.model, args.engine)
    options = GenerationOptions(
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        num_beams=args.num_beams,
        max_source_length=args.max_source_length,
    )
    sink = ShardSink(
        args.output_dir,
        schema=OUTPUT_SCHEMA,
        params=run_params(args, engine_name, template, options, sources),
        rows_per_shard=args.rows_per_shard,
        rank=rank,
        world_size=world,
        overwrite=args.overwrite,
    )
    return translate(args, sources, template, engine_name, options, sink, rank)


def rank_and_world() -> tuple[int, int]:
    """This process's shard slot: torchrun/deepspeed set RANK/WORLD_SIZE, Slurm its own."""
    for rank_var, world_var in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_var in os.environ and world_var in os.environ:
            rank, world = int(os.environ[rank_var]), int(os.environ[world_var])
            if not 0 <= rank < world:
                raise ValueError(f"{rank_var}={rank} is outside [0, {world_var}={world})")
            return rank, world
    return 0, 1


def setup_logging(rank: int, world: int) -> None:
    logging.basicConfig(
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if rank == 0 else logging.WARNING,
        stream=sys.stderr,
    )
    logger.warning("rank %d of %d starting", rank, world)


def resolve_template(args) -> SourceTemplate:
    """Flags win; otherwise the template the merge recorded; otherwise the default."""
    recorded = SourceTemplate.load(args.model) if Path(args.model).is_dir() else None
    recorded = recorded or SourceTemplate()
    return SourceTemplate(
        args.source_template if args.source_template is not None else recorded.template,
        args.source_prefix if args.source_prefix is not None else recorded.prefix,
    )


def run_params(args, engine_name, template, options, sources) -> dict:
    """Everything that changes the output; a resume must match it exactly."""
    engine_dtype = args.compute_type if engine_name == "ctranslate2" else args.dtype
    return {
        "model": str(Path(args.model).resolve()) if Path(args.model).exists() else args.model,
        "engine": engine_name,
        "precision": engine_dtype,
        "generation": asdict(options),
        "source_template": asdict(template),
        "source_fingerprint": fingerprint(sources),
        "limit": args.limit,
    }


def fingerprint(paths: list[str]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def iter_shards(sources: list[str], rows_per_shard: int, limit: int | None) -> Iterator[pa.Table]:
    """Consecutive tables of `rows_per_shard` input rows (the last may be shorter)."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    remaining = limit if limit is not None else float("inf")
    for batch in iter_mined(sources):
        if remaining <= 0:
            break
        batch = batch.slice(0, int(min(batch.num_rows, remaining)))
        remaining -= batch.num_rows
        pending.append(batch)
        pending_rows += batch.num_rows
        while pending_rows >= rows_per_shard:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows_per_shard)
            rest = table.slice(rows_per_shard)
            pending, pending_rows = rest.to_batches(), rest.num_rows
    if pending_rows:
        yield pa.Table.from_batches(pending)


def count_rows(sources: list[str], limit: int | None) -> int | None:
    """Total rows for the progress bar, when cheap to know."""
    total = 0
    for path in sources:
        if path.endswith(".parquet"):
            total += pq.ParquetFile(path).metadata.num_rows
        elif path.endswith(".jsonl"):
            with open(path, "rb") as handle:
                total += sum(1 for line in handle if line.strip())
        else:
            return limit
    return min(total, limit) if limit is not None else total


def translate(args, sources, template, engine_name, options, sink, rank) -> dict:
    done = sink.done()
    progress = tqdm(
        total=count_rows(sources, args.limit),
        unit="row",
        disable=rank != 0,
        dynamic_ncols=True,
        desc="translate",
    )
    engine: Engine | None = None
    totals = {"rows": 0, "errors": 0, "generated_tokens": 0, "truncated": 0}
    start = time.perf_counter()
    num_shards = 0
    # Writing shard i overlaps generating shard i+1 (pyarrow releases the GIL).
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending_write = None
        for index, table in enumerate(iter_shards(sources, args.rows_per_shard, args.limit)):
            num_shards = index + 1
            if not sink.owns(index) or index in done:
                if index in done:
                    progress.update(table.num_rows)
                continue
            if engine is None:
                engine = load_engine(args, engine_name, options)
            output, stats = translate_shard(engine, table, template, args, progress.update)
            stats["rank"] = rank
            for key in totals:
                totals[key] += stats[key]
            if pending_write:
                pending_write.result()
            pending_write = writer.submit(sink.write, index, output, stats)
        if pending_write:
            pending_write.result()
    progress.close()
    manifest = sink.finish(num_shards)
    seconds = time.perf_counter() - start
    summary = {
        **totals,
        "seconds": seconds,
        "rows_per_s": totals["rows"] / seconds if seconds else 0.0,
        "generated_tokens_per_s": totals["generated_tokens"] / seconds if seconds else 0.0,
        "complete": manifest.get("complete", False),
        "output_dir": args.output_dir,
    }
    logger.info(
        "rank %d: %d rows (%d errors, %d truncated) in %.1fs: %.1f rows/s, %.1f tokens/s; "
        "run complete: %s",
        rank,
        totals["rows"],
        totals["errors"],
        totals["truncated"],
        seconds,
        summary["rows_per_s"],
        summary["generated_tokens_per_s"],
        summary["complete"],
    )
    if engine is not None:
        engine.close()
    return summary


def load_engine(args, engine_name: str, options: GenerationOptions) -> Engine:
    device = local_device(args.device)
    specific = {
        "hf": {"dtype": args.dtype},
        "vllm": {"dtype": args.dtype},
        "ctranslate2": {
            "compute_type": args.compute_type,
            "cache_dir": str(Path(args.output_dir, ".ct2-cache")),
            # Ranks sharing a CPU split its cores instead of oversubscribing them.
            "intra_threads": None if device.startswith("cuda") else _cores_per_local_rank(),
        },
    }[engine_name]
    logger.info("loading %s with engine %s on %s", args.model, engine_name, device)
    return create_engine(
        engine_name,
        args.model,
        device=device,
        options=options,
        trust_remote_code=args.trust_remote_code,
        **specific,
    )


def local_device(device: str) -> str:
    """`auto` means this rank's own GPU (LOCAL_RANK, as launchers set it), else the CPU."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def _cores_per_local_rank() -> int:
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, len(os.sched_getaffinity(0)) // local_world)


def translate_shard(engine, table: pa.Table, template: SourceTemplate, args, on_rows):
    """Generate for one shard; every input row comes back with an output or an error."""
    started = time.perf_counter()
    columns = table.select(["intent", "snippet"]).to_pydict()
    sources: list[str | None] = []
    errors: list[str | None] = []
    for intent, snippet in zip(columns["intent"], columns["snippet"]):
        try:
            sources.append(_clean(template.format(intent, snippet)))
            errors.append(None)
        except ValueError as err:
            sources.append(None)
            errors.append(f"unusable row: {err}")
    on_rows(sum(s is None for s in sources))
    tokens_before = engine.generated_tokens
    result = generate_rows(
        engine,
        sources,
        batch_tokens=args.batch_tokens,
        max_batch_size=args.max_batch_size,
        progress=on_rows,
    )
    errors = [pre or gen for pre, gen in zip(errors, result.errors)]
    output = table.append_column(
        "rewritten_intent", pa.array(result.outputs, pa.string())
    ).append_column("error", pa.array(errors, pa.string()))
    ids = table.column("id").to_pylist()
    stats = {
        "rows": table.num_rows,
        "errors": sum(e is not None for e in errors),
        "truncated": result.truncated,
        "unique_sources": result.unique_sources,
        "duplicate_ids": len(ids) - len(set(ids)),
        "generated_tokens": engine.generated_tokens - tokens_before,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return output, stats


def _clean(source: str) -> str:
    return _CONTROL.sub(" ", source)


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
