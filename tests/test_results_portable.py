"""Committed results any machine can read: no absolute path, no host or user name.

A results file names paths relative to the repo (`runs/bench/...`, `../shared/...`) and
describes the machine only by CPU model, cores, memory, GPU and package versions.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
# A path that starts at a filesystem root or a home: `/x/...`, `~/x`, `C:\x`. Preceded by
# the start, a space, a quote or `=`/`(`/`[`/`,`/`:` so that `rows/s` and URLs
# (`https://...`: the second slash follows a slash) do not count.
ABSOLUTE = re.compile(r"""(?:^|[\s"'=(\[,:])(/[\w.+-]+(?:/[\w.+-]+)*|~/|[A-Za-z]:\\)""")
MACHINE_KEYS = {"cpu", "cpu_count", "cpus_usable", "memory_gb", "gpu", "python", "versions"}
# How busy the shared machine was: a condition of the run, not a name of the machine.
RUN_KEYS = {"load_average", "load_average_end"}
PERSONAL_KEYS = {"hostname", "host", "node", "nodename", "user", "username", "home"}


def result_files() -> list[Path]:
    return sorted(p for p in RESULTS.rglob("*") if p.is_file() and p.name != ".gitkeep")


def strings(value, key: str = ""):
    """(key, text) for every key and string value in a JSON document."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield k, k
            yield from strings(v, k)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item, key)
    elif isinstance(value, str):
        yield key, value


def machine_names() -> list[str]:
    """This machine's own names (a short hostname such as `vm` would match plain words)."""
    names = [str(REPO), str(Path.home())]
    return names + [h for h in {socket.gethostname(), socket.getfqdn()} if len(h) >= 4]


def problems(path: Path) -> list[str]:
    raw = path.read_bytes()
    found = [f"names {name!r}" for name in machine_names() if name.encode() in raw]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # a plot: only exact names can be searched for
        return found
    pairs = list(strings(json.loads(text))) if path.suffix == ".json" else [("", text)]
    for key, value in pairs:
        found += [f"{key}: absolute path {m.group(1)!r}" for m in ABSOLUTE.finditer(value)]
        if key.lower() in PERSONAL_KEYS and value == key:
            found.append(f"has a {key!r} field")
    if path.suffix == ".json":
        machine = json.loads(text).get("machine") or {}
        extra = set(machine) - MACHINE_KEYS - RUN_KEYS
        found += [f"machine.{k}: not a CPU/cores/memory/GPU/version fact" for k in sorted(extra)]
    return found


@pytest.mark.parametrize("path", result_files(), ids=lambda p: str(p.relative_to(RESULTS)))
def test_result_file_is_portable(path):
    found = problems(path)
    assert not found, f"{path.relative_to(REPO)}: " + "; ".join(found[:10])


def test_the_check_catches_absolute_paths_and_names(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "machine": {"cpu": "x", "platform": "Linux-6.1-host-x86_64"},
                "command": f"python -m serve.translate --model {REPO}/runs/m",
                "data": "~/conala-train.json",
                "ok": "rows/s via https://example.org/a and runs/bench/x",
            }
        )
    )
    found = problems(bad)
    assert len(found) == 4, found  # the repo path twice (bytes, text), ~/, machine.platform
    assert not any("example.org" in f or "runs/bench" in f for f in found)
