"""Exactly-once, resumable, sharded Parquet output for generation runs.

An output directory holds:

* ``part-XXXXX.parquet`` -- shard ``i`` holds input rows ``[i*R, (i+1)*R)`` with
  ``R = rows_per_shard``; serve.shards cuts the input that way, the sink checks sizes.
  Indices are zero-padded so lexical order (globs, ``ls``) equals index order.
* ``manifest.json`` -- the run id, run parameters, ``rows_per_shard``, schema, one entry
  per written shard (file, rows, run id, caller stats) and, after ``finish``,
  ``num_shards`` and ``complete``.
* ``.manifest.lock`` -- ``flock`` target that serializes manifest updates across ranks.
* ``.run.lock`` -- every live writer holds a shared ``flock`` on it; replacing the run
  (``overwrite``) needs it exclusively, so a live run is never wiped under its writers.
* ``.rank-RRRRR-of-WWWWW.lock`` -- held exclusively by the live writer of that rank, so a
  second copy of the same command is refused rather than racing it shard by shard. A
  launch also probes the other world sizes' rank locks: a directory has one live layout.

Readers should glob ``part-*.parquet`` (the manifest is not Parquet).

Exactly-once: a shard is written to ``.part-XXXXX.parquet.PID.tmp`` in the same directory,
fsynced, then ``os.replace``d to its final name. The rename is atomic on POSIX, so a final
file is either absent or complete -- Parquet keeps its footer at the end, so a file that is
appended to or written in place is unreadable if the process dies mid-write. A kill therefore
leaves at most a hidden temp file, which the owning rank (or anyone, once its writer is
dead) deletes when it restarts. The final
file's existence is the source of truth for "done"; the manifest's shard table is
informational and may lag by one shard per rank after a kill (``finish`` fills such gaps).

Resume: a sink over a directory whose manifest has the same params, ``rows_per_shard`` and
schema carries on and the caller skips ``done()`` shards. Anything different raises
``ResumeMismatch`` unless ``overwrite=True``, which wipes the old run first, or the old run
never finished a shard (a failed start), which is replaced the same way.

No mixing: a run gets a random ``run_id`` when its manifest is created. Every writer
checks, under the manifest lock and just before renaming a shard into place, that the
manifest still carries its run id, and stops with ``RunReplaced`` otherwise. Together
with the run lock this means a directory holds the shards of one run, never two.

Each shard proves its run: its Parquet key-value metadata (``conala.shard``) holds the
run id, its index, its row count and a hash of its ids. A resume, ``finish``,
``serve.inspect`` and ``data.instruct`` check it, so a part file copied in from another
run (or renamed) is refused by name instead of being adopted. Directories written
before stamps existed (format 1) are not resumed; readers take them with a warning.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common.cli import UserError, pid_alive, read_json
from data.schema import conform
from serve.identity import ids_digest

# 2: shards carry their run in their metadata (STAMP), the input fingerprint covers rows.
FORMAT_VERSION = 2
STAMP = "conala.shard"
MANIFEST = "manifest.json"
LOCK = ".manifest.lock"
RUN_LOCK = ".run.lock"
# Modest row groups let `datasets` and other streaming readers hold one group at a time.
ROW_GROUP_ROWS = 10_000
_PART = re.compile(r"part-(\d+)\.parquet")
# Temp names carry the writer's pid, so no two processes ever write the same file.
_TEMP = re.compile(r"\.part-(\d+)\.parquet(?:\.(\d+))?\.tmp")
_RANK_LOCK = re.compile(r"\.rank-(\d+)-of-(\d+)\.lock")


class ResumeMismatch(ValueError):
    """The output directory holds a run with different parameters."""


class RunReplaced(UserError):
    """Another process replaced this run (``--overwrite``) while it was writing."""


class ForeignShard(UserError):
    """A part file that this run did not write (copied, renamed, changed or truncated)."""


def _try_lock(handle) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: the new directory entry survives a power loss only once the
    directory itself is flushed."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _indices(directory: Path, pattern: re.Pattern) -> dict[int, Path]:
    return {int(m.group(1)): path for m, path in _matches(directory, pattern)}


def _matches(directory: Path, pattern: re.Pattern) -> list[tuple[re.Match, Path]]:
    found = ((pattern.fullmatch(path.name), path) for path in directory.iterdir())
    return [(match, path) for match, path in found if match]


def stamp(run_id: str, index: int, table: pa.Table) -> dict:
    """What a shard file carries to prove which run wrote it, and what it holds."""
    ids = table.column("id").to_pylist()
    return {"run_id": run_id, "shard": index, "rows": table.num_rows, "ids": ids_digest(ids)}


def check_shard(path: Path, run_id: str, index: int, *, ids: bool = True) -> dict:
    """The shard's stamp, checked against the run and the file; ForeignShard naming the file
    otherwise. `ids=False` reads only the footer (a resume checks ids against its input)."""
    try:
        metadata = pq.read_metadata(path)
        held = pq.read_table(path, columns=["id"]).column("id").to_pylist() if ids else None
    except (pa.ArrowInvalid, OSError) as err:
        raise ForeignShard(f"{path}: not a readable Parquet file ({err})") from None
    try:
        found = json.loads((metadata.metadata or {}).get(STAMP.encode(), b"null"))
    except ValueError:
        found = None
    if isinstance(found, dict) and held is not None:
        found = {**found, "actual_ids": ids_digest(held)}
    problem = _stamp_problem(found, run_id, index, metadata.num_rows)
    if problem:
        raise ForeignShard(f"{path}: {problem}; remove it and rerun to write it again")
    return found


def _stamp_problem(found, run_id: str, index: int, rows: int) -> str | None:
    if not isinstance(found, dict):
        return f"carries no run stamp, so run {run_id} did not write it (copied in?)"
    if found.get("run_id") != run_id:
        return f"written by run {found.get('run_id')}, not by this directory's run {run_id}"
    if found.get("shard") != index:
        return f"written as shard {found.get('shard')} of the run, not shard {index} (renamed?)"
    if found.get("rows") != rows:
        return f"holds {rows} rows, its run wrote {found.get('rows')} (changed since?)"
    if found.get("actual_ids", found.get("ids")) != found.get("ids"):
        return "its ids are not the ones its run wrote (changed since?)"
    return None


def _other_version(manifest: dict) -> str:
    found = manifest.get("format_version", 1)
    if found > FORMAT_VERSION:
        return f"a newer serve.translate (format {found}; this one writes {FORMAT_VERSION})"
    return (
        f"an older serve.translate (format {found}, shards without a run stamp; "
        "data.instruct still reads it)"
    )


class ShardSink:
    """Writes shards of one run into ``output_dir``; one instance per rank.

    Ranks ``0..world_size-1`` may share the directory: rank ``r`` owns shards with
    ``index % world_size == r``. Construction takes the directory lock, then either creates
    the manifest, resumes, raises ``ResumeMismatch``, or (``overwrite=True`` with different
    parameters) deletes the old shards, temp files and manifest and starts fresh. It also
    raises ``ForeignShard`` for a part file the run did not write, and ``UserError`` when a
    live process writes the directory as this rank or with another world size.

    Identical parameters always resume, even with ``overwrite=True``: when several ranks
    start at once, the first one wipes the old run and writes the new manifest, and the
    others must then join that run rather than wipe each other's fresh shards. To start
    over with the same parameters, delete the directory.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        *,
        schema: pa.Schema,
        params: dict,
        rows_per_shard: int,
        rank: int = 0,
        world_size: int = 1,
        overwrite: bool = False,
    ):
        if rows_per_shard < 1:
            raise ValueError("rows_per_shard must be >= 1")
        if world_size < 1:
            raise ValueError("world_size must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError("rank must be in [0, world_size)")
        self.dir = Path(output_dir)
        self.schema = schema
        self.rows_per_shard = rows_per_shard
        self.rank = rank
        self.world_size = world_size
        # Round-trip through JSON so tuples vs lists etc. compare equal to what a resumed
        # run reads back from the manifest.
        self._identity = {
            "params": json.loads(json.dumps(params)),
            "rows_per_shard": rows_per_shard,
            "schema": {"names": schema.names, "types": [str(t) for t in schema.types]},
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        self._rank_lock = self._run_lock = None
        self.stamps: dict[int, dict] = {}  # checked stamps of the shards found at start
        try:
            # Under the manifest lock, so two launches starting at once are serialized.
            with self._locked():
                self._rank_lock = self._claim_rank()
                # Held (shared) for the sink's lifetime; the OS drops it when the process dies.
                self._run_lock = open(self.dir / RUN_LOCK, "a")  # noqa: SIM115
                self.run_id = self._open_run(self._read_manifest(), overwrite)["run_id"]
                for index, path in sorted(_indices(self.dir, _PART).items()):
                    self.stamps[index] = check_shard(path, self.run_id, index, ids=False)
                self._remove_dead_temps()
        except BaseException:
            self.close()  # a refused sink must not keep this rank's lock
            raise

    def _claim_rank(self):
        """This rank's lock, refusing a live writer of the same rank or of another layout:
        ranks of two world sizes own different shards, so both would write some."""
        lock = open(self.dir / f".rank-{self.rank:05d}-of-{self.world_size:05d}.lock", "a")  # noqa: SIM115
        live = None if _try_lock(lock) else f"as rank {self.rank} of {self.world_size}"
        for match, path in _matches(self.dir, _RANK_LOCK):
            if live is None and int(match.group(2)) != self.world_size:
                with open(path, "a") as probe:
                    if not _try_lock(probe):
                        live = f"by a run of world size {int(match.group(2))}"
        if live:
            lock.close()
            raise UserError(
                f"{self.dir} is already being written by a live process {live}; this launch "
                f"is rank {self.rank} of {self.world_size}: wait for it or stop it"
            )
        return lock

    def _remove_dead_temps(self) -> None:
        """A killed writer leaves its temp file. Ours (we hold our rank) and those whose
        writer is gone can go; a live rank may be writing any other one right now."""
        for match, path in _matches(self.dir, _TEMP):
            pid = match.group(2)
            if self.owns(int(match.group(1))) or (pid and not pid_alive(int(pid))):
                path.unlink(missing_ok=True)

    def _open_run(self, manifest: dict | None, overwrite: bool) -> dict:
        """Join the run in the directory, or create one (wiping an old one if allowed)."""
        if manifest is None and _indices(self.dir, _PART) and not overwrite:
            raise ResumeMismatch(
                f"{self.dir} has part files but no {MANIFEST}, so their parameters are "
                "unknown; pass --overwrite or pick a new --output_dir"
            )
        old = manifest is not None and manifest.get("format_version") != FORMAT_VERSION
        if old and _indices(self.dir, _PART) and not overwrite:
            raise ResumeMismatch(
                f"{self.dir} was written by {_other_version(manifest)} and cannot be resumed "
                "by this one. Pass --overwrite to start over"
            )
        diffs = self._diff(manifest) if manifest is not None else []
        if old:  # stamps and row fingerprints did not exist: nothing to compare them with
            diffs.append(f"format_version: {manifest.get('format_version')!r} -> {FORMAT_VERSION}")
        # A run that never finished a shard has nothing to lose or mix with: a failed
        # start (a bad model, say) must not block the corrected command.
        if diffs and not overwrite and _indices(self.dir, _PART):
            raise ResumeMismatch(
                f"{self.dir} holds a run with different parameters: {'; '.join(diffs)}. "
                "Pass --overwrite to replace it or pick a new --output_dir."
            )
        if manifest is not None and not diffs:
            fcntl.flock(self._run_lock, fcntl.LOCK_SH)
            return manifest
        try:
            fcntl.flock(self._run_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ResumeMismatch(
                f"{self.dir} is being written by another live process with other parameters; "
                "stop it before replacing its run, or pick a new --output_dir"
            ) from None
        self._wipe()
        now = _now()
        manifest = {
            "format_version": FORMAT_VERSION,
            "run_id": uuid.uuid4().hex,
            "created": now,
            "updated": now,
            **self._identity,
            "shards": {},
        }
        self._write_manifest(manifest)
        fcntl.flock(self._run_lock, fcntl.LOCK_SH)  # converted: others may now join
        return manifest

    def owns(self, index: int) -> bool:
        return index % self.world_size == self.rank

    def done(self) -> set[int]:
        """Indices whose final part file exists (by any rank)."""
        return set(_indices(self.dir, _PART))

    def write(self, index: int, table: pa.Table, stats: dict | None = None) -> Path:
        """Atomically write shard ``index`` and record it in the manifest.

        The table is cast to the sink schema so a shard whose column is all null keeps the
        declared type; missing, extra or uncastable columns raise ``ValueError``.
        """
        if index < 0 or not self.owns(index):
            raise ValueError(f"rank {self.rank} of {self.world_size} does not own shard {index}")
        if table.num_rows > self.rows_per_shard:
            raise ValueError(
                f"shard {index} has {table.num_rows} rows, more than rows_per_shard "
                f"{self.rows_per_shard}"
            )
        extra = sorted(set(table.column_names) - set(self.schema.names))
        if extra:
            raise ValueError(f"shard {index}: unexpected column {extra[0]!r}")
        table = conform(table, self.schema, source=f"shard {index}")
        # Fail before writing, not after the shard is already renamed into place.
        stats = json.loads(json.dumps(stats or {}))
        final = self.dir / _part_name(index)
        if final.exists():
            raise FileExistsError(f"shard {index} is already written: {final}")
        temp = self.dir / f".{final.name}.{os.getpid()}.tmp"
        table = table.replace_schema_metadata({STAMP: json.dumps(stamp(self.run_id, index, table))})
        try:
            with open(temp, "wb") as f:
                pq.write_table(table, f, compression="zstd", row_group_size=ROW_GROUP_ROWS)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            temp.unlink(missing_ok=True)  # a full disk gets its space back
            raise
        with self._locked():
            manifest = self._read_manifest()
            if manifest is None or manifest.get("run_id") != self.run_id:
                temp.unlink(missing_ok=True)
                raise RunReplaced(
                    f"the run in {self.dir} was replaced by another process (run id "
                    f"{self.run_id} -> {(manifest or {}).get('run_id')}); stopping without "
                    f"writing shard {index}"
                )
            os.replace(temp, final)
            _fsync_dir(self.dir)
            manifest["shards"][str(index)] = {
                "file": final.name,
                "rows": table.num_rows,
                "run_id": self.run_id,
                "stats": stats,
            }
            manifest["updated"] = _now()
            self._write_manifest(manifest)
        return final

    def finish(self, num_shards: int, totals: dict | None = None) -> dict:
        """Record ``num_shards`` and whether shards ``0..num_shards-1`` all exist.

        Safe to call from every rank: each call recomputes ``complete`` from the files, so
        the last rank to finish marks the run complete. Shards whose manifest entry was lost
        to a kill (renamed, not yet recorded) are re-entered without stats. `totals` are
        run-wide counts (of the input, not of one rank) stored at the top level.
        """
        with self._locked():
            manifest = self._read_manifest()
            if manifest is None or manifest.get("run_id") != self.run_id:
                raise RunReplaced(f"the run in {self.dir} was replaced by another process")
            for index, path in _indices(self.dir, _PART).items():
                found = check_shard(path, self.run_id, index)
                entry = {"file": path.name, "rows": found["rows"], "run_id": self.run_id}
                manifest["shards"].setdefault(str(index), {**entry, "stats": {}})
            manifest["num_shards"] = num_shards
            manifest["complete"] = set(range(num_shards)) <= self.done()
            manifest["updated"] = _now()
            manifest.update(totals or {})
            self._write_manifest(manifest)
        return manifest

    def check_input(self, index: int, table: pa.Table) -> None:
        """Refuse a finished shard whose ids are not the input rows it stands for."""
        found = self.stamps.get(index) or check_shard(
            self.dir / _part_name(index), self.run_id, index, ids=False
        )
        if found["ids"] != stamp(self.run_id, index, table)["ids"]:
            raise ForeignShard(
                f"{self.dir / _part_name(index)}: holds other ids than input rows "
                f"{index * self.rows_per_shard}.. of this run; remove it and rerun to write it"
            )

    def close(self) -> None:
        """Release the run and rank locks (also released when the process exits)."""
        for lock in (self._run_lock, self._rank_lock):
            if lock is not None:
                lock.close()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # flock is per open file description, so it excludes other processes (and other
        # sinks in this process); closing the file releases it, even on a crash.
        with open(self.dir / LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _read_manifest(self) -> dict | None:
        try:
            return load_manifest(self.dir)
        except (ValueError, UserError) as err:
            raise ResumeMismatch(f"{err}; pass --overwrite to start over") from None

    def _write_manifest(self, manifest: dict) -> None:
        # Temp file + rename so a kill mid-write leaves the previous manifest, never half a
        # JSON document. Callers hold the lock, so one temp name suffices.
        manifest["shards"] = dict(sorted(manifest["shards"].items(), key=lambda kv: int(kv[0])))
        temp = self.dir / f".{MANIFEST}.tmp"
        with open(temp, "w") as f:
            json.dump(manifest, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, self.dir / MANIFEST)
        _fsync_dir(self.dir)

    def _diff(self, manifest: dict) -> list[str]:
        """``key: old -> new`` for each run parameter that differs from the manifest's."""
        unset = "<unset>"
        old, new = manifest.get("params", {}), self._identity["params"]
        pairs = [(k, old.get(k, unset), new.get(k, unset)) for k in sorted(old.keys() | new.keys())]
        pairs += [
            (k, manifest.get(k, unset), self._identity[k]) for k in ("rows_per_shard", "schema")
        ]
        return [f"{key}: {a!r} -> {b!r}" for key, a, b in pairs if a != b]

    def _wipe(self) -> None:
        # Matches, not indices: several writers' temps may share a shard index.
        for pattern in (_PART, _TEMP):
            for _, path in _matches(self.dir, pattern):
                path.unlink(missing_ok=True)
        (self.dir / MANIFEST).unlink(missing_ok=True)


# A manifest's fields and their types: a reader trusts nothing it has not checked
# ("complete": "no" is not complete, "rows": "500" is not a count).
_MANIFEST_FIELDS = {"params": dict, "shards": dict, "rows_per_shard": int}
_OPTIONAL_FIELDS = {
    "format_version": int, "run_id": str, "num_shards": int, "complete": bool,
    "input_rows": int, "unreadable_rows": int,
}  # fmt: skip
_ENTRY_FIELDS = {"file": str, "rows": int, "run_id": str, "stats": dict}


def load_manifest(output_dir: str | os.PathLike) -> dict | None:
    """The directory's manifest, None if it has none; ValueError naming the first field of
    the wrong type (or missing) if it is not one of ours."""
    path = Path(output_dir) / MANIFEST
    if not path.exists():
        return None
    manifest = read_json(path)
    problem = _fields_problem(manifest, _MANIFEST_FIELDS, _OPTIONAL_FIELDS)
    if problem is None and manifest.get("format_version", 1) >= 2 and "run_id" not in manifest:
        problem = "'run_id' is missing"
    for key, entry in manifest["shards"].items() if problem is None else ():
        required = _ENTRY_FIELDS if manifest.get("format_version", 1) >= 2 else {}
        if not key.isdigit() or not isinstance(entry, dict):
            problem = f"shard {key!r} is not an index with an object"
        else:
            problem = _fields_problem(entry, required, _ENTRY_FIELDS)
            problem = problem and f"shard {key}: {problem}"
        if problem:
            break
    if problem:
        raise ValueError(f"{path} is not a translate manifest ({problem})")
    return manifest


def _fields_problem(record: dict, required: dict, optional: dict) -> str | None:
    for key, kind in {**optional, **required}.items():
        if key not in record and key not in required:
            continue
        value = record.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"{key!r} should be a {kind.__name__}, got {value!r:.60}"
        if kind is int and value < 0:
            return f"{key!r} should be >= 0, got {value}"
    return None


def read_output(output_dir: str | os.PathLike) -> pa.Table:
    """All shards of ``output_dir`` concatenated in index order (without their stamps)."""
    parts = _indices(Path(output_dir), _PART)
    if not parts:
        raise FileNotFoundError(f"no part-*.parquet files in {output_dir}")
    return pa.concat_tables(
        pq.read_table(parts[i]).replace_schema_metadata() for i in sorted(parts)
    )
