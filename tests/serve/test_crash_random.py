"""Randomized crash test: kill serve.translate anywhere, change everything between resumes.

Each cycle launches real `python -m serve.translate` processes (1-3 ranks through
RANK/WORLD_SIZE) on the tiny T5 through CTranslate2, the cheapest engine that really
generates, and SIGKILLs some or all of them at a random time or just after a shard
lands. Between launches the world size changes, and sometimes the input is re-split or
altered, a foreign shard is planted, or a second layout is launched on the live run.
After every launch: each process ended cleanly, was killed, or refused in one line
(exit 2); every shard on disk holds exactly the input rows of its index and carries this
run's stamp; a refusal lost nothing; a complete run holds each input id exactly once.

    CONALA_CRASH_SEED=7 pytest tests/serve/test_crash_random.py   # replay a seed
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO, repo_env

from data.fixtures import write_fixtures
from serve.sink import STAMP, load_manifest
from serve.translate import main as translate

pytestmark = pytest.mark.slow
CYCLES = 30
ROWS, PER_SHARD = 48, 4
SEED = int(os.environ.get("CONALA_CRASH_SEED", "19"))


class Input:
    """The mined rows as JSONL files: a canonical split, and the ways to disturb it."""

    def __init__(self, directory: Path, source: Path):
        self.lines = source.read_bytes().splitlines(keepends=True)
        self.ids = [json.loads(line)["id"] for line in self.lines]
        self.files = [directory / "in-0.jsonl", directory / "in-1.jsonl"]
        self.restore()

    def restore(self) -> None:
        self._write(b"".join(self.lines), cut=sum(map(len, self.lines[: ROWS // 3])))

    def resplit(self, rng: random.Random) -> None:
        """The same bytes, cut elsewhere (often mid-line, as `split -b` does)."""
        data, canonical = b"".join(self.lines), sum(map(len, self.lines[: ROWS // 3]))
        cut = rng.randrange(1, len(data) - 1)
        self._write(data, cut=cut if cut != canonical else cut + 1)

    def alter(self, rng: random.Random) -> None:
        lines = list(self.lines)
        row = json.loads(lines[rng.randrange(ROWS)])
        row["intent"] = f"{row['intent']} (changed)"
        lines[self.ids.index(row["id"])] = json.dumps(row).encode() + b"\n"
        self._write(b"".join(lines), cut=sum(map(len, self.lines[: ROWS // 3])))

    def _write(self, data: bytes, cut: int) -> None:
        self.files[0].write_bytes(data[:cut])
        self.files[1].write_bytes(data[cut:])


def command(model: Path, inputs: Input, out: Path, tokens: int = 2) -> list[str]:
    return [sys.executable, "-m", "serve.translate", "--model", str(model), "--input",
            *map(str, inputs.files), "--output_dir", str(out), "--rows_per_shard",
            str(PER_SHARD), "--max_new_tokens", str(tokens)]  # fmt: skip


def launch(args: list[str], rank: int, world: int) -> subprocess.Popen:
    env = repo_env(RANK=rank, WORLD_SIZE=world, LOCAL_WORLD_SIZE=world)
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip


def parts(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("part-*")}


def check_ended(procs: list[subprocess.Popen]) -> list[str]:
    """Each process ended cleanly, was killed, or refused in one line; the refusals."""
    refusals = []
    for proc in procs:
        stderr = proc.communicate(timeout=300)[1]
        if proc.returncode == 2:
            lines = stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
            refusals.append(lines[0])
        else:
            assert proc.returncode in (0, -signal.SIGKILL), stderr[-3000:]
    return refusals


def check_shards(out: Path, ids: list[str]) -> bool:
    """Every shard holds the input rows of its index, stamped by the directory's run;
    returns whether the run is complete (then every id is there exactly once)."""
    manifest = load_manifest(out)
    seen = []
    for part in sorted(out.glob("part-*.parquet")):
        index = int(part.name[5:10])
        stamp = json.loads(pq.read_metadata(part).metadata[STAMP.encode()])
        assert stamp["run_id"] == manifest["run_id"] and stamp["shard"] == index, part
        held = pq.read_table(part, columns=["id"]).column("id").to_pylist()
        assert held == ids[index * PER_SHARD : (index + 1) * PER_SHARD], part
        seen += held
    assert len(seen) == len(set(seen))
    if manifest and manifest.get("complete"):
        assert seen == ids
        return True
    return False


def kill_some(procs: list[subprocess.Popen], out: Path, rng: random.Random) -> None:
    """SIGKILL a random subset at a random time, or just after the k-th new shard lands."""
    victims = [p for p in procs if rng.random() < 0.7] or [rng.choice(procs)]
    if rng.random() < 0.5:
        deadline = time.monotonic() + rng.uniform(0.0, 12.0)
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.01)
    else:
        target = len(list(out.glob("part-*"))) + rng.randint(1, 3)
        deadline = time.monotonic() + 120
        while len(list(out.glob("part-*"))) < target and time.monotonic() < deadline:
            if all(p.poll() is not None for p in procs):
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))  # into the next write, rename or manifest update
    for proc in victims:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def cycle(rng: random.Random, model: Path, inputs: Input, out: Path, log: list[str]) -> None:
    before = parts(out) if out.exists() else {}
    action = rng.choices(["run", "resplit", "alter", "foreign"], weights=[7, 1, 1, 1])[0]
    action = action if before else "run"  # a run with no shard yet is simply replaced
    planted = None
    if action == "resplit":
        inputs.resplit(rng)
    elif action == "alter":
        inputs.alter(rng)
    elif action == "foreign" and before:
        index = rng.randrange(ROWS // PER_SHARD + 2)  # also past the end of the run
        planted = out / f"part-{index:05d}.parquet"
        if planted.exists():
            planted = None  # (replacing a shard would be the test's loss, not the run's)
        else:
            planted.write_bytes((out.parent / "foreign" / "part-00000.parquet").read_bytes())
    world = rng.randint(1, 3)
    procs = [launch(command(model, inputs, out), rank, world) for rank in range(world)]
    intruder = action == "run" and rng.random() < 0.2
    if intruder:  # another layout on the (maybe still) live run
        other = rng.choice([w for w in (1, 2, 3) if w != world])
        procs.append(launch(command(model, inputs, out), 0, other))
    log.append(f"{action} world={world} intruder={intruder} planted={planted}")
    if action == "run" and rng.random() < 0.75:
        kill_some(procs, out, rng)
    refusals = check_ended(procs)
    log[-1] += f" -> {[p.returncode for p in procs]}"
    if action != "run" and (action != "foreign" or planted):  # must be refused
        assert refusals and len(refusals) == world, f"{action} was not refused"
        assert parts(out) == {**before, **({planted.name: parts(out)[planted.name]}
                                           if planted else {})}  # fmt: skip
        if planted:
            assert all(planted.name in line for line in refusals), refusals
            planted.unlink()
        inputs.restore()
    else:
        for line in refusals:  # only a second layout may be refused, and only while live
            assert "already being written by a live process" in line, line
    if check_shards(out, inputs.ids):
        for part in out.glob("part-*"):  # start a fresh run over the same directory
            part.unlink()
        (out / "manifest.json").unlink()


def test_random_kills_resumes_and_disturbances_never_lose_or_mix_a_row(tiny_models, tmp_path):
    model = tiny_models["t5"]
    source = write_fixtures(tmp_path / "data", seed=SEED, train_rows=5, test_rows=5,
                            mined_rows=ROWS)["mined"]  # fmt: skip
    inputs = Input(tmp_path, source)
    # Another run's shards (other generation settings), to plant.
    translate(command(model, inputs, tmp_path / "foreign", tokens=1)[3:])
    rng, out, log = random.Random(SEED), tmp_path / "out", []
    started = time.monotonic()
    try:
        for _ in range(CYCLES):
            cycle(rng, model, inputs, out, log)
        # However the last cycle ended, one more launch finishes the run.
        if load_manifest(out) and parts(out):
            check_ended([launch(command(model, inputs, out), 0, 1)])
            assert check_shards(out, inputs.ids)
    except AssertionError as err:
        history = "\n".join(log[-8:])
        pytest.fail(f"seed {SEED} (replay: CONALA_CRASH_SEED={SEED}), cycle {len(log)}: {err}\n"
                    f"last launches:\n{history}")  # fmt: skip
    print(f"seed {SEED}: {CYCLES} cycles in {time.monotonic() - started:.0f}s")
