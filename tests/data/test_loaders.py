"""Loaders: every format yields the same rows; bad files fail naming file, column or line."""

from __future__ import annotations

import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SHARED_CONALA, run

from data.loaders import is_hub_id, iter_mined, load_curated
from data.prompts import SourceTemplate, make_pairs
from data.schema import CURATED_SCHEMA, MINED_SCHEMA, SchemaError


def _mined_rows(path, **kw) -> list[dict]:
    return [row for batch in iter_mined(str(path), **kw) for row in batch.to_pylist()]


def test_curated_formats_round_trip(fixture_dir, tmp_path):
    original = load_curated(str(fixture_dir / "conala-train.json"))
    assert original.schema == CURATED_SCHEMA
    assert original.column("rewritten_intent").null_count > 0
    pq.write_table(original, tmp_path / "train.parquet")
    with open(tmp_path / "train.jsonl", "w", encoding="utf-8") as handle:
        for row in original.to_pylist():
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    for name in ("train.parquet", "train.jsonl"):
        assert load_curated(str(tmp_path / name)).to_pylist() == original.to_pylist()


def test_mined_formats_round_trip_in_small_batches(fixture_dir, tmp_path):
    rows = _mined_rows(fixture_dir / "conala-mined.jsonl", batch_rows=97)
    assert len(rows) == 2000
    assert list(rows[0]) == [*MINED_SCHEMA.names, "error"]
    assert all(row.pop("error") is None for row in rows)
    table = pa.Table.from_pylist(rows, schema=MINED_SCHEMA)
    pq.write_table(table, tmp_path / "mined.parquet", row_group_size=300)
    (tmp_path / "mined.json").write_text(json.dumps(rows, ensure_ascii=False))
    for name in ("mined.parquet", "mined.json"):
        read = _mined_rows(tmp_path / name, batch_rows=128)
        assert [{k: v for k, v in row.items() if k != "error"} for row in read] == rows


def test_mined_is_streamed_in_bounded_batches(fixture_dir):
    sizes = [
        batch.num_rows
        for batch in iter_mined(str(fixture_dir / "conala-mined.jsonl"), batch_rows=256)
    ]
    assert max(sizes) <= 256 and sum(sizes) == 2000


@pytest.mark.skipif(not SHARED_CONALA.is_dir(), reason="../shared/data/conala is absent")
def test_real_curated_train_file():
    table = load_curated(str(SHARED_CONALA / "conala-train.json"))
    assert table.num_rows == 2378
    assert table.column("rewritten_intent").null_count == 79
    pairs = make_pairs(table, SourceTemplate())
    assert len(pairs.sources) == 2378 - 79 and pairs.dropped_null_target == 79


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"intent": "x", "snippet": "y", "question_id": 1}]))
    with pytest.raises(SchemaError, match=r"bad\.json: missing column\(s\) \['rewritten_intent'\]"):
        load_curated(str(path))


def test_wrong_type_names_column(tmp_path):
    path = tmp_path / "bad.jsonl"
    row = {"intent": "x", "snippet": "y", "question_id": "abc", "rewritten_intent": "z"}
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(
        SchemaError, match=r"bad\.jsonl line 1: question_id has value 'abc', expected int64"
    ):
        load_curated(str(path))
    pq.write_table(pa.table({k: [v] for k, v in row.items()}), tmp_path / "bad.parquet")
    with pytest.raises(SchemaError, match="column 'question_id' has type string, expected int64"):
        load_curated(str(tmp_path / "bad.parquet"))


