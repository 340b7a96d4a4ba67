"""Content fingerprints that tie a run to exactly what produced it.

A path says where a model is, not what it is: re-merging into `runs/ul2/merged`
and resuming would otherwise mix two models' outputs in one "complete" run. The
model fingerprint hashes `config.json` and every file of the model directory
except the documentation and reports the merge writes beside it. Files up to
16 MiB are hashed whole; larger ones (weight shards) by their size, their first
16 MiB (the safetensors header and the first tensors) and 16 evenly spaced 1 MiB
blocks, so a 40 GB model costs about a second, not a full read. A re-merge with
another adapter changes the LoRA-targeted projections in every layer, which those
blocks sample many times over.

The input fingerprint is over what is read: per file, its bytes and the rows it
yields (count plus a running hash of ids and source texts), so any change in which
rows a run reads, or how they fall into files and so into shards, is another input.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

WHOLE_FILE_LIMIT = 16 << 20
SAMPLE_BLOCKS = 16
BLOCK = 1 << 20
# Written by merge/translate beside the weights; they never change the outputs.
IGNORED = {"README.md", "merge_report.json"}


def model_fingerprint(model: str) -> str | None:
    """sha256 of a local model directory's contents; None for a hub id (its revision is
    what identifies it there)."""
    path = Path(model)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if not file.is_file() or file.name.startswith(".") or file.name in IGNORED:
            continue
        size = file.stat().st_size
        digest.update(f"{file.name}\0{size}\n".encode())
        with open(file, "rb") as handle:
            if size <= WHOLE_FILE_LIMIT:
                digest.update(handle.read())
                continue
            digest.update(handle.read(WHOLE_FILE_LIMIT))
            for i in range(SAMPLE_BLOCKS):
                handle.seek(
                    WHOLE_FILE_LIMIT + (size - WHOLE_FILE_LIMIT - BLOCK) * i // SAMPLE_BLOCKS
                )
                digest.update(handle.read(BLOCK))
    return digest.hexdigest()


class RowDigest:
    """A running hash of rows as they are read: their count, ids and source texts, in
    order. Two inputs whose rows fall differently (a file split mid-line, a row moved
    to the next file, one text changed) digest differently even when their bytes,
    concatenated, are the same."""

    def __init__(self):
        self.rows = 0
        self._digest = hashlib.blake2b(digest_size=16)

    def update(self, batch) -> None:
        columns = batch.select(["id", "intent", "snippet"]).to_pydict().values()
        for row in zip(*columns, strict=True):
            self._digest.update(_encode(row))
        self.rows += batch.num_rows

    def hexdigest(self) -> str:
        return f"{self.rows}:{self._digest.hexdigest()}"


def ids_digest(ids: list[str | None]) -> str:
    """Hash of a shard's ids in order: what a shard file proves it holds."""
    return hashlib.blake2b(_encode(ids), digest_size=16).hexdigest()


def _encode(values) -> bytes:
    # Length-prefixed (as data.filters.hash64), with `~` for a null: no two different
    # sequences encode alike, and a null differs from "".
    text = "".join("~" if v is None else f"{len(v)}:{v}" for v in values)
    return text.encode("utf-8", "surrogatepass")


def file_digest(path: str) -> str:
    """sha256 of one file's bytes: its content, wherever it lies."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def input_fingerprint(files: list[str]) -> str:
    """One id for an input from its per-file `content rows:row-digest` records, in order."""
    return hashlib.sha256("\n".join(files).encode()).hexdigest()
