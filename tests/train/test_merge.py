"""train.merge on the tiny T5 and Llama adapters from real ZeRO-3 runs.

The merges of the session fixture run through the CLI (`merged_models`); refusals and
small variations call `train.merge.main` in-process through `common.cli.run`, which
is what `python -m train.merge` runs, to save a Python start-up per case. The
equivalence check loads the merged checkpoints in a fresh process, as translate-mined
will.
"""

import json
import logging
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import T5Config, T5ForConditionalGeneration

from common.cli import run as run_cli
from serve.engines.hf import load_model
from train import merge

# Runs in a fresh interpreter: for each kind, base + adapter (PeftModel) and the merged
# checkpoint, fp32, on 20 test-split sources formatted with the merged model's template.
# Compares logits on the adapter model's greedy outputs, then the greedy outputs.
EQUIVALENCE_SCRIPT = """
import json, sys
import torch
from peft import PeftModel
from transformers import AutoTokenizer
from data.loaders import load_curated
from data.prompts import SourceTemplate
from common.cli import run as run_cli
from serve.engines.hf import load_model
from train.verify_merge import TOLERANCE

cases, test_file = json.loads(sys.argv[1]), sys.argv[2]
rows = load_curated(test_file, split="test").select(["intent", "snippet"]).to_pylist()
results = {}
for kind, (base, adapter, merged) in cases.items():
    template = SourceTemplate.load(merged)
    sources = [template.format(r["intent"], r["snippet"]) for r in rows[:20]]
    tokenizer = AutoTokenizer.from_pretrained(merged)
    merged_model = load_model(merged, dtype=torch.float32).eval()
    adapter_model = PeftModel.from_pretrained(load_model(base, dtype=torch.float32), adapter)
    adapter_model.eval()
    encoder_decoder = merged_model.config.is_encoder_decoder
    tokenizer.padding_side = "right" if encoder_decoder else "left"
    batch = tokenizer(sources, padding=True, return_tensors="pt")
    with torch.inference_mode():
        outputs = [
            model.generate(**batch, min_new_tokens=8, max_new_tokens=24, do_sample=False)
            for model in (adapter_model, merged_model)
        ]
        new_tokens = outputs[0][:, 1 if encoder_decoder else batch["input_ids"].shape[1] :]
        if encoder_decoder:
            inputs = dict(batch, decoder_input_ids=outputs[0])
        else:
            new = outputs[0].shape[1] - batch["input_ids"].shape[1]
            generated = torch.ones(len(sources), new, dtype=torch.long)
            mask = torch.cat([batch["attention_mask"], generated], 1)
            inputs = {"input_ids": outputs[0], "attention_mask": mask}
        adapter_logits = adapter_model(**inputs).logits
        merged_logits = merged_model(**inputs).logits
    scale = max(1.0, float(adapter_logits.abs().max()))
    results[kind] = {
        "n_inputs": len(sources),
        "max_abs_diff": float((merged_logits - adapter_logits).abs().max()),
        "tolerance": TOLERANCE["float32"] * scale,
        "identical_generations": sum(a.tolist() == m.tolist() for a, m in zip(*outputs)),
        # Real tokens after the prompt (causal) or decoder start: the outputs are not empty.
        "generated_tokens": int((new_tokens != tokenizer.pad_token_id).sum()),
    }
print(json.dumps(results))
"""


def flags(**values) -> list[str]:
    """`adapter=p, overwrite=True` -> ["--adapter", "p", "--overwrite"]."""
    argv = []
    for name, value in values.items():
        argv += [f"--{name}"] if value is True else [f"--{name}", str(value)]
    return argv


