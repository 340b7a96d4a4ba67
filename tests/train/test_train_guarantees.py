"""Training and merge README guarantees: a wrong merge writes nothing, a half-written
checkpoint is never resumed, bf16 without a GPU is refused."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from peft.tuners.tuners_utils import BaseTuner

from tests.train.test_merge import assert_nothing_written, merge_cli
from train.checkpoints import resolve_checkpoint
from train.finetune import check_precision


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
    code, err = merge_cli(capsys, adapter=trained_llama / "adapter", output=output, dtype="float32")
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
def test_bf16_without_a_gpu_is_refused():
    # check_precision runs before the model loads; `common.cli.run` prints its
    # ValueError as one line with exit code 2 (tests/common/test_cli.py).
    with pytest.raises(ValueError, match="--bf16/--fp16 need a CUDA GPU"):
        check_precision(SimpleNamespace(model_type="llama"), SimpleNamespace(bf16=True, fp16=False))
    check_precision(SimpleNamespace(model_type="llama"), SimpleNamespace(bf16=False, fp16=False))
