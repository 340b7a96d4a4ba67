"""A hostile-but-realistic user against serve.translate: races, swaps, bad rows, bad starts.

Every case runs the real CLI in real processes (the concurrency cases in several at
once) on the tiny T5 through CTranslate2 float32, the default engine for it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO, repo_env, run
from safetensors.torch import load_file, save_file

from serve.identity import model_fingerprint
from serve.sink import read_output

pytestmark = pytest.mark.slow


def translate(model, source, out, *extra, check=False) -> subprocess.CompletedProcess:
    return run(
        [sys.executable, "-m", "serve.translate", "--model", model, "--input", source,
         "--output_dir", out, "--max_new_tokens", "4", *extra],
        check=check,
    )  # fmt: skip


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def write_jsonl(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def mined_row(i: int, intent, snippet) -> dict:
    return {"id": f"h{i}", "question_id": i, "parent_answer_post_id": 1, "prob": 0.5,
            "intent": intent, "snippet": snippet}  # fmt: skip


# Text kinds a mined row may hold; each must come back stored byte for byte.
HOSTILE_TEXTS = [
    ("null intent", None, "print(x)"),
    ("empty intent", "", "len(a)"),
    ("empty snippet", "sum a list", ""),
    ("whitespace snippet", "sum", " \t "),
    ("both null", None, None),
    ("both blank", "  ", "\n\n"),
    ("huge snippet", "huge", "x = 1\n" * 20_000),
    ("C0 controls", "ctl \x00\x01\x07\x08", "a\x0bb\x0cc\x1f"),
    ("DEL and C1", "del \x7f \x85 \x9b", "s = '\x7f'"),
    ("ANSI escape", "red \x1b[31mtext\x1b[0m", "print('\x1b]0;title\x07')"),
    ("bidi override", "abc \u202e fed", "x = '\u2066y\u2069'"),
    ("zero width", "a\u200bb\u200dc\ufeff", "x\u200c = 1"),
    ("combining", "e\u0301\u0301\u0301", "'n\u0303'"),
    ("astral", "\U0001f600 \U00010348", "s = '\U0001d11e'"),
    ("CJK and RTL", "字符串 سلسلة", "print('עברית')"),
    ("line separators", "a\u2028b\u2029c", "x = 1\r\ny = 2\rz = 3"),
    ("NBSP", "a\u00a0b\u3000c", "x\u00a0= 1"),
    ("replacement char", "\ufffd bad", "'\ufffd'"),
    ("noncharacters", "\ufdd0 \uffff", "'\U0010ffff'"),
    ("private use", "\ue000\U000f0000", "x"),
    ("long intent", "word " * 5000, "f(x)"),
    ("braces", "{intent} {snippet} {} {0}", "'{}'.format(x)"),
    ("percent", "%s %d %%", "'%s' % x"),
    ("backslashes", "C:\\path\\n \\u0041", r"re.sub(r'\d+', '', s)"),
    ("quotes", "\"'`", 's = "\'"'),
    ("HTML", "<script>alert(1)</script>", "<b>&amp;</b>"),
    ("template tokens", "[S2S] <extra_id_0> </s> <pad>", "<unk>"),
    ("tabs only", "\t", "\tpass"),
    ("one char", "x", "y"),
    ("emoji", "\U0001f600 done", "ok = '\U0001f44d'"),
]


def test_every_hostile_row_gets_one_output_or_one_error(tiny_models, tmp_path):
    rows = [mined_row(i, intent, snippet) for i, (_, intent, snippet) in enumerate(HOSTILE_TEXTS)]
    # Half the lines \u-escaped (astral characters as surrogate pairs), half raw UTF-8.
    lines = [json.dumps(row, ensure_ascii=i % 2 == 0).encode() for i, row in enumerate(rows)]
    # Beyond what JSON can carry as text: a lone surrogate, raw bytes, broken lines.
    lines += [
        b'{"id": "lone", "question_id": 90, "parent_answer_post_id": 1, "prob": 0.5, '
        b'"intent": "bad \\ud800 here", "snippet": "x = 1"}',
        b"\xff\xfe\x00 not utf-8 at all",
        b'{"id": "truncated", "question_id": 91',
        b'{"id": "badtype", "question_id": "ninety-two", "parent_answer_post_id": 1, '
        b'"prob": 0.5, "intent": "i", "snippet": "s"}',
        b"[1, 2, 3]",
    ]
    source = write_jsonl(tmp_path / "hostile.jsonl", lines)
    out = tmp_path / "out"
    summary = json.loads(translate(tiny_models["t5"], source, out, check=True).stdout)
    assert summary["complete"] and summary["rows"] == len(lines)
    output = read_output(out).to_pylist()
    assert len(output) == len(lines)
    for row, (kind, intent, snippet) in zip(output, HOSTILE_TEXTS):
        assert (row["intent"], row["snippet"]) == (intent, snippet), kind  # byte-identical
        assert (row["rewritten_intent"] is None) != (row["error"] is None), kind
    errors = [row["error"] for row in output]
    assert [i for i, e in enumerate(errors[: len(HOSTILE_TEXTS)]) if e] == [4, 5]
    assert all(errors[i].startswith("unusable row: both intent and snippet") for i in (4, 5))
    assert all(errors[len(HOSTILE_TEXTS) :])
    lone, raw, truncated, badtype, array = output[len(HOSTILE_TEXTS) :]
    assert "line 31: intent is not valid Unicode" in lone["error"]
    assert lone["intent"] == "bad \ufffd here" and lone["rewritten_intent"] is None
    assert "line 32: not UTF-8" in raw["error"] and raw["id"] is None
    assert "line 33: not valid JSON" in truncated["error"]
    assert badtype["id"] == "badtype" and "question_id has value 'ninety-two'" in badtype["error"]
    assert "line 35: expected a JSON object" in array["error"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["unreadable_rows"] == 5 and manifest["input_rows"] == len(lines)
    # data.stats reads the same file to the end.
    stats = run([sys.executable, "-m", "data.stats", "--input", source], check=True)
    assert f"{len(lines)} rows, 5 unreadable" in stats.stdout


@pytest.mark.parametrize(
    "template",
    ["{intent}\n{snippet:d}", "{snippet!z}", "{intent} {} {snippet}", "{intent", "{x}{snippet}"],
)
def test_broken_templates_are_refused_before_any_output(template, tiny_models, tmp_path):
    out = tmp_path / "out"
    source = write_jsonl(tmp_path / "x.jsonl", [json.dumps(mined_row(0, "a", "b")).encode()])
    line = one_error_line(translate(tiny_models["t5"], source, out, "--source_template", template))
    assert line.startswith("serve.translate: error: --source_template"), line
    assert not out.exists()
    source = write_jsonl(tmp_path / "in.jsonl", [json.dumps(mined_row(1, "a", "b")).encode()])
    line = one_error_line(translate(tiny_models["t5"], source, out, "--source_template", template))
    assert line.startswith("serve.translate: error: --source_template")
    assert not out.exists()


@pytest.mark.parametrize(("name", "content"), [("e.jsonl", b""), ("w.jsonl", b"\n  \n\t\n"),
                                                ("a.json", b"[]")])  # fmt: skip
def test_empty_input_is_refused_unless_allowed(name, content, tiny_models, tmp_path):
    source = tmp_path / name
    source.write_bytes(content)
    out = tmp_path / "out"
    assert "--allow_empty" in one_error_line(translate(tiny_models["t5"], source, out))
    assert not out.exists()
    summary = json.loads(
        translate(tiny_models["t5"], source, out, "--allow_empty", check=True).stdout
    )
    assert summary["rows"] == 0 and summary["complete"]


def test_engine_tuning_is_checked_and_recorded(tiny_models, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [json.dumps(mined_row(1, "a", "b")).encode()])
    line = one_error_line(
        translate(tiny_models["t5"], source, tmp_path / "o", "--engine_args", '{"beam": 2}')
    )
    assert "the ctranslate2 engine has no option beam" in line and "max_batch_tokens" in line
    assert not (tmp_path / "o").exists()
    translate(tiny_models["t5"], source, tmp_path / "o", "--engine_args",
              '{"max_batch_tokens": 64}', check=True)  # fmt: skip
    params = json.loads((tmp_path / "o" / "manifest.json").read_text())["params"]
    assert params["engine_args"] == {"max_batch_tokens": 64}


def test_a_wholly_unreadable_input_is_refused(tiny_models, tmp_path):
    source = write_jsonl(tmp_path / "junk.jsonl", [b"\x00\xff garbage", b"{not json"])
    line = one_error_line(translate(tiny_models["t5"], source, tmp_path / "out"))
    assert "no row of the input can be read" in line and "junk.jsonl line 1" in line


def test_a_failed_start_leaves_nothing_and_the_fixed_rerun_just_runs(tiny_models, tmp_path):
    out = tmp_path / "out"
    good = write_jsonl(
        tmp_path / "in.jsonl", [json.dumps(mined_row(i, f"do {i}", f"f({i})")).encode()
                                for i in range(30)]
    )  # fmt: skip
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    assert "not a readable Parquet file" in one_error_line(translate(tiny_models["t5"], bad, out))
    assert "--model" in one_error_line(translate(tmp_path / "no-model", good, out))
    assert not out.exists()
    summary = json.loads(translate(tiny_models["t5"], good, out, check=True).stdout)
    assert summary["rows"] == 30 and summary["complete"]
    # A later failed start (bad flag value) leaves the finished run untouched.
    before = (out / "manifest.json").read_text()
    one_error_line(translate(tiny_models["t5"], good, out, "--source_template", "{}"))
    assert (out / "manifest.json").read_text() == before


def test_an_adapter_passed_as_model_says_merge_first(trained_t5, fixture_dir, tmp_path):
    line = one_error_line(
        translate(trained_t5 / "adapter", fixture_dir / "conala-mined.jsonl", tmp_path / "o")
    )
    assert "is a LoRA adapter" in line and "make merge" in line


def test_model_replaced_at_the_same_path_is_refused(tiny_models, fixture_dir, tmp_path):
    model = tmp_path / "model"
    run(["cp", "-r", tiny_models["t5"], model])
    mined = fixture_dir / "conala-mined.jsonl"
    out = tmp_path / "out"
    translate(model, mined, out, "--limit", "200", "--rows_per_shard", "100", check=True)
    before = model_fingerprint(str(model))
    # "Re-merge" into the same path: same files, same sizes, other weights.
    weights = load_file(model / "model.safetensors")
    save_file({k: v * 1.01 for k, v in weights.items()}, model / "model.safetensors",
              metadata={"format": "pt"})  # fmt: skip
    assert (model / "model.safetensors").stat().st_size == len(
        (tiny_models["t5"] / "model.safetensors").read_bytes()
    )
    assert model_fingerprint(str(model)) != before
    line = one_error_line(translate(model, mined, out, "--limit", "200", "--rows_per_shard", "100"))
    assert "model_fingerprint" in line and "--overwrite" in line
    translate(model, mined, out, "--limit", "200", "--rows_per_shard", "100", "--overwrite",
              check=True)  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["model_fingerprint"] == model_fingerprint(str(model))


def test_fingerprint_of_large_weight_files_follows_their_content(tmp_path):
    import numpy as np

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    rng = np.random.default_rng(0)
    shard = model / "model-00001-of-00001.safetensors"
    shard.write_bytes(rng.bytes(48 << 20))  # sampled, not read whole
    first = model_fingerprint(str(model))
    shard.touch()  # a copy or touch without new content keeps it
    (model / "README.md").write_text("card")
    assert model_fingerprint(str(model)) == first
    shard.write_bytes(rng.bytes(48 << 20))  # new weights, same size
    assert model_fingerprint(str(model)) != first


def test_concurrent_overwrite_cannot_mix_two_runs(tiny_models, fixture_dir, tmp_path):
    """Process A (rank 0 of 2) runs; B (rank 1 of 2) starts on the same dir with other
    settings and --overwrite. B's own rank lock is free and the layout is A's, so only the
    run lock stands between B and wiping A's shards."""
    mined, out = fixture_dir / "conala-mined.jsonl", tmp_path / "out"
    common = ["--engine", "hf", "--rows_per_shard", "100"]  # hf: slow enough to race
    a = subprocess.Popen(
        [sys.executable, "-m", "serve.translate", "--model", tiny_models["t5"], "--input", mined,
         "--output_dir", out, "--max_new_tokens", "48", "--min_new_tokens", "48", *common],
        cwd=REPO, env=repo_env(RANK=0, WORLD_SIZE=2), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("part-*.parquet")):  # A has 9 of its 10 shards to go
            assert a.poll() is None, a.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        b = run(
            [sys.executable, "-m", "serve.translate", "--model", tiny_models["t5"], "--input",
             mined, "--output_dir", out, "--max_new_tokens", "4", *common, "--overwrite"],
            check=False, RANK=1, WORLD_SIZE=2,
        )  # fmt: skip
        assert "another live process with other parameters" in one_error_line(b)
        assert a.wait(timeout=600) == 0, a.communicate()[1][-3000:]
    finally:
        a.kill()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["generation"]["max_new_tokens"] == 48
    assert {entry["run_id"] for entry in manifest["shards"].values()} == {manifest["run_id"]}
    assert sorted(map(int, manifest["shards"])) == list(range(0, 20, 2))  # A's, and only A's
    # Once A has ended, B may replace the run: wholly, under a new run id.
    translate(tiny_models["t5"], mined, out, *common, "--overwrite", check=True)
    replaced = json.loads((out / "manifest.json").read_text())
    assert replaced["run_id"] != manifest["run_id"]
    assert replaced["params"]["generation"]["max_new_tokens"] == 4
    assert {entry["run_id"] for entry in replaced["shards"].values()} == {replaced["run_id"]}
    ids = read_output(out).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 2000


