"""Every command shown in README.md and docs/*.md runs, or is labelled, and parses.

What counts as a command: each line (backslash continuations joined, `# comments`
dropped, `$ ` prompts required in `console` blocks) of a fenced block labelled `bash`,
`sh`, `shell` or `console`, or unlabelled and looking like shell.

Labels: an HTML comment on the line before the fence, `<!-- needs: gpu -->`, with one or
more of LABELS, comma-separated (docs/README.md explains them to readers).

1. `test_flags_parse`: every command, labelled or not, is resolved to the project entry
   points it calls (`python -m X`, `deepspeed ... --module X`, `torchrun ... -m X`;
   `make T V=...` runs its recipe with stand-in `python`/`deepspeed`/`torchrun` that record
   their command lines), and each entry point's own parser parses those flags: a child
   process wraps argparse so that the first successful parse stops `main()`.
2. `test_commands_run`: every unlabelled command runs, in document order, in a scratch
   mirror of the repository whose `runs/` holds what earlier stages would have written
   (the session's tiny models, synthetic CoNaLa files and trained adapter from
   conftest), and must exit 0. Pages go in pipeline order, so merge's command writes the
   model translate's command reads. Only deepspeed's port is changed (a free one).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
LABELS = {"gpu", "nodes", "hub", "time"}
SHELL_LANGS = {"bash", "sh", "shell", "console"}
SHELL_WORDS = {"make", "python", "python3", "deepspeed", "torchrun", "pip", "pytest", "bash"}
PROJECT = ("common", "data", "train", "serve", "bench", "scripts")
# Pages in pipeline order (what one writes, the next reads); other pages follow.
ORDER = ["README.md", "docs/README.md", "docs/data.md", "docs/train.md", "docs/merge.md",
         "docs/translate.md", "docs/reliability.md", "docs/dataset.md", "docs/gpu.md",
         "docs/performance.md", "docs/troubleshooting.md"]  # fmt: skip
# What a scratch mirror links from the repository (never `runs/`: commands write there).
MIRRORED = ["common", "data", "train", "serve", "bench", "scripts", "deepspeed_configs",
            "Makefile", "pyproject.toml", "requirements.txt", "requirements-cpu.lock",
            "requirements-gpu.lock", ".venv"]  # fmt: skip
# Entry points whose main() starts work before it parses (train.finetune opens a gloo
# process group): the parse check calls their parse function instead.
PARSE_FUNCTION = {"train.finetune": ("train.args", "parse")}
FENCE = re.compile(r"^(```|~~~)\s*([\w+-]*)")
LABEL = re.compile(r"^<!--\s*needs:\s*([\w\s,]+?)\s*-->$")


@dataclass
class Command:
    where: str  # file:line
    text: str
    argv: list[str]
    labels: set[str]


def doc_files() -> list[Path]:
    pages = [REPO / p for p in ORDER if (REPO / p).is_file()]
    return pages + sorted(set((REPO / "docs").glob("*.md")) - set(pages))


def shell_looking(lines: list[str]) -> bool:
    words = [line.split()[0] for line in lines if line.strip() and not line.startswith("#")]
    return bool(words) and all(w.lstrip("$") in SHELL_WORDS or "/" in w for w in words)


def blocks(text: str):
    """(first line number, labels, lines, console?) for each shell block of a markdown text."""
    lines, i = text.splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith(match.group(1)))
        body, lang = lines[i + 1 : end], match.group(2).lower()
        before = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
        label = LABEL.match(before)
        labels = {x.strip() for x in label.group(1).split(",")} if label else set()
        if lang in SHELL_LANGS or (not lang and shell_looking(body)):
            yield i + 2, labels, body, lang == "console"
        i = end + 1


def commands(path: Path, root: Path = REPO) -> list[Command]:
    found, name = [], str(path.relative_to(root))
    for first, labels, body, console in blocks(path.read_text(encoding="utf-8")):
        pending, start = "", first
        for number, line in enumerate(body, first):
            if console:
                if not line.startswith("$ ") and not pending:
                    continue  # output
                line = line[2:] if line.startswith("$ ") else line
            start = start if pending else number
            pending += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
            if line.endswith("\\"):
                continue
            argv = shlex.split(pending, comments=True)
            if argv:
                found.append(Command(f"{name}:{start}", pending.strip(), argv, labels))
            pending = ""
    return found


def all_commands() -> list[Command]:
    return [c for path in doc_files() for c in commands(path)]


# ---- 1. flags parse -------------------------------------------------------------------

SHIM = """#!{python}
import json, os, sys
name = os.path.basename(sys.argv[0])
if sys.argv[1:2] == ["-c"]:  # inline checks in scripts: let them run
    os.execv({python!r}, [{python!r}, *sys.argv[1:]])
