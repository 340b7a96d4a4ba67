"""What n-best selection buys, and what the score says about quality (issue 18, item 4).

    python -m bench.quality --model runs/demo/merged --data runs/demo/data

On the mined rows (`DATA/conala-mined.jsonl`) it runs serve.translate twice into a
temporary directory, `--select first` then `--num_beams 4 --num_candidates 4 --select
coverage`, and reports the mean identifier coverage of the kept text and the rows/s
ratio. On the curated test split (`DATA/conala-test.json`) it generates greedily and
compares the chrF (sacrebleu) of the bottom-score quartile with the top quartile's.
Writes bench/results/quality.json (paths relative to the repo) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench.common import REPO, RESULTS
from data.coverage import coverage_column
from data.loaders import load_curated
from data.prompts import SourceTemplate
from serve.engines import create_engine
from serve.engines.base import GenerationOptions
from serve.planner import generate_rows
from serve.sink import read_output
from serve.translate import main as translate

NEW_TOKENS = 32
CONTENDERS = {
    "first": [],
    "coverage_of_4": ["--num_beams", "4", "--num_candidates", "4", "--select", "coverage"],
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
    out["rows_per_s_ratio"] = round(
        out["coverage_of_4"]["rows_per_s"] / out["first"]["rows_per_s"], 3
    )
    return out


def score_vs_chrf(model: Path, test_file: Path) -> dict:
    import sacrebleu

    table = load_curated(str(test_file))
    template = SourceTemplate.load(model) or SourceTemplate()
    rows = [r for r in table.to_pylist() if r["rewritten_intent"] and r["intent"] is not None]
    sources = [template.format(r["intent"], r["snippet"]) for r in rows]
    engine = create_engine(
        "ctranslate2", model, options=GenerationOptions(max_new_tokens=NEW_TOKENS),
        cache_dir=tempfile.mkdtemp(),
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


def relative(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="merged model directory")
    parser.add_argument("--data", type=Path, required=True, help="fixtures: mined + test files")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        report = {
            "model": relative(args.model),
            "mined": relative(args.data / "conala-mined.jsonl"),
            "curated_test": relative(args.data / "conala-test.json"),
            "selection": selection(args.model, args.data / "conala-mined.jsonl", Path(work)),
            "score_vs_chrf": score_vs_chrf(args.model, args.data / "conala-test.json"),
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    sel, q = report["selection"], report["score_vs_chrf"]
    print("| | mean coverage | rows/s |\n|---|---|---|")
    for name in CONTENDERS:
        print(
            f"| {sel[name]['flags']} | {sel[name]['mean_coverage']} | {sel[name]['rows_per_s']} |"
        )
    print(
        f"rows/s ratio {sel['rows_per_s_ratio']}; chrF bottom-score quartile "
        f"{q['chrf_bottom_quartile']} vs top {q['chrf_top_quartile']} ({q['rows']} rows)"
    )
    return report


if __name__ == "__main__":
    main()
