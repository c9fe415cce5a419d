"""torchrun's environment, parsed and checked in one place (siammae.torchrun): a bad variable is one error naming
it and what is valid, and a job whose peers never join ends with an error after the timeout instead of hanging."""

import socket
import time

import pytest
import torch.distributed as dist

from siammae.errors import InputError, SiamMAEError
from siammae.torchrun import DEFAULT_TIMEOUT, TIMEOUT_ENV, Rank, current_rank, init, timeout_seconds

JOB = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1",
       "MASTER_PORT": "29500"}  # fmt: skip


def test_no_environment_is_one_process():
    assert current_rank({}) == Rank(0, 1, 0) and not current_rank({}).distributed


def test_a_torchrun_environment():
    rank = current_rank(JOB)
    assert rank == Rank(rank=3, world=4, local_rank=1, local_world=2) and rank.local_size == 2 and not rank.is_main
    # without LOCAL_WORLD_SIZE, every rank may be on one machine
    env = {k: v for k, v in JOB.items() if k != "LOCAL_WORLD_SIZE"} | {"LOCAL_RANK": "3"}
    assert current_rank(env) == Rank(3, 4, 3) and current_rank(env).local_size == 4


@pytest.mark.parametrize(
    "change, message",
    [
        ({"RANK": "abc"}, "RANK='abc' is not a whole number; valid: 0..3 (WORLD_SIZE=4)"),
        ({"RANK": "4"}, "RANK=4 is outside the job; valid: 0..3 (WORLD_SIZE=4)"),  # used to wait forever
        ({"RANK": "-1"}, "RANK=-1 is outside the job; valid: 0..3"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0; valid: a number of processes >= 1"),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a whole number"),
        ({"LOCAL_RANK": "2"}, "LOCAL_RANK=2 is outside this machine; valid: 0..1 (LOCAL_WORLD_SIZE=2)"),
        ({"LOCAL_RANK": "x"}, "LOCAL_RANK='x' is not a whole number; valid: 0..1"),
        ({"LOCAL_WORLD_SIZE": "5"}, "LOCAL_WORLD_SIZE=5; valid: 1..4 processes per machine"),
        ({"MASTER_ADDR": None}, "WORLD_SIZE > 1 but MASTER_ADDR is not set; valid: the host name or address of rank 0"),
        ({"MASTER_PORT": None}, "WORLD_SIZE > 1 but MASTER_PORT is not set; valid: a free TCP port 1..65535"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT=70000; valid: a TCP port 1..65535"),
        ({"MASTER_PORT": "http"}, "MASTER_PORT='http' is not a whole number"),
    ],
)
def test_bad_variables_name_themselves_and_what_is_valid(change, message):
    env = {k: v for k, v in (JOB | change).items() if v is not None}
    with pytest.raises(InputError) as e:
        current_rank(env)
    assert str(e.value).startswith(f"torchrun environment: {message}"), str(e.value)


def test_one_process_needs_no_rendezvous():
    assert current_rank({"WORLD_SIZE": "1", "RANK": "0"}) == Rank()


def test_timeout_setting():
    assert timeout_seconds({}) == DEFAULT_TIMEOUT and timeout_seconds({TIMEOUT_ENV: "2.5"}) == 2.5
    with pytest.raises(InputError, match=f"{TIMEOUT_ENV}='0'; valid: a number of seconds > 0"):
        timeout_seconds({TIMEOUT_ENV: "0"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_peer_that_never_joins_is_an_error_not_a_hang(monkeypatch):
    port = _free_port()
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    rank = current_rank()
    t0 = time.perf_counter()
    with pytest.raises(
        SiamMAEError, match=rf"rank 0 of 2: the processes did not all join at 127\.0\.0\.1:{port} within 2 s"
    ):
        init(rank, timeout=2)
    assert time.perf_counter() - t0 < 30
    assert not dist.is_initialized()
