"""Coalescer: the concurrent reads of one key made as one store call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

from starlette.concurrency import run_in_threadpool

from jobmill.store.base import WouldBlock

K = TypeVar("K", bound=Hashable)
I = TypeVar("I")  # noqa: E741
R = TypeVar("R")

Call = tuple[I, "asyncio.Future[R]"]


class Coalescer(Generic[K, I, R]):
    """Answers `await coalescer(key, item)` with `read(key, items)`, where `items` holds `item` and the
    items other callers asked for the same key meanwhile.

    A call starts a read as soon as the event loop has run what was ready with it (the other requests that
    arrived together join it), unless `max_reads` reads of its key are in flight already: then it waits for
    one to end, and goes in the next read with the calls that came meanwhile (at most `max_items` in one).
    An idle server answers as soon as with a read per call; a busy one makes one store call for many
    requests of one caller instead of one each (two reads in flight, not one: the next is under way while
    the loop answers the last). Every answer comes from a read that started after its call did.

    A read is made by `read_now` on the event loop when it can be (it raises WouldBlock rather than wait
    for a lock or for the network: SQLite, whose connection is free), else by `read` in the thread pool. On
    the loop it costs less than a thread round trip, and it holds the loop about as long as a thread would
    hold the GIL for the same work (turning rows into jobs), for `max_items` rows at most.
    """

    def __init__(
        self,
        read: Callable[[K, Sequence[I]], R],
        read_now: Callable[[K, Sequence[I]], R] | None = None,
        max_items: int = 64,
        max_reads: int = 2,
    ) -> None:
        self._read = read
        self._read_now = read_now
        self._max_items = max_items
        self._max_reads = max_reads
        # Per event loop and key: the calls waiting for a read, and the reads in flight or about to start.
        self._waiting: dict[tuple[asyncio.AbstractEventLoop, K], list[Call[I, R]]] = {}
        self._reads: dict[tuple[asyncio.AbstractEventLoop, K], int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, key: K, item: I) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        waiting = self._waiting.setdefault((loop, key), [])
        waiting.append((item, future))
        reads = self._reads.get((loop, key), 0)
        if len(waiting) == 1 and reads < self._max_reads:  # the first to wait, and a read may start
            self._reads[loop, key] = reads + 1
            loop.call_soon(self._start, loop, key)  # after the other callers that are ready now
        return await future

    def _start(self, loop: asyncio.AbstractEventLoop, key: K) -> None:
        waiting = self._waiting.pop((loop, key), [])
        calls = [(item, future) for item, future in waiting if not future.done()]  # not cancelled
        if not calls:
            self._next(loop, key)
            return
        if len(calls) > self._max_items:
            self._waiting[loop, key] = calls[self._max_items :]
            calls = calls[: self._max_items]
        if self._read_now is not None:
            try:
                result = self._read_now(key, [item for item, _ in calls])
            except WouldBlock:
                pass
            except Exception as exc:
                _fail(calls, exc)
                self._next(loop, key)
                return
            else:
                _resolve(calls, result)
                self._next(loop, key)
                return
        task = loop.create_task(self._run(loop, key, calls))
        self._tasks.add(task)  # a reference until it is done: the loop keeps only weak ones
        task.add_done_callback(self._tasks.discard)

    async def _run(self, loop: asyncio.AbstractEventLoop, key: K, calls: list[Call[I, R]]) -> None:
        try:
            result = await run_in_threadpool(self._read, key, [item for item, _ in calls])
        except asyncio.CancelledError:
            for _, future in calls:
                future.cancel()
            raise
        except Exception as exc:
            _fail(calls, exc)
        else:
            _resolve(calls, result)
        finally:
            self._next(loop, key)

    def _next(self, loop: asyncio.AbstractEventLoop, key: K) -> None:
        """After a read: the calls waiting go in the next one, once the loop has run what is ready (the
        answers just given, so a loop is never held by one key's reads back to back)."""
        if (loop, key) in self._waiting:
            loop.call_soon(self._start, loop, key)
            return
        reads = self._reads.pop((loop, key)) - 1
        if reads:
            self._reads[loop, key] = reads


def _resolve(calls: list[Call[I, R]], result: R) -> None:
    for _, future in calls:
        if not future.done():  # not cancelled
            future.set_result(result)


def _fail(calls: list[Call[I, R]], exc: Exception) -> None:
    for _, future in calls:
        if not future.done():
            future.set_exception(exc)
