"""rx_discovery.aio.iterate: an observable consumed with ``async for`` on the event loop.

Every test runs its coroutine under a deadline (``asyncio.wait_for``), so a bug fails fast
instead of hanging.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
import reactivex
from reactivex import abc
from reactivex.disposable import Disposable
from reactivex.subject import Subject

from rx_discovery import Discovery, HostSet
from rx_discovery.aio import iterate
from rx_discovery.testing import make_host

T = TypeVar("T")

DEADLINE = 10.0


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on a fresh loop, failing after DEADLINE seconds."""
    return asyncio.run(asyncio.wait_for(coroutine, DEADLINE))


class Tracked:
    """An observable that records its subscriptions and disposals, backed by a Subject."""

    def __init__(self) -> None:
        self.subject: Subject[int] = Subject()
        self.subscribed = threading.Event()
        self.disposed = threading.Event()
        self.observable: reactivex.Observable[int] = reactivex.create(self._subscribe)

    def _subscribe(self, observer: abc.ObserverBase[int], _: Any) -> abc.DisposableBase:
        inner = self.subject.subscribe(observer)
        self.subscribed.set()

        def dispose() -> None:
            inner.dispose()
            self.disposed.set()

        return Disposable(dispose)


def test_delivers_on_the_loop_thread_what_another_thread_emits() -> None:
    tracked = Tracked()
    emitter_threads: list[int] = []

    def emit() -> None:
        emitter_threads.append(threading.get_ident())
        for i in range(100):
            tracked.subject.on_next(i)
        tracked.subject.on_completed()

    async def main() -> tuple[list[int], set[int], int]:
        received: list[int] = []
        threads: set[int] = set()
        async with iterate(tracked.observable) as items:
            thread = threading.Thread(target=emit)
            thread.start()
            async for item in items:
                received.append(item)
                threads.add(threading.get_ident())
            thread.join(DEADLINE)
        return received, threads, threading.get_ident()

    received, threads, loop_thread = run(main())
    assert received == list(range(100))
    assert threads == {loop_thread}
    assert emitter_threads and emitter_threads[0] != loop_thread
    assert tracked.disposed.is_set()  # completion disposes too


def test_subscribes_on_first_use_only() -> None:
    tracked = Tracked()
    iterator = iterate(tracked.observable)
    assert not tracked.subscribed.is_set()

    async def main() -> int:
        tracked.subject.on_next(0)  # before the subscription: not seen
        pending = asyncio.ensure_future(iterator.__anext__())
        await asyncio.sleep(0)
        assert tracked.subscribed.is_set()
        tracked.subject.on_next(7)
        return await pending

    assert run(main()) == 7
    run(iterator.aclose())
    assert tracked.disposed.is_set()


def test_raises_the_observable_error_after_the_items_before_it() -> None:
    tracked = Tracked()

    async def main() -> list[int]:
        received: list[int] = []
        async with iterate(tracked.observable) as items:
            tracked.subject.on_next(1)
            tracked.subject.on_next(2)
            tracked.subject.on_error(KeyError("boom"))
            with pytest.raises(KeyError, match="boom"):
                async for item in items:
                    received.append(item)
        return received

    assert run(main()) == [1, 2]
    assert tracked.disposed.is_set()


def test_break_disposes_the_subscription() -> None:
    tracked = Tracked()

    def emit_once_subscribed() -> None:
        tracked.subscribed.wait(DEADLINE)
        tracked.subject.on_next(1)

    async def main() -> None:
        threading.Thread(target=emit_once_subscribed).start()
        async for _ in iterate(tracked.observable):
            break
        # The iterator is unreachable once the loop is left: disposed without aclose().
        assert tracked.disposed.is_set()

    run(main())
    assert not tracked.subject.observers


def test_break_inside_async_with_disposes_on_exit() -> None:
    tracked = Tracked()

    async def main() -> None:
        async with iterate(tracked.observable) as items:
            tracked.subject.on_next(1)
            async for _ in items:
                break
        assert tracked.disposed.is_set()
        with pytest.raises(StopAsyncIteration):
            await items.__anext__()

    run(main())


def test_cancellation_disposes_the_subscription() -> None:
    tracked = Tracked()

    async def main() -> None:
        items = iterate(tracked.observable)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                async for _ in items:
                    pass  # nothing ever comes
        assert tracked.disposed.is_set()
        assert items.closed

    run(main())
    assert not tracked.subject.observers


def test_cancelling_the_consumer_task_disposes() -> None:
    tracked = Tracked()

    async def main() -> None:
        async def consume() -> None:
            async for _ in iterate(tracked.observable):
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.get_running_loop().run_in_executor(None, tracked.subscribed.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert tracked.disposed.is_set()

    run(main())


def test_max_queue_keeps_the_latest_items() -> None:
    tracked = Tracked()

    async def main() -> list[int]:
        async with iterate(tracked.observable, max_queue=2) as items:
            for i in range(10):
                tracked.subject.on_next(i)
            tracked.subject.on_completed()
            await asyncio.sleep(0)  # let the loop run the queued deliveries
            return [item async for item in items]

    assert run(main()) == [8, 9]


def test_max_queue_must_be_a_non_negative_int() -> None:
    with pytest.raises(ValueError, match="max_queue"):
        iterate(reactivex.empty(), max_queue=-1)


def test_completes_an_empty_observable() -> None:
    async def main() -> list[int]:
        return [item async for item in iterate(reactivex.empty())]

    assert run(main()) == []


def test_hosts_of_an_in_memory_discovery() -> None:
    async def main() -> list[HostSet]:
        seen: list[HostSet] = []
        with Discovery.in_memory() as discovery:
            async with iterate(discovery.hosts("api")) as sets:
                async for hosts in sets:
                    seen.append(hosts)
                    if len(hosts) == 0:
                        discovery.register("api", make_host(1), ttl=5)
                    elif len(hosts) == 1:
                        break
        return seen

    seen = run(main())
    assert [len(hosts) for hosts in seen] == [0, 1]
    assert seen[-1].first().hostname == "host-1.test"
