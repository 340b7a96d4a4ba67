"""n-best candidates, the selection rule, the `candidates` column and their refusals."""

from __future__ import annotations

import json

import pytest
from conftest import run

from common.cli import UserError
from data.coverage import coverage
from data.schema import output_schema
from serve.candidates import choose
from serve.engines import check_generation
from serve.engines.base import GenerationOptions
from serve.sink import read_output
from serve.translate import main as translate

ROWS = 200


def test_choose_breaks_coverage_ties_by_score():
    scores = [-1.0, -0.5, -2.0, -0.1]
    assert choose(scores, [0.5, 0.5, 0.9, None], "coverage") == 2
    assert choose(scores, [0.5, 0.5, 0.1, None], "coverage") == 1
    assert choose(scores, [None] * 4, "coverage") == 3  # nothing to mention: score decides
    assert choose(scores, None, "score") == 3 and choose(scores, None, "first") == 0


def test_modes_an_engine_cannot_run_are_refused_naming_one_that_can():
    beams = GenerationOptions(num_beams=4, num_candidates=4)
    samples = GenerationOptions(do_sample=True, num_candidates=4)
    with pytest.raises(UserError, match=r"ctranslate2 engine has no seeded sampling.*--engine hf$"):
        check_generation("ctranslate2", samples)
    with pytest.raises(UserError, match=r"vllm engine has no beam search.*--engine hf$"):
        check_generation("vllm", beams)
    for engine, options in (("hf", samples), ("hf", beams), ("ctranslate2", beams)):
        check_generation(engine, options)
    with pytest.raises(ValueError, match="--num_candidates 4 needs --num_beams >= 4"):
        GenerationOptions(num_candidates=4)
    with pytest.raises(ValueError, match="--do_sample draws each candidate with --num_beams 1"):
        GenerationOptions(num_beams=2, do_sample=True)


@pytest.mark.slow
def test_coverage_selection_on_every_row_and_resume_refusals(merged_models, fixture_dir, tmp_path):
    mined = tmp_path / "mined.jsonl"
    with open(fixture_dir / "conala-mined.jsonl") as lines:
        mined.write_text("".join(next(lines) for _ in range(ROWS)))
    args = ["--model", merged_models["t5"], "--input", mined, "--output_dir", tmp_path / "out",
            "--engine", "ctranslate2", "--max_new_tokens", "32", "--num_beams", "4",
            "--num_candidates", "4", "--select", "coverage", "--keep_candidates"]  # fmt: skip
    translate([str(a) for a in args])
    table = read_output(tmp_path / "out")
    assert table.schema == output_schema(keep_candidates=True)
    picked_other = 0
    for row in table.to_pylist():
        candidates = row["candidates"]
        assert len(candidates) == 4
        for c in candidates:
            assert c["coverage"] == coverage(row["snippet"], c["text"])
        best = max(candidates, key=lambda c: (-1 if c["coverage"] is None else c["coverage"],
                                              c["score"]))  # fmt: skip
        assert (row["rewritten_intent"], row["score"]) == (best["text"], best["score"])
        picked_other += best is not candidates[0]
    assert picked_other > 0, "selection never changed the kept text: the test tests little"

    for flag, value in (("--num_candidates", "2"), ("--select", "first")):
        changed = [str(a) for a in args]
        changed[changed.index(flag) + 1] = value
        proc = run(["python", "-m", "serve.translate", *changed], check=False)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert flag.lstrip("-") in proc.stderr and "holds a run with different" in proc.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["params"]["generation"]["select"] == "coverage"
