"""In-process publish/subscribe keyed by topic and the held-read engine. Other processes' events
arrive through a feed (server/feed.py) that the hub starts when someone subscribes.

A held request subscribes *before* it reads the store, then waits on its subscription; a write
publishes *after* it is stored. Whatever order the two race in, the waiter either saw the row in
its read or is woken by the event. Events carry small payloads, never the source of truth.

The widget's held reads and the dashboard's live feed both wait here: one engine, one set of
limits, one place where a waiter is cleaned up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Generic, TypeVar

from server.admission import pass_turn
from server.errors import RateLimited
from server.store.base import Store, StoreUnavailable

if TYPE_CHECKING:
    from server.feed import EventFeed

log = logging.getLogger(__name__)
T = TypeVar("T")

SUBSCRIPTION_BUFFER = 256
# A held read's subscription stays listening this long after its answer, for the client's next
# request with the cursor that answer gave it (Resume): that request then needs no store read.
PARK_SECONDS = 2.0
# A widget holds two requests; a few tabs more are fine, a loop opening hundreds is not, nor one
# address inventing sessions (an office behind one NAT still fits).
MAX_HELD_PER_TOPIC = 12
MAX_HELD_PER_ADDRESS = 500


# Added to an operator message's event for this process's own waiters, never recorded for other
# processes: (previous, mode, message), what the write's own transaction saw (see
# Store.add_operator_message's `following`), so a held read can answer without reading again.
AS_WRITTEN = "as_written"


def session_topic(site_id: int, session_id: str) -> str:
    return f"session:{site_id}:{session_id}"


def site_topic(site_id: int) -> str:
    return f"site:{site_id}"


class Subscription:
    """One listener's view of one or more topics: a bounded buffer of events and a wake-up flag.

    When more than SUBSCRIPTION_BUFFER events arrive between two drains, the buffer stops taking
    them and `overflowed` is set: the listener has missed news and must read the store again
    (a held read fetches, the dashboard feed tells its page to refetch). Nothing is lost silently.

    Thousands are held at once (one per held request), so each is small: slots, a list made on
    the first event, and one future only while someone waits (an asyncio.Event keeps a deque, and
    a timeout context an object and a handle, for the whole hold).
    """

    __slots__ = ("topics", "buffer", "overflowed", "parked", "push", "_events", "_ready", "_waiter", "_timer")

    def __init__(self, topics: tuple[str, ...], *, buffer: int = SUBSCRIPTION_BUFFER) -> None:
        self.topics = topics
        self.buffer = buffer
        self.overflowed = False
        self.parked = False  # listening between a held read's answer and its next request (Resume)
        # push(event) -> True: the listener took the event as it happened (no buffer, no wake-up)
        self.push: Callable[[dict[str, Any]], bool] | None = None
        self._events: list[dict[str, Any]] | None = None
        self._ready = False
        self._waiter: asyncio.Future[bool] | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def topic(self) -> str:
        return self.topics[0]

    @property
    def ready(self) -> bool:
        """Whether something was published since the last drain."""
        return self._ready

    def deliver(self, event: dict[str, Any]) -> None:
        if self.push is not None and self.push(event):
            return
        if self._events is None:
            self._events = [event]
        elif len(self._events) >= self.buffer:
            self.overflowed = True
        else:
            self._events.append(event)
        self._ready = True
        _wake(self._waiter, True)

    async def wait(self, timeout: float) -> bool:
        """True when something was published since the last drain; False on timeout. One waiter
        at a time."""
        if self._ready:
            return True
        try:
            return await self.arm(timeout)
        finally:
            self.disarm()

    def arm(self, timeout: float) -> asyncio.Future[bool]:
        """What `wait` awaits, for a caller that awaits it in its own frame (Hub.hold: one
        coroutine less kept per held request); call `disarm` once it is done or abandoned."""
        pass_turn()  # nothing to do until news comes: let this address's next request start
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._timer = loop.call_later(max(timeout, 0), _wake, waiter, False)
        return waiter

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiter = None

    def drain(self) -> list[dict[str, Any]]:
        """The buffered events; check `overflowed` first (drain clears it)."""
        events = self._events or []
        self._events = None
        self._ready = False
        self.overflowed = False
        return events


def _wake(waiter: asyncio.Future[bool] | None, result: bool) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(result)


@dataclass(frozen=True)
class Resume(Generic[T]):
    """How a held read's next request can carry on from its answer (Hub.hold): the subscription
    that has listened since the answer's read is parked under (topic, `kind`), and a request of
    that kind with the cursor `after(answer)` gave takes it over, starting from the result `after`
    said a read would find if nothing happened since. Anything that did happen is in the
    subscription's buffer, as for any wait."""

    kind: str
    cursor: Any
    # (cursor, quiet result) the answer leaves its client at; None when it may not be the whole
    # story (a page of a longer list), and the next request must read.
    after: Callable[[T], tuple[Any, T] | None]


