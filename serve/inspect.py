"""Summarise a translate-mined output directory and show a few rows.

    python -m serve.inspect runs/ul2/mined [--rows 5]

Stored text is shown with control characters and escape sequences escaped (`\\x1b`,
`\\n`), so a row can never move the cursor, recolour or retitle your terminal.
"""

from __future__ import annotations

# First, so a Ctrl-C during the heavy imports below is one line (see common.cli).
from common.cli import Parser, UserError, run  # isort: skip

import re
import textwrap
import unicodedata
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq

from data.schema import LATER_COLUMNS, OUTPUT_SCHEMA
from serve.sink import FORMAT_VERSION, MANIFEST, check_shard, load_manifest


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="python -m serve.inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path, help="a translate-mined --output_dir")
    parser.add_argument("--rows", type=int, default=5, help="sample rows to print (>= 0)")
    args = parser.parse_args(argv)
    if args.rows < 0:
        raise UserError(f"--rows must be >= 0, got {args.rows}")
    manifest = read_manifest(args.output_dir)
    found = {shard_index(p): str(p) for p in args.output_dir.glob("part-*.parquet") if p.is_file()}
    parts = [found[i] for i in sorted(i for i in found if i is not None)]
    dataset = open_parts(parts, manifest)
    errors = dataset.count_rows(filter=ds.field("error").is_valid()) if parts else 0
    rows = dataset.count_rows()
    missing = sorted(set(range(manifest.get("num_shards") or 0)) - set(map(shard_index, parts)))
    complete = manifest.get("complete", False) is True and not missing
    params = manifest["params"]
    print(
        f"{escape(str(args.output_dir))}: {len(parts)} shards, {rows} rows, "
        f"{errors} with an error, complete: {complete}"
        + (f" (shards missing: {', '.join(map(str, missing[:10]))})" if missing else "")
    )
    print(escape(f"model {params.get('model')} via {params.get('engine')}, "
                 f"generation {params.get('generation')}"))  # fmt: skip
    for row in dataset.head(min(args.rows, rows)).to_pylist() if parts else []:
        print(f"\n  id {escape(str(row['id']))}")
        for name in ("intent", "snippet", "rewritten_intent", "error"):
            value = textwrap.shorten(escape(str(row[name])), 110, placeholder=" ...")
            print(f"    {name:<17}{value}")


def open_parts(parts: list[str], manifest: dict) -> ds.Dataset:
    """The part files as one dataset; one that is unreadable, lacks the output columns or
    was not written by the manifest's run is named."""
    stamped = manifest.get("format_version", 1) >= FORMAT_VERSION  # older shards have none
    for part in parts:
        if stamped:
            check_shard(Path(part), manifest["run_id"], shard_index(part))
        try:
            names = pq.read_schema(part).names
        except (OSError, ValueError) as err:
            raise UserError(f"{part}: not a readable Parquet file ({err})") from None
        absent = [n for n in OUTPUT_SCHEMA.names if n not in names and n not in LATER_COLUMNS]
        if absent:
            raise UserError(f"{part}: not a translate-mined shard (no column {absent[0]!r})")
    return ds.dataset(parts, format="parquet")


def shard_index(part: str | Path) -> int | None:
    match = re.fullmatch(r"part-(\d+)\.parquet", Path(part).name)
    return int(match.group(1)) if match else None


def read_manifest(output_dir: Path) -> dict:
    if not output_dir.is_dir():
        raise FileNotFoundError(f"{output_dir}: no such directory")
    if not (output_dir / MANIFEST).is_file():
        raise UserError(f"{output_dir}: no {MANIFEST}; is this a translate-mined output?")
    return load_manifest(output_dir)


def escape(text: str) -> str:
    """Printable text as is; control and format characters as Python escapes."""
    return "".join(
        ch if ch == " " or unicodedata.category(ch)[0] not in "CZ" else ascii(ch)[1:-1]
        for ch in text
    )


if __name__ == "__main__":
    run(main, "serve.inspect")
