"""What will run on this machine, and why: devices, engines, DeepSpeed ops, RAM and disk.

    python -m serve.doctor                      # or `make doctor`
    python -m serve.doctor --json               # the same report as JSON
    python -m serve.doctor --device cuda --engines hf,ctranslate2
    python -m serve.doctor --output_dir /data/runs   # check that disk for UL2's files

Each engine is checked twice: a cheap probe (`engine_probe`: its library imports and
sees the device, as `--engine auto` uses it) and then a real one-batch generation
(4 new tokens) on tiny models the doctor builds in a temporary directory with
`data.tiny_models`: the T5 (UL2-shaped) for hf and ctranslate2, the Llama for hf and
vllm. Every generation runs in its own child process with a timeout, so one engine
that hangs or crashes (vLLM spawns processes; a missing CUDA library can abort) cannot
take the doctor down with it. On CPU vLLM's start alone takes about 40 s.

Exit status: 0 when every model family that was checked (encoder-decoder: hf,
ctranslate2; decoder-only: hf, vllm) has at least one engine that runs; 1 otherwise;
2 for a bad flag. RAM and disk below what UL2 needs are reported with their fix but do
not change the exit status (the tiny pipeline still runs).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.cli import Parser, real_path, run
from serve.engines.cuda_libs import FIX as CUBLAS_FIX
from serve.engines.cuda_libs import preload_cublas12
from serve.engines.probe import ENGINES, SETUP_FIX, describe_error, engine_probe

DEVICES = ("auto", "cpu", "cuda")
# The tiny models each engine generates with (vLLM runs decoder-only models only).
MODELS = {"hf": ("t5", "llama"), "ctranslate2": ("t5",), "vllm": ("llama",)}
FAMILIES = {"encoder-decoder": ("hf", "ctranslate2"), "decoder-only": ("hf", "vllm")}
ENGINE_TIMEOUT_S = 300
GB = 1e9
# What google/ul2 (19.5B parameters) needs, in bytes. bf16 weights are 39 GB.
UL2_NEEDS = {
    "merge_ram": 40 * GB,  # the merge loads the base in bf16 on CPU, then folds LoRA in
    "merged_checkpoint_disk": 40 * GB,  # the merged bf16 safetensors
    "ctranslate2_conversion_disk": 40 * GB,  # converted copy beside it (bf16/int8 weights)
    "train_checkpoint_disk": 2 * GB,  # LoRA adapter + its optimizer states, x save_total_limit
    "gpu_memory_translate": 48 * GB,  # weights + activations/KV for one-card translate
}


# ---------------------------------------------------------------------------- report


def devices() -> dict:
    info: dict = {"cpu_cores": os.cpu_count(), "machine": platform.machine(), "gpus": []}
    try:
        import torch
    except Exception as err:  # noqa: BLE001
        info["torch"] = None
        info["torch_error"] = describe_error(err)
        return info
    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if info["cuda_available"]:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            free, total = torch.cuda.mem_get_info(index)
            info["gpus"].append(
                {
                    "index": index,
                    "name": props.name,
                    "memory_gb": round(total / GB, 1),
                    "free_gb": round(free / GB, 1),
                    "capability": f"{props.major}.{props.minor}",
                    "bf16": torch.cuda.is_bf16_supported(),
                }
            )
    info["nvidia_smi"] = shutil.which("nvidia-smi") is not None
    return info


def deepspeed_ops() -> dict:
    """Accelerator and the optimizer ops training uses, as DeepSpeed sees this machine."""
    try:
        from deepspeed.accelerator import get_accelerator
    except Exception as err:  # noqa: BLE001
        return {
            "available": False,
            "reason": f"deepspeed does not import: {describe_error(err)}",
            "fix": SETUP_FIX,
        }
    accelerator = get_accelerator()
    report: dict = {
        "available": True,
        "accelerator": accelerator.device_name(),
        "backend": accelerator.communication_backend_name(),
        "ops": {},
    }
    # FusedAdam is the GPU optimizer (ZeRO-3 without offload); CPUAdam serves
    # deepspeed_configs/zero3_offload.json. On the CPU accelerator both map to CPU builds.
    for op in ("FusedAdamBuilder", "CPUAdamBuilder"):
        try:
            builder = accelerator.get_op_builder(op)
            report["ops"][op] = bool(builder and builder().is_compatible(verbose=False))
        except Exception as err:  # noqa: BLE001
            report["ops"][op] = False
            report.setdefault("errors", {})[op] = describe_error(err)
    report["ninja"] = shutil.which("ninja") is not None or _has_module("ninja")
    report["compiler"] = shutil.which(os.environ.get("CXX", "c++")) is not None
    return report


def _has_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001
        return False
    return True


def _exists(path: Path) -> bool:
    """False only for a path that is not there: a symlink loop or a name too long is
    the user's to fix (an OSError, one line), not a reason to look one folder up."""
    try:
        path.stat()
    except FileNotFoundError:
        return False
    return True