def test_inspect_escapes_control_characters(tiny_models, tmp_path):
    row = mined_row(1, "title \x1b]0;pwned\x07 red \x1b[31mX", "print('\x1b[2J')\r")
    source = write_jsonl(tmp_path / "in.jsonl", [json.dumps(row).encode()])
    translate(tiny_models["t5"], source, tmp_path / "out", check=True)
    shown = run([sys.executable, "-m", "serve.inspect", tmp_path / "out"], check=True).stdout
    assert "\x1b" not in shown and "\x07" not in shown and "\r" not in shown
    assert "\\x1b]0;pwned\\x07" in shown and "\\x1b[2J" in shown
    assert (
        pq.read_table(tmp_path / "out" / "part-00000.parquet")["intent"][0].as_py()
        == (row["intent"])
    )


def test_plain_python_launch_trains_as_one_rank(tiny_models, fixture_dir, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "train.finetune", "--config", "train/configs/tiny.yaml",
            "--model_name_or_path", tiny_models["t5"],
            "--train_file", fixture_dir / "conala-train.json",
            "--validation_file", fixture_dir / "conala-test.json", "--output_dir", out,
            "--max_steps", "2", "--save_steps", "2", "--generation_eval", "false"]  # fmt: skip
    run(args, timeout=900)
    assert json.loads((out / "train_summary.json").read_text())["world_size"] == 1
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    # Resuming with another LoRA shape is refused before the model loads.
    line = one_error_line(
        run([*args, "--resume_from_checkpoint", "auto", "--lora_r", "4"], check=False)
    )
    assert "was trained with other settings (r: 16 -> 4)" in line


