"""Describe a CoNaLa file, and what a tokenizer does to it, before training or translating.

    python -m data.stats --input FILE [--tokenizer PATH]
        [--max_source_length N --max_target_length N]
        [--source_template T] [--source_prefix P] [--json FILE]

FILE is curated (has `rewritten_intent`: train/test, or a translate output) or mined
(no `rewritten_intent`; target statistics are then omitted), as .json, .jsonl or
.parquet. It reports row count, nulls and empty strings per column, and duplicates:
repeated (intent, snippet) pairs, repeated `question_id` (normal: a question has
several answers) and, for mined, repeated `id` (never normal).

With `--tokenizer`, sources are built exactly as training builds them
(`data.prompts.SourceTemplate`) and it reports token-length percentiles, the share
of rows longer than the length limits, the unknown-token rate, and how many texts
lose a newline or a brace `{`/`}` in an encode/decode round trip. T5's
sentencepiece vocabulary collapses newlines and has no braces, so on CoNaLa those
counts are large; they are printed so the loss is seen, not hidden.

Percentiles use the nearest-rank method: p50 of [3, 5, 9, 20] is 5.
"""

from __future__ import annotations

# Before the slow imports: it makes a Ctrl-C during them one line.
from common.cli import Parser, UserError, refuse_overlap, run  # isort: skip
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from data.loaders import column_names, iter_rows, resolve
from data.prompts import DEFAULT_TEMPLATE, SourceTemplate
from data.schema import CURATED_SCHEMA, MINED_SCHEMA

DEFAULT_MAX_LENGTH = 2048  # the training default for both limits (train/args.py)
PERCENTILES = (50, 90, 99)
BRACES = "{}"


class _ColumnCounts:
    """Row, null, empty-string and duplicate counts, accumulated batch by batch."""

    def __init__(self, schema: pa.Schema):
        self.rows = 0
        self.unreadable = 0
        self.nulls = dict.fromkeys(schema.names, 0)
        self.empty = {field.name: 0 for field in schema if pa.types.is_string(field.type)}
        keys = ["intent_snippet", "question_id"] + (["id"] if "id" in schema.names else [])
        self.seen: dict[str, set] = {key: set() for key in keys}
        self.duplicates = dict.fromkeys(keys, 0)

    def add(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        self.unreadable += batch.num_rows - batch.column("error").null_count
        for name in self.nulls:
            self.nulls[name] += batch.column(name).null_count
        for name in self.empty:
            self.empty[name] += pc.sum(pc.equal(batch.column(name), "")).as_py() or 0
        intents = batch.column("intent").to_pylist()
        snippets = batch.column("snippet").to_pylist()
        # Hashes rather than the pairs themselves keep 600K mined rows cheap in memory;
        # a 64-bit collision among that many rows is vanishingly unlikely.
        values = {"intent_snippet": [hash(pair) for pair in zip(intents, snippets, strict=True)]}
        for key in ("question_id", "id"):
            if key in self.seen:
                values[key] = [
                    value for value in batch.column(key).to_pylist() if value is not None
                ]
        for key, column in values.items():
            seen = self.seen[key]
            for value in column:
                if value in seen:
                    self.duplicates[key] += 1
                else:
                    seen.add(value)

    def result(self) -> dict:
        return {
            "rows": self.rows,
            "unreadable_rows": self.unreadable,
            "nulls": self.nulls,
            "empty": self.empty,
            "duplicates": self.duplicates,
        }


class _TokenCounts:
    """Token lengths, unknown tokens and round-trip losses for one kind of text."""

    def __init__(self, tokenizer, limit: int):
        self.tokenizer = tokenizer
        self.limit = limit
        self.lengths: list[int] = []
        self.tokens = 0
        self.unknown = 0
        self.with_newline = 0
        self.lost_newline = 0
        self.with_brace = 0
        self.lost_brace = 0

    def add(self, texts: list[str]) -> None:
        if not texts:
            return
        # Special tokens count: they take room in the model's input like any other.
        ids = self.tokenizer(texts, return_attention_mask=False)["input_ids"]
        decoded = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        unk_id = self.tokenizer.unk_token_id
        for text, row, back in zip(texts, ids, decoded, strict=True):
            self.lengths.append(len(row))
            self.tokens += len(row)
            if unk_id is not None:
                self.unknown += row.count(unk_id)
            if "\n" in text:
                self.with_newline += 1
                self.lost_newline += "\n" not in back
            braces = [brace for brace in BRACES if brace in text]
            if braces:
                self.with_brace += 1
                self.lost_brace += any(brace not in back for brace in braces)

    def result(self) -> dict:
        lengths = sorted(self.lengths)
        count = len(lengths)
        truncated = sum(length > self.limit for length in lengths)
        has_unk = self.tokenizer.unk_token_id is not None and self.tokens > 0
        return {
            "count": count,
            **{f"p{p}": _percentile(lengths, p) for p in PERCENTILES},
            "max": lengths[-1] if lengths else None,
            "limit": self.limit,
            "truncated": truncated,
            "truncation_rate": truncated / count if count else None,
            "tokens": self.tokens,
            "unknown_tokens": self.unknown if has_unk else None,
            "unk_rate": self.unknown / self.tokens if has_unk else None,
            "with_newline": self.with_newline,
            "lost_newline": self.lost_newline,
            "with_brace": self.with_brace,
            "lost_brace": self.lost_brace,
        }


def _percentile(sorted_values: list[int], p: int) -> int | None:
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def compute_stats(
    source: str,
    *,
    tokenizer=None,
    template: SourceTemplate | None = None,
    max_source_length: int = DEFAULT_MAX_LENGTH,
    max_target_length: int = DEFAULT_MAX_LENGTH,
) -> dict:
    """Return the report for `source` as a JSON-ready dict (see the module docstring)."""
    template = template or SourceTemplate()
    kind, schema, batches = _open(source)
    columns = _ColumnCounts(schema)
    sources = targets = None
    if tokenizer is not None:
        sources = _TokenCounts(tokenizer, max_source_length)
        if kind == "curated":
            targets = _TokenCounts(tokenizer, max_target_length)
    without_source = 0
    for batch in batches:
        columns.add(batch)
        if sources is None:
            continue
        batch = batch.filter(pc.is_null(batch.column("error")))
        texts, skipped = _sources(batch, template)
        sources.add(texts)
        without_source += skipped
        if targets is not None:
            rewritten = batch.column("rewritten_intent").to_pylist()
            targets.add([target for target in rewritten if target and target.strip()])
    stats = {"input": str(source), "kind": kind, **columns.result()}
    if sources is not None:
        stats["tokenizer"] = tokenizer.name_or_path
        stats["rows_without_source"] = without_source
        stats["source"] = sources.result()
    if targets is not None:
        stats["target"] = targets.result()
    return stats


def _open(source: str) -> tuple[str, pa.Schema, Iterator[pa.RecordBatch]]:
    """Stream `source` as curated if it has `rewritten_intent`, else as mined.

    Rows that cannot be read (bad JSON, invalid Unicode, wrong types) are counted and
    kept out of the token statistics; they never stop the report.
    """
    path = resolve(source)
    kind = "curated" if "rewritten_intent" in column_names(path) else "mined"
    schema = CURATED_SCHEMA if kind == "curated" else MINED_SCHEMA
    return kind, schema, iter_rows(path, schema)


def _sources(batch: pa.RecordBatch, template: SourceTemplate) -> tuple[list[str], int]:
    """Format every row's source; count rows with neither intent nor snippet."""
    texts, skipped = [], 0
    intents = batch.column("intent").to_pylist()
    for intent, snippet in zip(intents, batch.column("snippet").to_pylist(), strict=True):
        try:
            texts.append(template.format(intent, snippet))
        except ValueError:
            skipped += 1
    return texts, skipped


def format_report(stats: dict) -> str:
    """Render `stats` as aligned plain-text tables."""
    lines = [
        f"input: {stats['input']} ({stats['kind']}, {stats['rows']} rows, "
        f"{stats['unreadable_rows']} unreadable)",
        "",
    ]
    lines += _align(
        [("column", "nulls", "empty")]
        + [(name, count, stats["empty"].get(name)) for name, count in stats["nulls"].items()]
    )
    lines += [""] + _align(
        [("duplicates", "rows")] + [(key, n) for key, n in stats["duplicates"].items()]
    )
    kinds = [kind for kind in ("source", "target") if kind in stats]
    if kinds:
        lines += ["", f"tokenizer: {stats['tokenizer']}"]
        lines += [f"rows without a source: {stats['rows_without_source']}", ""]
        names = list(stats["source"])
        lines += _align(
            [("tokens", *kinds)]
            + [(name, *(stats[kind][name] for kind in kinds)) for name in names]
        )
    return "\n".join(lines)


def _align(rows: list[tuple]) -> list[str]:
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return [
        "  ".join(
            [row[0].ljust(widths[0])]
            + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        )
        for row in cells
    ]


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2%}"
    return str(value)


