"""Training through the real `deepspeed --num_gpus 2` launcher on CPU (ZeRO-3, gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, VENV_BIN, _free_port, repo_env, run

from train.adapter import check_adapter

pytestmark = pytest.mark.slow


def _eval_losses(run_dir: Path) -> list[float]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return [entry["eval_loss"] for entry in metrics["eval_loss"]]


@pytest.mark.parametrize("fixture", ["trained_t5", "trained_llama"])
def test_eval_loss_drops_30_percent(fixture, request):
    losses = _eval_losses(request.getfixturevalue(fixture))
    assert len(losses) >= 3
    assert losses[-1] <= 0.7 * losses[0], losses


@pytest.mark.parametrize("fixture", ["trained_t5", "trained_llama"])
def test_adapter_saved_non_empty_and_trained(fixture, request):
    run_dir = request.getfixturevalue(fixture)
    report = check_adapter(run_dir / "adapter")
    assert report["elements"] > 0 and report["lora_b_max_abs"] > 0
    assert (run_dir / "adapter" / "source_template.json").is_file()


def test_model_is_partitioned_at_load(trained_t5):
    summary = json.loads((trained_t5 / "train_summary.json").read_text())
    partitions = summary["partition_after_load"]
    assert len(partitions) == 2
    for part in partitions:
        assert part["zero3"]
        share = part["local_elements"] / part["total_elements"]
        assert 0.4 <= share <= 0.6, part


def test_reports_and_checkpoints(trained_t5):
    summary = json.loads((trained_t5 / "train_summary.json").read_text())
    assert summary["global_step"] == 60 and summary["world_size"] == 2
    assert summary["tokens_per_s"] > 0 and summary["samples_per_s"] > 0
    padding = summary["padding_efficiency"]
    assert 0 < padding["measured"] <= 1
    assert padding["estimate_grouped"] > padding["estimate_random"]
    assert [entry["step"] for entry in summary["loss_curve"]][:2] == [5, 10]
    generation = json.loads((trained_t5 / "metrics.json").read_text())["generation"]
    assert generation["samples"] == 64
    assert set(generation) >= {"bleu", "chrf", "exact_match", "examples"}
    # save_total_limit=2 keeps the newest checkpoints, never the last one away.
    checkpoints = sorted(p.name for p in trained_t5.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-40", "checkpoint-60"]


def test_resume_after_kill_continues_from_checkpoint(tiny_models, fixture_dir, tmp_path):
    out = tmp_path / "run"
    args = [
        VENV_BIN / "deepspeed", "--num_gpus", "2", "--master_port", str(_free_port()),
        "--module", "train.finetune", "--config", "train/configs/tiny.yaml",
        "--model_name_or_path", tiny_models["t5"],
        "--train_file", fixture_dir / "conala-train.json",
        "--validation_file", fixture_dir / "conala-test.json",
        "--output_dir", out, "--max_steps", "30", "--save_steps", "10", "--eval_steps", "10",
        "--generation_eval", "false",
    ]  # fmt: skip
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(
        [str(a) for a in args], cwd=REPO, env=repo_env(), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    marker = out / "checkpoint-10" / "trainer_state.json"
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
        assert time.monotonic() < deadline, "no checkpoint-10 within 10 minutes"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # launcher and both ranks, no clean-up
    proc.wait()
    assert not (out / "adapter").exists()

    resumed = run([str(a) for a in args] + ["--resume_from_checkpoint", "auto"], timeout=900)
    state = json.loads((out / "checkpoint-30" / "trainer_state.json").read_text())
    assert state["global_step"] == 30
    log = resumed.stdout + resumed.stderr
    assert f"resuming from {out / 'checkpoint-10'}" in log
    assert "Resuming training from checkpoint with epoch 0 and global step 10" in log
    assert check_adapter(out / "adapter")["lora_b_max_abs"] > 0


def test_original_research_command_runs(tiny_models, fixture_dir, tmp_path):
    """The original README command, launcher swapped, pointed at local model and data."""
    out = tmp_path / "original"
    run(
        [
            VENV_BIN / "deepspeed",
            "--num_gpus",
            "2",
            "--master_port",
            str(_free_port()),
            "--module",
            "train.finetune",
            "--model_name_or_path",
            tiny_models["t5"],
            "--train_file",
            fixture_dir / "conala-train.json",
            "--validation_file",
            fixture_dir / "conala-test.json",
            "--max_input_length",
            "2048",
            "--max_output_length",
            "2048",
            "--batch_size",
            "16",
            "--learning_rate",
            "5e-3",
            "--num_warmup_steps",
            "1",
            "--weight_decay",
            "0.01",
            "--log_freq",
            "1",
            "--eval_freq",
            "2",
            "--save_freq",
            "2",
            "--eval_strategy",
            "steps",
            "--max_steps",
            "4",
            "--max_eval_samples",
            "16",
            "--generation_max_new_tokens",
            "8",
            "--report_to",
            "none",
            "--output_dir",
            out,
        ]  # fmt: skip
    )
    losses = _eval_losses(out)
    assert len(losses) == 2
    assert (out / "checkpoint-4").is_dir() and (out / "adapter").is_dir()
    args = json.loads((out / "train_summary.json").read_text())
    assert args["global_step"] == 4


def _refused(tmp_path, tiny_models, fixture_dir, *extra, model="t5"):
    """Run one rank without the launcher; the refusals all happen before training."""
    train = fixture_dir / "conala-train.json"
    proc = run(
        [
            sys.executable,
            "-m",
            "train.finetune",
            "--config",
            "train/configs/tiny.yaml",
            "--deepspeed",
            "",
            "--model_name_or_path",
            tiny_models[model],
            "--train_file",
            train,
            "--validation_file",
            fixture_dir / "conala-test.json",
            "--output_dir",
            tmp_path / "out",
            *extra,
        ],  # fmt: skip
        check=False,
        timeout=300,
    )
    assert proc.returncode != 0
    return proc.stdout + proc.stderr


def test_missing_dataset_file_is_refused(tmp_path, tiny_models, fixture_dir):
    output = _refused(tmp_path, tiny_models, fixture_dir, "--train_file", tmp_path / "nope.json")
    assert "nope.json: file not found" in output


def test_empty_training_set_is_refused(tmp_path, tiny_models, fixture_dir):
    empty = tmp_path / "all-null.json"
    empty.write_text(
        json.dumps([{"question_id": 1, "intent": "a", "snippet": "b", "rewritten_intent": None}])
    )
    output = _refused(tmp_path, tiny_models, fixture_dir, "--train_file", empty)
    assert "the train set" in output and "is empty after filtering" in output


def test_unknown_lora_target_is_refused(tmp_path, tiny_models, fixture_dir):
    output = _refused(tmp_path, tiny_models, fixture_dir, "--lora_target_modules", "q,qkv_proj")
    assert "--lora_target_modules: ['qkv_proj'] are not linear layers" in output


def test_fp16_on_t5_is_refused(tmp_path, tiny_models, fixture_dir):
    output = _refused(tmp_path, tiny_models, fixture_dir, "--fp16", "true")
    assert "--fp16 is refused for t5" in output


def test_existing_run_without_resume_flag_is_refused(
    trained_t5, tmp_path, tiny_models, fixture_dir
):
    output = _refused(tmp_path, tiny_models, fixture_dir, "--output_dir", trained_t5)
    assert "pass --resume_from_checkpoint auto" in output


def test_every_config_file_parses():
    from common.cli import load_config
    from train.args import ARGUMENT_CLASSES

    configs = sorted((REPO / "train" / "configs").glob("*.yaml"))
    assert {p.name for p in configs} >= {"ul2.yaml", "tiny.yaml", "tiny_llama.yaml"}
    for path in configs:
        values = load_config(str(path), ARGUMENT_CLASSES)
        assert values.get("deepspeed", "deepspeed_configs/zero3.json").startswith(
            "deepspeed_configs/"
        )
    ul2 = load_config(str(REPO / "train/configs/ul2.yaml"), ARGUMENT_CLASSES)
    assert (ul2["bf16"], ul2["lora_target_modules"], ul2["source_prefix"]) == (
        True,
        "q,v",
        "[S2S] ",
    )
    for name in ("zero3.json", "zero3_offload.json"):
        ds = json.loads((REPO / "deepspeed_configs" / name).read_text())
        assert ds["zero_optimization"]["stage"] == 3
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
        assert ds["bf16"]["enabled"] == "auto"
