"""The input side of a run: what the input holds, and how its rows map to shards.

`scan` reads the inputs once before anything is written, so a run that cannot
start leaves the output directory untouched: files that are missing, not the
format they claim, empty, or wholly unreadable are refused here. It also gives the
row count for the progress bar and the inputs' fingerprint for the manifest (see
serve.identity: the files' bytes and the rows they yield).

`iter_shards` is the one owner of the row-to-shard mapping: shard `i` holds input
rows `[i*R, (i+1)*R)`, `R = rows_per_shard`, in input order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common.cli import UserError
from data.loaders import file_format, iter_mined, parquet_rows, resolve
from data.schema import MINED_SCHEMA, conform
from serve.identity import RowDigest, file_digest, input_fingerprint


@dataclass(frozen=True)
class InputScan:
    paths: list[str]
    rows: int  # after --limit
    unreadable: int  # rows that will carry a read error
    fingerprint: str


def scan(sources: list[str], *, limit: int | None, allow_empty: bool) -> InputScan:
    """Resolve and check the inputs; refuse what cannot make a meaningful run.

    One pass reads every row of every file, Parquet as JSONL: a value that cannot be
    read becomes its row's error here, not a stop mid-run, and the pass digests the
    rows for the fingerprint.
    """
    if any(not source for source in sources):
        raise UserError("--input: an empty path")
    paths = [str(resolve(source, subset="mined", split="train")) for source in sources]
    rows = unreadable = 0
    first_error = None
    files = []
    for path in paths:
        if file_format(Path(path)) == "parquet":
            parquet_rows(Path(path))  # proves it is Parquet
            check_parquet_schema(Path(path))  # columns, even of a file with no rows
        digest = RowDigest()
        for batch in iter_mined(path):  # read to the end: a column missing from every row
            if limit is not None:
                batch = batch.slice(0, max(0, limit - rows))
            digest.update(batch)
            errors = batch.column("error").drop_null()
            rows += batch.num_rows
            unreadable += len(errors)
            first_error = first_error or (errors[0].as_py() if len(errors) else None)
        files.append(f"{file_digest(path)} {digest.hexdigest()}")
    if rows == 0 and not allow_empty:
        raise UserError(
            f"--input {' '.join(paths)}: no rows to translate; pass --allow_empty to accept that"
        )
    if rows and unreadable >= rows:
        raise UserError(f"no row of the input can be read, e.g. {first_error}")
    return InputScan(paths, rows, unreadable, input_fingerprint(files))


def check_parquet_schema(path: Path) -> None:
    """Columns missing or of a type that cannot be read are refused now, not mid-run."""
    conform(pq.read_schema(path).empty_table(), MINED_SCHEMA, source=str(path))


def iter_shards(paths: list[str], rows_per_shard: int, limit: int | None) -> Iterator[pa.Table]:
    """Consecutive tables of `rows_per_shard` input rows (the last may be shorter)."""
    if rows_per_shard < 1:
        raise ValueError("rows_per_shard must be >= 1")
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    remaining = limit if limit is not None else float("inf")
    for batch in iter_mined(paths):
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
