"""Read CoNaLa from the hub, from the original JSON/JSONL files, or from Parquet.

Curated splits are small (2,379 + 500 rows) and load whole as Arrow tables. Mined
(~594K rows) is only ever *iterated* as Arrow record batches, so memory stays flat
however many rows there are.

Hub source: the `neulab/conala` loading script no longer runs under current
`datasets`, so the hub path reads the Parquet conversion the hub publishes on the
`refs/convert/parquet` revision:

    curated/train/0000.parquet   curated/test/0000.parquet   mined/train/0000.parquet
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data.schema import CURATED_SCHEMA, MINED_SCHEMA, SchemaError, conform

HUB_DATASET = "neulab/conala"
HUB_REVISION = "refs/convert/parquet"
HUB_FILES = {
    ("curated", "train"): "curated/train/0000.parquet",
    ("curated", "test"): "curated/test/0000.parquet",
    ("mined", "train"): "mined/train/0000.parquet",
}
DEFAULT_BATCH_ROWS = 4096


def is_hub_id(source: str) -> bool:
    """`owner/name` with no such local path is taken as a hub dataset id."""
    return source.count("/") == 1 and not os.path.exists(source) and not source.startswith(".")


def resolve(source: str, *, subset: str = "curated", split: str = "train") -> Path:
    """Return a local file for `source`, downloading the hub Parquet file if needed."""
    if not is_hub_id(source):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"Dataset file not found: {source}")
        return path
    if source != HUB_DATASET:
        raise ValueError(f"Unsupported hub dataset {source!r}; only {HUB_DATASET!r} is known")
    if (subset, split) not in HUB_FILES:
        raise ValueError(f"{HUB_DATASET} has no {subset}/{split} split")
    from huggingface_hub import hf_hub_download

    return Path(
        hf_hub_download(
            HUB_DATASET, HUB_FILES[subset, split], repo_type="dataset", revision=HUB_REVISION
        )
    )


def load_curated(source: str, *, split: str = "train") -> pa.Table:
    """Load a curated split (`question_id, intent, rewritten_intent, snippet`)."""
    path = resolve(source, subset="curated", split=split)
    return conform(_read_table(path), CURATED_SCHEMA, source=str(path))


def iter_mined(
    sources: str | list[str], *, batch_rows: int = DEFAULT_BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """Yield mined rows as record batches conformed to `MINED_SCHEMA`, file by file."""
    for source in [sources] if isinstance(sources, str) else sources:
        path = resolve(source, subset="mined", split="train")
        for batch in _iter_batches(path, batch_rows):
            table = conform(pa.Table.from_batches([batch]), MINED_SCHEMA, source=str(path))
            yield from table.to_batches()


def _read_table(path: Path) -> pa.Table:
    if _format(path) == "parquet":
        return pq.read_table(path)
    if _format(path) == "json":
        return _table_from_rows(_load_json_array(path), path)
    return pa.Table.from_batches(list(_iter_jsonl(path, DEFAULT_BATCH_ROWS)))


def _iter_batches(path: Path, batch_rows: int) -> Iterator[pa.RecordBatch]:
    fmt = _format(path)
    if fmt == "parquet":
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows)
    elif fmt == "jsonl":
        yield from _iter_jsonl(path, batch_rows)
    else:
        table = _table_from_rows(_load_json_array(path), path)
        yield from table.to_batches(max_chunksize=batch_rows)


def _format(path: Path) -> str:
    name = path.name.lower()
    for suffix, fmt in ((".parquet", "parquet"), (".jsonl", "jsonl"), (".json", "json")):
        if name.endswith(suffix):
            return fmt
    raise ValueError(f"{path}: unknown format; expected .json, .jsonl or .parquet")


def _load_json_array(path: Path) -> list[dict]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SchemaError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from err
    if not isinstance(rows, list):
        raise SchemaError(f"{path}: expected a JSON array of objects")
    return rows


def _iter_jsonl(path: Path, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Parse JSON lines in chunks; a bad line is reported with its line number.

    Python's json parser is used rather than pyarrow's reader because pyarrow
    reports byte offsets, not the line a user can open in an editor.
    """
    rows: list[dict] = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise SchemaError(f"{path}: line {lineno} is not valid JSON: {err.msg}") from err
            if len(rows) == batch_rows:
                yield from _table_from_rows(rows, path).to_batches()
                rows = []
    if rows:
        yield from _table_from_rows(rows, path).to_batches()


def _table_from_rows(rows: list[dict], path: Path) -> pa.Table:
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise SchemaError(f"{path}: rows have inconsistent types: {err}") from err
