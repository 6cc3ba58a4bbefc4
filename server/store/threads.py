"""The threads a store's blocking calls run on, handing their results back to the event loop.

`loop.run_in_executor` costs, for every call, a concurrent Future with its own Condition, a
second (asyncio) future chained to it, and a write to the loop's self-pipe from the worker thread
when the call ends. Under load that last one matters most: the send() gives up the GIL, and the
worker then waits its turn to take it back before its next job, behind the event loop and every
other store thread. Here a call is one asyncio future; a finished call's result goes on a list,
and the loop is woken once for everything that finished while it was busy.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import weakref
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_STOP = object()


class _Inbox:
    """Results for one event loop, and whether a call to hand them over is already on its way."""

    __slots__ = ("loop", "results", "waking", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.results: collections.deque[tuple[asyncio.Future[Any], bool, Any]] = collections.deque()
        self.waking = False

    def put(self, future: asyncio.Future[Any], ok: bool, value: Any) -> None:
        """On a worker thread. Appended before `waking` is read, and `hand_over` clears `waking`
        before it takes: either the hand-over already on its way takes this result, or this
        call schedules one."""
        self.results.append((future, ok, value))
        if not self.waking:
            self.waking = True
            try:
                self.loop.call_soon_threadsafe(self.hand_over)
            except RuntimeError:  # the loop is closed: nobody waits for these any more
                self.results.clear()

    def hand_over(self) -> None:
        """On the loop: settle every future whose call has ended."""
        self.waking = False
        results = self.results
        while results:
            future, ok, value = results.popleft()
            if future.done():  # cancelled while it ran
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


class StoreThreads:
    """Up to `size` threads taking calls in the order they came. Threads start when first needed
    (a process that never reads starts no reader)."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a call
        self._idle_lock = threading.Lock()
        self._inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = (
            weakref.WeakKeyDictionary())
        self._closed = False

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run `fn(*args)` on one of the threads; the future is settled on the running loop. A call
        cancelled before a thread takes it does not run."""
        if self._closed:
            raise RuntimeError(f"{self.name} is shut down")
        loop = asyncio.get_running_loop()
        inbox = self._inboxes.get(loop)
        if inbox is None:
            inbox = self._inboxes[loop] = _Inbox(loop)
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((inbox, future, fn, args))
        if self._idle == 0 and len(self._threads) < self.size:
            thread = threading.Thread(target=self._work, name=f"{self.name}_{len(self._threads)}",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()
        return future

    def _work(self) -> None:
        calls = self._calls
        while True:
            with self._idle_lock:
                self._idle += 1
            call = calls.get()
            with self._idle_lock:
                self._idle -= 1
            if call is _STOP:
                return
            inbox, future, fn, args = call
            if future.cancelled():  # a read of a flag: settling it stays the loop's
                continue
            try:
                value, ok = fn(*args), True
            except BaseException as exc:  # handed to the caller, as an executor would
                value, ok = exc, False
            inbox.put(future, ok, value)
            del call, inbox, future, fn, args, value  # nothing kept alive while idle

    def shutdown(self) -> None:
        """Blocking: the calls already submitted run, then the threads end."""
        self._closed = True
        for _ in self._threads:
            self._calls.put(_STOP)
        for thread in self._threads:
            thread.join()
        self._threads.clear()
