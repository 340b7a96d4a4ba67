"""What n-best selection buys, and what the score says about quality (issue 18, item 4).

    python -m bench.quality --model runs/demo/merged --data runs/demo/data

On the mined rows (`DATA/conala-mined.jsonl`) it runs serve.translate three times into
a temporary directory: greedy (the defaults), then 4 beams kept as 4 candidates with
`--select first` and with `--select coverage`. Selection's gain is the last against the
second (same candidates); beam search's is the second against the first. It reports the
mean identifier coverage of the kept text and rows/s ratios. On the curated test split
(`DATA/conala-test.json`) it generates greedily and compares the chrF (sacrebleu) of the
bottom-score quartile with the top quartile's. Writes bench/results/quality.json (paths
relative to the repo) and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench.common import RESULTS, machine, portable, write_json
from data.coverage import coverage_column
from data.loaders import load_curated
from data.prompts import SourceTemplate
from serve.engines import create_engine
from serve.engines.base import GenerationOptions
from serve.planner import generate_rows
from serve.sink import read_output
from serve.translate import main as translate

NEW_TOKENS = 32
BEAMS_4 = ["--num_beams", "4", "--num_candidates", "4"]
CONTENDERS = {
    "greedy": [],
    "first_of_4": [*BEAMS_4, "--select", "first"],
    "coverage_of_4": [*BEAMS_4, "--select", "coverage"],
}


def selection(model: Path, mined: Path, work: Path) -> dict:
    out = {}
    for name, flags in CONTENDERS.items():
        args = ["--model", model, "--input", mined, "--output_dir", work / name,
                "--engine", "ctranslate2", "--max_new_tokens", NEW_TOKENS, *flags]  # fmt: skip
        summary = translate([str(a) for a in args])
        table = read_output(work / name)
        covered = coverage_column(
            table.column("snippet").to_pylist(), table.column("rewritten_intent").to_pylist()
        )
        values = [c for c in covered if c is not None]
        out[name] = {"flags": " ".join(flags) or "(defaults)", "rows": table.num_rows,
                     "mean_coverage": round(statistics.fmean(values), 4),
                     "rows_per_s": round(summary["rows_per_s"], 2)}  # fmt: skip
    speed = {name: out[name]["rows_per_s"] for name in CONTENDERS}
    out["rows_per_s_ratio"] = round(speed["coverage_of_4"] / speed["greedy"], 3)
    out["selection_rows_per_s_ratio"] = round(speed["coverage_of_4"] / speed["first_of_4"], 3)
    return out


def score_vs_chrf(model: Path, test_file: Path, work: Path) -> dict:
    import sacrebleu

    table = load_curated(str(test_file))
    template = SourceTemplate.load(model) or SourceTemplate()
    rows = [r for r in table.to_pylist() if r["rewritten_intent"] and r["intent"] is not None]
    sources = [template.format(r["intent"], r["snippet"]) for r in rows]
    engine = create_engine(
        "ctranslate2", model, options=GenerationOptions(max_new_tokens=NEW_TOKENS),
        cache_dir=str(work / "ct2-cache"),
    )  # fmt: skip
    result = generate_rows(engine, sources, batch_tokens=4096, max_batch_size=64)
    engine.close()
    scored = sorted(
        (g.candidates[0].score, g.text, r["rewritten_intent"])
        for g, r in zip(result.generations, rows)
        if g is not None
    )
    quarter = len(scored) // 4

    def chrf(part):
        return round(
            sacrebleu.corpus_chrf([t for _, t, _ in part], [[r for _, _, r in part]]).score, 2
        )

    return {"rows": len(scored), "chrf_bottom_quartile": chrf(scored[:quarter]),
            "chrf_top_quartile": chrf(scored[-quarter:]), "chrf_all": chrf(scored),
            "score_bottom_quartile_max": round(scored[quarter - 1][0], 4),
            "score_top_quartile_min": round(scored[-quarter][0], 4)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="merged model directory")
    parser.add_argument("--data", type=Path, required=True, help="fixtures: mined + test files")
    parser.add_argument("--out", type=Path, default=RESULTS / "quality.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        report = {
            "machine": machine(),
            "model": portable(args.model),
            "mined": portable(args.data / "conala-mined.jsonl"),
            "curated_test": portable(args.data / "conala-test.json"),
            "selection": selection(args.model, args.data / "conala-mined.jsonl", Path(work)),
            "score_vs_chrf": score_vs_chrf(args.model, args.data / "conala-test.json", Path(work)),
        }
    write_json(args.out, report)
    sel, q = report["selection"], report["score_vs_chrf"]
    print("| | mean coverage | rows/s |\n|---|---|---|")
    for name in CONTENDERS:
        print(
            f"| {sel[name]['flags']} | {sel[name]['mean_coverage']} | {sel[name]['rows_per_s']} |"
        )
    print(
        f"rows/s vs greedy {sel['rows_per_s_ratio']}, vs first of 4 "
        f"{sel['selection_rows_per_s_ratio']}; chrF bottom-score quartile "
        f"{q['chrf_bottom_quartile']} vs top {q['chrf_top_quartile']} ({q['rows']} rows)"
    )
    return report


if __name__ == "__main__":
    main()
