"""Read CoNaLa from the hub, from the original JSON/JSONL files, or from Parquet.

Curated splits are small (2,379 + 500 rows) and load whole as Arrow tables. Mined
(~594K rows) is only ever *iterated* as Arrow record batches, so memory stays flat
however many rows there are.

Row-level isolation: in JSON and JSONL files every row is read on its own. A line
that is not UTF-8 or not JSON (or nested past Python's recursion limit), a field of
the wrong type, or text that is not valid Unicode (a lone surrogate such as "\ud800",
which Parquet cannot store) makes that row's `error` (naming the file and line)
instead of stopping the read; so does a Parquet value that is not UTF-8 text or
does not fit its number column losslessly (naming the row). Such a row keeps what
could be read: invalid text is stored with U+FFFD in place of the bad code points,
a number or object where text belongs as its JSON text.
A key missing from one row is a null; a column missing from every row refuses the
file. A leading UTF-8 byte-order mark is skipped. `iter_rows` yields those rows;
`load_curated`, for training, refuses a file that has any.

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

from data.schema import CURATED_SCHEMA, MINED_SCHEMA, SchemaError, conform, is_text, with_error

HUB_DATASET = "neulab/conala"
HUB_REVISION = "refs/convert/parquet"
HUB_FILES = {
    ("curated", "train"): "curated/train/0000.parquet",
    ("curated", "test"): "curated/test/0000.parquet",
    ("mined", "train"): "mined/train/0000.parquet",
}
DEFAULT_BATCH_ROWS = 4096
FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "json"}


def is_hub_id(source: str) -> bool:
    """`owner/name` with no such local path is taken as a hub dataset id."""
    return source.count("/") == 1 and not os.path.exists(source) and not source.startswith(".")


def resolve(source: str, *, subset: str = "curated", split: str = "train") -> Path:
    """Return a local file for `source`, downloading the hub Parquet file if needed."""
    if source == HUB_DATASET and not os.path.exists(source):
        return _download(subset, split)
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        raise IsADirectoryError(
            f"{source}: is a directory; expected a .json, .jsonl or .parquet file"
        )
    hint = (
        f" (it is not a known hub dataset either: only {HUB_DATASET!r} is)"
        if is_hub_id(source)
        else ""
    )
    raise FileNotFoundError(f"{source}: file not found{hint}")


def _download(subset: str, split: str) -> Path:
    if (subset, split) not in HUB_FILES:
        raise ValueError(f"{HUB_DATASET} has no {subset}/{split} split")
    from huggingface_hub import hf_hub_download

    try:
        return Path(
            hf_hub_download(
                HUB_DATASET, HUB_FILES[subset, split], repo_type="dataset", revision=HUB_REVISION
            )
        )
    except Exception as err:  # offline, no cache, a proxy: the hub client raises many types
        raise FileNotFoundError(
            f"{HUB_DATASET} ({subset}/{split}): not in the local cache and not downloadable "
            f"({type(err).__name__}); pass a local .json/.jsonl/.parquet file instead"
        ) from err


def load_curated(source: str, *, split: str = "train") -> pa.Table:
    """Load a curated split (`question_id, intent, rewritten_intent, snippet`).

    Training data must be clean: a row that cannot be read is refused, by line.
    """
    path = resolve(source, subset="curated", split=split)
    table = pa.Table.from_batches(list(iter_rows(path, CURATED_SCHEMA)), with_error(CURATED_SCHEMA))
    errors = table.column("error").drop_null()
    if len(errors):
        raise SchemaError(f"{errors[0].as_py()} ({len(errors)} unreadable row(s) in all)")
    return table.drop_columns(["error"])


def iter_mined(
    sources: str | list[str], *, batch_rows: int = DEFAULT_BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """Yield mined rows as `MINED_SCHEMA` batches plus `error`, file by file."""
    for source in [sources] if isinstance(sources, str) else sources:
        path = resolve(str(source), subset="mined", split="train")
        yield from iter_rows(path, MINED_SCHEMA, batch_rows=batch_rows)


def iter_rows(
    path: Path, schema: pa.Schema, *, batch_rows: int = DEFAULT_BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """Batches of `schema` plus `error` (null for a row read cleanly)."""
    path = Path(path)
    if file_format(path) == "parquet":
        yield from _iter_parquet_rows(path, schema, batch_rows)
        return
    rows = _iter_json_rows(path) if file_format(path) == "json" else _iter_jsonl_rows(path)
    buffer: list[dict] = []
    absent, objects = set(schema.names), 0  # columns no object row has had so far
    for where, row in rows:
        if isinstance(row, dict):
            absent -= row.keys()
            objects += 1
        buffer.append(_conform_row(row, schema, f"{path} {where}"))
        if len(buffer) == batch_rows:
            yield pa.RecordBatch.from_pylist(buffer, schema=with_error(schema))
            buffer = []
    if buffer:
        yield pa.RecordBatch.from_pylist(buffer, schema=with_error(schema))
    if absent and objects:  # a column absent from the file, not from a row
        raise SchemaError(f"{path}: missing column(s) {sorted(absent)} in every row")


def _iter_parquet_rows(path: Path, schema: pa.Schema, batch_rows: int):
    offset = 0
    for batch in _parquet_file(path).iter_batches(batch_size=batch_rows):
        table, errors = _read_values(pa.Table.from_batches([batch]), schema, path, offset)
        table = conform(table, schema, source=str(path))
        offset += table.num_rows
        yield from table.append_column("error", pa.array(errors, pa.string())).to_batches()


def _read_values(table: pa.Table, schema: pa.Schema, path: Path, offset: int):
    """Every value as its column's type, or null plus its row's error: text that is not
    UTF-8 (kept with U+FFFD), a number that does not fit losslessly (1.5 or NaN for an
    integer, 2**64; 2**53 + 1 for a float). Types that cannot hold such values at all
    are left to conform()."""
    problems: list[list[str]] = [[] for _ in range(table.num_rows)]
    for field in schema:
        if field.name not in table.column_names:
            continue
        column = table.column(field.name)
        if pa.types.is_dictionary(column.type):  # pandas `category`
            column = column.cast(column.type.value_type)
        if pa.types.is_string(field.type) and is_text(column.type):
            column = _decode_text(column, field.name, problems)
        elif _is_number(field.type) and _is_number(column.type):
            column = _cast_numbers(column, field, problems)
        else:
            continue
        table = table.set_column(table.column_names.index(field.name), field.name, column)
    return table, [
        f"{path} row {offset + i}: " + "; ".join(found) if found else None
        for i, found in enumerate(problems)
    ]


def _decode_text(column: pa.ChunkedArray, name: str, problems: list[list[str]]):
    try:
        column.cast(pa.string()).validate(full=True)
        return column
    except pa.ArrowInvalid:
        pass
    values = []
    for index, raw in enumerate(column.cast(pa.large_binary()).to_pylist()):
        try:
            values.append(None if raw is None else raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            values.append(raw.decode("utf-8", "replace"))
            problems[index].append(f"{name} is not UTF-8 ({err.reason} at byte {err.start})")
    return pa.array(values, pa.string())


def _cast_numbers(column: pa.ChunkedArray, field: pa.Field, problems: list[list[str]]):
    try:
        return column.cast(field.type)  # safe: refuses any lossy value
    except pa.ArrowInvalid:
        pass
    values = []
    for index, value in enumerate(column.to_pylist()):
        value, problem = _conform_value(value, field.type)
        values.append(value)
        if problem:
            problems[index].append(f"{field.name} {problem}")
    return pa.array(values, field.type)


def _is_number(type_: pa.DataType) -> bool:
    return pa.types.is_integer(type_) or pa.types.is_floating(type_)


def file_format(path: Path) -> str:
    name = path.name.lower()
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise ValueError(f"{path}: unknown format; expected .json, .jsonl or .parquet")


def column_names(path: Path) -> set[str]:
    """A Parquet file's columns, or the keys of the first JSON object row."""
    if file_format(path) == "parquet":
        return set(_parquet_file(path).schema_arrow.names)
    rows = _iter_json_rows(path) if file_format(path) == "json" else _iter_jsonl_rows(path)
    return next((set(row) for _, row in rows if isinstance(row, dict)), set())


