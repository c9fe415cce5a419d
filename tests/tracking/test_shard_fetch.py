"""Weights given by name under torchrun: fetched once per machine (local rank 0) while the other ranks wait, and a
failed fetch is the same one-line error on every rank."""

import os
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from siammae.errors import SiamMAEError
from siammae.torchrun import Rank, first_on_local_rank0


def _worker(rank: int, world: int, store: str, log: str, fail: bool) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:

        def fetch():
            with open(log, "a") as f:
                f.write(f"{rank}\n")
            if fail:
                raise SiamMAEError("cannot download w.pth: no network")

        try:
            first_on_local_rank0(Rank(rank=rank, world=world, local_rank=rank), fetch)
            outcome = "ok"
        except SiamMAEError as e:
            outcome = f"error: {e}"
        with open(f"{log}.{rank}", "w") as f:
            f.write(outcome)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("fail", [False, True])
def test_fetched_once_and_errors_reach_every_rank(tmp_path, fail):
    log = tmp_path / "fetches"
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(log), fail), nprocs=2, join=True)
    assert log.read_text().split() == ["0"]  # only local rank 0 fetched
    outcomes = [Path(f"{log}.{r}").read_text() for r in range(2)]
    expected = "error: cannot download w.pth: no network" if fail else "ok"
    assert outcomes == [expected, expected]


def test_one_process_fetches_itself():
    calls = []
    first_on_local_rank0(Rank(), lambda: calls.append(os.getpid()))
    assert calls == [os.getpid()]
