"""Stage 4, the dataset: translations -> a decontaminated, filtered instruction dataset.

From a translate-mined output directory (the curated splits from the hub):
    python -m data.instruct --translations runs/ul2/mined --output runs/ul2/dataset
    make dataset TRANSLATIONS=runs/ul2/mined OUT=runs/ul2/dataset
With local curated files, stricter filters, and an upload:
    python -m data.instruct --translations runs/ul2/mined --output runs/ul2/dataset \\
        --curated_train conala-train.json --curated_test conala-test.json \\
        --min_prob 0.5 --min_score -1.5 --min_coverage 0.25 --push_to_hub NAMESPACE/conala-instruct

The output folder loads in one line, `datasets.load_dataset("runs/ul2/dataset")`:

    data/train-00000.parquet ...   the rows (columns: DATASET_SCHEMA below)
    README.md                      dataset card: sources, license, model, funnel, coverage, score
    coverage_funnel.png            coverage, score and funnel panels, linked from the card
    stats.json                     the same numbers, machine-readable

Rows are streamed shard by shard and written as they pass, so memory stays flat in
rows (only a 64-bit hash per kept row is held, for the duplicate check). The folder
is built in a hidden staging directory beside --output and renamed into place, so
a crash leaves the old dataset or none, never half of one; the staging directory a
killed run leaves is removed by the next run (and logged). A symlinked --output is
followed: the folder it points to is replaced, and the link stays.
"""

from __future__ import annotations

# Before the slow imports: it makes a Ctrl-C during them one line.
from common.cli import (  # isort: skip
    UserError,
    arg,
    parse_with_config,
    real_path,
    refuse_overlap,
    remove_dead_leftovers,
    run,
    staging_dir,
)
import json
import logging
import os
import shlex
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from common.hub import check_login, check_repo_id, push_folder
from data.coverage import Histogram, curated_references
from data.dataset_card import FIGURE, write_card, write_figure
from data.filters import SCORE_RANGE, Decontaminator, FilterSettings, RowFilter
from data.loaders import HUB_DATASET, load_curated
from data.translations import iter_translations, open_translations

logger = logging.getLogger("data.instruct")

DATASET_SCHEMA = pa.schema(
    [
        pa.field("instruction", pa.string()),  # the rewritten intent (model or human)
        pa.field("output", pa.string()),  # the snippet
        pa.field("source", pa.string()),  # "mined" (model rewrite) or "curated" (human)
        pa.field("id", pa.string()),  # mined pair id, or curated-<question_id>-<n>
        pa.field("question_id", pa.int64()),
        pa.field("parent_answer_post_id", pa.int64()),  # null for curated rows
        pa.field("prob", pa.float64()),  # mining confidence; null for curated rows
        pa.field("intent", pa.string()),  # the original Stack Overflow title
        pa.field("coverage", pa.float64()),  # identifier coverage; null: snippet has none
        # the model's mean log-probability per generated token; null for curated rows and
        # for runs written before scores existed
        pa.field("score", pa.float64()),
    ]
)
ROW_GROUP_ROWS = 10_000
SAMPLE_ROWS = 4


