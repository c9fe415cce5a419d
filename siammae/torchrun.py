"""Processes under ``torchrun``: this process's :class:`Rank` from torchrun's environment, and every collective
step the commands need (join, gather, broadcast, mean, barrier, once-per-machine, leave). The one place of both:
training (:mod:`siammae.train.launch` adds the rank's device) and batch tracking (:mod:`siammae.tracking.batch`)
use this :class:`Rank` and these functions, and nothing else reads torchrun's variables or calls
``torch.distributed``'s collectives.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``LOCAL_WORLD_SIZE``) and the rendezvous address
``MASTER_ADDR`` / ``MASTER_PORT``; without them the run is one process and every function here is a no-op.
The environment is parsed, and checked, in one place: a malformed or inconsistent variable (``RANK=abc``,
``RANK`` >= ``WORLD_SIZE``, which would otherwise wait forever for a peer that cannot exist, a missing
``MASTER_PORT``) is one :class:`~siammae.errors.InputError` naming the variable and what would be valid, and
joining the group has a timeout (:data:`TIMEOUT_ENV`), so a peer that never starts is an error, not a hang.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from siammae.errors import InputError, SiamMAEError

# seconds to wait for every process to join and for any later collective (torch's own default is 30 minutes; a
# first_on_local_rank0 download of a large weight file must fit in it)
TIMEOUT_ENV = "SIAMMAE_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 1800.0


@dataclass(frozen=True)
class Rank:
    """This process's place in a ``torchrun`` job: ``rank`` of ``world`` processes, ``local_rank`` of
    ``local_world`` on its machine (the GPU it uses: ``cuda:local_rank``; None: every process on one machine)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int | None = None

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, saves and writes summaries."""
        return self.rank == 0

    @property
    def local_size(self) -> int:
        """Processes on this machine (``LOCAL_WORLD_SIZE``; all of ``world`` when torchrun did not say)."""
        return self.local_world if self.local_world is not None else self.world

    def device(self, requested: str) -> str:
        """The device of this rank: ``cuda:LOCAL_RANK`` for "auto" / "cuda" when several ranks share CUDA."""
        import torch

        if not self.distributed or requested not in ("auto", "cuda"):
            return requested
        if requested == "cuda" or torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return "cpu"


# ------------------------------------------------------------------------------------------- the environment
def _int(env: Mapping[str, str], name: str, default: int, valid: str) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw.strip())
    except ValueError:
        raise InputError(f"torchrun environment: {name}={raw!r} is not a whole number; valid: {valid}") from None


def current_rank(env: Mapping[str, str] | None = None) -> Rank:
    """From torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; ``os.environ`` by default), checked;
    one process without it. An InputError names the first bad variable and what would be valid."""
    env = os.environ if env is None else env
    world = _int(env, "WORLD_SIZE", 1, "a number of processes >= 1")
    if world < 1:
        raise InputError(f"torchrun environment: WORLD_SIZE={world}; valid: a number of processes >= 1")
    last = f"0..{world - 1} (WORLD_SIZE={world})"
    rank = _int(env, "RANK", 0, last)
    if not 0 <= rank < world:
        raise InputError(f"torchrun environment: RANK={rank} is outside the job; valid: {last}")
    given = env.get("LOCAL_WORLD_SIZE", "").strip() != ""
    local_world = _int(env, "LOCAL_WORLD_SIZE", world, f"1..{world} processes per machine")
    if not 1 <= local_world <= world:
        raise InputError(
            f"torchrun environment: LOCAL_WORLD_SIZE={local_world}; valid: 1..{world} processes per machine"
        )
    local_valid = f"0..{local_world - 1} (LOCAL_WORLD_SIZE={local_world})"
    local_rank = _int(env, "LOCAL_RANK", 0, local_valid)
    if not 0 <= local_rank < local_world:
        raise InputError(f"torchrun environment: LOCAL_RANK={local_rank} is outside this machine; valid: {local_valid}")
    if world > 1:
        rendezvous(env)
    return Rank(rank, world, local_rank, local_world if given else None)


def rendezvous(env: Mapping[str, str] | None = None) -> tuple[str, int]:
    """``(MASTER_ADDR, MASTER_PORT)`` of a job of several processes, checked."""
    env = os.environ if env is None else env
    addr = env.get("MASTER_ADDR", "").strip()
    if not addr:
        raise InputError(
            "torchrun environment: WORLD_SIZE > 1 but MASTER_ADDR is not set; valid: the host name or address of "
            "rank 0 (torchrun sets it; run the command through torchrun)"
        )
    port = _int(env, "MASTER_PORT", -1, "a TCP port 1..65535")
    if port == -1:
        raise InputError(
            "torchrun environment: WORLD_SIZE > 1 but MASTER_PORT is not set; valid: a free TCP port 1..65535 on "
            "rank 0's machine (torchrun sets it)"
        )
    if not 1 <= port <= 65535:
        raise InputError(f"torchrun environment: MASTER_PORT={port}; valid: a TCP port 1..65535")
    return addr, port


def timeout_seconds(env: Mapping[str, str] | None = None) -> float:
    """The join / collective timeout: :data:`TIMEOUT_ENV` seconds when set, else :data:`DEFAULT_TIMEOUT`."""
    env = os.environ if env is None else env
    raw = env.get(TIMEOUT_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise InputError(f"{TIMEOUT_ENV}={raw!r}; valid: a number of seconds > 0")
    return value


# ------------------------------------------------------------------------------------------------ collectives
def init(rank: Rank, backend: str = "gloo", device=None, timeout: float | None = None) -> None:
    """Join the job's process group (torchrun's MASTER_ADDR / MASTER_PORT) within ``timeout`` seconds (default
    :func:`timeout_seconds`); nothing for one process. ``device``: the CUDA device of an NCCL group.
    Processes that do not all join in time are a SiamMAEError naming the rendezvous address, not a hang."""
    if not rank.distributed:
        return
    import datetime

    import torch.distributed as dist

    if dist.is_initialized():
        return
    addr, port = rendezvous()
    seconds = timeout_seconds() if timeout is None else timeout
    kwargs = {"device_id": device} if device is not None else {}
    try:
        dist.init_process_group(
            backend,
            rank=rank.rank,
            world_size=rank.world,
            timeout=datetime.timedelta(seconds=seconds),
            **kwargs,
        )
    except (RuntimeError, ValueError, OSError) as e:  # DistStoreError / DistNetworkError are RuntimeErrors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SiamMAEError(
            f"rank {rank.rank} of {rank.world}: the processes did not all join at {addr}:{port} within "
            f"{seconds:g} s ({first}); start every rank (torchrun --nproc_per_node N), check MASTER_ADDR / "
            f"MASTER_PORT, or raise {TIMEOUT_ENV}"
        ) from e


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


def close_distributed() -> None:
    """Leave the process group if one was joined (no barrier: also on the way out of an error)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(x, rank: Rank):
    """Mean of the tensor ``x`` over processes (a copy; ``x`` itself is left alone)."""
    x = x.detach().clone()
    if rank.distributed:
        import torch.distributed as dist

        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= rank.world
    return x


def all_reduce_max(x, rank: Rank):
    """Element-wise maximum of the tensor ``x`` over processes (a copy): flags or-ed, so that every process acts
    on the same step when one of them asks (a stop signal, a checkpoint due by wall time)."""
    x = x.detach().clone()
    if rank.distributed:
        import torch.distributed as dist

        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def barrier(rank: Rank) -> None:
    """Wait for every process."""
    if rank.distributed:
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(obj, rank: Rank):
    """``obj`` of rank 0 on every process."""
    if not rank.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
