"""Helpers for the GPU tests (kept out of conftest so tests can import them)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest


def require(module: str) -> None:
    """Skip the test, naming the import error, when `module` does not import."""
    try:
        importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - OSError from a missing .so too
        pytest.skip(f"{module} does not import here: {type(err).__name__}: {err}")


def child_pythonpath(repo: Path) -> str:
    """The repo first, then whatever PYTHONPATH holds (gpu_check.sh's carried wheels)."""
    extra = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(p for p in (str(repo), extra) if p)