@dataclass
class InstructArguments:
    translations: list[str] = arg(
        None, "translate-mined output directories (part-*.parquet + manifest.json)."
    )
    output: str = arg(None, "Dataset folder to create.")
    curated_train: str = arg(
        HUB_DATASET,
        "Curated train (.json/.jsonl/.parquet or hub id): human rows and the coverage references.",
    )
    curated_test: str = arg(
        HUB_DATASET,
        "Curated test (file or hub id): its question ids and snippets are "
        "removed from the dataset (decontamination, always on).",
    )
    keep_curated_train: bool = arg(
        True, "Add curated-train rows that have a human rewrite (source=curated)."
    )
    min_prob: float | None = arg(
        None,
        "Drop mined rows whose mining prob is below this (0-1). Default: keep "
        "all; the card reports the distribution.",
    )
    min_score: float | None = arg(
        None,
        "Drop mined rows whose model score (mean log-probability per generated token, "
        "<= 0) is below this, and rows without a score (NaN, or runs written before "
        "scores existed). Default: keep all; the card reports the distribution.",
    )
    min_coverage: float | None = arg(
        None,
        "Drop rows whose identifier coverage is below this (0-1). Default: "
        "keep all. Rows whose snippet has no identifiers are always kept.",
    )
    min_words: int = arg(1, "Drop instructions with fewer words (length filter).")
    max_words: int | None = arg(
        100, "Drop instructions with more words (human rewrites: at most 32). 0 disables."
    )
    repetition_ngram: int = arg(
        4, "Degenerate-repetition filter: longest word n-gram checked. 0 disables the filter."
    )
    repetition_repeats: int = arg(
        4, "An n-gram repeated this many times back to back is degenerate."
    )
    dedup: bool = arg(True, "Drop exact duplicate (instruction, output) pairs.")
    rows_per_shard: int = arg(100_000, "Rows per output Parquet file.")
    allow_incomplete: bool = arg(
        False, "Build from translations whose manifest says complete: false."
    )
    overwrite: bool = arg(False, "Replace a non-empty --output (atomically).")
    push_to_hub: str | None = arg(
        None,
        "Upload the folder to this hub dataset repo (NAMESPACE/NAME, "
        "created private). Needs a login, checked before any work.",
    )
    config: str | None = arg(None, "YAML file of these flags.")

    def __post_init__(self):
        if not self.translations:
            raise ValueError("--translations is required: the --output_dir of serve.translate")
        if not self.output:
            raise ValueError("--output is required: the dataset folder to create")
        for name in ("min_prob", "min_coverage"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"--{name} must be between 0 and 1, got {value}")
        if self.min_score is not None and not -1e6 < self.min_score <= 0:  # NaN too
            raise ValueError(
                f"--min_score is a mean log-probability, at most 0, got {self.min_score}"
            )
        if self.min_words < 0:
            raise ValueError("--min_words must be >= 0")
        if self.max_words is not None and self.max_words < 0:
            raise ValueError("--max_words must be >= 0 (0 disables)")
        if self.max_words and self.max_words < self.min_words:
            raise ValueError(f"--max_words {self.max_words} is below --min_words {self.min_words}")
        if self.repetition_ngram < 0:
            raise ValueError("--repetition_ngram must be >= 0 (0 disables the filter)")
        if self.repetition_repeats < 2:
            raise ValueError("--repetition_repeats must be >= 2")
        if self.rows_per_shard < 1:
            raise ValueError("--rows_per_shard must be >= 1")

    def filter_settings(self) -> FilterSettings:
        return FilterSettings(
            repetition_ngram=self.repetition_ngram,
            repetition_repeats=self.repetition_repeats,
            min_words=self.min_words,
            max_words=self.max_words or None,
            min_prob=self.min_prob,
            min_score=self.min_score,
            min_coverage=self.min_coverage,
            dedup=self.dedup,
        )


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    (args,) = parse_with_config((InstructArguments,), argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO
    )
    output = check_output(args)
    if args.push_to_hub:
        check_repo_id("--push_to_hub", args.push_to_hub)
        check_login("--push_to_hub", args.push_to_hub)
    translations = open_translations(args.translations, args.allow_incomplete)
    curated_train = load_curated(args.curated_train, split="train")
    decontaminator = Decontaminator.from_table(load_curated(args.curated_test, split="test"))
    if decontaminator.is_empty():
        raise UserError(
            f"--curated_test {args.curated_test}: no row with a question_id or snippet, so "
            "decontamination would remove nothing; give the curated test split"
        )
    staging = staging_dir(output, "staging")
    try:
        row_filter, samples, shards = build(
            args, translations, curated_train, decontaminator, staging
        )
        stats = describe(args, argv, translations, curated_train, row_filter, samples, shards)
        if stats["rows"] == 0:
            raise UserError(
                "no row passed the filters, so there is no dataset to write (funnel: "
                + ", ".join(f"{k} -{v}" for k, v in stats["funnel"]["dropped"].items() if v)
                + "); loosen the filters or check the translations"
            )
        write_outputs(staging, stats)
        publish(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report(stats)
    summary = {"output": args.output, "rows": stats["rows"], "funnel": stats["funnel"]}
    if args.push_to_hub:
        summary["url"] = push_folder(output, args.push_to_hub, repo_type="dataset")
    return summary


def check_output(args: InstructArguments) -> Path:
    """Refuse up front what would only fail after the long part. Returns the folder to
    write: a symlinked --output is followed, as every output is (common.cli.real_path)."""
    output = real_path(args.output)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file; give a folder")
    if output.is_dir() and any(output.iterdir()) and not args.overwrite:
        raise UserError(
            f"--output {output} exists and is not empty; pass --overwrite to replace it"
        )
    inputs = {"--translations": args.translations, "--curated_train": [args.curated_train],
              "--curated_test": [args.curated_test]}  # fmt: skip
    refuse_overlap("--output", output, inputs)
    remove_dead_leftovers(output, ("staging", "old"))
    return output


class ShardWriter:
    """Parquet files of at most `rows_per_shard` rows, written a row group at a time."""

    def __init__(self, folder: Path, rows_per_shard: int):
        self.folder = folder
        self.rows_per_shard = rows_per_shard
        self.columns = {name: [] for name in DATASET_SCHEMA.names}
        self.files: list[str] = []
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._file_rows = 0

    def append(self, row: tuple) -> None:
        for values, value in zip(self.columns.values(), row, strict=True):
            values.append(value)
        self.rows += 1
        self._file_rows += 1
        if len(self.columns["instruction"]) >= ROW_GROUP_ROWS:
            self._flush()
        if self._file_rows >= self.rows_per_shard:
            self._flush()
            self._writer.close()
            self._writer, self._file_rows = None, 0

    def close(self) -> list[str]:
        if self._writer is None and (self.columns["instruction"] or not self.files):
            self._open()  # an empty dataset still gets one (empty) file with the schema
        self._flush()
        if self._writer is not None:
            self._writer.close()
        return self.files

    def _open(self) -> None:
        name = f"data/train-{len(self.files):05d}.parquet"
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self.folder / name, DATASET_SCHEMA)
        self.files.append(name)

    def _flush(self) -> None:
        if not self.columns["instruction"]:
            return
        if self._writer is None:
            self._open()
        self._writer.write_table(pa.table(self.columns, schema=DATASET_SCHEMA))
        self.columns = {name: [] for name in DATASET_SCHEMA.names}