def load_tokenizer(name: str):
    """A local tokenizer directory, or a hub id (which needs the network)."""
    from transformers import AutoTokenizer

    if Path(name).exists() and not Path(name).is_dir():
        raise UserError(f"--tokenizer {name} is a file; give a model or tokenizer directory")
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise UserError(f"--tokenizer {name}: cannot load a tokenizer ({err})") from None


def main(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="python -m data.stats", description="Describe a CoNaLa file and its tokenization."
    )
    parser.add_argument(
        "--input", required=True, help="Curated or mined file (.json, .jsonl or .parquet)."
    )
    parser.add_argument(
        "--tokenizer",
        help="Tokenizer directory or hub id for token statistics (no remote code is run).",
    )
    parser.add_argument(
        "--max_source_length",
        type=int,
        default=DEFAULT_MAX_LENGTH,
        help="Source length limit, in tokens, for the truncation rate.",
    )
    parser.add_argument(
        "--max_target_length",
        type=int,
        default=DEFAULT_MAX_LENGTH,
        help="Target length limit, in tokens, for the truncation rate.",
    )
    parser.add_argument(
        "--source_template",
        default=DEFAULT_TEMPLATE,
        help="Source format with {intent} and {snippet}, as given to training.",
    )
    parser.add_argument(
        "--source_prefix", default="", help="Text put before every source, as in training."
    )
    parser.add_argument("--json", type=Path, help="Also write the numbers to this JSON file.")
    args = parser.parse_args(argv)
    for name in ("max_source_length", "max_target_length"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.json:
        refuse_overlap(
            "--json", args.json, {"--input": [args.input], "--tokenizer": [args.tokenizer]}
        )
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    stats = compute_stats(
        args.input,
        tokenizer=tokenizer,
        template=SourceTemplate(args.source_template, args.source_prefix),
        max_source_length=args.max_source_length,
        max_target_length=args.max_target_length,
    )
    print(format_report(stats))
    if args.json:
        args.json.write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    run(main, "data.stats")
