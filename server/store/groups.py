"""Group commit: writes queued for the one writer thread share a transaction.

Each SQLite transaction costs its BEGIN and COMMIT, and at COMMIT the writing of every page the
write changed (the messages table, its indexes, the full-text index's new segment, the events
table): when operators write hundreds of messages a second, most of each write's cost. Writes that
queue up behind each other while the writer is busy go in one transaction instead, so a busy
writer gets cheaper per write, and an idle one commits each write alone, at once.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Callable, TypeVar

from server.store.threads import StoreThreads

T = TypeVar("T")
GROUP_MAX = 64  # writes per transaction, at most

Outcome = tuple["asyncio.Future[Any]", bool, Any]


class GroupCommit:
    """Writes `fn(db)` for `threads` (one thread: the writer), run by `transaction(body)`, which
    runs body(db) in one transaction and returns what it returned.

    Each write's outcome is its own, as if it had run alone after the writes before it: when one
    raises, its group is rolled back, it gets its error, and the others run again without it. So a
    grouped `fn` may run more than once: it must change nothing but the database, through `db`.
    """

    def __init__(self, threads: StoreThreads,
                 transaction: Callable[[Callable[[Any], list[Any]]], list[Any]]) -> None:
        self.threads = threads
        self.transaction = transaction
        self._calls: collections.deque[tuple[Callable[[Any], Any], asyncio.Future[Any]]] = (
            collections.deque())
        self._queued = False  # a group is queued for the writer and has not started

    def submit(self, fn: Callable[[Any], T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._calls.append((fn, future))
        # Appended before `_queued` is read, and a group clears `_queued` before it takes its
        # writes: either the group queued already takes this one, or a new group is queued.
        if not self._queued:
            self._queue_group()
        return future

    def _queue_group(self) -> None:
        self._queued = True
        self.threads.submit(self._commit).add_done_callback(self._settle)

    def _settle(self, group: asyncio.Future[list[Outcome]]) -> None:
        """On the loop: each write's outcome to its caller; a group for writes left over."""
        for future, ok, value in group.result():
            if future.done():  # its caller gave up while it ran
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        if self._calls and not self._queued:  # more than GROUP_MAX were waiting
            self._queue_group()

    def _commit(self) -> list[Outcome]:
        """On the writer thread."""
        self._queued = False
        calls: list[tuple[Callable[[Any], Any], asyncio.Future[Any]]] = []
        while self._calls and len(calls) < GROUP_MAX:
            fn, future = self._calls.popleft()
            if not future.cancelled():  # a write given up before it ran is not made
                calls.append((fn, future))
        outcomes: list[Outcome] = []
        try:
            while calls:
                failed: list[tuple[int, Exception]] = []

                def body(db: Any) -> list[Any]:
                    results = []
                    for index, (fn, _) in enumerate(calls):
                        try:
                            results.append(fn(db))
                        except Exception as exc:
                            failed.append((index, exc))
                            raise
                    return results

                try:
                    results = self.transaction(body)
                except BaseException as exc:
                    if not failed:  # the transaction itself (BEGIN, COMMIT): every write in it
                        outcomes += [(future, False, exc) for _, future in calls]
                        return outcomes
                    index, error = failed[0]
                    outcomes.append((calls[index][1], False, error))
                    del calls[index]  # the others again, without it
                    continue
                outcomes += [(future, True, result) for (_, future), result in zip(calls, results)]
                return outcomes
        except BaseException as exc:  # never leave a caller waiting (one settled twice keeps its first)
            outcomes += [(future, False, exc) for _, future in calls]
        return outcomes
