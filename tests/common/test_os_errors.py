"""Operating-system refusals and Ctrl-C, in every entry point, as a user meets them:
real interpreters, real paths (a name longer than NAME_MAX, a symlink loop), real
SIGINTs. Either way the process says one line and exits 2 (error) or 130 (interrupt)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, repo_env, run
from tests.data.test_instruct import write_translations

TINY = str(REPO / "train/configs/tiny.yaml")
LONG = "n" * 300  # one path component over Linux's NAME_MAX (255)


def entry_cases(bad: str, tmp: Path) -> list[tuple[str, list[str]]]:
    """(module, args) of every entry point, with `bad` where a user path goes."""
    train = str(tmp / "train.json")
    return [
        ("serve.translate", ["--model", "m", "--output_dir", str(tmp / "o"), "--input", bad]),
        ("data.instruct", ["--translations", bad, "--output", str(tmp / "d")]),
        ("train.merge", ["--adapter", bad, "--output", str(tmp / "m")]),
        ("train.finetune", ["--config", TINY, "--train_file", train, "--validation_file", train,
                            "--model_name_or_path", str(tmp), "--output_dir", bad]),
        ("data.fixtures", ["--out", bad, "--mined_rows", "600000"]),  # seconds of work
        ("data.stats", ["--input", bad]),
        ("data.tiny_models", ["--out", bad]),
        ("serve.inspect", [bad]),
        ("serve.doctor", ["--output_dir", bad, "--engines", "hf"]),
    ]  # fmt: skip


def bad_paths(tmp: Path) -> dict[str, str]:
    (tmp / "loop").symlink_to(tmp / "loop")
    (tmp / "train.json").write_text("[]")
    return {"name_too_long": str(tmp / LONG / "x"), "symlink_loop": str(tmp / "loop" / "x")}


@pytest.mark.parametrize("kind", ["name_too_long", "symlink_loop"])
@pytest.mark.parametrize("index", range(9))
def test_an_os_error_on_a_user_path_is_one_line(tmp_path, index, kind):
    bad = bad_paths(tmp_path)[kind]
    module, args = entry_cases(bad, tmp_path)[index]
    proc = run([sys.executable, "-m", module, *args], check=False, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"{module}: error: ") and "Traceback" not in proc.stderr
    named = "n" * 10 if kind == "name_too_long" else str(tmp_path / "loop")
    assert named in lines[0] and len(lines[0]) < 600, lines[0]  # a long name is shortened


def past_startup(pid: int, timeout: float = 60) -> None:
    """Wait until the child maps its first third-party extension (yaml's, imported by
    common.cli right after it installs the Ctrl-C guard). On a loaded machine the bare
    interpreter start alone can outlast a fixed delay."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if "site-packages" in Path(f"/proc/{pid}/maps").read_text():
                return
        except OSError:
            return  # it has ended: the caller's poll() says so
        time.sleep(0.005)


def interrupt(args: list[str], after: float) -> subprocess.CompletedProcess:
    """Start `python -m ...args`, send SIGINT `after` seconds past the interpreter's own
    start-up, wait for the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=repo_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a background job (`make test &`) would inherit SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    past_startup(proc.pid)
    time.sleep(after)
    assert proc.poll() is None, f"{args[0]} ended before the signal: {proc.stderr.read()[-2000:]}"
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def assert_interrupted(proc: subprocess.CompletedProcess, module: str) -> None:
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == f"{module}: interrupted", proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr


@pytest.mark.parametrize("index", range(9))
def test_ctrl_c_during_the_imports_is_one_line(tmp_path, index):
    """0.1 s past start-up every entry point is still importing (torch, transformers,
    pyarrow): the moment that used to print a KeyboardInterrupt traceback."""
    module, args = entry_cases(str(tmp_path / "x"), tmp_path)[index]
    if module == "data.stats":  # else done at once; a tokenizer imports transformers
        args = ["--input", str(tmp_path / "train.json"), "--tokenizer", str(tmp_path)]
    proc = interrupt([module, *args], after=0.1)
    assert_interrupted(proc, module)
    assert proc.stderr.strip().splitlines() == [f"{module}: interrupted"]


@pytest.mark.slow
def test_ctrl_c_at_any_moment_of_a_dataset_build_leaves_nothing(fixture_dir, tmp_path):
    mined = write_translations(tmp_path / "mined", 30_000, rows_per_shard=5000)
    out = tmp_path / "out"
    args = ["data.instruct", "--translations", str(mined), "--output", str(out),
            "--curated_train", str(fixture_dir / "conala-train.json"),
            "--curated_test", str(fixture_dir / "conala-test.json")]  # fmt: skip
    for after in (0.3, 0.8, 1.5, 2.2, 3.0, 4.0, 5.0):
        assert_interrupted(interrupt(args, after), "data.instruct")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["mined"], after
