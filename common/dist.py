"""Which process this is, where it runs, and how it logs.

Launchers say who a process is through the environment: torchrun and the
`deepspeed` launcher set RANK/WORLD_SIZE (and LOCAL_RANK/LOCAL_WORLD_SIZE), Slurm
sets SLURM_PROCID/SLURM_NTASKS. No launcher means rank 0 of 1.
"""

from __future__ import annotations

import logging
import os
import sys

from common.cli import UserError

_LAUNCHER_VARS = (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"))


def rank_and_world() -> tuple[int, int]:
    """This process's `(rank, world_size)`, validated."""
    for rank_var, world_var in _LAUNCHER_VARS:
        if rank_var in os.environ and world_var in os.environ:
            rank, world = _env_int(rank_var), _env_int(world_var)
            if world < 1 or not 0 <= rank < world:
                raise UserError(f"{rank_var}={rank} is outside [0, {world_var}={world})")
            return rank, world
    return 0, 1


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None and default is not None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(f"environment variable {name}={value!r} is not an integer") from None


def local_device(device: str) -> str:
    """`auto` is this rank's own GPU (LOCAL_RANK, as launchers set it), else the CPU."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return f"cuda:{_env_int('LOCAL_RANK', 0)}"
    return "cpu"


def cores_per_local_rank() -> int:
    """Ranks sharing one machine's CPU split its cores instead of oversubscribing them."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, _env_int("LOCAL_WORLD_SIZE", 1)))


def setup_logging(rank: int, world: int, *, stream=sys.stderr) -> None:
    """Rank 0 logs at INFO, the others at WARNING; every rank says who it is once."""
    logging.basicConfig(
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if rank == 0 else logging.WARNING,
        stream=stream,
        force=True,
    )
    logging.getLogger("common.dist").warning("rank %d of %d starting", rank, world)