def _parquet_file(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise SchemaError(f"{path}: not a readable Parquet file ({err})") from err


def parquet_rows(path: Path) -> int:
    return _parquet_file(path).metadata.num_rows


def _iter_json_rows(path: Path) -> Iterator[tuple[str, object]]:
    """A JSON array must parse as a whole; its items are then rows of their own."""
    try:
        rows = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise SchemaError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise SchemaError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from err
    except RecursionError:
        raise SchemaError(f"{path}: JSON nested too deeply to read") from None
    if not isinstance(rows, list):
        raise SchemaError(f"{path}: expected a JSON array of objects")
    for index, row in enumerate(rows):
        yield f"item {index}", row


def _iter_jsonl_rows(path: Path) -> Iterator[tuple[str, object]]:
    """Non-blank lines, decoded one by one; an unreadable line comes back as an Exception.

    Python's json parser is used rather than pyarrow's reader because pyarrow
    reports byte offsets, not the line a user can open in an editor.
    """
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark
            if not raw.strip():
                continue
            try:
                yield f"line {lineno}", json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                yield f"line {lineno}", ValueError(f"not UTF-8 ({err.reason} at byte {err.start})")
            except json.JSONDecodeError as err:
                yield f"line {lineno}", ValueError(f"not valid JSON: {err.msg}")
            except RecursionError:
                yield f"line {lineno}", ValueError("JSON nested too deeply to read")


def _conform_row(row: object, schema: pa.Schema, where: str) -> dict:
    """The row's fields as `schema` types; whatever is wrong goes into `error`."""
    out = dict.fromkeys(schema.names)
    if isinstance(row, Exception):
        out["error"] = f"{where}: {row}"
        return out
    if not isinstance(row, dict):
        out["error"] = f"{where}: expected a JSON object, got {type(row).__name__}"
        return out
    problems = []
    for field in schema:
        value, problem = _conform_value(row.get(field.name), field.type)
        out[field.name] = value
        if problem:
            problems.append(f"{field.name} {problem}")
    out["error"] = f"{where}: {'; '.join(problems)}" if problems else None
    return out


def _conform_value(value, type_: pa.DataType) -> tuple[object, str | None]:
    if value is None:
        return None, None
    if pa.types.is_string(type_):
        if not isinstance(value, str):
            text, _ = _conform_value(json.dumps(value, ensure_ascii=False), type_)
            return text, f"has type {type(value).__name__}, expected a string (kept as JSON text)"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            repaired = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return repaired, "is not valid Unicode (a lone surrogate; stored with U+FFFD)"
        return value, None
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    in_range = numeric and -(2**63) <= value < 2**63 and float(value).is_integer()
    if pa.types.is_integer(type_) and in_range:
        return int(value), None
    if pa.types.is_floating(type_) and numeric:
        if isinstance(value, float) or _is_exact_float(value):
            return float(value), None
        return None, f"has value {str(value)[:40]!r}, which {type_} cannot hold exactly"
    return None, f"has value {str(value)[:40]!r}, expected {type_}"


def _is_exact_float(value: int) -> bool:
    """Whether a float64 holds the int exactly: not most above 2**53, none past ~1.8e308."""
    try:
        return int(float(value)) == value
    except OverflowError:
        return False