for flag, value in zip(sys.argv, sys.argv[1:]):  # as the real command would, for `> OUT/x`
    if flag in ("--out", "--output", "--output_dir"):
        os.makedirs(value, exist_ok=True)
with open(os.environ["DOCS_SHIM_LOG"], "a") as log:
    log.write(json.dumps([name, *sys.argv[1:]]) + "\\n")
print("[docs shim]", name)  # something for a `| grep -v` in a recipe to pass on
"""


def make_argvs(argv: list[str], tmp: Path) -> list[list[str]]:
    """The command lines a `make` command runs, from its real recipe (stand-ins record them)."""
    mirror, log = tmp / "make-mirror", tmp / "shim.log"
    if not mirror.exists():
        (mirror / "venv" / "bin").mkdir(parents=True)
        for item in ("Makefile", "scripts"):  # no .venv: scripts fall back to PATH's python3
            (mirror / item).symlink_to(REPO / item)
        for name in ("python", "python3", "deepspeed", "torchrun", "pytest"):
            shim = mirror / "venv" / "bin" / name
            shim.write_text(SHIM.format(python=sys.executable))
            shim.chmod(0o755)
    log.write_text("")
    env = dict(os.environ, DOCS_SHIM_LOG=str(log),
               PATH=f"{mirror / 'venv' / 'bin'}{os.pathsep}{os.environ['PATH']}")  # fmt: skip
    make = ["make", "-o", "setup", *argv[1:], f"VENV={mirror / 'venv'}"]
    proc = subprocess.run(make, cwd=mirror, env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"make exited {proc.returncode}: {proc.stderr[-2000:]}")
    return [json.loads(line) for line in log.read_text().splitlines()]


def entry_points(argv: list[str], tmp: Path) -> list[tuple[str, list[str]]]:
    """(module, args) for each Python entry point a command line calls."""
    program = Path(argv[0]).name
    if program == "make":
        return [ep for inner in make_argvs(argv, tmp) for ep in entry_points(inner, tmp)]
    if program.startswith("python") and argv[1:2] == ["-m"]:
        return [(argv[2], argv[3:])]
    if program == "deepspeed":  # the launcher's own flags, then the module's
        module = argv.index("--module") + 1
        return [("deepspeed.launcher.runner", argv[1:]), (argv[module], argv[module + 1 :])]
    if program == "torchrun":
        module = next(i for i, a in enumerate(argv) if a in ("-m", "--module")) + 1
        return [("torch.distributed.run", argv[1:]), (argv[module], argv[module + 1 :])]
    return []  # pip, a shell script, `python -c`: no project parser to ask


def parse_child() -> None:
    """In a child process: parse each (module, args) from stdin with the module's own
    `main`, stopped right after its argparse parse; print {index: error or null}."""
    import argparse
    import contextlib
    import importlib
    import io

    class Parsed(BaseException):  # BaseException: no `except Exception` in main() stops it
        pass

    real = argparse.ArgumentParser.parse_known_args

    def parse_known_args(self, args=None, namespace=None):
        _, extras = real(self, args, namespace)
        self.error(f"unrecognized arguments: {' '.join(extras)}") if extras else None
        raise Parsed

    argparse.ArgumentParser.parse_known_args = parse_known_args
    results = {}
    for index, (module, args) in enumerate(json.load(sys.stdin)):
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                name, function = PARSE_FUNCTION.get(module, (module, "main"))
                entry = getattr(importlib.import_module(name), function)
                entry([a for a in args if a != "--debug"])
            results[index] = "main() returned without parsing any flags"
        except Parsed:
            results[index] = None
        except SystemExit as exit:  # plain argparse: usage + error on stderr; --help: 0
            results[index] = None if exit.code in (0, None) else stderr.getvalue()[-800:]
        except Exception as err:  # common.cli's parser raises UserError
            results[index] = f"{type(err).__name__}: {err}"
    print(json.dumps(results))


def parse_all(calls: list[tuple[str, list[str]]]) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--parse-child"], input=json.dumps(calls), cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1",
                 TOKENIZERS_PARALLELISM="false"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {int(k): v for k, v in json.loads(proc.stdout.splitlines()[-1]).items()}


def flag_failures(cmds: list[Command], tmp: Path) -> list[str]:
    calls, owners, failures = [], [], []
    for command in cmds:
        try:
            found = entry_points(command.argv, tmp)
        except (AssertionError, ValueError, StopIteration) as err:
            failures.append(f"{command.where}: {command.text}\n    cannot resolve: {err}")
            continue
        for module, args in found:
            if module.split(".")[0] in (*PROJECT, "deepspeed", "torch"):
                calls.append((module, args))
                owners.append(command)
    for index, error in parse_all(calls).items():
        if error:
            command, module = owners[index], calls[index][0]
            failures.append(f"{command.where}: {command.text}\n    {module}: {error.strip()}")
    return failures


def test_flags_parse(tmp_path):
    failures = flag_failures(all_commands(), tmp_path)
    assert not failures, "commands in the docs that their parser refuses:\n" + "\n".join(failures)


def test_every_command_is_runnable_or_labelled():
    """Unknown labels are refused; a labelled block must name why it cannot run here."""
    cmds = all_commands()
    assert len(cmds) > 30, f"only {len(cmds)} commands found: is the extraction broken?"
    bad = [f"{c.where}: unknown label(s) {sorted(c.labels - LABELS)}" for c in cmds
           if c.labels - LABELS]  # fmt: skip
    assert not bad, "\n".join(bad)


# ---- 2. commands run ------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, fixture_dir, tiny_models, trained_t5) -> Path:
    """A mirror of the repository whose runs/ holds the demo's inputs and the GPU stage's
    output (the trained adapter), so each page's commands find what they read."""
    root = tmp_path_factory.mktemp("docs-workspace")
    for item in MIRRORED:
        if (REPO / item).exists():
            (root / item).symlink_to(REPO / item)
    data = root / "runs" / "demo" / "data"
    shutil.copytree(fixture_dir, data)
    shutil.copytree(tiny_models["t5"], root / "runs" / "demo" / "tiny" / "t5")
    for name in ("conala-train.json", "conala-test.json", "conala-mined.jsonl"):
        shutil.copy(data / name, root / name)
    skip = shutil.ignore_patterns("checkpoint-*", "wandb")
    shutil.copytree(trained_t5, root / "runs" / "ul2", ignore=skip)  # adapter/ + reports
    return root


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_command(command: Command, cwd: Path) -> subprocess.CompletedProcess:
    argv = list(command.argv)
    if argv[0] == "deepspeed":  # the default port may be taken by another run on this machine
        argv[1:1] = ["--master_port", str(free_port())]
    env = dict(os.environ, PYTHONPATH=str(cwd), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false",
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")  # fmt: skip
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_commands_run(workspace):
    ran = []
    for command in all_commands():
        if command.labels:
            continue
        proc = run_command(command, workspace)
        assert proc.returncode == 0, (
            f"{command.where}: `{command.text}` exited {proc.returncode} (ran before it: "
            f"{len(ran)})\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n"
            f"{proc.stderr[-3000:]}"
        )
        ran.append(command.where)
    assert len(ran) >= 12, ran


# ---- the extraction itself --------------------------------------------------------------

SAMPLE = """\
Text.

<!-- needs: gpu, hub -->
```bash
make train   # a comment
deepspeed --num_gpus 8 --module train.finetune \\
    --config train/configs/ul2.yaml
```

```console
$ python -m serve.inspect runs/x --rows 2
runs/x: 4 shards
```

```
make demo
```

```text
make this is output
```
"""


def test_extraction(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(SAMPLE)
    found = commands(page, root=tmp_path)
    assert [(c.where, c.argv[:3], c.labels) for c in found] == [
        ("page.md:5", ["make", "train"], {"gpu", "hub"}),
        ("page.md:6", ["deepspeed", "--num_gpus", "8"], {"gpu", "hub"}),
        ("page.md:11", ["python", "-m", "serve.inspect"], set()),
        ("page.md:16", ["make", "demo"], set()),
    ]
    assert found[1].argv[-2:] == ["--config", "train/configs/ul2.yaml"]


def test_a_renamed_flag_is_refused(tmp_path):
    """The parse check tells a real flag from a renamed one, through make and directly."""
    ok = Command("x:1", "", ["python", "-m", "serve.translate", "--model", "m",
                             "--output_dir", "o", "--precision", "float32"], set())  # fmt: skip
    renamed = Command("x:2", "", [*ok.argv[:-2], "--compute_type", "float32"], set())
    via_make = Command("x:3", "", ["make", "merge", "ADAPTER=a", "OUT=b",
                                   'ARGS=--dtype float32 --shard_size 5GB'], set())  # fmt: skip
    failures = flag_failures([ok, renamed, via_make], tmp_path)
    assert len(failures) == 2, failures
    assert "--compute_type" in failures[0] and "--shard_size" in failures[1]


if __name__ == "__main__" and sys.argv[1:] == ["--parse-child"]:
    parse_child()
