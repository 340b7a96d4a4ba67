"""scripts/gpu_check.sh --dry-run: every step of the GPU check, CPU-sized, exits 0 here."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, run

pytestmark = pytest.mark.slow


def test_gpu_check_dry_run(tmp_path):
    results = tmp_path / "results"
    proc = run(["bash", REPO / "scripts" / "gpu_check.sh", "--dry-run"], timeout=900,
               RESULTS=results)  # fmt: skip
    summary = json.loads((results / "check.json").read_text())
    assert summary["ok"] and summary["dry_run"], proc.stderr[-3000:]
    assert set(summary["steps"]) == {"doctor", "pytest", "bench"}
    assert all(step["exit"] == 0 for step in summary["steps"].values())
    assert summary["engines"]["hf"]["runs"] and summary["engines"]["ctranslate2"]["runs"]
    tests = summary["tests"]
    assert tests["tests"] >= 5 and tests["failures"] == 0 and tests["errors"] == 0
    import torch

    if not torch.cuda.is_available():
        # Collected and skipped, each with its reason.
        assert tests["skipped"] == tests["tests"]
        assert any("no CUDA device" in reason for reason in tests["skip_reasons"])
    assert (results / "ul2.json").is_file() and (results / "doctor.json").is_file()
