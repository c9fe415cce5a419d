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
    made = []

    def source():
        for i in range(100):
            made.append(i)
            yield i

    reader = BackgroundReader(source(), maxsize=3)
    time.sleep(0.3)
    assert len(made) <= 3 + 1  # the queue holds 3, the producer at most one more in hand
    reader.close()


def test_drop_oldest_keeps_the_first_and_the_newest_and_counts_the_rest():
    dropped = []
    go = threading.Event()

    def source():
        yield 0
        go.wait(5)
        yield from range(1, 20)

    reader = BackgroundReader(source(), maxsize=1, drop_oldest=True, keep_first=True, on_drop=dropped.append)
    it = iter(reader)
    time.sleep(0.1)  # item 0 waits: the producer holds on until it is taken, so nothing can push it out
    assert next(it) == 0
    go.set()
    time.sleep(0.3)  # the consumer is "slow": items 1..19 arrive while it sleeps
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