def test_auto_falls_back_to_hf_when_ctranslate2_cannot_load(tiny_models, tmp_path):
    """A CTranslate2 whose native library cannot load, as on a CUDA 13 stack without
    cuBLAS 12: the real import fails the way the missing .so makes it fail."""
    shadow = tmp_path / "shadow" / "ctranslate2"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        'raise OSError("libcublas.so.12: cannot open shared object file: No such file or '
        'directory")\n'
    )
    path = f"{tmp_path / 'shadow'}:{REPO}"
    source = write_jsonl(
        tmp_path / "in.jsonl", [json.dumps(mined_row(i, f"do {i}", f"f({i})")).encode()
                                for i in range(20)]
    )  # fmt: skip
    base = [sys.executable, "-m", "serve.translate", "--model", tiny_models["t5"], "--input",
            source, "--max_new_tokens", "4"]  # fmt: skip
    auto = run([*base, "--output_dir", tmp_path / "auto"], PYTHONPATH=path, check=True)
    warnings = [line for line in auto.stderr.splitlines() if "cannot run on" in line]
    assert len(warnings) == 1 and "libcublas.so.12" in warnings[0] and "using hf" in warnings[0]
    manifest = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    assert manifest["params"]["engine"] == "hf" and manifest["complete"]
    named = run([*base, "--output_dir", tmp_path / "ct2", "--engine", "ctranslate2"],
                PYTHONPATH=path, check=False)  # fmt: skip
    line = one_error_line(named)
    assert "--engine ctranslate2 cannot run" in line and "nvidia-cublas-cu12" in line
    assert not (tmp_path / "ct2").exists()


