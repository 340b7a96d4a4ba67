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


def files_fingerprint(paths: list[str]) -> str:
    """sha256 over the inputs' bytes, in order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
