"""asyncio bridge: consume any Observable with ``async for``.

::

    from rx_discovery.aio import iterate

    async with iterate(discovery.hosts("api")) as hosts:   # disposed when the block ends
        async for host_set in hosts:
            print(host_set)

    async for host in iterate(discovery.subscribe_new("api")):   # also fine
        if host.shard == "shard-0":
            break                                             # disposed at once

Threads: the observable may emit on any thread (etcd's watch threads, a scheduler's); each
notification is handed to the event loop with ``loop.call_soon_threadsafe``, so your code always
runs on the loop's thread and never blocks the emitting thread.

The blocking calls have awaitable forms that never block the loop::

    from rx_discovery import aio

    registration = discovery.register("api", host)
    await aio.wait(registration, timeout=10)          # Registration.wait, awaited
    query = await aio.get(discovery, "api")           # Discovery.get, read off the loop
    async with aio.registered(discovery, "api", host, timeout=10) as registration:
        ...                                           # revoked when the block ends
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

from reactivex import abc

from rx_discovery._errors import RegistrationError
from rx_discovery.discovery import Discovery
from rx_discovery.model import Host
from rx_discovery.query import ServiceQuery
from rx_discovery.registration import Registration, RegistrationStatus

__all__ = ["ObservableIterator", "get", "iterate", "registered", "wait"]

T = TypeVar("T")


class _Inbox(Generic[T]):
    """What the observer hands to the loop. Touched only on the loop thread, except
    :meth:`post`, which any thread may call. Holds no reference to the iterator, so dropping
    the iterator (a ``break`` out of ``async for``) lets it be collected and disposed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_queue: int) -> None:
        self.loop = loop
        self.max_queue = max_queue
        self.items: collections.deque[T] = collections.deque()
        self.error: BaseException | None = None
        self.done = False
        self.waiter: asyncio.Future[None] | None = None

    # --- any thread ---------------------------------------------------------------------

    def on_next(self, value: T) -> None:
        self._post(self._push, value)

    def on_error(self, error: Exception) -> None:
        self._post(self._finish, error)

    def on_completed(self) -> None:
        self._post(self._finish, None)

    def _post(self, action: Callable[[Any], None], argument: object) -> None:
        # RuntimeError: the loop is closed, so nobody will consume this any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(action, argument)

    # --- loop thread --------------------------------------------------------------------

    def _push(self, value: T) -> None:
        if self.done:
            return
        self.items.append(value)
        if self.max_queue and len(self.items) > self.max_queue:
            self.items.popleft()  # keep the latest: the consumer fell behind
        self._wake()

    def _finish(self, error: BaseException | None) -> None:
        if self.done:
            return
        self.done, self.error = True, error
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class ObservableIterator(AsyncIterator[T]):
    """An async iterator over an observable's items; also an async context manager.

    Returned by :func:`iterate`. It subscribes on first use (``__anext__`` or ``__aenter__``)
    and disposes the subscription, exactly once, when any of these happens:

    - the observable completes (iteration stops) or fails (its error is raised in the
      consumer, after the items that came before it);
    - the ``async with`` block ends, or :meth:`aclose` is called;
    - the task awaiting the next item is cancelled (e.g. by ``asyncio.timeout``): the
      ``CancelledError`` propagates and the iterator is closed;
    - the iterator is garbage-collected (a ``break`` out of ``async for iterate(...)``:
      on CPython, at once).

    It must be used from one event loop, the one running when it subscribed.
    """

    def __init__(self, observable: abc.ObservableBase[T], max_queue: int = 0) -> None:
        self._closed = False
        self._lock = threading.Lock()  # dispose may come from a finalizer on another thread
        self._subscription: abc.DisposableBase | None = None
        self._inbox: _Inbox[T] | None = None
        if not isinstance(max_queue, int) or isinstance(max_queue, bool) or max_queue < 0:
            self._closed = True
            raise ValueError(f"max_queue must be an int >= 0, got {max_queue!r}")
        self._observable = observable
        self._max_queue = max_queue

    @property
    def closed(self) -> bool:
        """True once the subscription was disposed (or iteration ended)."""
        return self._closed

    def _start(self) -> _Inbox[T]:
        if self._inbox is None:
            inbox: _Inbox[T] = _Inbox(asyncio.get_running_loop(), self._max_queue)
            self._inbox = inbox
            if not self._closed:
                subscription = self._observable.subscribe(
                    on_next=inbox.on_next, on_error=inbox.on_error,
                    on_completed=inbox.on_completed)
                with self._lock:
                    if self._closed:
                        subscription.dispose()
                    else:
                        self._subscription = subscription
        return self._inbox

    def _dispose(self) -> None:
        with self._lock:
            self._closed = True
            subscription, self._subscription = self._subscription, None
        if subscription is not None:
            subscription.dispose()

    def __aiter__(self) -> ObservableIterator[T]:
        return self

    async def __anext__(self) -> T:
        """The next item, waiting on the loop for it.

        Raises:
            StopAsyncIteration: the observable completed, or the iterator was closed.
            Exception: the observable's error.
            asyncio.CancelledError: the waiting task was cancelled (the iterator is closed).
        """
        inbox = self._start()
        while not inbox.items:
            if self._closed:
                raise StopAsyncIteration
            if inbox.done:
                self._dispose()
                if inbox.error is not None:
                    error, inbox.error = inbox.error, None
                    raise error
                raise StopAsyncIteration
            inbox.waiter = inbox.loop.create_future()
            try:
                await inbox.waiter
            except asyncio.CancelledError:
                self._dispose()
                raise
            finally:
                inbox.waiter = None
        return inbox.items.popleft()

    async def aclose(self) -> None:
        """Dispose the subscription; later ``__anext__`` calls stop the iteration."""
        self._dispose()
        if self._inbox is not None:
            self._inbox.items.clear()

    async def __aenter__(self) -> ObservableIterator[T]:
        self._start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if not self._closed:
            self._dispose()


