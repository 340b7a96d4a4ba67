"""The translate-mined run: read shard -> format -> plan -> generate -> write.

`prepare` checks everything a run depends on (inputs, template, model, engine,
precision) before anything is written, so a run that cannot start leaves the
output directory as it was. `run` then walks the shards this rank owns; writing
shard i overlaps generating shard i+1 (pyarrow releases the GIL while it writes).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from common.cli import UserError
from common.dist import cores_per_local_rank, local_device
from common.model_files import check_model_files
from data.prompts import SourceTemplate
from data.schema import output_schema
from serve.candidates import output_columns
from serve.engines import check_generation, create_engine, engine_class, select_engine
from serve.engines.base import SCORE_DEFINITION, Engine, GenerationOptions
from serve.identity import model_fingerprint
from serve.planner import generate_rows
from serve.shards import InputScan, iter_shards, scan
from serve.sink import ShardSink

logger = logging.getLogger("serve.translate")
# C0 controls other than tab/newline, and DEL: some tokenizers and engines choke on
# them and they carry no meaning in an intent or a snippet. Sources only: the stored
# columns keep the input's text byte for byte.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MAX_CHARS_PER_TOKEN = 64


@dataclass
class Plan:
    args: object  # serve.translate.TranslateArguments
    options: GenerationOptions
    template: SourceTemplate
    engine: str
    device: str
    inputs: InputScan
    rank: int
    world: int


def prepare(args, options: GenerationOptions, rank: int, world: int) -> Plan:
    output = Path(args.output_dir)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output_dir {output} is a file; give a directory")
    inputs = scan(args.input or [args.dataset], limit=args.limit, allow_empty=args.allow_empty)
    for path in inputs.paths:
        if output.resolve() in Path(path).resolve().parents:
            raise UserError(
                f"--input {path} lies inside --output_dir {output}, where the run writes "
                "(and --overwrite deletes); move it or pick another --output_dir"
            )
    check_model_overlap(args.model, output)
    template = resolve_template(args)
    check_model_files(args.model)
    device = local_device(args.device)
    engine = select_engine(
        args.model,
        args.engine,
        device=device,
        trust_remote_code=args.trust_remote_code,
        mode=options.mode,
    )
    if args.precision == "int8" and engine != "ctranslate2":
        raise UserError(
            f"--precision int8 is a ctranslate2 precision; {engine} runs auto, bfloat16 or float32"
        )
    check_tuning(engine, args.tuning)
    check_generation(engine, options)
    return Plan(args, options, template, engine, device, inputs, rank, world)


def check_model_overlap(model: str, output: Path) -> None:
    """The run writes (and --overwrite deletes) in --output_dir, and the model's files
    are its fingerprint: the two must not hold one another."""
    if not Path(model).exists():
        return  # a hub id
    model_dir, output_dir = Path(model).resolve(), output.resolve()
    if model_dir == output_dir or model_dir in output_dir.parents:
        raise UserError(f"--output_dir {output} lies inside --model {model}; pick another")
    if output_dir in model_dir.parents:
        raise UserError(f"--model {model} lies inside --output_dir {output}; pick another")


def check_tuning(engine: str, tuning: dict) -> None:
    """Refuse --engine_args keys the chosen engine does not take, or values it cannot run
    with, before any work."""
    taken = inspect.signature(engine_class(engine)).parameters
    knobs = {name: p for name, p in taken.items() if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(tuning) - set(knobs))
    if unknown:
        raise UserError(
            f"--engine_args: the {engine} engine has no option {', '.join(unknown)} "
            f"(it takes {', '.join(knobs) or 'none'})"
        )
    for name, value in tuning.items():
        annotation = str(knobs[name].annotation)  # a string: `from __future__ import annotations`
        kind = annotation.split("|")[0].strip()
        if value is None and "None" in annotation:
            continue
        if not _is_kind(value, kind):
            raise UserError(f"--engine_args: {name} must be {_KINDS[kind][1]}, got {value!r}")
        bounds = _bounds(engine, name)
        if bounds and not bounds[0] <= value <= bounds[1]:
            raise UserError(
                f"--engine_args: {name} must be in [{bounds[0]}, {bounds[1]}] for {engine}, "
                f"got {value!r}"
            )
    if engine == "ctranslate2":
        check_threads(tuning)


def check_threads(tuning: dict) -> None:
    """inter_threads workers of intra_threads threads each: bounded one by one, they still
    multiply past the cores (an unset one is split from the cores, see cpu_split)."""
    if not tuning.get("intra_threads"):
        return  # unset: the split fits the cores; 0: CTranslate2 picks
    from serve.engines.ctranslate2 import cpu_split

    cores = cores_per_local_rank()
    inter, intra = cpu_split(cores, tuning.get("inter_threads"), tuning["intra_threads"])
    if inter * intra > cores:
        raise UserError(
            f"--engine_args: inter_threads {inter} x intra_threads {intra} is {inter * intra} "
            f"threads, more than the {cores} cores per rank; lower one of them"
        )


# What the engines can run with; outside, they abort or fail every call (measured:
# ctranslate2 inter_threads 0 aborts, above the cores it thrashes at GBs of RSS;
# max_batch_tokens 2**31 is std::bad_alloc on every batch). A float bound of 1.0 is
# the whole GPU.
_BOUNDS = {
    ("ctranslate2", "inter_threads"): (1, "cores"),
    ("ctranslate2", "intra_threads"): (0, "cores"),  # 0: CTranslate2 picks
    ("ctranslate2", "max_batch_tokens"): (0, 1 << 20),
    ("vllm", "gpu_memory_utilization"): (0.01, 1.0),
    ("vllm", "tensor_parallel_size"): (1, 64),
    ("vllm", "max_model_len"): (1, 1 << 20),
}


def _bounds(engine: str, name: str) -> tuple | None:
    if (engine, name) not in _BOUNDS:
        return None
    low, high = _BOUNDS[engine, name]
    return low, cores_per_local_rank() if high == "cores" else high


_KINDS = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    "float": (lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
              "a finite number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "dict": (lambda v: isinstance(v, dict), "a JSON object"),
}  # fmt: skip


def _is_kind(value, kind: str) -> bool:
    return _KINDS[kind][0](value) if kind in _KINDS else True


def resolve_template(args) -> SourceTemplate:
    """Flags win; otherwise the template the merge recorded; otherwise the default."""
    recorded = SourceTemplate.load(args.model) if Path(args.model).is_dir() else None
    recorded = recorded or SourceTemplate()
    return SourceTemplate(
        args.source_template if args.source_template is not None else recorded.template,
        args.source_prefix if args.source_prefix is not None else recorded.prefix,
    )


def run_params(plan: Plan) -> dict:
    """Everything that changes the output; a resume must match it exactly."""
    model = Path(plan.args.model)
    return {
        "model": str(model.resolve()) if model.exists() else plan.args.model,
        "model_fingerprint": model_fingerprint(plan.args.model),
        "engine": plan.engine,
        "device": device_kind(plan.device),  # `auto` precision resolves per device
        "precision": plan.args.precision,
        "generation": asdict(plan.options),
        "score": SCORE_DEFINITION,
        "source_template": asdict(plan.template),
        "source_fingerprint": plan.inputs.fingerprint,
        "limit": plan.args.limit,
        "engine_args": plan.args.tuning,
    }


def device_kind(device: str) -> str:
    """`cpu`, or `cuda (<card name>)`: the same for every rank of a node."""
    if not device.startswith("cuda"):
        return device
    import torch

    return f"cuda ({torch.cuda.get_device_name(torch.device(device))})"


def open_sink(plan: Plan) -> ShardSink:
    """Join, start or (with --overwrite) replace the run in the output directory."""
    return ShardSink(
        plan.args.output_dir,
        schema=output_schema(plan.options.keep_candidates),
        params=run_params(plan),
        rows_per_shard=plan.args.rows_per_shard,
        rank=plan.rank,
        world_size=plan.world,
        overwrite=plan.args.overwrite,
    )


def run(plan: Plan, sink: ShardSink) -> dict:
    args = plan.args
    done = sink.done()
    progress = tqdm(
        total=plan.inputs.rows,
        unit="row",
        disable=plan.rank != 0,
        dynamic_ncols=True,
        desc="translate",
    )
    engine: Engine | None = None
    totals = {"rows": 0, "errors": 0, "generated_tokens": 0, "truncated": 0}
    start = time.perf_counter()
    num_shards = 0
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = None
        for index, table in enumerate(
            iter_shards(plan.inputs.paths, args.rows_per_shard, args.limit)
        ):
            num_shards = index + 1
            if index in done:
                sink.check_input(index, table)  # a finished shard holds exactly these rows
            if not sink.owns(index) or index in done:
                progress.update(table.num_rows if index in done else 0)
                continue
            engine = engine or load_engine(plan)
            output, stats = translate_shard(engine, table, plan, progress.update)
            stats["rank"] = plan.rank
            for key in totals:
                totals[key] += stats[key]
            if pending:
                pending.result()
            pending = writer.submit(sink.write, index, output, stats)
        if pending:
            pending.result()
    progress.close()
    manifest = sink.finish(
        num_shards, {"input_rows": plan.inputs.rows, "unreadable_rows": plan.inputs.unreadable}
    )
    sink.close()
    if engine is not None:
        engine.close()
    return summarize(totals, time.perf_counter() - start, manifest, plan)


def load_engine(plan: Plan) -> Engine:
    """Build the engine; a model or option it cannot load with is named in one line."""
    logger.info("loading %s with engine %s on %s", plan.args.model, plan.engine, plan.device)
    try:
        return _create(plan)
    except UserError:
        raise
    except Exception as err:  # torch, transformers, CTranslate2 and vLLM each raise their own
        raise UserError(
            f"the {plan.engine} engine could not load --model {plan.args.model}"
            f"{' with --engine_args ' + json.dumps(plan.args.tuning) if plan.args.tuning else ''}: "
            f"{type(err).__name__}: {err}"
        ) from err


def _create(plan: Plan) -> Engine:
    return create_engine(
        plan.engine,
        plan.args.model,
        device=plan.device,
        options=plan.options,
        precision=plan.args.precision,
        cpu_threads=None if plan.device.startswith("cuda") else cores_per_local_rank(),
        cache_dir=str(Path(plan.args.output_dir, ".ct2-cache")),
        trust_remote_code=plan.args.trust_remote_code,
        **plan.args.tuning,
    )


def translate_shard(engine: Engine, table: pa.Table, plan: Plan, on_rows):
    """Generate for one shard; every input row comes back with an output or an error."""
    started = time.perf_counter()
    sources, errors = cap_sources(*format_sources(table, plan.template), engine)
    on_rows(sum(source is None for source in sources))
    result = generate_rows(
        engine,
        sources,
        batch_tokens=plan.args.batch_tokens,
        max_batch_size=plan.args.max_batch_size,
        progress=on_rows,
    )
    errors = [pre or gen for pre, gen in zip(errors, result.errors)]
    snippets = cap_snippets(table.column("snippet").to_pylist(), plan.options.max_source_length)
    columns = output_columns(result.generations, snippets, plan.options)
    columns["error"] = pa.array(errors, pa.string())
    output = table.drop_columns(["error"])
    for name in output_schema(plan.options.keep_candidates).names[output.num_columns :]:
        output = output.append_column(name, columns[name])
    ids = table.column("id").drop_null().to_pylist()
    stats = {
        "rows": table.num_rows,
        "errors": sum(e is not None for e in errors),
        "truncated": result.truncated,
        "unique_sources": result.unique_sources,
        "duplicate_ids": len(ids) - len(set(ids)),
        "generated_tokens": result.generated_tokens,
        "engine_calls": result.calls,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return output, stats


def format_sources(table: pa.Table, template: SourceTemplate) -> tuple[list, list]:
    """The engine source of each row, or None and the reason it has none."""
    columns = table.select(["id", "intent", "snippet", "error"]).to_pydict()
    sources, errors = [], []
    for row_id, intent, snippet, read_error in zip(*columns.values()):
        source, error = None, read_error
        if error is None and row_id is None:
            error = "unusable row: no id"
        if error is None:
            try:
                source = _CONTROL.sub(" ", template.format(intent, snippet))
            except ValueError as err:
                error = f"unusable row: {err}"
        sources.append(source)
        errors.append(error)
    return sources, errors


def cap_sources(sources: list, errors: list, engine: Engine) -> tuple[list, list]:
    """Cut sources far over the token limit before they are tokenized (tokenizing a 20 MB
    snippet takes minutes): no real token spans MAX_CHARS_PER_TOKEN characters. An engine
    that does not truncate gets that row's error instead."""
    limit = engine.options.max_source_length
    for i, source in enumerate(sources):
        if source is None or len(source) <= limit * MAX_CHARS_PER_TOKEN:
            continue
        if engine.capabilities.truncates_sources:
            sources[i] = source[: limit * MAX_CHARS_PER_TOKEN]
        else:
            sources[i] = None
            errors[i] = (
                f"unusable row: source has {len(source)} characters, far over the "
                f"{limit}-token limit (--max_source_length)"
            )
    return sources, errors


def cap_snippets(snippets: list, limit: int) -> list:
    """Snippets cut as cap_sources cuts sources: coverage (--select coverage,
    --keep_candidates) tokenizes them, and terms that far past the cut were never read."""
    return [s[: limit * MAX_CHARS_PER_TOKEN] if s else s for s in snippets]


def summarize(totals: dict, seconds: float, manifest: dict, plan: Plan) -> dict:
    summary = {
        **totals,
        "seconds": round(seconds, 3),
        "rows_per_s": totals["rows"] / seconds if seconds else 0.0,
        "generated_tokens_per_s": totals["generated_tokens"] / seconds if seconds else 0.0,
        "complete": manifest.get("complete", False),
        "run_id": manifest["run_id"],
        "output_dir": plan.args.output_dir,
    }
    logger.info(
        "rank %d: %d rows (%d errors, %d truncated) in %.1fs: %.1f rows/s, %.1f tokens/s; "
        "run complete: %s",
        plan.rank,
        totals["rows"],
        totals["errors"],
        totals["truncated"],
        seconds,
        summary["rows_per_s"],
        summary["generated_tokens_per_s"],
        summary["complete"],
    )
    return summary
