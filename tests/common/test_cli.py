"""Every entry point answers a user mistake with one stderr line and exit code 2.

Each case runs the real module in a fresh interpreter, as a user would. A missing
file and an out-of-range flag are checked for every entry point; the line must
name the file or the flag, and no traceback may appear unless `--debug` asks.
"""

from __future__ import annotations

import sys

import pytest
from conftest import REPO, run

TINY = str(REPO / "train/configs/tiny.yaml")

# (module, args, text the one line must contain)
CASES = [
    ("serve.translate", ["--model", "nope-model", "--output_dir", "{tmp}/o", "--input",
                         "{tmp}/missing.jsonl"], "missing.jsonl"),
    ("serve.translate", ["--model", "m", "--output_dir", "{tmp}/o", "--rows_per_shard", "0"],
     "--rows_per_shard"),
    ("serve.translate", ["--model", "m", "--output_dir", "o", "--max_new_tokens", "-3"],
     "--max_new_tokens"),
    ("serve.translate", ["--model", "m", "--output_dir", "o", "--batch_tokens", "many"],
     "--batch_tokens"),
    ("serve.translate", ["--model", "m", "--output_dir", "o", "--engine_args", "[1]"],
     "--engine_args"),
    ("train.finetune", ["--config", TINY, "--train_file", "{tmp}/missing.json"], "missing.json"),
    ("train.finetune", ["--config", TINY, "--lora_r", "0"], "--lora_r"),
    ("train.finetune", ["--config", TINY, "--hub_token", "hf_secret"], "--hub_token"),
    ("train.finetune", ["--config", TINY, "--per_device_train_batch_size", "0"],
     "--per_device_train_batch_size"),
    ("train.finetune", ["--config", TINY, "--max_steps", "-5"], "--max_steps"),
    ("train.finetune", ["--config", TINY, "--push_to_hub", "true"], "--hub_model_id"),
    ("data.stats", ["--input", "{shared}/conala-train.json", "--json",
                    "{shared}/conala-train.json"], "--json"),
    ("data.tiny_models", ["--out", "{tmp}/m", "--seed", "99999999999999999999"], "--seed"),
    ("data.fixtures", ["--out", "{tmp}/f", "--mined_rows", "99999999999999"], "--mined_rows"),
    ("train.finetune", ["--config", "{tmp}/missing.yaml"], "missing.yaml"),
    ("train.merge", ["--adapter", "{tmp}/missing", "--output", "{tmp}/m"], "missing"),
    ("train.merge", ["--adapter", "a", "--output", "m", "--max_shard_size", "huge"],
     "--max_shard_size"),
    ("serve.doctor", ["--engines", "hf,trt"], "--engines"),
    ("serve.doctor", ["--timeout", "0"], "--timeout"),
    ("serve.doctor", ["--timeout", "nan"], "--timeout"),
    ("serve.doctor", ["--timeout", "inf"], "--timeout"),
    ("serve.translate", ["--model", "m", "--output_dir", "{tmp}/o", "--input", ""], "--input"),
    ("serve.inspect", ["{tmp}/missing"], "missing"),
    ("serve.inspect", ["{tmp}", "--rows", "-1"], "--rows"),
    ("data.stats", ["--input", "{tmp}/missing.json"], "missing.json"),
    ("data.stats", ["--input", "x.json", "--max_source_length", "0"], "--max_source_length"),
    ("data.instruct", ["--translations", "{tmp}/missing", "--output", "{tmp}/d"], "missing"),
    ("data.instruct", ["--translations", "t", "--output", "d", "--min_prob", "2"],
     "--min_prob"),
    # A repeated --config: which file wins would be a guess.
    ("serve.translate", ["--config", "{tmp}/a.yaml", "--config", "{tmp}/b.yaml"],
     "--config given 2 times"),
    ("data.instruct", ["--config={tmp}/a.yaml", "--config", "{tmp}/a.yaml"],
     "--config given 2 times"),
    # Outputs inside an input directory (writing there changes the input).
    ("train.finetune", ["--config", TINY, "--train_file", "{shared}/conala-train.json",
                        "--validation_file", "{shared}/conala-train.json",
                        "--model_name_or_path", "{tmp}", "--output_dir", "{tmp}/run"],
     "inside the input --model_name_or_path"),
    ("data.stats", ["--input", "{shared}/conala-train.json", "--tokenizer", "{tmp}",
                    "--json", "{tmp}/stats.json"], "inside the input --tokenizer"),
    ("data.instruct", ["--translations", "{tmp}", "--output", "{tmp}/dataset"],
     "inside the input --translations"),
]  # fmt: skip


@pytest.mark.parametrize(("module", "args", "named"), CASES)
def test_user_mistakes_get_one_line_and_exit_2(module, args, named, tmp_path):
    if any("{shared}" in arg for arg in args):  # a real file; the check must refuse first
        (tmp_path / "conala-train.json").write_text("[]")
    args = [arg.replace("{tmp}", str(tmp_path)).replace("{shared}", str(tmp_path)) for arg in args]
    proc = run([sys.executable, "-m", module, *args], check=False, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(f"{module}: error: ") and named in lines[0], lines[0]


def test_debug_shows_the_traceback(tmp_path):
    proc = run(
        [sys.executable, "-m", "data.stats", "--input", str(tmp_path / "x.json"), "--debug"],
        check=False,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_yaml_config_refuses_unknown_keys(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: m\noutput_dir: o\nmax_new_token: 3\n")
    proc = run([sys.executable, "-m", "serve.translate", "--config", config], check=False)
    assert proc.returncode == 2 and "unknown key(s) ['max_new_token']" in proc.stderr


BAD_YAML_VALUES = [
    ("rows_per_shard: 7.5", "rows_per_shard"),
    ("rows_per_shard: null", "rows_per_shard"),
    ("max_new_tokens: 2.5", "max_new_tokens"),
    ("num_beams: true", "num_beams"),
    ("batch_tokens: .nan", "batch_tokens"),
    ("precision: fp8", "precision"),
    ("limit: [1, 2]", "limit"),
    ("config: other.yaml", "config"),
]


@pytest.mark.parametrize(("line", "named"), BAD_YAML_VALUES)
def test_yaml_values_are_checked_like_flags(line, named, tmp_path):
    from common.cli import UserError, parse_with_config
    from serve.translate import GenerationOptions, TranslateArguments

    config = tmp_path / "c.yaml"
    config.write_text(f"model: m\noutput_dir: o\n{line}\n")
    with pytest.raises(UserError, match=named):
        parse_with_config((TranslateArguments, GenerationOptions), ["--config", str(config)])


def test_yaml_values_take_the_flag_types(tmp_path):
    from common.cli import parse_with_config
    from serve.translate import GenerationOptions, TranslateArguments

    config = tmp_path / "c.yaml"
    config.write_text(
        "model: 123\noutput_dir: o\ninput: a.jsonl\nengine_args: {max_batch_tokens: 2048}\n"
        "limit: 10\nmax_new_tokens: 7\n"
    )
    args, options = parse_with_config(
        (TranslateArguments, GenerationOptions), ["--config", str(config)]
    )
    assert args.model == "123" and args.input == ["a.jsonl"] and args.limit == 10
    assert args.tuning == {"max_batch_tokens": 2048} and options.max_new_tokens == 7
