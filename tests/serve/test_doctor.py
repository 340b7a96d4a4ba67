"""serve.doctor on this machine: the report, its JSON, the probe, and an unloadable library.

The doctor builds its own tiny models and runs each engine in a child process, so
these tests run it as users do (`python -m serve.doctor`, what `make doctor` runs).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import REPO, run

from serve.doctor import verdict
from serve.engines.cuda_libs import find_cublas12
from serve.engines.probe import ENGINES, Probe, engine_probe

DOCTOR = [sys.executable, "-m", "serve.doctor"]
FAKE_CT2_ERROR = "libcublas.so.12: cannot open shared object file: No such file or directory"


def doctor_json(*args, check: bool = True, **env) -> tuple[int, dict]:
    proc = run([*DOCTOR, "--json", *args], check=check, timeout=600, **env)
    return proc.returncode, json.loads(proc.stdout)


def test_probe_on_cpu():
    assert engine_probe("hf", "cpu").runs
    assert engine_probe("ctranslate2", "cpu").runs
    assert engine_probe("hf", "cpu") is engine_probe("hf", "cpu")  # cached per process
    unknown = engine_probe("tgi", "cpu")
    assert not unknown.runs and "unknown engine" in unknown.reason


def test_probe_cuda_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    hf = engine_probe("hf", "cuda")
    assert not hf.runs and hf.fix
    ct2 = engine_probe("ctranslate2", "cuda")
    assert not ct2.runs and ct2.fix
    if not find_cublas12():
        # The CPU stack has no nvidia-cublas-cu12: the reason must say so and how to fix.
        assert "libcublas.so.12 not found" in ct2.reason
        assert "nvidia-cublas-cu12" in ct2.fix and "make setup" in ct2.fix


def test_verdict_needs_one_engine_per_family():
    ok = {"runs": True, "reason": "", "fix": None, "seconds": 1.0}
    bad = {"runs": False, "reason": "x", "fix": "y", "seconds": 1.0}
    code, _ = verdict({"device": "cpu", "engines": {"hf": ok, "ctranslate2": bad, "vllm": bad}})
    assert code == 0
    code, lines = verdict({"device": "cpu", "engines": {"ctranslate2": bad}})
    assert code == 1 and "encoder-decoder" in lines[0]
    code, _ = verdict({"device": "cpu", "engines": {"vllm": ok}})
    assert code == 0


def test_text_report_on_cpu():
    """What `make doctor` prints here (the Makefile runs `$(PY) -m serve.doctor $(ARGS)`)."""
    proc = run([*DOCTOR, "--engines", "hf,ctranslate2"], timeout=600)
    out = proc.stdout
    assert "CPU cores" in out and "torch:" in out and "deepspeed:" in out
    assert "UL2 merge RAM" in out
    assert "[ok  ] hf" in out and "[ok  ] ctranslate2" in out
    assert "verdict: OK" in out
    assert "encoder-decoder models run on cpu with: hf, ctranslate2" in out


def test_json_schema_on_cpu(tmp_path):
    code, report = doctor_json("--engines", "hf,ctranslate2", "--output_dir", tmp_path)
    assert code == 0
    assert report["device"] == "cpu"
    assert report["devices"]["cpu_cores"] >= 1 and "torch_cuda" in report["devices"]
    assert report["resources"]["disk_dir"] == str(tmp_path.resolve())
    assert {c["what"].split()[0] for c in report["resources"]["ul2_checks"]} == {"merge", "disk"}
    assert set(report["engines"]) == {"hf", "ctranslate2"}
    for result in report["engines"].values():
        assert set(result) == {"runs", "reason", "fix", "seconds"}
        assert result["runs"] is True and isinstance(result["reason"], str)
        assert result["fix"] is None and isinstance(result["seconds"], float)
    assert report["verdict"]["ok"] is True


def test_unloadable_ctranslate2(tmp_path):
    """A CTranslate2 whose library cannot load (as on CUDA 13 without cuBLAS 12)."""
    fake = tmp_path / "fake" / "ctranslate2"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"raise OSError({FAKE_CT2_ERROR!r})\n")
    code, report = doctor_json(
        "--engines", "ctranslate2", check=False, PYTHONPATH=f"{fake.parent}:{REPO}"
    )
    result = report["engines"]["ctranslate2"]
    assert code == 1, "no engine runs encoder-decoders here: exit 1"
    assert result["runs"] is False
    assert "libcublas.so.12" in result["reason"]
    assert "nvidia-cublas-cu12" in result["fix"]
    assert report["verdict"]["ok"] is False


def test_bad_engine_name():
    proc = run([*DOCTOR, "--engines", "hf,tgi"], check=False)
    assert proc.returncode == 2 and "tgi" in proc.stderr


@pytest.mark.slow
def test_vllm_on_cpu():
    """vLLM's CPU build runs here (about 40-70 s with its start), or says clearly why not."""
    code, report = doctor_json("--engines", "vllm", check=False)
    result = report["engines"]["vllm"]
    if importlib.util.find_spec("vllm") is not None:
        assert result["runs"] is True, result
        assert code == 0
    else:
        assert result["runs"] is False and "vllm" in result["reason"] and result["fix"]


def test_engine_names_match_the_registry():
    from serve.engines import ENGINES as REGISTERED

    assert tuple(ENGINES) == tuple(REGISTERED)
    assert Probe(True, "x").fix is None
    assert Path(REPO / "serve" / "engines" / "cuda_libs.py").is_file()
