import json
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from data.prompts import SourceTemplate
from data.stats import compute_stats, format_report

REPO = Path(__file__).resolve().parents[2]
VOCAB = ["[UNK]", "sort", "list", "sorted", "(", ")", "x", "y", "make", "dict", "d", "="]
VOCAB += ["print", "`x`", "`d`", "|", "[S2S]"]

CURATED_KEYS = ("intent", "rewritten_intent", "snippet", "question_id")
MINED_KEYS = ("intent", "snippet", "id", "question_id", "parent_answer_post_id", "prob")

# Hand-checked rows. With the default template "{intent}\n{snippet}" and a
# whitespace tokenizer the sources have 6, 6, 8, 6 and 1 tokens; the last row has
# no source. Targets "sort `x`", "make dict `d`", "sort list `x`" have 2, 3, 3.
CURATED = [
    dict(zip(CURATED_KEYS, row, strict=True))
    for row in [
        ("sort list", "sort `x`", "sorted ( x )", 1),
        ("make dict", "make dict `d`", "d = { }", 2),
        (None, None, "print ( x )\nprint ( y )", 3),
        ("sort list", "sort list `x`", "sorted ( x )", 1),
        ("", "", "y", 4),
        ("", None, "", 5),
    ]
]
MINED = [
    dict(zip(MINED_KEYS, row, strict=True))
    for row in [
        ("sort list", "sorted ( x )", "1_11_0", 1, 11, 0.5),
        ("sort list", "sorted ( x )", "1_11_1", 1, 11, 0.4),
        (None, "d = { }", "2_21_0", 2, 21, 0.3),
        ("", "print ( y )", "2_21_0", 2, 21, 0.2),
    ]
]


def _tokenizer() -> PreTrainedTokenizerFast:
    """Word-level vocabulary without braces; splitting on whitespace drops newlines."""
    model = models.WordLevel({word: i for i, word in enumerate(VOCAB)}, unk_token="[UNK]")
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")


@pytest.fixture
def curated_file(tmp_path) -> Path:
    path = tmp_path / "curated.json"
    path.write_text(json.dumps(CURATED))
    return path


@pytest.fixture
def mined_file(tmp_path) -> Path:
    path = tmp_path / "mined.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in MINED))
    return path


def test_curated_column_counts(curated_file):
    stats = compute_stats(str(curated_file))
    assert stats["kind"] == "curated"
    assert stats["rows"] == 6
    assert stats["nulls"] == {"question_id": 0, "intent": 1, "rewritten_intent": 2, "snippet": 0}
    assert stats["empty"] == {"intent": 2, "rewritten_intent": 1, "snippet": 1}
    assert stats["duplicates"] == {"intent_snippet": 1, "question_id": 1}
    assert "source" not in stats


def test_curated_token_counts(curated_file):
    stats = compute_stats(
        str(curated_file), tokenizer=_tokenizer(), max_source_length=6, max_target_length=2
    )
    assert stats["rows_without_source"] == 1
    assert stats["source"] == {
        "count": 5,
        "p50": 6,
        "p90": 8,
        "p99": 8,
        "max": 8,
        "limit": 6,
        "truncated": 1,
        "truncation_rate": 0.2,
        "tokens": 27,
        "unknown_tokens": 2,
        "unk_rate": 2 / 27,
        "with_newline": 5,
        "lost_newline": 5,
        "with_brace": 1,
        "lost_brace": 1,
    }
    assert stats["target"] == {
        "count": 3,
        "p50": 3,
        "p90": 3,
        "p99": 3,
        "max": 3,
        "limit": 2,
        "truncated": 2,
        "truncation_rate": 2 / 3,
        "tokens": 8,
        "unknown_tokens": 0,
        "unk_rate": 0.0,
        "with_newline": 0,
        "lost_newline": 0,
        "with_brace": 0,
        "lost_brace": 0,
    }


def test_template_and_prefix_shape_the_sources(curated_file):
    # "[S2S] sort list | sorted ( x )" is 8 tokens; only row 3's snippet has a newline.
    template = SourceTemplate("{intent} | {snippet}", prefix="[S2S] ")
    source = compute_stats(str(curated_file), tokenizer=_tokenizer(), template=template)["source"]
    assert (source["p50"], source["max"], source["tokens"]) == (8, 10, 37)
    assert (source["with_newline"], source["lost_newline"]) == (1, 1)


def test_mined_omits_targets_and_counts_duplicate_ids(mined_file):
    stats = compute_stats(str(mined_file), tokenizer=_tokenizer())
    assert stats["kind"] == "mined"
    assert stats["rows"] == 4
    assert stats["nulls"]["intent"] == 1
    assert stats["empty"] == {"id": 0, "intent": 1, "snippet": 0}
    assert stats["duplicates"] == {"intent_snippet": 1, "question_id": 2, "id": 1}
    assert "target" not in stats
    # Sources: 6, 6, 4 (with two unknown braces) and 4 tokens.
    assert (stats["source"]["count"], stats["source"]["tokens"]) == (4, 20)
    assert stats["source"]["unknown_tokens"] == 2


def test_report_is_aligned_text(curated_file):
    report = format_report(compute_stats(str(curated_file), tokenizer=_tokenizer()))
    lines = report.splitlines()
    assert "rewritten_intent      2      1" in lines
    assert any(line.split() == ["lost_brace", "1", "0"] for line in lines)
    assert any(line.split() == ["unk_rate", "7.41%", "0.00%"] for line in lines)


def test_cli_prints_and_writes_json(curated_file, tmp_path):
    tokenizer_dir = tmp_path / "tokenizer"
    _tokenizer().save_pretrained(tokenizer_dir)
    out = tmp_path / "stats.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "data.stats",
            "--input",
            str(curated_file),
            "--tokenizer",
            str(tokenizer_dir),
            "--max_source_length",
            "6",
            "--max_target_length",
            "2",
            "--json",
            str(out),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    stats = json.loads(out.read_text())
    assert stats["tokenizer"] == str(tokenizer_dir)
    assert stats["rows"] == 6
    assert stats["source"]["lost_brace"] == 1
    assert stats["target"]["truncation_rate"] == pytest.approx(2 / 3)
    assert "lost_newline" in result.stdout