def resources(output_dir: Path) -> dict:
    import psutil

    ram = psutil.virtual_memory()
    output_dir = real_path(output_dir)
    while not _exists(output_dir):  # not made yet: the disk it will be made on
        output_dir = output_dir.parent
    disk = shutil.disk_usage(output_dir)
    disk_need = (
        UL2_NEEDS["merged_checkpoint_disk"]
        + UL2_NEEDS["ctranslate2_conversion_disk"]
        + UL2_NEEDS["train_checkpoint_disk"]
    )
    checks = [
        _need(
            "merge RAM",
            ram.available,
            UL2_NEEDS["merge_ram"],
            "run `make merge` where over 40 GB RAM is free (48 GB is comfortable)",
        ),
        _need(
            f"disk at {output_dir}",
            disk.free,
            disk_need,
            "free space or pass --output_dir on a bigger disk (merged 40 GB + CTranslate2 "
            "conversion 40 GB + LoRA checkpoints ~2 GB)",
        ),
    ]
    return {
        "ram_total_gb": round(ram.total / GB, 1),
        "ram_available_gb": round(ram.available / GB, 1),
        "disk_dir": str(output_dir),
        "disk_free_gb": round(disk.free / GB, 1),
        "ul2_checks": checks,
    }


def _need(what: str, have: float, need: float, fix: str) -> dict:
    ok = have >= need
    return {
        "what": what,
        "ok": ok,
        "have_gb": round(have / GB, 1),
        "need_gb": round(need / GB, 1),
        "fix": None if ok else fix,
    }


# ---------------------------------------------------------------------------- engines


def check_engine(name: str, device: str, models: dict[str, Path], timeout: float) -> dict:
    """Probe, then one real generation per model in a child process."""
    start = time.monotonic()
    probe = engine_probe(name, device)
    result = {"runs": False, "reason": probe.reason, "fix": probe.fix, "seconds": 0.0}
    if probe.runs:
        result.update(_generate_in_child(name, device, [models[m] for m in MODELS[name]], timeout))
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