def iterate(observable: abc.ObservableBase[T], *, max_queue: int = 0) -> ObservableIterator[T]:
    """Iterate over ``observable`` with ``async for``, on the running event loop.

    Nothing happens until first use: the subscription is made by the first ``__anext__`` (or
    ``async with``), inside a running loop. Items are queued until consumed.

    Args:
        observable: any observable; it may emit on any thread.
        max_queue: 0 (default) queues every item; ``n > 0`` keeps at most the ``n`` latest
            unconsumed items and drops older ones. Use ``max_queue=1`` for state streams such
            as :meth:`~rx_discovery.Discovery.hosts`, where only the latest value matters;
            never for event streams that must not lose items.

    Returns:
        An async iterator that is also an async context manager; see
        :class:`ObservableIterator` for when the subscription is disposed.

    Raises:
        ValueError: ``max_queue`` is negative or not an int.
    """
    return ObservableIterator(observable, max_queue)


# How often wait() re-checks a registration whose status has not changed: a refusal by etcd
# (wrong credentials) settles it without a status change.
_RECHECK_S = 0.2


async def wait(registration: Registration, timeout: float | None = None) -> Registration:
    """Await the first registration of ``registration``; the loop keeps running meanwhile.

    The same outcomes as :meth:`Registration.wait`, without a thread: woken by the status
    stream (and re-checked every 0.2 s), it checks with ``wait(0)``, which never blocks.

    Raises:
        RegistrationError: not registered within ``timeout`` seconds, disposed first,
            refused by etcd, or withdrawn for good (its health observable failed or ended).
    """
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def poke(*_: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(changed.set)

    subscription = registration.status.subscribe(on_next=poke, on_error=poke,
                                                 on_completed=poke)
    try:
        async with asyncio.timeout(timeout):
            while True:
                changed.clear()
                try:
                    return registration.wait(0)
                except RegistrationError as error:  # settled for good, or not yet
                    if (registration.current_status is RegistrationStatus.DISPOSED
                            or " refused: " in str(error)
                            or " withdrawn for good: " in str(error)):
                        raise
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_RECHECK_S):
                        await changed.wait()
    except TimeoutError:
        raise RegistrationError(f"registration of {registration.service!r} not done after "
                                f"{timeout}s") from None
    finally:
        subscription.dispose()


async def get(discovery: Discovery, service: str, shard: str | None = None) -> ServiceQuery:
    """:meth:`Discovery.get`, read in a worker thread (the read is bounded by the store's
    timeout), so the loop never blocks; returns the loaded query.

    Raises:
        ValueError: a bad service name or shard (before any I/O).
        ServiceNotFound: nothing is stored for the service.
        StoreUnavailable: etcd did not answer.
    """
    query = discovery.get(service, shard)
    await asyncio.to_thread(query.host_set)
    return query


@contextlib.asynccontextmanager
async def registered(discovery: Discovery, service: str, host: Host, ttl: float = 5.0, *,
                     timeout: float | None = None) -> AsyncIterator[Registration]:
    """``async with registered(...) as registration``: register, await the registration,
    and dispose it (revoking its lease, in a worker thread) when the block ends, however it
    ends.

    Raises:
        ValueError: bad arguments (before any I/O).
        RegistrationError: as :func:`wait`.
    """
    registration = discovery.register(service, host, ttl)
    try:
        await wait(registration, timeout)
        yield registration
    finally:
        await asyncio.to_thread(registration.dispose)
