"""Turn a shard of sources into engine calls: dedup, length sort, token-budget batches.

Written once above every engine. A batch that raises is retried row by row so one
bad input becomes one `error` value instead of a dead job; if no row of the batch
succeeds alone either, the failure is systemic (a broken model, a dead device) and
is re-raised rather than written into every remaining row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from serve.engines.base import Engine

logger = logging.getLogger(__name__)


@dataclass
class PlanResult:
    outputs: list[str | None]
    errors: list[str | None]
    unique_sources: int = 0
    truncated: int = 0
    batches: int = 0


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
    result = PlanResult(outputs=[None] * len(sources), errors=[None] * len(sources))
    result.unique_sources = len(unique)

    limit = engine.options.max_source_length
    lengths = engine.count_tokens(unique) if unique else []
    runnable = []
    for i, length in enumerate(lengths):
        if length <= limit:
            runnable.append(i)
        elif engine.capabilities.truncates_sources:
            result.truncated += len(rows_of[unique[i]])
            runnable.append(i)
        else:
            _fill(
                result,
                rows_of[unique[i]],
                error=f"source has {length} tokens, over the "
                f"{limit}-token limit (--max_source_length)",
            )
    widths = [min(lengths[i], limit) for i in runnable]
    for batch in plan_batches(widths, batch_tokens=batch_tokens, max_batch_size=max_batch_size):
        texts = [unique[runnable[j]] for j in batch]
        for text, output, error in zip(texts, *_generate_batch(engine, texts)):
            _fill(result, rows_of[text], output=output, error=error)
            if progress:
                progress(len(rows_of[text]))
        result.batches += 1
    return result


def _generate_batch(engine: Engine, texts: list[str]) -> tuple[list, list]:
    try:
        return engine.generate(texts), [None] * len(texts)
    except Exception as batch_error:
        if len(texts) == 1:
            return [None], [_describe(batch_error)]
        logger.warning("batch of %d failed (%s); retrying row by row", len(texts), batch_error)
    outputs, errors = [], []
    for text in texts:
        try:
            outputs += engine.generate([text])
            errors.append(None)
        except Exception as row_error:
            outputs.append(None)
            errors.append(_describe(row_error))
    if all(errors):
        raise RuntimeError(f"every row of a failed batch also fails alone: {errors[0]}")
    return outputs, errors


def _fill(result: PlanResult, rows: list[int], *, output=None, error=None) -> None:
    for row in rows:
        result.outputs[row] = output
        result.errors[row] = error


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:500]
