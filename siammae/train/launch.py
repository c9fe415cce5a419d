"""The start of a training process under ``torchrun``: its device and process group, and the ``--init`` weights
fetched once per machine.

``torchrun --nproc_per_node N -m siammae.cli.train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address; they are parsed and checked once, in :mod:`siammae.torchrun`, whose
:class:`~siammae.torchrun.Rank` and collectives (mean of the loss, barrier, rank 0's object on every rank, gather) the
loop uses; without them the run is a single process. NCCL joins GPUs, gloo joins CPU processes. Rank 0 logs and saves.
"""

from __future__ import annotations

import torch

from siammae.device import resolve_device
from siammae.errors import InputError
from siammae.torchrun import Rank, current_rank, init


def init_distributed(device: str = "auto", rank: Rank | None = None) -> tuple[Rank, torch.device]:
    """Join the process group that torchrun describes (if any) and pick this process's device -> (its
    :class:`~siammae.torchrun.Rank`, its device).

    On GPU, process ``LOCAL_RANK`` uses ``cuda:LOCAL_RANK``. A single process without torchrun uses ``device``.
    ``rank``: from :func:`siammae.torchrun.current_rank` when not given (a bad environment is an InputError).
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
    return rank, dev


def load_init(spec: str, rank: Rank):
    """The ``--init`` encoder weights (:class:`~siammae.model.checkpoint.EncoderInit`) on every rank. Weights given
    by name are fetched first on local rank 0 of each machine while the other ranks wait (one download per machine
    into the shared cache, not one per process; a failed download is the same error on every rank), then every
    rank reads them from the cache."""
    from siammae.model.checkpoint import read_encoder_init
    from siammae.model.weights import fetch_once_per_machine

    fetch_once_per_machine(spec, rank)
    return read_encoder_init(spec, progress=rank.is_main)
