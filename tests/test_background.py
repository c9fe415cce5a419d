"""siammae/background.py: the bounded-queue threads every stream hand-over uses (tracking and live sources)."""

import threading
import time

import pytest

from siammae.background import BackgroundReader, BackgroundWriter


def test_reader_yields_in_order_then_raises_where_the_source_broke():
    def source():
        yield from range(5)
        raise ValueError("broken at 5")

    got = []
    with BackgroundReader(source(), maxsize=2) as reader, pytest.raises(ValueError, match="broken at 5"):
        for x in reader:
            got.append(x)
    assert got == [0, 1, 2, 3, 4]


def test_reader_is_bounded():
    """The producer is never more than ``maxsize`` items (+ the one in its hand) ahead of the consumer. After each
    item the consumer waits until the producer has gone as far ahead as the bound lets it, so the check cannot pass
    because the producer's thread got no CPU; an unbounded reader runs to the end while the consumer waits."""
    maxsize, n = 3, 40
    cond = threading.Condition()
    made, taken, ahead = [0], [0], []

    def source():
        for i in range(n):
            with cond:
                ahead.append(made[0] - taken[0])  # produced and not yet taken, before this one
                made[0] += 1
                cond.notify_all()
            yield i

    got = []
    with BackgroundReader(source(), maxsize=maxsize) as reader:
        for x in reader:
            got.append(x)
            with cond:
                taken[0] += 1
                assert cond.wait_for(lambda: made[0] >= min(n, taken[0] + maxsize), timeout=30)  # as far as allowed
    assert got == list(range(n))
    assert max(ahead) <= maxsize + 1, ahead  # the queue's maxsize, plus one taken but not yet counted


def test_drop_oldest_keeps_the_first_and_the_newest_and_counts_the_rest():
    dropped = []
    go, finished = threading.Event(), threading.Event()

    def source():
        yield 0
        go.wait(30)
        yield from range(1, 20)
        finished.set()  # asked for the item after 19: every item has been handed over

    reader = BackgroundReader(source(), maxsize=1, drop_oldest=True, keep_first=True, on_drop=dropped.append)
    it = iter(reader)
    assert next(it) == 0  # the first item is never pushed out (the producer holds on until it is taken)
    go.set()
    assert finished.wait(30)  # the consumer is "slow": items 1..19 all arrive before it takes the next one
    rest = list(it)
    assert rest == [19] and dropped == list(range(1, 19))
    reader.close()


def test_close_without_join_returns_while_the_producer_blocks():
    block = threading.Event()

    def source():
        yield 1
        block.wait(30)  # a silent pipe
        yield 2

    reader = BackgroundReader(source(), maxsize=1, join=False)
    assert next(iter(reader)) == 1
    t0 = time.perf_counter()
    reader.close()
    assert time.perf_counter() - t0 < 1.0
    block.set()


def test_writer_consumes_everything_handed_over_and_raises_its_error():
    seen = []
    writer = BackgroundWriter(lambda items: seen.extend(items), maxsize=2)
    for i in range(10):
        writer.put(i)
    writer.close()
    assert seen == list(range(10))

    def fail(items):
        for x in items:
            if x == 3:
                raise OSError("disk full")

    writer = BackgroundWriter(fail, maxsize=1)
    with pytest.raises(OSError, match="disk full"):
        for i in range(10):
            writer.put(i)
        writer.close()