class _Parked:
    __slots__ = ("subscription", "cursor", "quiet", "timer")

    def __init__(self, subscription: Subscription, cursor: Any, quiet: Any,
                 timer: asyncio.TimerHandle) -> None:
        self.subscription = subscription
        self.cursor = cursor
        self.quiet = quiet
        self.timer = timer


@dataclass(frozen=True)
class HoldLimits:
    per_topic: int = MAX_HELD_PER_TOPIC
    per_address: int = MAX_HELD_PER_ADDRESS


class Hub:
    def __init__(self, store: Store, *, origin: str | None = None,
                 hold_limits: HoldLimits | None = None, park_seconds: float = PARK_SECONDS) -> None:
        self.store = store
        self.hold_limits = hold_limits or HoldLimits()
        self.park_seconds = park_seconds
        self._parked: dict[tuple[str, str], _Parked] = {}
        self.origin = origin or uuid.uuid4().hex
        # Lists, not sets: most topics have one subscriber (a visitor's held read), and a list of
        # one is 64 bytes where a set is 216, for each of thousands held at once.
        self._subscribers: dict[str, list[Subscription]] = {}
        self._held_by_address: collections.Counter[str] = collections.Counter()
        self._listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self.bridge: EventFeed | None = None  # set by the feed (server/feed.py)
        self.closing = False  # shutting down: held reads answer now, with what there is
        self.deliveries = 0  # events delivered here so far: orders a read against the news it can see

    @property
    def subscriber_count(self) -> int:
        """Listeners waiting now (held requests, dashboard feeds); parked ones are not."""
        return sum(len(subs) for subs in self._subscribers.values()) - len(self._parked)

    @property
    def listening(self) -> bool:
        """Whether anything here listens for events, parked subscriptions included: while it does,
        the feed must bring other processes' events (a parked one restarted later would miss them)."""
        return bool(self._subscribers)

    def waiting_on(self, topic: str) -> int:
        subscribers = self._subscribers.get(topic)
        if not subscribers:  # asked for every chunk of every answer; mostly nobody watches
            return 0
        return sum(not subscription.parked for subscription in subscribers)

    @contextlib.asynccontextmanager
    async def subscribe(self, *topics: str, buffer: int = SUBSCRIPTION_BUFFER
                        ) -> AsyncIterator[Subscription]:
        subscription = await self._subscribe(Subscription(topics, buffer=buffer))
        try:
            yield subscription
        finally:
            self._unsubscribe(subscription)

    async def _subscribe(self, subscription: Subscription) -> Subscription:
        for topic in subscription.topics:
            subscribers = self._subscribers.get(topic)
            if subscribers is None:
                self._subscribers[topic] = [subscription]
            elif subscription not in subscribers:
                subscribers.append(subscription)
        if self.bridge is not None:
            try:
                await self.bridge.ensure_running()
            except BaseException:
                self._unsubscribe(subscription)
                raise
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        for topic in subscription.topics:
            subscribers = self._subscribers.get(topic)
            if subscribers is not None and subscription in subscribers:
                subscribers.remove(subscription)
                if not subscribers:
                    del self._subscribers[topic]

    # -- held reads ---------------------------------------------------------------------------
    def _take_slot(self, topic: str, address: str | None, limits: HoldLimits | None) -> str:
        """Count one held connection against its topic and its address, or refuse it (429).
        Returns the key to give back to `_give_slot`."""
        self.check_room(topic, address, limits)
        key = address or ""
        self._held_by_address[key] += 1
        return key

    def _give_slot(self, key: str) -> None:
        self._held_by_address[key] -= 1
        if not self._held_by_address[key]:
            del self._held_by_address[key]

    def check_room(self, topic: str, address: str | None, limits: HoldLimits | None = None) -> None:
        """Refuse (429) a hold its topic or address has no room for; cheap, so callers can ask
        before doing any store work for a request that would be refused anyway."""
        limits = limits or self.hold_limits
        if self.waiting_on(topic) >= limits.per_topic:
            raise RateLimited("Too many requests are waiting for this session.", retry_after=5)
        if self._held_by_address.get(address or "", 0) >= limits.per_address:
            raise RateLimited("Too many requests are waiting from this address.", retry_after=5)

    async def hold(self, topic: str, wait: float, fetch: Callable[[], Awaitable[T]],
                   is_news: Callable[[T], bool], *, address: str | None,
                   wake_on: frozenset[str] = frozenset(), limits: HoldLimits | None = None,
                   settle: Callable[[list[dict[str, Any]]], T | None] | None = None,
                   resume: Resume[T] | None = None) -> T:
        """Answer now, or hold up to `wait` seconds until `fetch` finds something new, or until an
        event of a kind in `wake_on` happens (news the response cannot show by itself).
        `settle(events)`: the answer the events that woke the wait prove without a read, or None
        to read. `resume`: carry on from the previous request's answer without reading (see
        Resume)."""
        if wait <= 0 or self.closing:
            return await fetch()
        # Plain try/finally rather than context managers: thousands of these are held at once,
        # and each context manager object would be held with them.
        slot = self._take_slot(topic, address, limits)
        try:
            deadline = time.monotonic() + wait
            parked = self._take_parked(topic, resume) if resume is not None else None
            subscription = parked.subscription if parked else await self._subscribe(Subscription((topic,)))
            answer: T | None = None  # what the request answers, once it does
            try:
                result = parked.quiet if parked else await fetch()
                del parked
                while True:
                    remaining = deadline - time.monotonic()
                    if is_news(result) or remaining <= 0:
                        answer = result
                        return answer
                    # subscription.wait(remaining), awaited here rather than in a coroutine of its own
                    woke = subscription.ready or await subscription.arm(remaining)
                    subscription.disarm()
                    if not woke or self.closing:
                        answer = await fetch()  # as of the end of the wait (a rule may have fallen due)
                        return answer
                    missed = subscription.overflowed
                    events = subscription.drain()
                    if missed or any(event.get("kind") in wake_on for event in events):
                        answer = await fetch()
                        return answer
                    settled = settle(events) if settle is not None else None
                    if settled is not None:
                        answer = settled
                        return answer
                    del events
                    result = await fetch()
            finally:
                subscription.disarm()
                # The subscription has listened since the answer's read (or its own start): parked,
                # it keeps listening for the client's next request.
                if answer is None or resume is None or self.closing or not self._park(
                        topic, resume, subscription, answer):
                    self._unsubscribe(subscription)
        finally:
            self._give_slot(slot)

    def _take_parked(self, topic: str, resume: Resume[Any]) -> _Parked | None:
        """The subscription parked for this request, if its cursor is the one it was parked for."""
        key = (topic, resume.kind)
        parked = self._parked.get(key)
        if parked is None:
            return None
        if parked.cursor != resume.cursor or self.closing:
            self._unpark(key)
            return None
        del self._parked[key]
        parked.timer.cancel()
        parked.subscription.parked = False
        return parked

    def _park(self, topic: str, resume: Resume[T], subscription: Subscription, answer: T) -> bool:
        following = resume.after(answer)
        if following is None:
            return False
        key = (topic, resume.kind)
        self._unpark(key)  # one parked per topic and kind: the latest answer's
        cursor, quiet = following
        subscription.parked = True
        timer = asyncio.get_running_loop().call_later(self.park_seconds, self._unpark, key)
        self._parked[key] = _Parked(subscription, cursor, quiet, timer)
        return True

    def _unpark(self, key: tuple[str, str]) -> None:
        """Nobody came for it in time (the client went, or asked with another cursor), a later
        answer parks its own in its place, or the server is shutting down."""
        parked = self._parked.pop(key, None)
        if parked is not None:
            parked.timer.cancel()
            self._unsubscribe(parked.subscription)

    def add_listener(self, listener: Callable[[str, dict[str, Any]], None]) -> None:
        """Call `listener(topic, event)` for every event this process hears, its own and other
        processes' (while the bridge runs). For services that act on news, e.g. a takeover
        stopping an answer; it must not block."""
        self._listeners.append(listener)

    async def end_holds(self, timeout: float = 5.0) -> None:
        """Shutting down: every held read answers now, as if its wait had ended, and new ones do
        at once; returns when none is held (or after `timeout`)."""
        self.closing = True
        for key in list(self._parked):
            self._unpark(key)
        for subscriptions in list(self._subscribers.values()):
            for subscription in subscriptions:
                subscription.deliver({"kind": "closing"})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._held_by_address:
                    await asyncio.sleep(0.01)

    def deliver_local(self, topic: str, event: dict[str, Any]) -> int:
        """Wake this process's subscribers of `topic`; returns how many were woken."""
        self.deliveries += 1
        for listener in self._listeners:
            listener(topic, event)
        subscribers = self._subscribers.get(topic, ())
        for subscription in subscribers:
            subscription.deliver(event)
        return len(subscribers)

    async def publish(self, topic: str, kind: str, payload: dict[str, Any] | None = None) -> None:
        """Tell every process: recorded in the store's events feed, delivered here at once."""
        await self.publish_events([(topic, kind, payload or {})])

    async def publish_events(self, events: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Several (topic, kind, payload) events of one write, recorded in one store call."""
        # Recorded first, then delivered: a listener that reads the feed back from the store on
        # waking (the dashboard) finds the event there.
        try:
            await self.store.record_events(events, self.origin)
        except StoreUnavailable:
            # The write itself is stored; other processes' waiters will see it on their next read.
            log.warning("could not record %s event for other processes", events[0][1])
        self.deliver_recorded(events)

    def deliver_recorded(self, events: list[tuple[str, str, dict[str, Any]]], *,
                         here: dict[str, dict[str, Any]] | None = None) -> None:
        """Deliver here events already recorded for other processes (with the write they tell of);
        `here[topic]`: more for this process's subscribers of that topic only."""
        for topic, kind, payload in events:
            extra = here.get(topic) if here else None
            self.deliver_local(topic, {"kind": kind, **payload, **extra} if extra else {"kind": kind, **payload})

    @staticmethod
    def session_events(site_id: int, session_id: str, kind: str,
                       payload: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
        """News of one visitor, as events: to the visitor's own waiters and to the site's operators."""
        return [(session_topic(site_id, session_id), kind, payload),
                (site_topic(site_id), kind, {**payload, "session_id": session_id})]

    async def publish_to_session(self, site_id: int, session_id: str, kind: str,
                                 payload: dict[str, Any]) -> None:
        """News of one visitor, recorded for other processes in one store call."""
        await self.publish_events(self.session_events(site_id, session_id, kind, payload))
