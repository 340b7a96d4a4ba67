"""The CoNaLa schema: column names, Arrow types, and the checks that enforce them.

Curated rows (train/test) carry a human `rewritten_intent`; mined rows do not and
are keyed by the pair id `id`. The translate output is the mined schema plus
`rewritten_intent`, `score` and `error` (and `candidates` with --keep_candidates),
fixed up front so an all-null column never changes type between shards.
"""

from __future__ import annotations

import pyarrow as pa

CURATED_SCHEMA = pa.schema(
    [
        pa.field("question_id", pa.int64()),
        pa.field("intent", pa.string()),
        pa.field("rewritten_intent", pa.string()),
        pa.field("snippet", pa.string()),
    ]
)

MINED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("question_id", pa.int64()),
        pa.field("parent_answer_post_id", pa.int64()),
        pa.field("prob", pa.float64()),
        pa.field("intent", pa.string()),
        pa.field("snippet", pa.string()),
    ]
)

OUTPUT_SCHEMA = pa.schema(
    [
        *MINED_SCHEMA,
        pa.field("rewritten_intent", pa.string()),
        pa.field("score", pa.float64()),  # serve.engines.base.SCORE_DEFINITION; null on error
        pa.field("error", pa.string()),
    ]
)
CANDIDATE = pa.struct([("text", pa.string()), ("score", pa.float64()), ("coverage", pa.float64())])
# Columns added after translate runs were already written: reading an older run fills
# them with nulls, so its shards still build a dataset.
LATER_COLUMNS = frozenset({"score", "candidates"})


def output_schema(keep_candidates: bool = False) -> pa.Schema:
    """The translate output schema; --keep_candidates adds every candidate of a row."""
    if not keep_candidates:
        return OUTPUT_SCHEMA
    return OUTPUT_SCHEMA.append(pa.field("candidates", pa.list_(CANDIDATE)))


def with_error(schema: pa.Schema) -> pa.Schema:
    """`schema` plus the nullable `error` column readers use for rows they could not read."""
    return schema.append(pa.field("error", pa.string()))


class SchemaError(ValueError):
    """A source file does not have the columns or types CoNaLa needs."""


def conform(table: pa.Table, schema: pa.Schema, *, source: str) -> pa.Table:
    """Select and cast `table` to `schema`, or raise naming the file and column.

    Extra columns are dropped; a missing column of `LATER_COLUMNS` reads as nulls.
    Lossless casts are made: integer/float widths, null-only
    and dictionary-encoded (pandas `category`) columns, whole floats to integers (pandas
    writes an int column with a missing value as float), integers and bytes to text. A
    column that cannot be cast (text where an int belongs, 1.5 for an int) is an error,
    not a silent null.
    """
    columns = []
    for field in schema:
        if field.name not in table.column_names and field.name in LATER_COLUMNS:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        if field.name not in table.column_names:
            raise SchemaError(
                f"{source}: missing column {field.name!r} "
                f"(found: {', '.join(table.column_names) or 'none'})"
            )
        column = table.column(field.name)
        if column.type != field.type:
            if not _castable(column.type, field.type):
                raise SchemaError(
                    f"{source}: column {field.name!r} has type {column.type}, expected {field.type}"
                )
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise SchemaError(
                    f"{source}: column {field.name!r} cannot be read as {field.type}: {err}"
                ) from err
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def _castable(actual: pa.DataType, expected: pa.DataType) -> bool:
    if pa.types.is_dictionary(actual):
        actual = actual.value_type
    if pa.types.is_null(actual):
        return True
    if pa.types.is_string(expected):
        return is_text(actual) or pa.types.is_integer(actual)
    if pa.types.is_integer(expected) or pa.types.is_floating(expected):
        return pa.types.is_integer(actual) or pa.types.is_floating(actual)
    return False


def is_text(type_: pa.DataType) -> bool:
    """Strings or bytes (bytes are decoded as UTF-8, row by row, by the readers)."""
    return any(
        check(type_)
        for check in (
            pa.types.is_string,
            pa.types.is_large_string,
            pa.types.is_binary,
            pa.types.is_large_binary,
        )  # fmt: skip
    )
