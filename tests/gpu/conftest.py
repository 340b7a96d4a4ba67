"""GPU tests: marked `gpu`, skipped with the reason when torch sees no CUDA device.

    pytest -m gpu tests/gpu          # on a GPU machine (scripts/gpu_check.sh runs this)

Packages the GPU check machine may lack (deepspeed, datasets, ctranslate2, vllm) make
the tests that need them skip with the import error as the reason, never fail.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

GPU_MARKER = "gpu: needs a CUDA GPU; skipped without one (scripts/gpu_check.sh runs them)"


def pytest_configure(config):
    config.addinivalue_line("markers", GPU_MARKER)


def cuda_skip_reason() -> str | None:
    try:
        import torch
    except Exception as err:  # noqa: BLE001
        return f"torch does not import: {err}"
    if not torch.cuda.is_available():
        return f"no CUDA device: torch {torch.__version__} (CUDA {torch.version.cuda})"
    return None


def pytest_collection_modifyitems(config, items):
    reason = cuda_skip_reason()
    if reason is None:
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def gpu_t5(tiny_models, tmp_path_factory) -> Path:
    """The tiny T5 with its `<pad>` logit zeroed, so greedy output is not all padding.

    A random T5 decodes `<pad>` (its decoder start) forever, which gives empty strings;
    comparing those would prove nothing.
    """
    from serve.doctor import unpad_t5

    out = tmp_path_factory.mktemp("gpu-t5") / "t5"
    shutil.copytree(tiny_models["t5"], out)
    unpad_t5(out)
    return out
