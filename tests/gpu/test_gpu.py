"""The GPU paths, on one real CUDA device: engines in bf16, the OOM back-off, bf16 ZeRO-3
LoRA training with the `deepspeed` launcher, merge, translate, and CTranslate2 on CUDA.

    pytest -m gpu tests/gpu          # or scripts/gpu_check.sh (also writes bench JSON)

Every test skips on a machine without CUDA (tests/gpu/conftest.py), and a test that
needs a package the machine lacks skips with the import error as its reason.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO, run

# tests/gpu is a package (gpu.*) so that its conftest.py does not take the module name
# `conftest` from tests/conftest.py, which the other test modules import from.
from .gpu_helpers import child_pythonpath, require

pytestmark = pytest.mark.gpu


ROWS = 64
AGREEMENT = 0.75  # bf16 vs fp32 greedy on a random model: 0.94 on CPU bf16 here


def texts(outputs) -> list[str]:
    """Engines return objects with `.text` (str before the precision refactor)."""
    return [getattr(out, "text", out) for out in outputs]


def sources(fixture_dir: Path, n: int = 32) -> list[str]:
    with open(fixture_dir / "conala-mined.jsonl") as lines:
        rows = [json.loads(line) for line, _ in zip(lines, range(n))]
    return [f"{row['intent']}\n{row['snippet']}" for row in rows]


def generate(name: str, model: Path, srcs: list[str], **kwargs) -> tuple[list[str], object]:
    from serve.engines import create_engine
    from serve.engines.base import GenerationOptions

    engine = create_engine(
        name, model, device="cuda", options=GenerationOptions(max_new_tokens=8), **kwargs
    )
    try:
        return texts(engine.generate(srcs)), engine
    finally:
        engine.close()


def test_hf_bf16_on_cuda(gpu_t5, fixture_dir):
    srcs = sources(fixture_dir)
    bf16, engine = generate("hf", gpu_t5, srcs, precision="bfloat16")
    fp32, _ = generate("hf", gpu_t5, srcs, precision="float32")
    assert engine.device.startswith("cuda")
    assert len(bf16) == len(srcs) and all(bf16), bf16
    agree = sum(a == b for a, b in zip(bf16, fp32)) / len(srcs)
    assert agree >= AGREEMENT, f"bf16 agrees with fp32 greedy on {agree:.0%} of rows"


def test_hf_oom_backoff(gpu_t5):
    """Cap this process's CUDA memory so the first batch OOMs; the engine must halve."""
    import torch

    from serve.engines import create_engine
    from serve.engines.base import GenerationOptions

    engine = create_engine("hf", gpu_t5, device="cuda", options=GenerationOptions(max_new_tokens=4))
    # 1,024 sources of 512 tokens: encoder attention scores alone are ~4 GB per layer
    # at full batch, so a cap of what is allocated now + 512 MiB must OOM, and 32 fits.
    srcs = [f"row {i}\n" + "x = compute(y, z) + 1\n" * 200 for i in range(1024)]
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    cap = (torch.cuda.memory_reserved() + (512 << 20)) / total
    torch.cuda.set_per_process_memory_fraction(cap)
    try:
        outputs = engine.generate(srcs)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        engine.close()
    assert len(outputs) == len(srcs)
    assert engine.max_batch is not None and engine.max_batch < len(srcs), engine.max_batch
    print(f"OOM back-off settled at batch {engine.max_batch} of {len(srcs)}")


@pytest.fixture(scope="module")
def trained_on_gpu(tiny_models, fixture_dir, tmp_path_factory) -> Path:
    """One bf16 ZeRO-3 LoRA run of the tiny T5 with the deepspeed launcher on one GPU."""
    require("deepspeed")
    require("datasets")
    out = tmp_path_factory.mktemp("gpu-train") / "run"
    proc = run(
        [
            sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1",
            "--module", "train.finetune", "--config", "train/configs/tiny.yaml",
            "--bf16", "true", "--max_steps", "5",
            "--model_name_or_path", tiny_models["t5"],
            "--train_file", fixture_dir / "conala-train.json",
            "--validation_file", fixture_dir / "conala-test.json",
            "--output_dir", out,
        ],
        timeout=600,
        PYTHONPATH=child_pythonpath(REPO),
    )  # fmt: skip
    assert (out / "adapter" / "adapter_model.safetensors").is_file(), proc.stdout[-3000:]
    return out


def test_zero3_bf16_training(trained_on_gpu):
    from safetensors.torch import load_file

    weights = load_file(trained_on_gpu / "adapter" / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b), "lora_B is zero after training"


def test_merge_then_translate_on_cuda(trained_on_gpu, fixture_dir, tmp_path):
    merged = tmp_path / "merged"
    run(
        [sys.executable, "-m", "train.merge", "--adapter", trained_on_gpu / "adapter",
         "--output", merged],
        timeout=600, PYTHONPATH=child_pythonpath(REPO),
    )  # fmt: skip
    out = tmp_path / "mined"
    run(
        [sys.executable, "-m", "serve.translate", "--model", merged, "--engine", "hf",
         "--device", "cuda", "--input", fixture_dir / "conala-mined.jsonl",
         "--output_dir", out, "--limit", ROWS, "--max_new_tokens", "8"],
        timeout=600, PYTHONPATH=child_pythonpath(REPO),
    )  # fmt: skip
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    assert table.num_rows == ROWS
    assert table.column_names[-2:] == ["rewritten_intent", "error"]
    assert table.column("error").null_count == ROWS
    assert json.loads((out / "manifest.json").read_text())


def test_ctranslate2_on_cuda(gpu_t5, fixture_dir):
    from serve.engines.probe import engine_probe

    probe = engine_probe("ctranslate2", "cuda")
    if not probe.runs:
        pytest.skip(f"ctranslate2 cannot run on CUDA here: {probe.reason}")
    srcs = sources(fixture_dir)
    ct2, engine = generate("ctranslate2", gpu_t5, srcs, precision="float32")
    hf, _ = generate("hf", gpu_t5, srcs, precision="float32")
    assert all(ct2)
    agree = sum(a == b for a, b in zip(ct2, hf)) / len(srcs)
    assert agree >= AGREEMENT, f"ctranslate2 agrees with hf on {agree:.0%} of rows"


def test_vllm_on_cuda(tiny_models):
    """vLLM on CUDA, in a child process (it spawns its engine core)."""
    from serve.engines.probe import engine_probe

    probe = engine_probe("vllm", "cuda")
    if not probe.runs:
        pytest.skip(f"vllm cannot run on CUDA here: {probe.reason}")
    proc = run(
        [sys.executable, "-m", "serve.doctor", "--json", "--device", "cuda", "--engines", "vllm"],
        timeout=600, check=False, PYTHONPATH=child_pythonpath(REPO),
    )  # fmt: skip
    result = json.loads(proc.stdout)["engines"]["vllm"]
    assert result["runs"], result