def _generate_in_child(name: str, device: str, paths: list[Path], timeout: float) -> dict:
    args = [sys.executable, "-m", "serve.doctor", "--_generate", name, "--device", device]
    try:
        proc = subprocess.run(
            [*args, *map(str, paths)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {
            "runs": False,
            "reason": f"{name}: no output after {timeout:.0f} s (hung or too slow)",
            "fix": "rerun with --timeout larger, or `--debug` to see where it stops",
        }
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or [""]
    reason = f"{name} crashed on {device} (exit {proc.returncode}): {tail[0][:300]}"
    fix = CUBLAS_FIX if "libcublas.so.12" in proc.stderr else SETUP_FIX
    return {"runs": False, "reason": reason, "fix": fix}


def unpad_t5(path: Path) -> None:
    """Zero the tiny T5's `<pad>` logit in place, so greedy output is visible text.

    A random T5 decodes `<pad>` (its decoder start token) forever, which prints as an
    empty string and would look like a failure.
    """
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from data.tiny_models import PAD

    model = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight[PAD] = 0
    model.save_pretrained(path)


def _generate(name: str, device: str, paths: list[str]) -> dict:
    """Child side: build the engine on each tiny model and generate one batch."""
    from serve.engines import create_engine
    from serve.engines.base import GenerationOptions

    if name == "ctranslate2" and device.startswith("cuda"):
        preload_cublas12()  # before CTranslate2 dlopens libcublas.so.12
    texts = []
    for path in paths:
        engine = create_engine(
            name,
            path,
            device=device,
            options=GenerationOptions(max_new_tokens=4, min_new_tokens=4),
        )
        try:
            outputs = engine.generate(["sort a list of dicts by key\nsorted(x, key=k)"])
        finally:
            engine.close()
        # Engines return str today and objects with .text after the precision refactor.
        text = getattr(outputs[0], "text", outputs[0])
        if len(outputs) != 1 or not isinstance(text, str):
            return {"runs": False, "reason": f"unexpected output {outputs!r}", "fix": None}
        texts.append(f"{Path(path).name}: {text!r}")
    reason = f"generated on {device} (random tiny models: noise expected): {'; '.join(texts)}"
    return {"runs": True, "reason": reason, "fix": None}


# ---------------------------------------------------------------------------- main


def verdict(report: dict) -> tuple[int, list[str]]:
    engines = report["engines"]
    lines, ok = [], True
    for family, names in FAMILIES.items():
        checked = [n for n in names if n in engines]
        if not checked:
            continue
        running = [n for n in checked if engines[n]["runs"]]
        if running:
            lines.append(f"{family} models run on {report['device']} with: {', '.join(running)}")
        else:
            ok = False
            lines.append(f"{family} models: NO engine runs on {report['device']}")
    short = [c["what"] for c in report.get("resources", {}).get("ul2_checks", []) if not c["ok"]]
    if short:
        lines.append(
            f"UL2-sized runs: short of {', '.join(short)} (fixes above; exit status unaffected)"
        )
    code = 0 if ok else 1
    return code, lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(prog="serve.doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="default: cuda if usable")
    parser.add_argument(
        "--engines", default=",".join(ENGINES), help="comma-separated subset of hf,ctranslate2,vllm"
    )
    parser.add_argument(
        "--output_dir", type=Path, default=Path("."), help="where UL2's files would go (disk check)"
    )
    parser.add_argument(
        "--timeout", type=float, default=ENGINE_TIMEOUT_S, help="seconds per engine"
    )
    parser.add_argument("--_generate", help=argparse.SUPPRESS)
    parser.add_argument("models", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown or not engines:
        parser.error(f"--engines: unknown {unknown or 'empty'} (choose from {', '.join(ENGINES)})")
    if not 0 < args.timeout < 1e6:  # also NaN and inf
        parser.error(f"--timeout must be > 0 seconds (and finite), got {args.timeout}")
    args.engines = engines
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args._generate:
        print(json.dumps(_generate(args._generate, args.device, args.models)), flush=True)
        return
    if args.json:
        # Libraries log to stdout (DeepSpeed's logger holds the stream it found at import);
        # keep stdout for the JSON alone by pointing fd 1 at stderr until the end.
        json_stdout = os.dup(1)
        os.dup2(2, 1)
    report = {"devices": devices()}
    device = args.device
    if device == "auto":
        device = "cuda" if report["devices"].get("cuda_available") else "cpu"
    report["device"] = device
    report["deepspeed"] = deepspeed_ops()
    report["resources"] = resources(args.output_dir)
    report["engines"] = {}
    if not args.json:
        _print_header(report)
    with tempfile.TemporaryDirectory(prefix="doctor-") as tmp:
        from transformers.utils import logging as hf_logging

        from data.tiny_models import build

        models: dict[str, Path] = {}
        if any(engine_probe(name, device).runs for name in args.engines):
            hf_logging.disable_progress_bar()
            models = build(Path(tmp), seed=0)
            unpad_t5(models["t5"])
        for name in args.engines:
            report["engines"][name] = check_engine(name, device, models, args.timeout)
            if not args.json:
                _print_engine(name, report["engines"][name])
    code, lines = verdict(report)
    report["verdict"] = {"ok": code == 0, "lines": lines}
    if args.json:
        sys.stdout.flush()
        os.dup2(json_stdout, 1)
        print(json.dumps(report, indent=2), flush=True)
    else:
        _print_verdict(report)
    if code:
        sys.exit(code)


def _print_engine(name: str, result: dict) -> None:
    mark = "ok  " if result["runs"] else "FAIL"
    print(f"  [{mark}] {name:<12} {result['seconds']:6.1f}s  {result['reason']}", flush=True)
    if result["fix"]:
        print(f"         fix: {result['fix']}", flush=True)


def _print_header(report: dict) -> None:
    dev = report["devices"]
    print(f"devices: {dev['cpu_cores']} CPU cores ({dev['machine']})")
    for gpu in dev["gpus"]:
        print(
            f"  cuda:{gpu['index']} {gpu['name']}, {gpu['memory_gb']} GB "
            f"({gpu['free_gb']} GB free), sm {gpu['capability']}, bf16 {gpu['bf16']}"
        )
    if not dev["gpus"]:
        print("  no CUDA GPU" + (" (nvidia-smi present)" if dev.get("nvidia_smi") else ""))
    print(f"torch: {dev.get('torch')} (CUDA {dev.get('torch_cuda')})")
    ds = report["deepspeed"]
    if ds["available"]:
        ops = ", ".join(
            f"{op.removesuffix('Builder')} {'ok' if v else 'NO'}" for op, v in ds["ops"].items()
        )
        print(f"deepspeed: accelerator {ds['accelerator']} ({ds['backend']}); ops: {ops}")
    else:
        print(f"deepspeed: {ds['reason']}; fix: {ds['fix']}")
    res = report["resources"]
    print(
        f"resources: RAM {res['ram_available_gb']}/{res['ram_total_gb']} GB free, "
        f"disk {res['disk_free_gb']} GB free at {res['disk_dir']}"
    )
    for check in res["ul2_checks"]:
        state = "ok" if check["ok"] else "SHORT"
        print(
            f"  UL2 {check['what']}: need {check['need_gb']} GB, "
            f"have {check['have_gb']} GB: {state}"
        )
        if check["fix"]:
            print(f"    fix: {check['fix']}")
    for gpu in dev["gpus"]:
        if gpu["memory_gb"] * GB < UL2_NEEDS["gpu_memory_translate"]:
            print(
                f"  UL2 on cuda:{gpu['index']}: {gpu['memory_gb']} GB < 48 GB; "
                "use tensor parallel or a bigger card"
            )
    print(f"engines on {report['device']} (a real 4-token generation each):", flush=True)


def _print_verdict(report: dict) -> None:
    print("verdict: " + ("OK" if report["verdict"]["ok"] else "FAIL"))
    for line in report["verdict"]["lines"]:
        print(f"  {line}")


if __name__ == "__main__":
    run(main, "serve.doctor")
