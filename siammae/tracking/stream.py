"""The two background threads of the streaming pipeline, each behind a bounded queue.

:class:`Prefetcher` runs a producer (decoding) ahead of the consumer; :class:`BackgroundConsumer` runs a consumer
(writing) behind the producer. The queues are bounded, so at most ``maxsize`` items are ever in flight: memory
depends on the queue sizes, never on the length of the video. Any exception in a thread, KeyboardInterrupt
included, is handed to the main thread and raised there after the items before it, so the main thread sees a
failure exactly where the stream broke.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator

_POLL_S = 0.1  # how often a blocked thread checks whether it should stop


class _Raise:
    """Queue entry carrying an exception from the thread."""

    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()


class Prefetcher:
    """Iterate ``iterable`` in a daemon thread, ``maxsize`` items ahead of the consumer.

    ``busy_s`` is the time the thread spent producing items (not waiting on a full queue). Close it (or use it as a
    context manager) to stop the thread early; closing is idempotent.
    """

    def __init__(self, iterable: Iterable, maxsize: int, name: str = "siammae-decode"):
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._stop = threading.Event()
        self.busy_s = 0.0
        self._thread = threading.Thread(target=self._work, args=(iterable,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, iterable: Iterable) -> None:
        it = None
        try:
            it = iter(iterable)
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    break
                finally:
                    self.busy_s += time.perf_counter() - t0
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as e:  # noqa: BLE001 -- handed to the main thread, which raises it
            self._put(_Raise(e))
        finally:
            close = getattr(it, "close", None)  # a generator stopped early releases its file now
            if callable(close):
                close()

    def __iter__(self) -> Iterator:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Raise):
                raise item.exc
            yield item

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BackgroundConsumer:
    """Run ``consume(items)`` in a daemon thread, where ``items`` iterates what :meth:`put` hands over.

    ``put`` blocks while ``maxsize`` items are waiting (backpressure), and raises the thread's exception if it has
    failed. :meth:`close` lets the thread finish every item already handed over, then raises its exception, if
    any. ``busy_s`` is the time the thread spent working (its run time less the time it waited for items).
    """

    def __init__(self, consume: Callable[[Iterator], None], maxsize: int, name: str = "siammae-write"):
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._error: BaseException | None = None
        self._closed = False
        self._wait_s = 0.0
        self._run_s = 0.0
        self._thread = threading.Thread(target=self._work, args=(consume,), name=name, daemon=True)
        self._thread.start()

    @property
    def busy_s(self) -> float:
        return max(0.0, self._run_s - self._wait_s)

    def _items(self) -> Iterator:
        while True:
            t0 = time.perf_counter()
            item = self._queue.get()
            self._wait_s += time.perf_counter() - t0
            if item is _END:
                return
            yield item

    def _work(self, consume: Callable[[Iterator], None]) -> None:
        t0 = time.perf_counter()
        try:
            consume(self._items())
        except BaseException as e:  # noqa: BLE001 -- raised in the main thread by put() / close()
            self._error = e
        finally:
            self._run_s = time.perf_counter() - t0

    def put(self, item) -> None:
        """Hand ``item`` to the thread (blocks while the queue is full)."""
        while True:
            if self._error is not None:
                raise self._error
            if not self._thread.is_alive():
                raise RuntimeError("the writer thread stopped before the end of the stream")
            try:
                self._queue.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Wait until every item handed over is consumed; raise the thread's exception, if any."""
        if not self._closed:
            self._closed = True
            while self._thread.is_alive():
                try:
                    self._queue.put(_END, timeout=_POLL_S)
                    break
                except queue.Full:
                    continue
            self._thread.join()
        if self._error is not None:
            raise self._error
