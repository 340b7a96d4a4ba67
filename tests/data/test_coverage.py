"""Identifier coverage: the terms of a snippet, when a text mentions them, and the
human-vs-raw gap on the real curated train file."""

from __future__ import annotations

import pytest

from data.coverage import Histogram, coverage, curated_references, snippet_terms
from data.dataset_card import _cell
from data.filters import Decontaminator, hash64, normalize_snippet, repeated_ngram
from data.loaders import load_curated
from tests.conftest import SHARED_CONALA


def test_terms_skip_keywords_builtins_and_attributes():
    names, strings, numbers = snippet_terms("for k in sorted(d.keys()):\n    print(k, 'x', 10)")
    assert names == {"k", "d"}  # not for/in (keywords), sorted/print (builtins), keys (attr)
    assert strings == {"x"}
    assert numbers == {"10"}


def test_string_literal_content_prefixes_and_triple_quotes():
    _, strings, _ = snippet_terms("re.sub(r'\\d+', '', s) + b\"raw\" + '''tri'''")
    assert strings == {"\\d+", "", "raw", "tri"}


def test_mention_rules():
    snippet = "df.groupby('city')['pop'].sum()"
    assert coverage(snippet, "sum `pop` of `df` grouped by 'city'") == 1.0
    assert coverage(snippet, "sum pop of df grouped by city") == 1.0  # quotes optional
    assert coverage(snippet, "sum POP of DF by City") == pytest.approx(1 / 3)  # names only
    assert coverage(snippet, "how do I group in pandas?") == 0.0
    assert coverage("xs = [x for x in y]", "flatten xs") == pytest.approx(1 / 3)  # whole words
    assert coverage("a = 10", "set a to 100") == 0.5  # 10 is not mentioned by 100
    assert coverage("''.join(parts)", "join `parts` on ''") == 1.0  # empty literal


def test_snippets_without_terms_score_none_and_null_text_scores_zero():
    assert coverage("print()", "print a blank line") is None
    assert coverage(None, "anything") is None
    assert coverage("x = 1", None) == 0.0


def test_regex_fallback_for_snippets_that_do_not_tokenize():
    for snippet in ("foo(bar, 'baz qux'", "x = 'unclosed + y.attr"):
        names, strings, numbers = snippet_terms(snippet)
        assert names, snippet  # something was found despite the tokenize failure
    assert snippet_terms("foo(bar, 'baz qux'") == ({"foo", "bar"}, {"baz qux"}, set())
    assert coverage("foo(bar, 'baz qux'", "call foo with bar and 'baz qux'") == 1.0


def test_histogram_mean_and_quantiles():
    hist = Histogram().extend([0.0, 0.0, 0.5, 2 / 3, 1.0, None])
    assert hist.n == 5 and hist.none == 1
    assert hist.mean == pytest.approx((0.5 + 2 / 3 + 1.0) / 5)
    assert hist.quantile(0.5) == 0.5 and hist.quantile(0.0) == 0.0 and hist.quantile(1) == 1.0
    assert hist.quantile(0.75) == pytest.approx(2 / 3)
    assert sum(hist.coarse(20)) == 5


def test_decontamination_keys_and_repetition():
    deco = Decontaminator([1, 2], ["x = f(a,  b)\n", None])
    assert deco.reason(1, "anything") == "contaminated_question_id"
    assert deco.reason(9, "  x = f(a,\n b)") == "contaminated_snippet"
    assert deco.reason(9, "x = f(a, c)") is None
    assert normalize_snippet(" a \n\t b ") == "a b"
    # Length-prefixed parts: a NUL-joined (or any separator-joined) hash collides here.
    assert hash64("a\0b", "c") != hash64("a", "b\0c")
    assert hash64("ab", "") != hash64("a", "b") != hash64("a", "b", "")
    assert repeated_ngram("list of list of list of list of", 4, 4)
    assert not repeated_ngram("list of list of list of", 4, 4)
    assert repeated_ngram("no no no no", 1, 4) and not repeated_ngram("no no no no", 0, 4)


def test_card_cells_escape_control_characters():
    assert _cell("a\nb\tc|d\x00e\u2028") == "a\\nb\\tc\\|d\\x00e\\u2028"
    assert _cell(None) == "*null*"
    assert len(_cell("x" * 500)) == 160


@pytest.mark.skipif(not SHARED_CONALA.is_dir(), reason="../shared/data/conala not present")
def test_human_rewrites_cover_far_more_than_raw_intents_on_real_curated_train():
    table = load_curated(str(SHARED_CONALA / "conala-train.json"))
    refs = curated_references(table)
    human = Histogram().extend(refs["human_rewrite"])
    raw = Histogram().extend(refs["raw_intent"])
    print(f"curated train coverage: human rewrite {human.mean:.3f}, raw intent {raw.mean:.3f}")
    assert human.n == raw.n > 2000
    assert human.mean > 0.5 and raw.mean < 0.2
    assert human.mean > raw.mean + 0.3
    # Human rewrites must not trip the default quality filters either.
    texts = table.column("rewritten_intent").drop_null().to_pylist()
    assert not [t for t in texts if repeated_ngram(t, 4, 4)]
    assert max(len(t.split()) for t in texts) <= 100
