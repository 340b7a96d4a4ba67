"""Pick each row's kept text among its candidates, and build the columns that record it.

`--select first` keeps the engine's first candidate (the best beam, or the first
sample); `score` the highest mean token log-probability; `coverage` the highest
identifier coverage of the row's snippet (data.coverage: what a CoNaLa rewrite is
for), ties broken by score, then by the engine's order. A snippet with no terms gives
every candidate the same (None) coverage, so its score decides.
"""

from __future__ import annotations

import pyarrow as pa

from data.coverage import coverage
from data.schema import CANDIDATE
from serve.engines.base import Generation, GenerationOptions


def choose(scores: list[float], coverages: list[float | None] | None, rule: str) -> int:
    """Index of the kept candidate; `coverages` is needed only by the coverage rule."""
    if rule == "first":
        return 0
    if rule == "score":
        return max(range(len(scores)), key=lambda i: scores[i])
    covered = [-1.0 if c is None else c for c in coverages]
    return max(range(len(scores)), key=lambda i: (covered[i], scores[i]))


def output_columns(
    generations: list[Generation | None], snippets: list[str | None], options: GenerationOptions
) -> dict[str, pa.Array]:
    """`rewritten_intent` and `score` (and `candidates` if kept) for every row; a row
    without a generation (it has an error) gets nulls."""
    texts, scores, kept = [], [], []
    need_coverage = options.select == "coverage" or options.keep_candidates
    for generation, snippet in zip(generations, snippets, strict=True):
        if generation is None:
            texts.append(None)
            scores.append(None)
            kept.append(None)
            continue
        candidates = generation.candidates
        cand_scores = [c.score for c in candidates]
        coverages = [coverage(snippet, c.text) for c in candidates] if need_coverage else None
        best = choose(cand_scores, coverages, options.select)
        texts.append(candidates[best].text)
        scores.append(candidates[best].score)
        if options.keep_candidates:
            kept.append(
                [{"text": c.text, "score": c.score, "coverage": cov}
                 for c, cov in zip(candidates, coverages)]
            )  # fmt: skip
    columns = {
        "rewritten_intent": pa.array(texts, pa.string()),
        "score": pa.array(scores, pa.float64()),
    }
    if options.keep_candidates:
        columns["candidates"] = pa.array(kept, pa.list_(CANDIDATE))
    return columns
