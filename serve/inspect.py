"""Summarise a translate-mined output directory and show a few rows.

    python -m serve.inspect runs/ul2/mined [--rows 5]

Stored text is shown with control characters and escape sequences escaped (`\\x1b`,
`\\n`), so a row can never move the cursor, recolour or retitle your terminal.
"""

from __future__ import annotations

import json
import textwrap
import unicodedata
from pathlib import Path

import pyarrow.dataset as ds

from common.cli import Parser, UserError, run
from serve.sink import MANIFEST


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="python -m serve.inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path, help="a translate-mined --output_dir")
    parser.add_argument("--rows", type=int, default=5, help="sample rows to print (>= 0)")
    args = parser.parse_args(argv)
    if args.rows < 0:
        raise UserError(f"--rows must be >= 0, got {args.rows}")
    manifest = read_manifest(args.output_dir)
    parts = sorted(map(str, args.output_dir.glob("part-*.parquet")))
    dataset = ds.dataset(parts, format="parquet")
    errors = dataset.count_rows(filter=ds.field("error").is_valid()) if parts else 0
    params = manifest.get("params", {})
    print(
        f"{escape(str(args.output_dir))}: {len(parts)} shards, {dataset.count_rows()} rows, "
        f"{errors} with an error, complete: {manifest.get('complete', False)}"
    )
    print(escape(f"model {params.get('model')} via {params.get('engine')}, "
                 f"generation {params.get('generation')}"))  # fmt: skip
    for row in dataset.head(args.rows).to_pylist() if parts else []:
        print(f"\n  id {escape(str(row['id']))}")
        for name in ("intent", "snippet", "rewritten_intent", "error"):
            value = textwrap.shorten(escape(str(row[name])), 110, placeholder=" ...")
            print(f"    {name:<17}{value}")


def read_manifest(output_dir: Path) -> dict:
    path = output_dir / MANIFEST
    if not output_dir.is_dir():
        raise FileNotFoundError(f"{output_dir}: no such directory")
    if not path.is_file():
        raise UserError(f"{output_dir}: no {MANIFEST}; is this a translate-mined output?")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: not a translate-mined manifest")
    return manifest


def escape(text: str) -> str:
    """Printable text as is; control and format characters as Python escapes."""
    return "".join(
        ch if ch == " " or unicodedata.category(ch)[0] not in "CZ" else ascii(ch)[1:-1]
        for ch in text
    )


if __name__ == "__main__":
    run(main, "serve.inspect")
