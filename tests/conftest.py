"""Session fixtures: synthetic data, tiny models and tiny trained adapters, built once.

Everything is local: the tests never reach a model or dataset hub. The adapters
come from real `deepspeed --num_gpus 2` runs on CPU, shared by the training, merge
and translate tests so each expensive step runs once per session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_CONALA = REPO.parent / "shared" / "data" / "conala"
VENV_BIN = Path(sys.executable).parent


def repo_env(**extra) -> dict:
    """Environment for child processes: repo importable, venv tools first on PATH, offline."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(REPO),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        WANDB_MODE="offline",
        TOKENIZERS_PARALLELISM="false",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(
    args: list[str], *, timeout: int = 900, check: bool = True, **env
) -> subprocess.CompletedProcess:
    """Run a command from the repo root; on failure show its output in the assertion."""
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=REPO,
        env=repo_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def deepspeed_train(config: str, model: Path, data: Path, output: Path, *extra, **kw):
    return run(
        [
            VENV_BIN / "deepspeed",
            "--num_gpus",
            "2",
            "--master_port",
            str(_free_port()),
            "--module",
            "train.finetune",
            "--config",
            config,
            "--model_name_or_path",
            model,
            "--train_file",
            data / "conala-train.json",
            "--validation_file",
            data / "conala-test.json",
            "--output_dir",
            output,
            *extra,
        ],
        **kw,
    )


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory) -> Path:
    from data.fixtures import write_fixtures

    out = tmp_path_factory.mktemp("conala")
    write_fixtures(out, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from data.tiny_models import build

    return build(tmp_path_factory.mktemp("tiny"), seed=0)


def make_talking(path: Path) -> None:
    """Turn the tiny T5 at `path` into one whose greedy output is visible and varies by row.

    At its initial scale a random T5 decodes `<pad>` (its decoder start) forever, which
    prints as "", or one token repeated for most inputs: text comparisons of such output
    prove nothing. Weights times 4 make the decoder follow the encoder (measured: 194 of
    200 fixture rows distinct); a zero `<pad>` logit keeps the output from being padding.
    """
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from data.tiny_models import PAD

    model = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "layer_norm" not in name:
                weight.mul_(4)
        model.lm_head.weight[PAD] = 0
    model.save_pretrained(path)


def assert_says_something(texts: list) -> None:
    """The precondition of any text comparison: >= 90% of rows non-empty, >= half distinct."""
    said = [t for t in texts if t and t.strip()]
    assert len(said) >= 0.9 * len(texts), f"{len(texts) - len(said)} of {len(texts)} rows empty"
    assert len(set(said)) >= len(texts) / 2, f"{len(set(said))} distinct of {len(texts)}"


@pytest.fixture(scope="session")
def talking_t5(tiny_models, tmp_path_factory) -> Path:
    """The tiny T5 made to say something different for each row (see `make_talking`)."""
    import shutil

    out = tmp_path_factory.mktemp("talking") / "t5"
    shutil.copytree(tiny_models["t5"], out)
    make_talking(out)
    return out


@pytest.fixture(scope="session")
def trained_t5(tmp_path_factory, tiny_models, fixture_dir) -> Path:
    """Output dir of a 2-rank ZeRO-3 LoRA run of the tiny T5 (adapter/, metrics, summary)."""
    out = tmp_path_factory.mktemp("train-t5") / "run"
    deepspeed_train("train/configs/tiny.yaml", tiny_models["t5"], fixture_dir, out)
    return out


@pytest.fixture(scope="session")
def trained_llama(tmp_path_factory, tiny_models, fixture_dir) -> Path:
    out = tmp_path_factory.mktemp("train-llama") / "run"
    deepspeed_train("train/configs/tiny_llama.yaml", tiny_models["llama"], fixture_dir, out)
    return out


@pytest.fixture(scope="session")
def merged_models(tmp_path_factory, trained_t5, trained_llama) -> dict[str, Path]:
    """Merged bf16-free (fp32) checkpoints of both tiny adapters, via the merge CLI."""
    out = tmp_path_factory.mktemp("merged")
    paths = {}
    for kind, run_dir in (("t5", trained_t5), ("llama", trained_llama)):
        paths[kind] = out / kind
        run(
            [
                sys.executable,
                "-m",
                "train.merge",
                "--adapter",
                run_dir / "adapter",
                "--output",
                paths[kind],
                "--dtype",
                "float32",
            ]
        )
    return paths
