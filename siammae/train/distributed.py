"""Multi-process training under ``torchrun``: this process's device and process group, and the collectives the
loop needs (mean of the loss, barrier, rank 0's object on every rank).

``torchrun --nproc_per_node N -m siammae.cli.train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address; they are parsed and checked once, in :mod:`siammae.distributed` (shared with batch tracking);
without them the run is a single process. NCCL joins GPUs, gloo joins CPU processes. Rank 0 logs and saves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from siammae.device import resolve_device
from siammae.distributed import Rank, current_rank, init
from siammae.errors import InputError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def as_rank(self) -> Rank:
        """The :class:`siammae.distributed.Rank` of this process (for the shared collectives)."""
        return Rank(self.rank, self.world_size, self.local_rank)


def init_distributed(device: str = "auto", rank: Rank | None = None) -> DistInfo:
    """Join the process group that torchrun describes (if any) and pick this process's device.

    On GPU, process ``LOCAL_RANK`` uses ``cuda:LOCAL_RANK``. A single process without torchrun uses ``device``.
    ``rank``: from :func:`siammae.distributed.current_rank` when not given (a bad environment is an InputError).
    """
    rank = current_rank() if rank is None else rank
    try:
        dev = resolve_device(device)
    except ValueError as e:
        raise InputError(f"--device {device}: {e}") from e
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", rank.local_rank if rank.distributed else torch.cuda.current_device())
    if dev.type == "cuda":
        if dev.index >= torch.cuda.device_count():
            raise InputError(
                f"--device {device}: LOCAL_RANK {rank.local_rank} needs cuda:{dev.index} but this machine has "
                f"{torch.cuda.device_count()} GPU(s); start at most that many processes per machine"
            )
        torch.cuda.set_device(dev)
    init(rank, backend="nccl" if dev.type == "cuda" else "gloo", device=dev if dev.type == "cuda" else None)
    return DistInfo(rank.rank, rank.world, rank.local_rank, dev)


def load_init(spec: str, info: DistInfo):
    """The ``--init`` encoder weights (:class:`~siammae.model.checkpoint.EncoderInit`) on every rank. Weights given
    by name are fetched first on local rank 0 of each machine while the other ranks wait (one download per machine
    into the shared cache, not one per process; a failed download is the same error on every rank), then every
    rank reads them from the cache."""
    from siammae.model.checkpoint import read_encoder_init
    from siammae.model.weights import fetch_once_per_machine

    fetch_once_per_machine(spec, info.as_rank())
    return read_encoder_init(spec, progress=info.is_main)


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``x`` over processes (a copy; ``x`` itself is left alone)."""
    x = x.detach().clone()
    if info.distributed:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= info.world_size
    return x


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    """``obj`` of rank 0 on every process."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
