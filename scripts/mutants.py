"""Planted faults: does the test suite catch a plausible bug in each guarantee?

    python scripts/mutants.py                 # every fault in scripts/mutants.yaml
    python scripts/mutants.py --only sink-run-id-unchecked --keep

Each fault is an exact search/replace on one product file plus the tests that should
catch it. The tree (tracked and untracked, non-ignored files) is copied once to a
temporary directory; each fault is applied there alone, its tests run with a
timeout, and the file is restored. The working tree is never touched. A fault whose
search text is missing, or found more than once, is an error: faults cannot rot
silently as the code moves. The named tests are first run on the unchanged copy:
a test that already fails would "catch" every fault.

Writes a table to stdout and JSON (repo-relative paths only) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# pytest exit codes: 1 = tests failed (caught); anything else (2 interrupted or a
# collection error, 5 nothing collected) means the fault broke the run, not a test.
TESTS_FAILED = 1
DEFAULT_OUT = "bench/results/mutants.json"
FIELDS = {"name", "file", "search", "replace", "tests", "why"}
EXIT_USER_ERROR = 2


class FaultError(ValueError):
    """A fault file or fault that cannot be used: unreadable, incomplete, or a search
    text that is gone or ambiguous."""


def load_faults(path: Path) -> list[dict]:
    try:
        faults = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise FaultError(
            f"{path}: not a readable YAML file ({' '.join(str(err).split())})"
        ) from None
    if not isinstance(faults, list) or not all(isinstance(fault, dict) for fault in faults):
        raise FaultError(f"{path}: expected a list of faults, each a mapping")
    for index, fault in enumerate(faults, start=1):
        missing = FIELDS - set(fault)
        if missing:
            name = fault.get("name", f"number {index}")
            raise FaultError(f"{path}: fault {name}: missing {sorted(missing)}")
    names = [fault["name"] for fault in faults]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise FaultError(f"{path}: duplicate fault names {duplicates}")
    return faults


def anchored_text(fault: dict, root: Path) -> str:
    """The text of the fault's file under `root`, which must hold its search text once."""
    path = root / fault["file"]
    if not path.is_file():
        raise FaultError(f"fault {fault['name']}: no file {fault['file']}")
    original = path.read_text()
    count = original.count(fault["search"])
    if count != 1:
        where = "not found" if count == 0 else f"found {count} times"
        raise FaultError(f"fault {fault['name']}: search text {where} in {fault['file']}")
    return original


def apply(fault: dict, root: Path) -> str:
    """Plant `fault` in the copy at `root`; return the file's original text."""
    original = anchored_text(fault, root)
    (root / fault["file"]).write_text(original.replace(fault["search"], fault["replace"]))
    return original


def copy_tree(root: Path) -> Path:
    """Tracked and untracked non-ignored files under root/main; the venv is linked, and
    root/shared points at the real shared data (tests find it next to the repo)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    copy = root / "main"
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the tree is skipped
            target = copy / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (copy / ".venv").symlink_to(REPO / ".venv")
    if (REPO.parent / "shared").exists():
        (root / "shared").symlink_to(REPO.parent / "shared")
    return copy


def run_tests(copy: Path, tests: list[str], timeout: int) -> tuple[str, float, str]:
    """(outcome, seconds, last lines): outcome is passed, failed, broken or timeout."""
    env = dict(os.environ, PYTHONPATH=str(copy), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    try:
        proc = subprocess.run(
            command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - start, ""
    seconds = time.monotonic() - start
    # Repo-relative: the report is committed and must not name this machine's temp dir.
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    tail = tail.replace(str(copy.parent), "..")
    if proc.returncode == 0:
        return "passed", seconds, tail
    return ("failed" if proc.returncode == TESTS_FAILED else "broken"), seconds, tail


def chosen_faults(path: Path, only: list[str] | None) -> list[dict]:
    """The faults to plant (all, or those --only names), every anchor checked in the tree
    before it is copied."""
    faults = load_faults(path)
    unknown = sorted(set(only or ()) - {fault["name"] for fault in faults})
    if unknown:
        raise FaultError(f"--only: no fault named {', '.join(unknown)}")
    faults = [fault for fault in faults if not only or fault["name"] in only]
    for fault in faults:
        anchored_text(fault, REPO)
    return faults


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", type=Path, default=REPO / "scripts" / "mutants.yaml")
    parser.add_argument(
        "--out", type=Path, help=f"JSON report (default {DEFAULT_OUT}; none with --only)"
    )
    parser.add_argument("--only", nargs="*", help="run only these fault names")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per test run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    args = parser.parse_args(argv)
    try:
        faults = chosen_faults(args.faults, args.only)
    except FaultError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    root = Path(tempfile.mkdtemp(prefix="mutants-"))
    started = time.monotonic()
    try:
        copy = copy_tree(root)
        baseline_tests = sorted({test for fault in faults for test in fault["tests"]})
        outcome, seconds, tail = run_tests(copy, baseline_tests, args.timeout)
        if outcome != "passed":
            print(f"baseline: the named tests do not pass unchanged ({outcome}):\n{tail}")
            return 1
        print(f"baseline: {len(baseline_tests)} test ids pass unchanged ({seconds:.0f} s)")
        results = [run_fault(fault, copy, args.timeout) for fault in faults]
    finally:
        if args.keep:
            print(f"copy kept at {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    out = args.out or (None if args.only else REPO / DEFAULT_OUT)
    report(results, out, time.monotonic() - started)
    return 0 if all(result["caught"] for result in results) else 1


def run_fault(fault: dict, copy: Path, timeout: int) -> dict:
    original = apply(fault, copy)
    try:
        outcome, seconds, tail = run_tests(copy, fault["tests"], timeout)
    finally:
        (copy / fault["file"]).write_text(original)
    print(f"  {fault['name']}: {outcome} ({seconds:.0f} s)", flush=True)
    return {
        "name": fault["name"],
        "file": fault["file"],
        "why": fault["why"],
        "tests": fault["tests"],
        "outcome": outcome,
        "caught": outcome == "failed",
        "seconds": round(seconds, 1),
        "tail": tail if outcome != "failed" else "",
    }


def report(results: list[dict], out: Path | None, seconds: float) -> None:
    caught = sum(result["caught"] for result in results)
    print("\n| fault | file | outcome | seconds |\n|---|---|---|---|")
    for result in results:
        verdict = "caught" if result["caught"] else f"SURVIVED ({result['outcome']})"
        print(f"| {result['name']} | {result['file']} | {verdict} | {result['seconds']:.0f} |")
    print(f"\n{caught} of {len(results)} faults caught in {seconds:.0f} s")
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "faults": len(results),
        "caught": caught,
        "seconds": round(seconds),
        "results": results,
    }
    out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