def merge_cli(capsys, **values) -> tuple[int, str]:
    """Run the CLI entry point in-process; return (exit code, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_cli(merge.main, "train.merge", flags(**values))
    return exit_.value.code, capsys.readouterr().err


def copy_adapter(run_dir: Path, tmp_path: Path) -> Path:
    adapter = tmp_path / "adapter"
    shutil.copytree(run_dir / "adapter", adapter)
    return adapter


def assert_nothing_written(output: Path) -> None:
    assert not output.exists()
    assert not list(output.parent.glob(f".{output.name}.*"))  # no staging dir either


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_merge_writes_a_complete_verified_checkpoint(kind, merged_models, tiny_models):
    output = merged_models[kind]
    report = json.loads((output / "merge_report.json").read_text())
    verification = report["verification"]
    assert verification["passed"] and verification["n_inputs"] >= 4
    assert verification["max_abs_diff"] <= verification["tolerance"]
    # The check means something only if the adapter moves the logits beyond tolerance.
    assert verification["adapter_effect_max_abs"] > 10 * verification["tolerance"]
    assert report["base"] == str(tiny_models[kind]) and report["dtype"] == "float32"
    assert report["peak_rss_mb"] > 0 and report["wall_seconds"] > 0
    assert report["shards"] and all((output / s).is_file() for s in report["shards"])
    for name in ("config.json", "generation_config.json", "tokenizer.json", "README.md"):
        assert (output / name).is_file(), name
    template = json.loads((output / "source_template.json").read_text())
    adapter_template = json.loads((Path(report["adapter"]) / "source_template.json").read_text())
    assert template == adapter_template
    card = (output / "README.md").read_text()
    assert str(tiny_models[kind]) in card and report["adapter"] in card
    assert json.dumps(template["template"]) in card
    assert "eval loss" in card and "BLEU" in card  # from the run's metrics.json
    assert not list(output.parent.glob(f".{output.name}.*"))  # no staging left behind


@pytest.mark.slow
def test_merged_models_match_adapter_models_in_a_fresh_process(
    merged_models, trained_t5, trained_llama, tiny_models, fixture_dir
):
    cases = {
        "t5": [tiny_models["t5"], trained_t5 / "adapter", merged_models["t5"]],
        "llama": [tiny_models["llama"], trained_llama / "adapter", merged_models["llama"]],
    }
    cases = json.dumps({kind: [str(p) for p in paths] for kind, paths in cases.items()})
    test_file = fixture_dir / "conala-test.json"
    proc = run([sys.executable, "-c", EQUIVALENCE_SCRIPT, cases, test_file])
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results.keys() == {"t5", "llama"}
    for kind, result in results.items():
        assert result["n_inputs"] == 20, kind
        assert result["max_abs_diff"] <= result["tolerance"], (kind, result)
        assert result["identical_generations"] == 20, (kind, result)
        assert result["generated_tokens"] >= 20 * 8, (kind, result)


@pytest.mark.slow
def test_small_max_shard_size_writes_several_shards_that_load_back(
    capsys, tmp_path, trained_t5, merged_models
):
    output = tmp_path / "sharded"
    code, err = merge_cli(
        capsys,
        adapter=trained_t5 / "adapter",
        output=output,
        dtype="float32",
        max_shard_size="200KB",
    )
    assert code == 0, err
    shards = sorted(output.glob("model-*.safetensors"))
    assert len(shards) > 2 and (output / "model.safetensors.index.json").is_file()
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            assert list(handle.keys())  # noqa: SIM118 - no empty shard
    sharded = load_model(str(output), dtype=torch.float32).state_dict()
    single = load_model(str(merged_models["t5"]), dtype=torch.float32).state_dict()
    assert sharded.keys() == single.keys()
    assert all(torch.equal(sharded[k], single[k]) for k in single)


@pytest.mark.slow
def test_refuses_a_llama_base_for_a_t5_adapter(capsys, tmp_path, trained_t5, tiny_models):
    output = tmp_path / "out"
    code, err = merge_cli(
        capsys, adapter=trained_t5 / "adapter", output=output, base=tiny_models["llama"]
    )
    assert code == 2
    assert "--base" in err and "decoder-only" in err and "SEQ_2_SEQ_LM" in err
    assert str(tiny_models["t5"]) in err  # names the base the adapter was trained on
    assert_nothing_written(output)


@pytest.mark.slow
def test_refuses_a_t5_base_of_another_width(capsys, tmp_path, trained_t5):
    base = tmp_path / "t5-narrow"
    config = T5Config(
        vocab_size=2048,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-silu",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
    )
    T5ForConditionalGeneration(config).save_pretrained(base)
    output = tmp_path / "out"
    code, err = merge_cli(capsys, adapter=trained_t5 / "adapter", output=output, base=base)
    assert code == 2
    assert "does not match the adapter" in err and "in_features=128, base has 64" in err
    assert_nothing_written(output)


@pytest.mark.slow
def test_refuses_an_adapter_of_empty_tensors(capsys, tmp_path, trained_t5):
    adapter = copy_adapter(trained_t5, tmp_path)
    weights = adapter / "adapter_model.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        keys = list(handle.keys())  # noqa: SIM118
    save_file({key: torch.empty(0) for key in keys}, str(weights))
    output = tmp_path / "out"
    code, err = merge_cli(capsys, adapter=adapter, output=output)
    assert code == 2
    assert f"{len(keys)} tensors with 0 elements" in err
    assert_nothing_written(output)


@pytest.mark.slow
def test_refuses_a_truncated_adapter(capsys, tmp_path, trained_t5):
    adapter = copy_adapter(trained_t5, tmp_path)
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    output = tmp_path / "out"
    code, err = merge_cli(capsys, adapter=adapter, output=output)
    assert code == 2
    assert "cannot be read as safetensors" in err
    assert_nothing_written(output)


@pytest.mark.slow
def test_existing_output_needs_overwrite(capsys, tmp_path, trained_llama):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("someone's work")
    args = {"adapter": trained_llama / "adapter", "output": output}
    code, err = merge_cli(capsys, **args)
    assert code == 2
    assert "not empty" in err and "--overwrite" in err
    assert (output / "keep.txt").is_file() and not (output / "config.json").exists()

    code, err = merge_cli(capsys, **args, overwrite=True)
    assert code == 0, err
    assert not (output / "keep.txt").exists()
    report = json.loads((output / "merge_report.json").read_text())
    assert report["dtype"] == "bfloat16" and report["verification"]["passed"]


def test_refuses_fp16(capsys, tmp_path):
    code, err = merge_cli(
        capsys, adapter=tmp_path / "adapter", output=tmp_path / "out", dtype="float16"
    )
    assert code == 2
    assert "--dtype float16 is refused" in err and "overflow" in err and "bfloat16" in err


@pytest.mark.slow
def test_push_without_login_keeps_the_local_merge(tmp_path, trained_llama):
    output = tmp_path / "out"
    push = flags(
        adapter=trained_llama / "adapter", output=output, push_to_hub="someone/conala-merged"
    )
    # No token anywhere: empty env vars count as unset, and the token file is absent.
    proc = run(
        [sys.executable, "-m", "train.merge", *push],
        check=False,
        HF_TOKEN="",
        HUGGING_FACE_HUB_TOKEN="",
        HF_TOKEN_PATH=tmp_path / "no-token",
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "not logged in" in proc.stderr and "hf auth login" in proc.stderr
    assert "HF_TOKEN" in proc.stderr
    assert json.loads((output / "merge_report.json").read_text())["verification"]["passed"]


def test_output_on_the_recorded_base_is_refused(capsys, tmp_path, trained_llama, tiny_models):
    base = tmp_path / "base"
    shutil.copytree(tiny_models["llama"], base)
    adapter = copy_adapter(trained_llama, tmp_path)
    config_file = adapter / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "base_model_name_or_path": str(base)}))
    before = (base / "model.safetensors").read_bytes()
    code, err = merge_cli(capsys, adapter=adapter, output=base, overwrite=True)
    assert code == 2 and "holds the input --base" in err, err
    assert (base / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize(
    ("change", "named"),
    [({"r": 3}, "r=3"), (None, "expected a JSON object"),
     ({"base_model_name_or_path": None}, "records no base model")],
)  # fmt: skip
def test_a_wrong_adapter_config_is_one_line(capsys, tmp_path, trained_llama, change, named):
    adapter = copy_adapter(trained_llama, tmp_path)
    config_file = adapter / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps([] if change is None else {**config, **change}))
    code, err = merge_cli(capsys, adapter=adapter, output=tmp_path / "out")
    assert code == 2 and named in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_required_flags_can_come_from_the_yaml(capsys, tmp_path, trained_llama):
    config = tmp_path / "merge.yaml"
    config.write_text(f"adapter: {trained_llama / 'adapter'}\noutput: {tmp_path / 'out'}\n")
    code, err = merge_cli(capsys, config=config, dtype="float32")
    assert code == 0, err
    assert (tmp_path / "out" / "config.json").is_file()


def test_output_inside_the_adapter_is_refused(capsys, tmp_path, trained_llama):
    adapter = copy_adapter(trained_llama, tmp_path)
    code, err = merge_cli(capsys, adapter=adapter, output=adapter / "merged")
    assert code == 2 and "inside the input --adapter" in err, err
    assert not (adapter / "merged").exists()


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped): what kill -9 leaves."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_a_dead_merges_partial_folder_is_removed_and_a_live_ones_kept(
    capsys, caplog, tmp_path, trained_llama
):
    output = tmp_path / "out"
    host = socket.gethostname()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        dead = tmp_path / f".out.partial-{host}-{dead_pid()}"
        alive = tmp_path / f".out.partial-{host}-{live.pid}"
        elsewhere = tmp_path / f".out.partial-another-host-{dead_pid()}"
        for folder in (dead, alive, elsewhere):
            folder.mkdir()
            (folder / "model.safetensors").write_bytes(b"half")
        args = {"adapter": trained_llama / "adapter", "output": output, "dtype": "float32"}
        with caplog.at_level(logging.WARNING, logger="common.cli"):
            code, err = merge_cli(capsys, **args)
        assert code == 0, err
        assert not dead.exists() and alive.is_dir() and elsewhere.is_dir()
        assert f"removed {dead}" in caplog.text and str(alive) not in caplog.text
    finally:
        live.kill()
        live.wait()


@pytest.mark.slow
def test_a_symlinked_output_is_replaced_where_it_points(capsys, tmp_path, trained_llama):
    target = tmp_path / "models" / "merged"
    target.mkdir(parents=True)
    (target / "old.txt").write_text("old merge")
    link = tmp_path / "current"
    link.symlink_to(target)
    args = {"adapter": trained_llama / "adapter", "output": link, "dtype": "float32"}
    code, err = merge_cli(capsys, **args, overwrite=True)
    assert code == 0, err
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert (target / "config.json").is_file() and not (target / "old.txt").exists()
