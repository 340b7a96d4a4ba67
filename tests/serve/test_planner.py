"""The planner's own logic, with a small deterministic fake engine.

This is the one place a fake is right: what is under test is how the planner
batches, de-duplicates and isolates failures, not how any engine generates. The
real engines run through the planner in test_engines.py and test_translate.py.
"""

from __future__ import annotations

import pytest

from serve.engines.base import Candidate, Capabilities, Engine, Generation, GenerationOptions
from serve.planner import SystemicFailure, generate_rows, plan_batches


class FakeEngine(Engine):
    """Length = number of words; output = the source upper-cased; `poison` words fail."""

    def __init__(
        self, *, whole_shard=False, truncates=True, poison=(), broken=False, limit=512, n=1
    ):
        self.options = GenerationOptions(max_source_length=limit, num_candidates=n, do_sample=n > 1)
        self.capabilities = Capabilities("fake", True, truncates, "cpu", whole_shard)
        self.poison, self.broken = set(poison), broken
        self.calls: list[list[str]] = []

    def count_tokens(self, sources):
        return [len(source.split()) for source in sources]

    def special_tokens(self):
        return 0

    def generate(self, sources):
        self.calls.append(list(sources))
        if self.broken or any(word in self.poison for s in sources for word in s.split()):
            raise RuntimeError("device lost" if self.broken else "poisoned row")
        n = self.options.num_candidates
        return [
            Generation(
                tuple(
                    Candidate(source.upper() + (f" #{k}" if n > 1 else ""), len(source.split()), -k)
                    for k in range(n)
                )
            )
            for source in sources
        ]


def words(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def test_batches_respect_the_token_budget_and_size():
    lengths = [5, 40, 3, 40, 17, 8, 1, 25, 100, 2]
    batches = plan_batches(lengths, batch_tokens=64, max_batch_size=3)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        widest = max(lengths[i] for i in batch)
        assert len(batch) <= 3
        assert len(batch) * widest <= 64 or len(batch) == 1  # an over-budget row goes alone
    assert [lengths[batch[0]] for batch in batches] == sorted(
        (lengths[batch[0]] for batch in batches), reverse=True
    )


def test_duplicates_are_generated_once_and_fanned_out():
    engine = FakeEngine()
    sources = ["a b", "c", "a b", None, "c", "a b"]
    result = generate_rows(engine, sources, batch_tokens=100, max_batch_size=10)
    assert result.unique_sources == 2
    assert sorted(s for call in engine.calls for s in call) == ["a b", "c"]
    assert result.outputs == ["A B", "C", "A B", None, "C", "A B"]
    assert result.errors == [None] * 6  # the None source's error is the caller's
    assert result.generated_tokens == 3


def test_one_bad_row_becomes_one_error_by_bisection():
    engine = FakeEngine(poison={"bad"})
    sources = [words(3, f"r{i}_") for i in range(31)] + ["this is bad"]
    result = generate_rows(engine, sources, batch_tokens=10_000, max_batch_size=1000)
    assert result.batches == 1
    assert result.errors[-1] == "RuntimeError: poisoned row" and result.outputs[-1] is None
    assert all(e is None for e in result.errors[:-1])
    assert result.outputs[:-1] == [s.upper() for s in sources[:-1]]
    # 1 failed call, then two halves per level down to the bad row: 1 + 2*log2(32).
    assert result.calls == len(engine.calls) == 1 + 2 * 5


def test_every_candidate_travels_with_its_row_through_dedup_and_bisection():
    engine = FakeEngine(poison={"bad"}, n=3)
    sources = ["a b", "a bad row", "c", "a b"]
    result = generate_rows(engine, sources, batch_tokens=100, max_batch_size=10)
    texts = [g and [c.text for c in g.candidates] for g in result.generations]
    abc = ["A B #0", "A B #1", "A B #2"]
    assert texts == [abc, None, ["C #0", "C #1", "C #2"], abc]
    assert result.errors == [None, "RuntimeError: poisoned row", None, None]
    assert result.outputs == ["A B #0", None, "C #0", "A B #0"]
    assert result.generated_tokens == 3 * (2 + 1)  # every candidate, each source once


def test_a_call_where_every_row_fails_alone_stops_the_job():
    engine = FakeEngine(broken=True)
    with pytest.raises(SystemicFailure, match="every row .* fails alone: RuntimeError: device"):
        generate_rows(engine, ["a", "b", "c"], batch_tokens=100, max_batch_size=10)


def test_whole_shard_engines_get_one_call_longest_first():
    engine = FakeEngine(whole_shard=True)
    sources = [words(n) for n in (3, 9, 1, 9, 5)]
    result = generate_rows(engine, sources, batch_tokens=4, max_batch_size=2)
    assert len(engine.calls) == 1 and result.batches == 1
    assert [len(s.split()) for s in engine.calls[0]] == [9, 5, 3, 1]  # deduplicated too


def test_over_long_sources_are_cut_or_refused_by_capability():
    long = words(20)
    cut = generate_rows(FakeEngine(limit=8), [long, "x"], batch_tokens=100, max_batch_size=4)
    assert cut.truncated == 1 and cut.errors == [None, None]
    refused = generate_rows(
        FakeEngine(limit=8, truncates=False), [long, "x", long], batch_tokens=100, max_batch_size=4
    )
    assert refused.outputs == [None, "X", None]
    assert (
        refused.errors[0]
        == refused.errors[2]
        == ("source has 20 tokens, over the 8-token limit (--max_source_length)")
    )


def test_a_source_of_special_tokens_alone_is_its_rows_error(tiny_models, tmp_path):
    """CTranslate2 generates nothing from `</s>` alone (its score divided by zero)."""
    from serve.engines import create_engine

    engine = create_engine("ctranslate2", str(tiny_models["t5"]), cache_dir=str(tmp_path))
    for sources in (["", "x = 1", ""], [""]):
        result = generate_rows(engine, sources, batch_tokens=100, max_batch_size=4)
        for source, output, error in zip(sources, result.outputs, result.errors):
            assert (error, output is None) == (
                ("source is empty once tokenized", True) if not source else (None, False)
            )
    engine.close()
