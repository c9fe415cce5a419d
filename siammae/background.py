"""Background threads behind bounded queues: the one implementation of the streaming pipeline's hand-overs.

:class:`BackgroundReader` runs a producer (decoding a file, reading a live stream) ahead of its consumer;
:class:`BackgroundWriter` runs a consumer (writing outputs) behind its producer. The queues are bounded, so at most
``maxsize`` items are ever in flight: memory depends on the queue sizes, never on the length of a video.

An exception in a thread, KeyboardInterrupt included, is handed over and raised in the other thread after the items
before it, so the main thread sees a failure exactly where the stream broke.

A reader in ``drop_oldest`` mode never makes its producer wait: when the consumer has not yet taken the waiting
item, that item is dropped (``on_drop``) and the new one takes its place, so the consumer always gets the newest
item and the queue never builds a backlog (``siammae-track --realtime``). With ``keep_first`` the first item is
never dropped (the first mask belongs to frame 0).
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


def _get(q: queue.Queue):
    """``q.get()``, polling: a Ctrl-C that lands inside the other thread's ``put`` (in ``Condition.notify``) can
    lose the wake-up of a plain ``get``, which would then wait for ever with the item in the queue."""
    while True:
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            continue


class BackgroundReader:
    """Iterate ``iterable`` in a daemon thread, at most ``maxsize`` items ahead of the consumer; iterate the reader
    (once) to get them.

    drop_oldest / keep_first / on_drop(item): see the module docstring. join: whether :meth:`close` waits for the
    thread; False for a producer that may block for ever in a read (a silent pipe or camera), which then ends at its
    next item (the thread is a daemon). ``busy_s``: seconds the thread spent producing items (not waiting for room in
    the queue). Close it (or use it as a context manager) to stop the thread early; closing is idempotent.
    """

    def __init__(
        self,
        iterable: Iterable,
        maxsize: int,
        name: str = "siammae-read",
        *,
        drop_oldest: bool = False,
        keep_first: bool = False,
        on_drop: Callable[[object], None] | None = None,
        join: bool = True,
    ):
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._stop = threading.Event()
        self._drop_oldest, self._keep_first, self._on_drop, self._join = drop_oldest, keep_first, on_drop, join
        self.busy_s = 0.0
        self._thread = threading.Thread(target=self._work, args=(iterable,), name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------ the thread
    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _replace(self, item) -> None:
        """drop_oldest: put ``item``, dropping the waiting one if the consumer has not taken it. Only this thread
        puts, so after the get there is room; the consumer may take the old item first, and then nothing is
        dropped."""
        try:
            old = self._queue.get_nowait()
        except queue.Empty:
            pass
        else:
            if self._on_drop is not None:
                self._on_drop(old)
        self._queue.put_nowait(item)

    def _work(self, iterable: Iterable) -> None:
        it = None
        try:
            it = iter(iterable)
            first = True
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    break
                finally:
                    self.busy_s += time.perf_counter() - t0
                if self._stop.is_set():
                    return
                if self._drop_oldest and not (first and self._keep_first):
                    self._replace(item)
                elif not self._put(item):
                    return
                if first and self._drop_oldest and self._keep_first:  # no later item may push the first one out
                    while not self._queue.empty() and not self._stop.is_set():
                        time.sleep(0.002)
                first = False
            self._put(_END)
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer, which raises it
            self._put(_Raise(e))
        finally:
            close = getattr(it, "close", None)  # a generator stopped early releases its file now
            if callable(close):
                close()

    # ------------------------------------------------------------------------------------------ consumer
    def __iter__(self) -> Iterator:
        while True:
            item = _get(self._queue)
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
        if self._join:
            self._thread.join()

    def __enter__(self) -> BackgroundReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BackgroundWriter:
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
            item = _get(self._queue)
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