def build(args, translations, curated_train, decontaminator, staging: Path):
    """Stream curated-train rows, then every translated row, through the funnel."""
    staging.mkdir(parents=True)
    row_filter = RowFilter(args.filter_settings(), decontaminator)
    writer = ShardWriter(staging, args.rows_per_shard)
    samples: dict[str, list] = {"curated": [], "mined": []}
    batches = iter_translations(translations.files)
    if args.keep_curated_train:
        batches = _chain(curated_batch(curated_train), batches)
    progress = tqdm(total=translations.rows, unit="row", desc="dataset", disable=None)
    for source, batch in batches:
        columns = {name: batch.column(name).to_pylist() for name in batch.schema.names}
        for i in range(batch.num_rows):
            row = {name: values[i] for name, values in columns.items()}
            kept, cov = row_filter.keep(
                source,
                row["question_id"],
                row["snippet"],
                row["rewritten_intent"],
                row["error"],
                row["prob"],
                row.get("score"),
                row.get("candidates"),
            )
            if kept:
                out = (
                    row["rewritten_intent"],
                    row["snippet"],
                    source,
                    row["id"],
                    row["question_id"],
                    row["parent_answer_post_id"],
                    row["prob"],
                    row["intent"],
                    cov,
                    row.get("score"),
                )
                writer.append(out)
                if len(samples[source]) < SAMPLE_ROWS:
                    samples[source].append(dict(zip(DATASET_SCHEMA.names, out, strict=True)))
        if source == "mined":
            progress.update(batch.num_rows)
    progress.close()
    return row_filter, samples, writer.close()


def _chain(first, rest):
    yield first
    yield from rest


