"""Measure how often two engine settings produce identical text on the same rows.

    python -m scripts.measure_agreement --model MERGED --fixtures DATA \\
        --left ctranslate2:int8 --right ctranslate2:float32 --rows 200
    python -m scripts.measure_agreement --model MERGED --fixtures DATA \\
        --left hf:float32 --right ctranslate2:float32 --num_beams 4 --rows 60

Sources are the first `--rows` mined rows of `DATA/conala-mined.jsonl` that have a
source, formatted with the model's own SourceTemplate, and run through the planner
as translate-mined batches them. Prints one JSON object: the agreement (identical
outputs / rows), empty outputs per side, distinct outputs per side and the first
mismatching rows. Used for the README's int8 numbers and by
tests/serve/test_precision_and_beams.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

BATCH = {"batch_tokens": 4096, "max_batch_size": 32}


def fixture_sources(model: str | Path, fixture_dir: str | Path, n: int) -> list[str]:
    """The first `n` mined rows that have a source, formatted as the model was trained."""
    from data.prompts import SourceTemplate

    template = SourceTemplate.load(model) or SourceTemplate()
    sources = []
    with open(Path(fixture_dir) / "conala-mined.jsonl") as lines:
        for line in lines:
            row = json.loads(line)
            try:
                sources.append(template.format(row["intent"], row["snippet"]))
            except ValueError:
                continue
            if len(sources) == n:
                break
    return sources


def parse_side(spec: str) -> tuple[str, str]:
    """`ENGINE:PRECISION` (precision defaults to float32)."""
    engine, _, precision = spec.partition(":")
    return engine, precision or "float32"


def run_side(
    spec: str,
    model: str | Path,
    sources: list[str],
    *,
    max_new_tokens: int = 64,
    num_beams: int = 1,
    cache_dir: str | Path | None = None,
    cpu_threads: int | None = None,
    device: str = "cpu",
) -> dict:
    """Outputs of one `ENGINE:PRECISION` on `sources`, with what resolved and the time."""
    from serve.engines import create_engine
    from serve.engines.base import GenerationOptions
    from serve.planner import generate_rows

    engine_name, precision = parse_side(spec)
    options = GenerationOptions(max_new_tokens=max_new_tokens, num_beams=num_beams)
    engine = create_engine(
        engine_name,
        str(model),
        device=device,
        precision=precision,
        options=options,
        cpu_threads=cpu_threads,
        cache_dir=cache_dir,
    )
    try:
        started = time.monotonic()
        result = generate_rows(engine, sources, **BATCH)
        seconds = time.monotonic() - started
        resolved = getattr(engine, "compute_type", precision)
    finally:
        engine.close()
    errors = [e for e in result.errors if e]
    if errors:
        raise RuntimeError(f"{spec}: {len(errors)} row error(s), first: {errors[0]}")
    return {"spec": spec, "resolved": resolved, "outputs": result.outputs, "seconds": seconds}


def compare(left: list[str], right: list[str], *, show: int = 5) -> dict:
    """Agreement of two output lists and what differs."""
    assert len(left) == len(right)
    mismatches = [i for i, (a, b) in enumerate(zip(left, right)) if a != b]
    return {
        "rows": len(left),
        "identical": len(left) - len(mismatches),
        "agreement": (len(left) - len(mismatches)) / len(left) if left else 1.0,
        "empty": [sum(not s.strip() for s in left), sum(not s.strip() for s in right)],
        "distinct": [len(set(left)), len(set(right))],
        "mismatches": [{"row": i, "left": left[i], "right": right[i]} for i in mismatches[:show]],
    }


def measure(
    model: str | Path,
    fixture_dir: str | Path,
    *,
    left: str = "hf:float32",
    right: str = "ctranslate2:float32",
    rows: int = 200,
    max_new_tokens: int = 64,
    num_beams: int = 1,
    cache_dir: str | Path | None = None,
    cpu_threads: int | None = None,
    device: str = "cpu",
    show: int = 5,
) -> dict:
    sources = fixture_sources(model, fixture_dir, rows)
    if len(sources) < rows:
        raise ValueError(f"only {len(sources)} mined rows with a source, {rows} asked for")
    with tempfile.TemporaryDirectory() as tmp:
        common = {
            "max_new_tokens": max_new_tokens,
            "num_beams": num_beams,
            "cache_dir": cache_dir or tmp,
            "cpu_threads": cpu_threads,
            "device": device,
        }
        a = run_side(left, model, sources, **common)
        b = run_side(right, model, sources, **common)
    report = {
        "model": str(model),
        "left": {k: a[k] for k in ("spec", "resolved", "seconds")},
        "right": {k: b[k] for k in ("spec", "resolved", "seconds")},
        "num_beams": num_beams,
        "max_new_tokens": max_new_tokens,
        **compare(a["outputs"], b["outputs"], show=show),
    }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="merged model directory")
    parser.add_argument(
        "--fixtures", required=True, type=Path, help="directory with conala-mined.jsonl"
    )
    parser.add_argument("--left", default="hf:float32", help="ENGINE:PRECISION")
    parser.add_argument("--right", default="ctranslate2:float32", help="ENGINE:PRECISION")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--cache_dir", type=Path, help="CTranslate2 conversions (default: temp)")
    parser.add_argument("--cpu_threads", type=int)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--show", type=int, default=5, help="mismatching rows to print")
    args = parser.parse_args(argv)
    for path, name in (
        (args.model, "--model"),
        (args.fixtures / "conala-mined.jsonl", "--fixtures"),
    ):
        if not path.exists():
            print(f"error: {name}: {path} not found", file=sys.stderr)
            return 2
    report = measure(
        args.model,
        args.fixtures,
        left=args.left,
        right=args.right,
        rows=args.rows,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        cache_dir=args.cache_dir,
        cpu_threads=args.cpu_threads,
        device=args.device,
        show=args.show,
    )
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