def test_truncated_json_line_is_that_rows_error(fixture_dir, tmp_path):
    lines = (fixture_dir / "conala-mined.jsonl").read_text(encoding="utf-8").splitlines()[:5]
    lines[3] = lines[3][: len(lines[3]) // 2]
    path = tmp_path / "cut.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = _mined_rows(path)
    assert len(rows) == 5 and [row["error"] is None for row in rows] == [1, 1, 1, 0, 1]
    assert "cut.jsonl line 4: not valid JSON: " in rows[3]["error"]
    assert rows[3]["id"] is None
    curated = {"question_id": 1, "intent": "a", "rewritten_intent": "b", "snippet": "c"}
    path.write_text(json.dumps(curated) + "\n" + "{oops\n", encoding="utf-8")
    with pytest.raises(SchemaError, match=r"cut\.jsonl line 2: not valid JSON"):
        load_curated(str(path))  # training data must be clean


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_curated(str(tmp_path / "nope.json"))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unknown format"):
        load_curated(str(tmp_path / "data.csv"))


def test_hub_id_detection(tmp_path):
    assert is_hub_id("neulab/conala")
    assert not is_hub_id(str(tmp_path / "conala-train.json"))
    assert not is_hub_id("./conala")


def test_template_default_prefix_and_null_intent():
    template = SourceTemplate()
    assert template.format("Sort a list", "sorted(x)") == "Sort a list\nsorted(x)"
    assert SourceTemplate(prefix="[S2S] ").format("a", "b") == "[S2S] a\nb"
    assert template.format(None, "sorted(x)") == "\nsorted(x)"
    with pytest.raises(ValueError, match="both intent and snippet are empty"):
        template.format(None, "  ")
    with pytest.raises(ValueError, match="unknown field"):
        SourceTemplate("{question}\n{snippet}")


def test_make_pairs_accounting():
    table = pa.Table.from_pylist(
        [
            {"question_id": 1, "intent": "a", "rewritten_intent": "A", "snippet": "x"},
            {"question_id": 2, "intent": None, "rewritten_intent": "B", "snippet": "y"},
            {"question_id": 3, "intent": "c", "rewritten_intent": None, "snippet": "z"},
            {"question_id": 4, "intent": "d", "rewritten_intent": "  ", "snippet": "w"},
            {"question_id": 5, "intent": None, "rewritten_intent": "E", "snippet": ""},
        ],
        schema=CURATED_SCHEMA,
    )
    pairs = make_pairs(table, SourceTemplate())
    assert pairs.sources == ["a\nx", "\ny"] and pairs.targets == ["A", "B"]
    assert (pairs.dropped_null_target, pairs.dropped_empty_source, pairs.null_intent) == (2, 1, 1)


@pytest.mark.slow
def test_tiny_models_load_and_generate_in_fresh_process(tiny_models):
    script = (
        "import sys\n"
        "from transformers import AutoTokenizer\n"
        "from transformers import AutoModelForSeq2SeqLM as S, AutoModelForCausalLM as C\n"
        "for path, cls in ((sys.argv[1], S), (sys.argv[2], C)):\n"
        "    tok = AutoTokenizer.from_pretrained(path)\n"
        "    model = cls.from_pretrained(path, use_safetensors=True)\n"
        "    batch = tok(['sort list `xs`\\nsorted(xs)'], return_tensors='pt')\n"
        "    out = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)\n"
        "    print(path.rsplit('/', 1)[-1], out.shape[-1], model.config.model_type)\n"
    )
    proc = run([sys.executable, "-c", script, tiny_models["t5"], tiny_models["llama"]])
    lines = proc.stdout.split("\n")
    assert "t5 5 t5" in lines  # decoder start + 4 new tokens
    assert any(line.startswith("llama ") and line.endswith(" llama") for line in lines)


def test_tiny_models_are_deterministic_and_ul2_shaped(tiny_models, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from data.tiny_models import build

    again = build(tmp_path, seed=0)
    for kind in ("t5", "llama"):
        first = load_file(tiny_models[kind] / "model.safetensors")
        second = load_file(again[kind] / "model.safetensors")
        assert first.keys() == second.keys()
        assert all((first[k] == second[k]).all() for k in first)
    assert AutoConfig.from_pretrained(tiny_models["t5"]).feed_forward_proj == "gated-silu"
    weights = load_file(tiny_models["t5"] / "model.safetensors")  # untied, as UL2's
    assert not (weights["lm_head.weight"] == weights["shared.weight"]).all()
    assert AutoConfig.from_pretrained(tiny_models["llama"]).head_dim == 64


def test_every_parquet_value_is_cast_losslessly_or_is_its_rows_error(tmp_path):
    """A float question_id with one non-integral value deep in the file, a NaN, an id too
    big for int64: each is that row's error, never a stop (issue 19, class 5)."""
    n = 5_003
    question_ids = [float(i) for i in range(n)]
    question_ids[5_000], question_ids[5_001] = 5000.5, float("nan")
    table = pa.table({
        "id": [f"r{i}" for i in range(n)],
        "question_id": question_ids,
        "parent_answer_post_id": pa.array([1] * (n - 1) + [2**64 - 1], pa.uint64()),
        "prob": pa.array([0.5] * n, pa.float32()),
        "intent": ["i"] * n,
        "snippet": ["s"] * n,
    })  # fmt: skip
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=1000)
    rows = _mined_rows(tmp_path / "in.parquet", batch_rows=1000)
    assert len(rows) == n and [r["id"] for r in rows] == [f"r{i}" for i in range(n)]
    bad = {i: r["error"] for i, r in enumerate(rows) if r["error"]}
    assert sorted(bad) == [5_000, 5_001, 5_002]
    expected = "in.parquet row 5000: question_id has value '5000.5', expected int64"
    assert bad[5_000].endswith(expected)
    assert "question_id has value 'nan'" in bad[5_001]
    assert "parent_answer_post_id has value '18446744073709551615'" in bad[5_002]
    assert rows[5_000]["question_id"] is None and rows[4_999]["question_id"] == 4_999
    assert rows[5_002]["parent_answer_post_id"] is None and rows[5_002]["prob"] == 0.5