def curated_batch(table: pa.Table) -> tuple[str, pa.Table]:
    """Curated-train rows with a human rewrite, shaped like translate output."""
    table = table.filter(pc.is_valid(table.column("rewritten_intent")))
    ids, seen = [], {}
    for question_id in table.column("question_id").to_pylist():
        # Stable across runs of the same file: the n-th answer row of a question.
        seen[question_id] = seen.get(question_id, -1) + 1
        ids.append(f"curated-{question_id}-{seen[question_id]}")
    n = table.num_rows
    return "curated", pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "question_id": table.column("question_id"),
            "parent_answer_post_id": pa.nulls(n, pa.int64()),
            "prob": pa.nulls(n, pa.float64()),
            "intent": table.column("intent"),
            "snippet": table.column("snippet"),
            "rewritten_intent": table.column("rewritten_intent"),
            "error": pa.nulls(n, pa.string()),
        }
    )


def describe(args, argv, translations, curated_train, row_filter, samples, shards) -> dict:
    """Everything the card, the figure and stats.json say, in one plain dict."""
    funnel = row_filter.funnel
    references = {
        name: Histogram().extend(values)
        for name, values in curated_references(curated_train).items()
    }
    return {
        "rows": sum(funnel.output.values()),
        "shards": shards,
        "funnel": funnel.as_dict(),
        "funnel_table": funnel.table(),
        "coverage": {
            "dataset": funnel.coverage.summary(),
            "dataset_mined": funnel.coverage_mined.summary(),
            "human_rewrite": references["human_rewrite"].summary(),
            "raw_intent": references["raw_intent"].summary(),
            "histograms": {
                "dataset": funnel.coverage.coarse(),
                "human_rewrite": references["human_rewrite"].coarse(),
                "raw_intent": references["raw_intent"].coarse(),
            },
        },
        "score": {
            **funnel.score.summary(),
            "range": SCORE_RANGE,
            "histogram": funnel.score.coarse(),
            "definition": translations.params.get("score"),
        },
        "selection": selection(translations.params, funnel),
        "settings": {k: v for k, v in asdict(args).items() if k != "config"},
        "translations": {
            "directories": list(translations.manifests),
            "params": translations.params,
            "rows_read": translations.rows,
            "warnings": translations.warnings,
        },
        "command": "python -m data.instruct " + shlex.join(argv),
        "samples": samples["mined"] + samples["curated"],
    }


def selection(params: dict, funnel) -> dict:
    """How `rewritten_intent` was chosen among candidates, and what that bought: the mean
    coverage of the kept text against the first candidate's, over kept rows that carry
    their candidates (--keep_candidates). Runs before n-best read as 1 candidate, `first`."""
    generation = params.get("generation", {})
    return {
        "num_candidates": generation.get("num_candidates", 1),
        "select": generation.get("select", "first"),
        "do_sample": generation.get("do_sample", False),
        "rows_with_candidates": funnel.coverage_selected.n + funnel.coverage_selected.none,
        "coverage_kept": funnel.coverage_selected.summary()["mean"],
        "coverage_first_candidate": funnel.coverage_first.summary()["mean"],
    }


def write_outputs(folder: Path, stats: dict) -> None:
    (folder / "stats.json").write_text(json.dumps(stats, indent=2, default=str) + "\n")
    write_figure(folder / FIGURE, stats)
    write_card(folder / "README.md", stats)


def publish(staging: Path, output: Path) -> None:
    """Swap the staging folder into place: old moved aside, new renamed in, old deleted.

    Each step is a rename within one directory (atomic on POSIX), so at any moment
    --output is the complete old dataset, absent, or the complete new one.
    """
    old = staging_dir(output, "old")
    if output.exists():
        os.replace(output, old)
    os.replace(staging, output)
    shutil.rmtree(old, ignore_errors=True)


def report(stats: dict) -> None:
    logger.info("funnel (step: dropped -> remaining):")
    for step, dropped, remaining in stats["funnel_table"]:
        logger.info("  %-26s %9s %9d", step, f"-{dropped}" if dropped else "", remaining)
    cov = stats["coverage"]
    logger.info(
        "coverage (mean identifier coverage): dataset %s | human rewrite %s | raw intent %s",
        cov["dataset"]["mean"],
        cov["human_rewrite"]["mean"],
        cov["raw_intent"]["mean"],
    )


if __name__ == "__main__":
    run(main, "data.instruct")
