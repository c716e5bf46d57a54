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

__all__ = ["ObservableIterator", "iterate"]

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
