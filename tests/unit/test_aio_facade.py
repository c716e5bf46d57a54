"""The awaitable forms of the blocking calls (issue 16, item 7): ``aio.wait``, ``aio.get``
and ``async with aio.registered(...)`` never block the event loop: a ticker task keeps
ticking while they wait. Server-free: the memory store, on its own real-time loop thread,
with its fault switches standing in for an etcd that is down."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from rx_discovery import Discovery, Host, RegistrationError, RegistrationStatus, aio
from rx_discovery.store.memory import MemoryStore


class Ticker:
    """A task that counts ticks every 10 ms: if the loop is blocked, it stops counting."""

    def __init__(self) -> None:
        self.ticks = 0
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            self.ticks += 1

    def stop(self) -> None:
        self._task.cancel()


def _memory() -> tuple[Discovery, MemoryStore]:
    discovery = Discovery.in_memory()
    store = discovery.store
    assert isinstance(store, MemoryStore)
    return discovery, store


async def _ticks_while(action: Awaitable[object], then: Callable[[], None]) -> int:
    """Ticks counted while ``action`` is pending, up to ``then()`` being called 0.3 s in."""
    ticker = Ticker()
    task = asyncio.ensure_future(action)
    await asyncio.sleep(0.3)
    assert not task.done()
    during = ticker.ticks
    then()
    await asyncio.wait_for(task, 10)
    ticker.stop()
    return during


def test_wait_keeps_the_loop_running_until_registered() -> None:
    discovery, store = _memory()

    async def main() -> None:
        store.disconnect()  # etcd is down: the registration waits
        registration = discovery.register("api", Host("h", ports={"http": "80"}))
        ticks = await _ticks_while(aio.wait(registration, timeout=20), store.reconnect)
        assert ticks >= 10  # 30 possible in 0.3 s; a blocked loop counts 0
        assert registration.ready

    with discovery:
        asyncio.run(main())


def test_wait_times_out_and_reports_disposal() -> None:
    discovery, store = _memory()

    async def main() -> None:
        store.disconnect()
        registration = discovery.register("api", Host("h", ports={"http": "80"}))
        with pytest.raises(RegistrationError, match=r"not done after 0\.2s"):
            await aio.wait(registration, timeout=0.2)
        waiting = asyncio.ensure_future(aio.wait(registration))
        await asyncio.sleep(0.05)
        registration.dispose()
        with pytest.raises(RegistrationError, match="disposed"):
            await asyncio.wait_for(waiting, 10)

    with discovery:
        asyncio.run(main())


def test_get_reads_off_the_loop() -> None:
    discovery, _ = _memory()

    async def main() -> None:
        discovery.register("api", Host("h", ports={"http": "80"})).wait(10)
        query = await aio.get(discovery, "api")
        assert query.first().hostname == "h"

    with discovery:
        asyncio.run(main())


def test_registered_is_an_async_context_manager_that_disposes() -> None:
    discovery, _ = _memory()

    async def main() -> None:
        async with aio.registered(discovery, "api", Host("h", ports={"http": "80"}),
                                  timeout=10) as registration:
            assert registration.ready
            assert (await aio.get(discovery, "api")).first().hostname == "h"
        assert registration.current_status is RegistrationStatus.DISPOSED
        assert discovery.get("api").host_set() == {}

    with discovery:
        asyncio.run(main())
