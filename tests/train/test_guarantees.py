"""Training and merge README guarantees: a wrong merge writes nothing, a half-written
checkpoint is never resumed, bf16 without a GPU is refused in one line."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import run
from peft.tuners.tuners_utils import BaseTuner

from tests.train.test_merge import assert_nothing_written, merge_cli
from train.checkpoints import resolve_checkpoint


@pytest.mark.slow
def test_a_merge_off_beyond_tolerance_fails_and_writes_nothing(
    capsys, monkeypatch, tmp_path, trained_llama
):
    """A merge that moves one weight (as a PEFT bug or a wrong layer type would) is
    caught by the logit comparison, whatever the checkpoint would have looked like."""
    merge_and_unload = BaseTuner.merge_and_unload

    def off_merge(self, *args, **kwargs):
        model = merge_and_unload(self, *args, **kwargs)
        with torch.no_grad():
            model.get_output_embeddings().weight[:, 0] += 0.05
        return model

    monkeypatch.setattr(BaseTuner, "merge_and_unload", off_merge)
    output = tmp_path / "out"
    code, err = merge_cli(
        capsys, adapter=trained_llama / "adapter", output=output, dtype="float32"
    )
    assert code == 2, err
    assert "verification failed" in err and "nothing was written" in err
    assert_nothing_written(output)


def test_a_checkpoint_killed_half_way_is_skipped_on_auto(tmp_path):
    for step, finished in ((10, True), (20, True), (30, False)):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        (checkpoint / "adapter_model.safetensors").write_bytes(b"x")
        if finished:  # the Trainer writes its state last
            (checkpoint / "trainer_state.json").write_text("{}")
    args = SimpleNamespace(
        output_dir=str(tmp_path), resume_from_checkpoint="auto", overwrite_output_dir=False
    )
    assert resolve_checkpoint(args) == str(tmp_path / "checkpoint-20")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without one")
def test_bf16_without_a_gpu_is_refused_in_one_line(tiny_models, fixture_dir, tmp_path):
    proc = run(
        [sys.executable, "-m", "train.finetune", "--config", "train/configs/tiny.yaml",
         "--deepspeed", "", "--model_name_or_path", tiny_models["t5"],
         "--train_file", fixture_dir / "conala-train.json",
         "--validation_file", fixture_dir / "conala-test.json",
         "--output_dir", tmp_path / "out", "--bf16", "true"],
        check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "--bf16/--fp16 need a CUDA GPU" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out" / "adapter").exists()
