import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from data.fixtures import FILE_NAMES, write_fixtures
from data.loaders import iter_mined, load_curated

REPO = Path(__file__).resolve().parents[2]
SMALL = {"train_rows": 30, "test_rows": 10, "mined_rows": 50}


@pytest.fixture(scope="module")
def default_files(tmp_path_factory) -> dict[str, Path]:
    return write_fixtures(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture(scope="module")
def mined(default_files) -> pa.Table:
    return pa.Table.from_batches(list(iter_mined(str(default_files["mined"]))))


def _bytes(paths: dict[str, Path]) -> dict[str, bytes]:
    return {split: path.read_bytes() for split, path in paths.items()}


def test_same_seed_gives_identical_bytes(tmp_path):
    first = write_fixtures(tmp_path / "a", seed=7, **SMALL)
    second = write_fixtures(tmp_path / "b", seed=7, **SMALL)
    assert _bytes(first) == _bytes(second)


def test_different_seed_changes_every_file(tmp_path):
    first = _bytes(write_fixtures(tmp_path / "a", seed=1, **SMALL))
    second = _bytes(write_fixtures(tmp_path / "b", seed=2, **SMALL))
    assert all(first[split] != second[split] for split in FILE_NAMES)


def test_files_have_original_names(default_files):
    assert {split: path.name for split, path in default_files.items()} == FILE_NAMES


@pytest.mark.parametrize(
    ("split", "rows", "null_targets", "null_intents"),
    [
        ("train", 400, 12, 2),
        ("test", 100, 3, 1),
    ],
)
def test_curated_loads_with_nulls(default_files, split, rows, null_targets, null_intents):
    table = load_curated(str(default_files[split]))
    assert table.num_rows == rows
    assert table.column("rewritten_intent").null_count == null_targets
    assert table.column("intent").null_count == null_intents


def test_mined_loads_with_unique_ids_and_shared_questions(mined):
    assert mined.num_rows == 2000
    ids = mined.column("id").to_pylist()
    assert len(set(ids)) == len(ids)
    per_question = Counter(mined.column("question_id").to_pylist())
    assert max(per_question.values()) > 1
    assert mined.column("intent").null_count == 3


def test_mined_ids_follow_the_real_format(mined):
    for row in mined.to_pylist():
        question_id, post_id, k = row["id"].split("_")
        assert (int(question_id), int(post_id)) == (
            row["question_id"],
            row["parent_answer_post_id"],
        )
        assert int(k) >= 0
        assert 0 < row["prob"] < 1


def test_mined_has_exact_duplicate_pairs(mined):
    intents, snippets = mined.column("intent").to_pylist(), mined.column("snippet").to_pylist()
    pairs = Counter(zip(intents, snippets, strict=True))
    assert max(pairs.values()) > 1


def test_rewritten_intent_names_what_the_snippet_contains(default_files):
    rows = load_curated(str(default_files["train"])).to_pylist()
    rows += load_curated(str(default_files["test"])).to_pylist()
    for row in rows:
        target = row["rewritten_intent"]
        if target is None:
            continue
        identifiers = re.findall(r"`([^`]+)`", target)
        literals = re.findall(r"'([^']*)'", re.sub(r"`[^`]+`", "", target))
        assert identifiers or literals, target
        for name in identifiers + literals:
            assert name in row["snippet"], (name, row["snippet"])


def test_snippets_include_the_awkward_cases(default_files):
    snippets = load_curated(str(default_files["train"])).column("snippet").to_pylist()
    assert any(len(s) > 300 and s.count("\n") > 5 for s in snippets)
    assert any("\n" in s for s in snippets)
    assert any("{" in s and "}" in s for s in snippets)
    assert any(re.search(r"[À-ÿ]", s) for s in snippets)  # accents
    assert any(re.search(r"[\u3040-\u9fff]", s) for s in snippets)  # kana / CJK
    assert any(re.search(r"[\U0001F300-\U0001FAFF]", s) for s in snippets)  # emoji


def test_cli_writes_the_same_files_as_the_function(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "data.fixtures",
            "--out",
            str(tmp_path / "cli"),
            "--seed",
            "3",
            "--train_rows",
            "30",
            "--test_rows",
            "10",
            "--mined_rows",
            "50",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    expected = _bytes(write_fixtures(tmp_path / "function", seed=3, **SMALL))
    written = {split: (tmp_path / "cli" / name).read_bytes() for split, name in FILE_NAMES.items()}
    assert written == expected
    # Existing files are never replaced silently.
    again = [sys.executable, "-m", "data.fixtures", "--out", str(tmp_path / "cli"),
             "--train_rows", "5"]  # fmt: skip
    proc = subprocess.run(again, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr, proc.stderr
    assert (tmp_path / "cli" / FILE_NAMES["train"]).read_bytes() == expected["train"]
    subprocess.run([*again, "--overwrite"], cwd=REPO, check=True, capture_output=True)
    assert (tmp_path / "cli" / FILE_NAMES["train"]).read_bytes() != expected["train"]
