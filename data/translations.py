"""Reading translate-mined output directories: checks first, then rows as a stream.

A translations directory is what `python -m serve.translate --output_dir DIR` leaves:
`part-XXXXX.parquet` shards in `data.schema.OUTPUT_SCHEMA` plus `manifest.json`
(params, rows_per_shard, shards, num_shards, complete; run_id in newer runs).
Before any row is read, `open_translations` refuses what would make a dataset
misleading: an unfinished run (unless allowed, and then it says how much is
missing), shards of another run inside one directory (each shard's stamp names
its run, index, rows and ids: serve.sink), one run given twice (a copy: the same
run id), and several directories whose instructions were made with different
parameters. Directories written before shards carried stamps are read with a
warning: their shards' origin cannot be checked.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common.cli import UserError
from data.schema import conform, output_schema
from serve.sink import FORMAT_VERSION, ForeignShard, check_shard, load_manifest

logger = logging.getLogger("data.translations")
# Params that may differ between --translations directories: they describe which
# input rows a directory holds, not how its instructions were made.
INPUT_PARAMS = ("source_fingerprint", "limit")
READ_BATCH_ROWS = 4096


@dataclass
class Translations:
    params: dict
    manifests: dict[str, dict]
    files: list[Path]
    rows: int
    warnings: list[str]


def open_translations(directories: list[str], allow_incomplete: bool) -> Translations:
    """Check each directory's manifest, refuse mixed or unfinished runs, list the shards."""
    manifests, files, rows, warnings = {}, [], 0, []
    for directory in directories:
        if any(Path(directory).resolve() == Path(seen).resolve() for seen in manifests):
            raise UserError(f"--translations {directory} is given twice")
        manifest = read_manifest(directory)
        check_run_ids(directory, manifest)
        shards = listed_shards(directory, manifest)
        present = sum(shard_rows(f) for f in shards)
        if not manifest.get("complete") or "num_shards" not in manifest:
            message = incomplete_message(directory, manifest, shards, present)
            if not allow_incomplete:
                raise UserError(
                    f"{message}. Finish it by rerunning the same serve.translate command, "
                    "or pass --allow_incomplete to build from the rows that are there"
                )
            logger.warning("%s; building from them (--allow_incomplete)", message)
            warnings.append(message)
        manifests[directory] = manifest
        files += shards
        rows += present
    first, *others = manifests
    for other in others:
        check_same_params(first, manifests[first]["params"], other, manifests[other]["params"])
    check_no_copies(manifests)
    for directory, manifest in manifests.items():  # said once every check has passed
        if manifest.get("format_version", 1) < FORMAT_VERSION:
            message = (
                f"--translations {directory}: written before shards carried their run id, so "
                "where its shards came from cannot be checked"
            )
            logger.warning("%s; reading it anyway", message)
            warnings.append(message)
    return Translations(manifests[first]["params"], manifests, files, rows, warnings)


def read_manifest(directory: str) -> dict:
    path = Path(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"--translations {directory}: directory not found")
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(
            f"--translations {directory}: not a translations directory (no manifest.json); "
            "give the --output_dir of `python -m serve.translate`"
        )
    try:
        return load_manifest(path)
    except (ValueError, UserError) as err:
        raise UserError(f"--translations {err}") from None


def check_no_copies(manifests: dict[str, dict]) -> None:
    """One run under two paths (a copy: same run id, same params) would duplicate, or
    silently dedup, every row."""
    seen = {}
    for directory, manifest in manifests.items():
        key = json.dumps([manifest.get("run_id"), manifest["params"]], sort_keys=True)
        other = seen.setdefault(key, directory)
        if other != directory and manifest.get("run_id") is not None:
            raise UserError(
                f"--translations {directory} and {other} hold the same run "
                f"({manifest['run_id']}): one is a copy of the other; give it once"
            )


