"""Group commit: writes queued for the one writer thread share a transaction.

Each SQLite transaction costs its BEGIN and COMMIT, and at COMMIT the writing of every page the
write changed (the messages table, its indexes, the full-text index's new segment, the events
table): when operators write hundreds of messages a second, most of each write's cost. Writes that
queue up behind each other while the writer is busy go in one transaction instead, so a busy
writer gets cheaper per write, and an idle one commits each write alone, at once.

Writes of one kind queued next to each other can go further and share their statements
(`submit_batched`): under load the writer thread gets the GIL only between the event loop's turns,
so every statement and every line of Python it runs per write is paid for in waiting.

That waiting is most of a small write's time under load (1,000 operator messages a second: the
writer spent two thirds of each group waiting for the GIL). So small writes (`here=True`) run
their group on the event loop itself when the writer thread is idle: no hand-over either way, no
GIL to wait for. Only the write lock of another process could hold such a transaction up, and it
is not waited for there (`WriterBusy`): those writes go to the writer thread, which waits.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Callable, TypeVar

from server.store.threads import StoreThreads

T = TypeVar("T")
GROUP_MAX = 64  # writes per transaction, at most

Outcome = tuple["asyncio.Future[Any]", bool, Any]
# Writes of many items at once: results in the items' order, one for each.
WriteMany = Callable[[Any, list[Any]], list[Any]]
Transaction = Callable[[Callable[[Any], list[Any]]], list[Any]]


class WriterBusy(Exception):
    """Raised by a transaction run on the event loop, before it changed anything, when it would
    have to wait for the write lock."""


class _Call:
    """One queued write: `fn(db)`, or one item of `write_many(db, items)`."""

    __slots__ = ("fn", "write_many", "item", "future", "here", "alone")

    def __init__(self, fn: Callable[[Any], Any] | None, write_many: WriteMany | None, item: Any,
                 future: asyncio.Future[Any], here: bool) -> None:
        self.fn = fn
        self.write_many = write_many
        self.item = item
        self.future = future
        self.here = here  # small enough to run on the event loop
        self.alone = fn is not None  # batched with its neighbours until their batch fails

    def joins(self, batch: list[_Call]) -> bool:
        first = batch[0]
        return not (self.alone or first.alone) and self.write_many is first.write_many


class GroupCommit:
    """Writes `fn(db)` for `threads` (one thread: the writer), run by `transaction(body)`, which
    runs body(db) in one transaction and returns what it returned.

    Each write's outcome is its own, as if it had run alone after the writes before it: when one
    raises, its group is rolled back, it gets its error, and the others run again without it. So a
    grouped `fn` may run more than once: it must change nothing but the database, through `db`.
    """

    def __init__(self, threads: StoreThreads, transaction: Transaction,
                 transaction_here: Transaction | None = None) -> None:
        """`transaction_here`, if given, runs a group of small writes on the event loop and
        raises WriterBusy instead of waiting for the write lock."""
        self.threads = threads
        self.transaction = transaction
        self.transaction_here = transaction_here
        self._calls: collections.deque[_Call] = collections.deque()
        self._queued = False  # a group is queued (for the loop or the writer) and has not started

    def submit(self, fn: Callable[[Any], T], *, here: bool = False) -> asyncio.Future[T]:
        """`fn(db)` in the next group; `here`: it is small enough to run on the event loop (a few
        rows, no loop over what a caller sent)."""
        return self._submit(fn, None, None, here)

    def submit_batched(self, write_many: WriteMany, item: Any, *, here: bool = False) -> asyncio.Future[Any]:
        """`item`, written by `write_many(db, items)` with the items of the same `write_many` queued
        next to it. When that raises, each item of the batch is written alone, so that only the
        one that fails fails. `write_many` may run more than once, like any grouped write."""
        return self._submit(None, write_many, item, here)

    def _submit(self, fn: Callable[[Any], Any] | None, write_many: WriteMany | None,
                item: Any, here: bool) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls.append(_Call(fn, write_many, item, future, here))
        # Appended before `_queued` is read, and a group clears `_queued` before it takes its
        # writes: either the group queued already takes this one, or a new group is queued.
        if not self._queued:
            self._queue_group()
        return future

    def _queue_group(self, *, on_thread: bool = False) -> None:
        self._queued = True
        if not on_thread and self.transaction_here is not None:
            # A turn of the loop later: the writes made in this turn join the group.
            asyncio.get_running_loop().call_soon(self._commit_here)
            return
        try:
            group = self.threads.submit(self._commit_on_thread)
        except RuntimeError as exc:  # the store has closed: nothing would ever run these writes
            self._queued = False
            outcomes = [(call.future, False, exc) for call in self._calls]
            self._calls.clear()
            self._deliver(outcomes)
            return
        group.add_done_callback(self._settle)

    def _commit_here(self) -> None:
        """On the loop: the small writes at the head of the queue, while the writer thread is idle."""
        assert self.transaction_here is not None
        calls = self._take(small_only=True) if self.threads.idle else []
        if not calls:
            self._queue_group(on_thread=True)
            return
        outcomes, not_made = self._commit(calls, self.transaction_here)
        if not_made:  # another process is writing: the writer thread waits for it
            self._calls.extendleft(reversed(not_made))
            self._queue_group(on_thread=True)
        self._deliver(outcomes)

    def _settle(self, group: asyncio.Future[list[Outcome]]) -> None:
        """On the loop, when the writer thread ran a group."""
        self._deliver(group.result())

    def _deliver(self, outcomes: list[Outcome]) -> None:
        """Each write's outcome to its caller; a group for writes left over."""
        for future, ok, value in outcomes:
            if future.done():  # its caller gave up while it ran
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        if self._calls and not self._queued:  # more than GROUP_MAX were waiting
            self._queue_group()

    def _take(self, *, small_only: bool = False) -> list[_Call]:
        """The next group's writes (clearing `_queued` first: see _submit); with `small_only`, up
        to the first that is not small (`here`), which the next group takes."""
        self._queued = False
        calls: list[_Call] = []
        while self._calls and len(calls) < GROUP_MAX:
            if small_only and not self._calls[0].here:
                break
            call = self._calls.popleft()
            if not call.future.cancelled():  # a write given up before it ran is not made
                calls.append(call)
        return calls

    def _commit_on_thread(self) -> list[Outcome]:
        outcomes, _ = self._commit(self._take(), self.transaction)  # it waits for the lock
        return outcomes

    def _commit(self, calls: list[_Call], transaction: Transaction) -> tuple[list[Outcome], list[_Call]]:
        """The writes' outcomes, each as if it ran alone, and those not made because a transaction
        here found the write lock taken (WriterBusy, raised before it changed anything)."""
        outcomes: list[Outcome] = []
        try:
            while calls:
                failed: list[tuple[list[_Call], Exception]] = []

                def body(db: Any) -> list[Any]:
                    results: list[Any] = []
                    for batch in _batches(calls):
                        try:
                            results += _write(db, batch)
                        except Exception as exc:
                            failed.append((batch, exc))
                            raise
                    return results

                try:
                    results = transaction(body)
                except WriterBusy:
                    return outcomes, calls
                except BaseException as exc:
                    if not failed:  # the transaction itself (BEGIN, COMMIT): every write in it
                        outcomes += [(call.future, False, exc) for call in calls]
                        return outcomes, []
                    batch, error = failed[0]
                    if len(batch) > 1:  # which of them: each alone, next time
                        for call in batch:
                            call.alone = True
                        continue
                    outcomes.append((batch[0].future, False, error))
                    calls.remove(batch[0])  # the others again, without it
                    continue
                outcomes += [(call.future, True, result) for call, result in zip(calls, results)]
                return outcomes, []
        except BaseException as exc:  # never leave a caller waiting (one settled twice keeps its first)
            outcomes += [(call.future, False, exc) for call in calls]
        return outcomes, []


def _batches(calls: list[_Call]) -> list[list[_Call]]:
    """The calls in order, those of one `write_many` next to each other in one batch."""
    batches: list[list[_Call]] = []
    for call in calls:
        if batches and call.joins(batches[-1]):
            batches[-1].append(call)
        else:
            batches.append([call])
    return batches


def _write(db: Any, batch: list[_Call]) -> list[Any]:
    first = batch[0]
    if first.fn is not None:
        return [first.fn(db)]
    assert first.write_many is not None
    results = first.write_many(db, [call.item for call in batch])
    if len(results) != len(batch):
        raise RuntimeError(f"{len(batch)} items written, {len(results)} results")
    return results
