"""Turn a shard of sources into engine calls: dedup, length sort, token-budget batches.

Written once above every engine. Identical sources are generated once and fanned
out to every row that has them. Engines that schedule their own work
(`capabilities.whole_shard`, vLLM) get the whole de-duplicated shard in one call;
the others get length-sorted batches whose padded size stays under a token budget,
through `generate_batches` so engines with an asynchronous API can overlap them.

Each source gets `options.num_candidates` candidates in one `Generation`; they travel
together, so dedup fans all of them out and a failing source is still one row's error.

A call that raises is bisected until the failing rows stand alone, so one bad input
becomes one `error` value (in about 2*log2(n) extra calls) instead of a dead job.
If no row of the call succeeds alone either, the failure is systemic (a broken
model, a dead device) and is raised rather than written into every remaining row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from serve.engines.base import Engine, Generation

logger = logging.getLogger(__name__)


class SystemicFailure(RuntimeError):
    """Every row of a failed engine call also fails alone: nothing row-specific."""


@dataclass
class PlanResult:
    generations: list[Generation | None]  # every candidate of each row
    errors: list[str | None]
    unique_sources: int = 0
    truncated: int = 0
    batches: int = 0  # planned engine calls
    calls: int = 0  # engine calls made, bisection retries included
    generated_tokens: int = 0

    @property
    def outputs(self) -> list[str | None]:
        """Each row's first candidate (the engine's best)."""
        return [None if g is None else g.text for g in self.generations]


def plan_batches(lengths: list[int], *, batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Indices grouped longest-first so each batch's padded size stays under budget.

    The padded size of a batch is `len(batch) * max(length)`; sorting first makes
    neighbours similar so little of that budget goes to padding. A source longer
    than the budget still gets a batch of its own.
    """
    if batch_tokens < 1 or max_batch_size < 1:
        raise ValueError("batch_tokens and max_batch_size must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for index in order:
        if batches and len(batches[-1]) < max_batch_size:
            widest = lengths[batches[-1][0]]  # longest-first: the first is the widest
            if (len(batches[-1]) + 1) * widest <= batch_tokens:
                batches[-1].append(index)
                continue
        batches.append([index])
    return batches


def generate_rows(
    engine: Engine,
    sources: list[str | None],
    *,
    batch_tokens: int,
    max_batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> PlanResult:
    """Generate one output per source; `None` sources are skipped (their error is the caller's)."""
    rows_of: dict[str, list[int]] = {}
    for row, source in enumerate(sources):
        if source is not None:
            rows_of.setdefault(source, []).append(row)
    unique = list(rows_of)
    result = PlanResult(generations=[None] * len(sources), errors=[None] * len(sources))
    result.unique_sources = len(unique)

    runnable, widths = _check_lengths(engine, unique, rows_of, result)
    if engine.capabilities.whole_shard:
        batches = [sorted(range(len(runnable)), key=lambda i: -widths[i])] if runnable else []
    else:
        batches = plan_batches(widths, batch_tokens=batch_tokens, max_batch_size=max_batch_size)
    texts_of = [[unique[runnable[i]] for i in batch] for batch in batches]
    result.batches = len(texts_of)
    for texts, answer in zip(texts_of, engine.generate_batches(texts_of)):
        result.calls += 1
        if isinstance(answer, Exception):
            logger.warning("a call of %d rows failed (%s); bisecting", len(texts), answer)
            pairs = _bisect(engine, texts, answer, result)
        else:
            result.generated_tokens += sum(g.num_tokens for g in answer)
            pairs = [(g, None) for g in answer]
        for text, (output, error) in zip(texts, pairs):
            _fill(result, rows_of[text], output=output, error=error)
            if progress:
                progress(len(rows_of[text]))
    return result


def _check_lengths(engine, unique, rows_of, result) -> tuple[list[int], list[int]]:
    """Indices of the sources the engine can take, and their (capped) token widths."""
    limit = engine.options.max_source_length
    # A source of special tokens alone (odd unicode the tokenizer drops): CTranslate2
    # generates nothing from it, hf something; neither is a rewrite of the row.
    floor = engine.special_tokens()
    runnable, widths = [], []
    for i, length in enumerate(engine.count_tokens(unique) if unique else []):
        if length <= floor:
            _fill(result, rows_of[unique[i]], error="source is empty once tokenized")
            continue
        if length > limit and not engine.capabilities.truncates_sources:
            error = (
                f"source has {length} tokens, over the {limit}-token limit (--max_source_length)"
            )
            _fill(result, rows_of[unique[i]], error=error)
            continue
        if length > limit:
            result.truncated += len(rows_of[unique[i]])
        runnable.append(i)
        widths.append(min(length, limit))
    return runnable, widths


def _bisect(engine, texts: list[str], error: Exception, result: PlanResult) -> list[tuple]:
    """(output, error) per text, splitting a failed call until failures stand alone."""
    answers = _split(engine, texts, error, result)
    if all(output is None for output, _ in answers):
        raise SystemicFailure(f"every row of a failed call also fails alone: {answers[0][1]}")
    return answers


def _split(engine, texts, error, result) -> list[tuple]:
    if len(texts) == 1:
        return [(None, _describe(error))]
    half = len(texts) // 2
    answers = []
    for part in (texts[:half], texts[half:]):
        result.calls += 1
        try:
            generations = engine.generate(part)
        except Exception as part_error:
            answers += _split(engine, part, part_error, result)
            continue
        result.generated_tokens += sum(g.num_tokens for g in generations)
        answers += [(g, None) for g in generations]
    return answers


def _fill(result: PlanResult, rows: list[int], *, output=None, error=None) -> None:
    for row in rows:
        result.generations[row] = output
        result.errors[row] = error


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:500]