def listed_shards(directory: str, manifest: dict) -> list[Path]:
    """The part files, checked against the manifest: a complete run must have every shard
    it lists, each with its recorded row count; a part file the run never wrote is refused."""
    path = Path(directory)
    found = {int(f.name[5:-8]): f for f in path.glob("part-*.parquet") if f.name[5:-8].isdigit()}
    count = manifest.get("num_shards") if manifest.get("complete") else None
    expected = set(range(count)) if count is not None else set(found)
    stray = sorted(set(found) - expected)
    if stray:
        raise UserError(
            f"--translations {directory}: {found[stray[0]].name} is not a shard of this run "
            f"(the manifest has {count} shards); remove it"
        )
    missing = sorted(expected - set(found))
    if missing:
        raise UserError(
            f"--translations {directory}: the manifest says the run is complete but "
            f"{len(missing)} shard(s) are missing, e.g. part-{missing[0]:05d}.parquet; "
            "rerun the same serve.translate command to write them again"
        )
    for index in sorted(found):
        if manifest.get("format_version", 1) >= FORMAT_VERSION:
            try:
                check_shard(found[index], manifest["run_id"], index)
            except ForeignShard as err:
                raise UserError(f"--translations {err}") from None
        recorded = manifest["shards"].get(str(index), {}).get("rows")
        if recorded is not None and shard_rows(found[index]) != recorded:
            raise UserError(
                f"--translations {found[index]}: {shard_rows(found[index])} rows, the manifest "
                f"recorded {recorded}; the file was changed after the run wrote it"
            )
    return [found[i] for i in sorted(found)]


def shard_rows(path: Path) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowInvalid, OSError) as err:
        raise UserError(f"--translations {path}: not a readable Parquet file ({err})") from None


def check_run_ids(directory: str, manifest: dict) -> None:
    """Every shard entry names the manifest's run; older runs may leave it out."""
    run_id = manifest.get("run_id")
    strict = manifest.get("format_version", 1) >= FORMAT_VERSION
    # Keys are shard indices as text: sorted as numbers, so the first mixed shard is named.
    for index, entry in sorted(manifest["shards"].items(), key=lambda item: int(item[0])):
        shard_run = entry.get("run_id")
        if (strict or (run_id and shard_run)) and shard_run != run_id:
            raise UserError(
                f"--translations {directory}: mixed parameters: shard {index} was written by run "
                f"{shard_run}, the manifest is run {run_id}; retranslate that shard or the "
                "directory with one set of parameters"
            )


def incomplete_message(directory: str, manifest: dict, shards: list[Path], present: int) -> str:
    head = f"--translations {directory}: the manifest says the run is incomplete"
    have = f"{len(shards)} shard(s) with {present} rows present"
    per_shard = manifest.get("rows_per_shard")
    if "num_shards" in manifest and per_shard:
        done = {int(p.stem.split("-")[1]) for p in shards}
        missing = sorted(set(range(manifest["num_shards"])) - done)
        return (
            f"{head} ({have}; {len(missing)} of {manifest['num_shards']} shards missing, "
            f"up to {len(missing) * per_shard} input rows)"
        )
    limit = manifest["params"].get("limit")
    if limit is not None:
        return f"{head} ({have}; {max(limit - present, 0)} of --limit {limit} input rows missing)"
    return (
        f"{head} ({have}; the run did not finish, so the number of missing input rows is unknown)"
    )


def check_same_params(first: str, a: dict, other: str, b: dict) -> None:
    differ = sorted(
        key for key in set(a) | set(b) if key not in INPUT_PARAMS and a.get(key) != b.get(key)
    )
    if differ:
        details = "; ".join(
            f"{k}: {a.get(k)!r} in {first} vs {b.get(k)!r} in {other}" for k in differ
        )
        raise UserError(f"--translations: mixed parameters ({details}); build one dataset per run")


def iter_translations(files: list[Path]):
    """("mined", record batch) pairs, shard by shard, a few thousand rows at a time."""
    for path in files:
        with pq.ParquetFile(path) as shard:
            # A run made with --keep_candidates carries them; the dataset card compares
            # the kept text's coverage with the first candidate's.
            schema = output_schema("candidates" in shard.schema_arrow.names)
            for batch in shard.iter_batches(batch_size=READ_BATCH_ROWS):
                yield "mined", conform(pa.Table.from_batches([batch]), schema, source=str(path))
        # Arrow's allocator keeps freed pages for reuse; hand them back between shards
        # so the peak does not creep with the number of shards read.
        pa.default_memory_pool().release_unused()
