"""Processes under ``torchrun``: this process's rank from torchrun's environment, and the few collective steps
every multi-process command needs (join, gather, once-per-machine, leave).

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; without them the run is one
process and every function here is a no-op. Training (:mod:`siammae.train.distributed`) and batch tracking
(:mod:`siammae.tracking.batch`) both read the rank here, so the environment is parsed in one place.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from siammae.errors import SiamMAEError


@dataclass(frozen=True)
class Rank:
    """This process's place in a ``torchrun`` job: ``rank`` of ``world`` processes, ``local_rank`` on its machine
    (the GPU it uses: ``cuda:local_rank``)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def device(self, requested: str) -> str:
        """The device of this rank: ``cuda:LOCAL_RANK`` for "auto" / "cuda" when several ranks share CUDA."""
        import torch

        if not self.distributed or requested not in ("auto", "cuda"):
            return requested
        if requested == "cuda" or torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return "cpu"


def current_rank() -> Rank:
    """From torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); one process without it."""
    env = os.environ
    return Rank(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def init(rank: Rank) -> None:
    """Join the job's gloo process group (torchrun's MASTER_ADDR / MASTER_PORT); nothing for one process."""
    if rank.distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo", rank=rank.rank, world_size=rank.world)


def gather(rank: Rank, obj) -> list:
    """Wait for every rank (a barrier), then give every rank the list of all ranks' ``obj``, by rank."""
    if not rank.distributed:
        return [obj]
    import torch.distributed as dist

    dist.barrier()
    got = [None] * rank.world
    dist.all_gather_object(got, obj)
    return got


def first_on_local_rank0(rank: Rank, fetch: Callable[[], object]) -> None:
    """Run ``fetch`` (a download into the machine's cache) on local rank 0 of each machine while the other ranks
    wait, so that a file is fetched once per machine, not once per process; its error is raised on every rank."""
    error = None
    if rank.local_rank == 0:
        try:
            fetch()
        except SiamMAEError as e:
            error = str(e)
    errors = [e for e in gather(rank, error) if e is not None]
    if errors:
        raise SiamMAEError(errors[0])


def finish(rank: Rank) -> None:
    """Leave the process group once the summary is written (a second barrier, so no rank exits before it)."""
    if rank.distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
