"""Decontamination compares code, not text: a curated-test snippet is caught in any
disguise that leaves the program the same, and only then."""

from __future__ import annotations

import json
import unicodedata
from collections import defaultdict

import pytest

from data.filters import SNIPPET_RULES, Decontaminator, normalize_snippet, snippet_keys
from data.loaders import load_curated
from tests.conftest import SHARED_CONALA
from tests.data.test_instruct import build, synthetic_rows, write_translations

TEST_SNIPPET = "out = sorted(café_items, key=lambda x: (x[1], -x[0]))[:5]"
DISGUISES = {
    "nfd": (unicodedata.normalize("NFD", TEST_SNIPPET), "unicode"),
    "zero_width_appended": (TEST_SNIPPET + "\u200b", "unicode"),
    "zero_width_inside_a_name": (TEST_SNIPPET.replace("items", "it\u200dems"), "unicode"),
    "fullwidth_and_nbsp": (TEST_SNIPPET.replace("out =", "ｏｕｔ\u00a0="), "unicode"),
    "no_spaces_around_operators_and_commas": (
        "out=sorted(café_items,key=lambda x:(x[1],-x[0]))[:5]",
        "tokens",
    ),
    "trailing_comment": (TEST_SNIPPET + "  # top five", "tokens"),
    "comment_line_and_line_breaks": (
        "# sort them\nout = sorted(\n    café_items,\n    key=lambda x: (x[1], -x[0])\n)[:5]",
        "tokens",
    ),
    "reindented_copy": ("  " + TEST_SNIPPET.replace(", ", ",\n      "), "text"),
}
# Same layout, other program: none of these may be dropped.
DIFFERENT_CODE = [
    TEST_SNIPPET.replace("café_items", "cafe_items"),  # another name (not NFKC-equal)
    TEST_SNIPPET.replace("[:5]", "[:6]"),
    TEST_SNIPPET.replace("-x[0]", "x[0]"),
    "print('out = sorted(café_items)')",
    "s = 'ab'",  # vs the test's "s = 'a b'": a string's contents are code
]


@pytest.fixture(scope="module")
def decontaminator() -> Decontaminator:
    return Decontaminator([], [TEST_SNIPPET, "s = 'a b'", "for x in (", None, "\u200b"])


@pytest.mark.parametrize("name", sorted(DISGUISES))
def test_a_disguised_copy_is_caught_by_the_first_rule_that_sees_it(decontaminator, name):
    snippet, rule = DISGUISES[name]
    assert decontaminator.rule(None, snippet) == rule
    assert decontaminator.reason(None, snippet) == "contaminated_snippet"


@pytest.mark.parametrize("snippet", DIFFERENT_CODE)
def test_different_code_is_kept(decontaminator, snippet):
    assert decontaminator.rule(None, snippet) is None


def test_a_snippet_that_does_not_tokenize_falls_back_to_the_normal_text(decontaminator):
    assert decontaminator.rule(None, unicodedata.normalize("NFKD", "for x in (\u200b")) == "unicode"
    assert decontaminator.rule(None, "for y in (") is None
    assert decontaminator.rule(None, "\u200b\u200b") is None  # invisible: nothing to compare


def test_the_dataset_funnel_counts_each_rule(fixture_dir, tmp_path):
    test = load_curated(str(fixture_dir / "conala-test.json"), split="test").to_pylist()
    snippets = [row["snippet"] for row in test if row["snippet"].strip()][:40]
    disguises = {
        "unicode": lambda s: unicodedata.normalize("NFD", s) + "\ufeff",
        "tokens": lambda s: s + "  # copied",
    }
    copies = [
        dict(synthetic_rows(0, 1)[0], id=f"{rule}{i}", question_id=70_000_000 + i, snippet=fn(s))
        for rule, fn in disguises.items()
        for i, s in enumerate(snippets)
    ]
    clean = synthetic_rows(0, 20)
    translations = write_translations(tmp_path / "mined", copies + clean, rows_per_shard=50)
    out = tmp_path / "out"
    summary = build(translations, out, fixture_dir, "--keep_curated_train", "false")

    assert summary["funnel"]["dropped"]["contaminated_snippet"] == len(copies)
    caught = json.loads((out / "stats.json").read_text())["funnel"]["contamination"]
    # A disguise may also be caught by an earlier rule (NFD of pure ASCII is the text).
    assert sum(caught[rule] for rule in SNIPPET_RULES) == len(copies)
    assert caught["tokens"] >= len(snippets) and caught["unicode"] > 0
    assert "tokens" in (out / "README.md").read_text()


@pytest.mark.skipif(not SHARED_CONALA.is_dir(), reason="needs ../shared/data/conala")
def test_no_two_real_snippets_join_that_the_text_rule_kept_apart():
    """False positives, measured on the 2,378 real curated-train snippets (every pair):
    the unicode and token rules join no two snippets the whitespace rule tells apart."""
    rows = load_curated(str(SHARED_CONALA / "conala-train.json")).to_pylist()
    groups = defaultdict(set)
    for row in rows:
        for rule, key in snippet_keys(row["snippet"]):
            groups[rule, key].add(normalize_snippet(row["snippet"]))
    joined = [sorted(texts) for texts in groups.values() if len(texts) > 1]
    assert joined == []
