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
# Calls still queued after `spill_after` past which one more thread starts even though calls are
# ending: 500 questions at once queued their reads behind one thread that the busy event loop let
# run only between its own turns at the GIL, and the last ones waited ~15 s for their site's
# knowledge index (its documents' read was queued behind all the others).
SPILL_BACKLOG = 256


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
    """Calls run in the order they came: on one thread while it keeps up, on up to `size` while
    it is stuck.

    Not a pool working side by side: every store thread that runs competes with the event loop
    for the GIL at each SQLite statement, and with four readers taking turns under load the
    hand-overs cost more than the reads (1,000 held requests and 1,000 operator messages a second
    offered: ~480 stored a second with four reader threads, ~700 with one). More threads help only
    while one is stuck on a slow call (a full-text search takes tens of ms) or far behind: when calls have
    waited `spill_after` seconds and none ended meanwhile, or `backlog` calls are still queued
    then (a burst), one more thread starts, and it ends once it has had nothing to do for `linger`
    seconds. The first thread starts on the first call
    (a process that never reads starts no reader).
    """

    def __init__(self, name: str, size: int, *, spill_after: float = 0.05, linger: float = 1.0,
                 backlog: int = SPILL_BACKLOG) -> None:
        self.name = name
        self.size = size
        self.spill_after = spill_after
        self.backlog = backlog
        self.linger = linger
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()  # guards _idle and _threads
        self._idle = 0  # threads waiting for a call
        self._submitted = 0  # calls submitted so far (on the loop)
        self._ended = 0  # calls ended or skipped so far: shows whether the threads are getting anywhere
        self._spill_timer: asyncio.TimerHandle | None = None
        self._inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = (
            weakref.WeakKeyDictionary())
        self._inbox: _Inbox | None = None  # the last loop's
        self._closed = False

    @property
    def threads(self) -> int:
        return len(self._threads)

    @property
    def idle(self) -> bool:
        """No call queued or running. Exact for one thread, read on the loop that submits the
        calls: a thread counts a call only once it is done with it, so a stale read says busy."""
        return self._ended == self._submitted

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run `fn(*args)` on one of the threads; the future is settled on the running loop. A call
        cancelled before a thread takes it does not run."""
        if self._closed:
            raise RuntimeError(f"{self.name} is shut down")
        loop = asyncio.get_running_loop()
        inbox = self._inbox
        if inbox is None or inbox.loop is not loop:  # almost always one loop: look up only on a change
            inbox = self._inboxes.get(loop)
            if inbox is None:
                inbox = self._inboxes[loop] = _Inbox(loop)
            self._inbox = inbox
        future: asyncio.Future[T] = loop.create_future()
        self._submitted += 1
        self._calls.put((inbox, future, fn, args))
        if not self._threads:
            self._start(first=True)
        elif self._idle == 0 and self._spill_timer is None and len(self._threads) < self.size:
            self._spill_timer = loop.call_later(self.spill_after, self._spill, loop, self._ended)
        return future

    def _spill(self, loop: asyncio.AbstractEventLoop, ended: int) -> None:
        self._spill_timer = None
        if self._closed or self._calls.empty() or len(self._threads) >= self.size:
            return
        stuck = self._ended == ended  # calls waited and none ended (a slow search)
        if self._idle == 0 and (stuck or self._calls.qsize() >= self.backlog):
            self._start(first=False)
        else:  # getting somewhere; look again while calls wait (the next may be a slow one)
            self._spill_timer = loop.call_later(self.spill_after, self._spill, loop, self._ended)

    def _start(self, *, first: bool) -> None:
        thread = threading.Thread(target=self._work, args=(first,), daemon=True,
                                  name=f"{self.name}_{len(self._threads)}")
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _work(self, first: bool) -> None:
        calls = self._calls
        while True:
            with self._lock:
                self._idle += 1
            try:
                call = calls.get() if first else calls.get(timeout=self.linger)
            except queue.Empty:  # a helper with nothing to do
                with self._lock:
                    self._idle -= 1
                    self._threads.remove(threading.current_thread())
                return
            with self._lock:
                self._idle -= 1
            if call is _STOP:
                return
            inbox, future, fn, args = call
            if future.cancelled():  # a read of a flag: settling it stays the loop's
                self._ended += 1
                continue
            try:
                value, ok = fn(*args), True
            except BaseException as exc:  # handed to the caller, as an executor would
                value, ok = exc, False
            self._ended += 1
            inbox.put(future, ok, value)
            del call, inbox, future, fn, args, value  # nothing kept alive while idle

    def shutdown(self) -> None:
        """Blocking: the calls already submitted run, then the threads end."""
        self._closed = True  # a spill timer still due finds it so and does nothing
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._calls.put(_STOP)
        for thread in threads:
            thread.join()
        with self._lock:
            self._threads.clear()
