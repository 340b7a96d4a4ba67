"""Summarise a translate-mined output directory and show a few rows.

    python -m serve.inspect runs/ul2/mined [--rows 5]
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

import pyarrow.dataset as ds

from serve.sink import MANIFEST


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path, help="a translate-mined --output_dir")
    parser.add_argument("--rows", type=int, default=5, help="sample rows to print")
    args = parser.parse_args(argv)
    manifest_path = args.output_dir / MANIFEST
    if not manifest_path.is_file():
        raise SystemExit(f"{args.output_dir}: no {MANIFEST}; is this a translate-mined output?")
    manifest = json.loads(manifest_path.read_text())
    dataset = ds.dataset(sorted(map(str, args.output_dir.glob("part-*.parquet"))), format="parquet")
    errors = dataset.count_rows(filter=ds.field("error").is_valid())
    params = manifest["params"]
    print(
        f"{args.output_dir}: {len(manifest['shards'])} shards, {dataset.count_rows()} rows, "
        f"{errors} with an error, complete: {manifest.get('complete', False)}"
    )
    print(f"model {params['model']} via {params['engine']}, generation {params['generation']}")
    for row in dataset.head(args.rows).to_pylist():
        print(f"\n  id {row['id']}")
        for name in ("intent", "snippet", "rewritten_intent", "error"):
            value = textwrap.shorten(str(row[name]), 110, placeholder=" ...")
            print(f"    {name:<17}{value}")


if __name__ == "__main__":
    main()