def broken_model(kind: str, t5: Path, path: Path) -> Path:
    """A copy of the tiny T5 with one thing wrong."""
    import shutil

    shutil.copytree(t5, path)
    if kind == "no tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (path / name).unlink(missing_ok=True)
    elif kind == "pickle only":
        (path / "model.safetensors").rename(path / "pytorch_model.bin")
    elif kind == "truncated weights":
        data = (path / "model.safetensors").read_bytes()
        (path / "model.safetensors").write_bytes(data[:1000])
    elif kind == "adapter plus config":
        (path / "model.safetensors").rename(path / "adapter_model.safetensors")
        (path / "adapter_config.json").write_text("{}")
    elif kind == "index names a missing shard":
        index = {"weight_map": {"shared.weight": "model-00002-of-00002.safetensors"}}
        (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return path


@pytest.mark.parametrize(
    ("kind", "named"),
    [("no tokenizer", "no tokenizer files"), ("pickle only", "pytorch_model.bin"),
     ("truncated weights", "not a readable safetensors file"),
     ("adapter plus config", "LoRA adapter"), ("index names a missing shard", "model-00002")],
)  # fmt: skip
def test_a_broken_model_dir_is_refused_before_any_output(kind, named, tiny_models, tmp_path):
    model = broken_model(kind, tiny_models["t5"], tmp_path / "model")
    source = write_jsonl(tmp_path / "in.jsonl", [json.dumps(mined_row(1, "a", "b")).encode()])
    for engine in ("hf", "ctranslate2"):
        line = one_error_line(translate(model, source, tmp_path / "o", "--engine", engine))
        assert named in line and "--model" in line, line
    assert not (tmp_path / "o").exists()


def test_an_input_inside_the_output_dir_is_refused(tiny_models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    source = write_jsonl(out / "in.jsonl", [json.dumps(mined_row(1, "a", "b")).encode()])
    line = one_error_line(translate(tiny_models["t5"], source, out, "--overwrite"))
    assert "lies inside --output_dir" in line
    assert source.is_file() and sorted(out.iterdir()) == [source]


def test_engine_args_values_are_checked_before_any_output(tiny_models, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [json.dumps(mined_row(1, "a", "b")).encode()])
    for value in ('{"inter_threads": "many"}', '{"max_batch_tokens": -1}',
                  '{"inter_threads": true}'):  # fmt: skip
        line = one_error_line(translate(tiny_models["t5"], source, tmp_path / "o",
                                        "--engine_args", value))  # fmt: skip
        assert "--engine_args" in line and "integer >= 0" in line, line
    assert not (tmp_path / "o").exists()


def test_odd_json_rows_each_keep_what_they_hold(tiny_models, tmp_path):
    first = {k: v for k, v in mined_row(0, "bom row", "f(0)").items() if k != "prob"}
    lines = [
        b"\xef\xbb\xbf" + json.dumps(first).encode(),  # BOM, and no prob in the first row
        b"[" * 100_000 + b"]" * 100_000,
        json.dumps({**mined_row(2, "number id", "f(2)"), "id": 12345}).encode(),
        json.dumps({**mined_row(3, "null id", "f(3)"), "id": None}).encode(),
        json.dumps(mined_row(4, "fine", "f(4)")).encode(),
        *[b"{not json"] * 5,  # unreadable rows past --limit do not count against it
    ]
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out"
    summary = json.loads(translate(tiny_models["t5"], source, out, "--limit", "5",
                                   check=True).stdout)  # fmt: skip
    assert summary["rows"] == 5 and summary["complete"]
    rows = read_output(out).to_pylist()
    assert [r["id"] for r in rows] == ["h0", None, "12345", None, "h4"]
    assert rows[0]["error"] is None and rows[0]["prob"] is None
    assert rows[0]["rewritten_intent"] is not None
    assert "nested too deeply" in rows[1]["error"] and "in.jsonl line 2" in rows[1]["error"]
    assert "id has type int" in rows[2]["error"] and rows[2]["intent"] == "number id"
    assert rows[3]["error"] == "unusable row: no id"
    assert rows[4]["error"] is None


def test_odd_parquet_columns_are_cast_or_row_errors(tiny_models, tmp_path):
    import pyarrow as pa

    n = 6
    valid = pa.array(["f()", "g()", "zzf", "h()", "k()", "m()"])  # then row 2 made invalid
    _, offsets, data = valid.buffers()
    data = pa.py_buffer(data.to_pybytes().replace(b"zz", b"\xff\xfe"))
    snippets = pa.Array.from_buffers(pa.string(), n, [None, offsets, data])
    table = pa.table({
        "id": pa.array(range(n), pa.int64()),  # numbers: stored as text
        "question_id": pa.array([1.0, None, 3.0, 4.0, 5.0, 6.0]),  # pandas' int with a gap
        "parent_answer_post_id": pa.array(range(n), pa.int32()),
        "prob": pa.array([0.5] * n, pa.float32()),
        "intent": pa.array([f"intent {i}" for i in range(n)]).dictionary_encode(),
        "snippet": snippets,
    })  # fmt: skip
    source = tmp_path / "in.parquet"
    pq.write_table(table, source)
    out = tmp_path / "out"
    summary = json.loads(translate(tiny_models["t5"], source, out, check=True).stdout)
    assert summary["rows"] == n and summary["errors"] == 1
    rows = read_output(out).to_pylist()
    assert [r["id"] for r in rows] == [str(i) for i in range(n)]
    assert [r["question_id"] for r in rows][:2] == [1, None]
    assert rows[2]["error"].endswith("in.parquet row 2: snippet is not UTF-8 (invalid start byte "
                                     "at byte 0)")  # fmt: skip
    assert rows[2]["snippet"] == "\ufffd\ufffdf"
    nested = tmp_path / "nested.parquet"
    pq.write_table(table.set_column(5, "snippet", pa.array([["a"]] * n)), nested)
    line = one_error_line(translate(tiny_models["t5"], nested, tmp_path / "o2"))
    assert "nested.parquet" in line and "'snippet'" in line
    assert not (tmp_path / "o2").exists()


def test_a_huge_source_is_cut_before_it_is_tokenized(tiny_models, tmp_path):
    rows = [mined_row(0, "huge", "x = 1\n" * 400_000), mined_row(1, "small", "f(1)")]
    source = write_jsonl(tmp_path / "in.jsonl", [json.dumps(r).encode() for r in rows])
    started = time.monotonic()
    summary = json.loads(translate(tiny_models["t5"], source, tmp_path / "o",
                                   "--max_source_length", "16", check=True).stdout)  # fmt: skip
    assert summary["errors"] == 0 and summary["truncated"] == 1
    assert time.monotonic() - started < 120
    assert read_output(tmp_path / "o").column("snippet")[0].as_py() == rows[0]["snippet"]
