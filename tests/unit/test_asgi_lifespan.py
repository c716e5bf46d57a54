"""rx_discovery.asgi.discovery_lifespan without a server (issue 15): what the lifespan does on
startup and shutdown; tests/integration/test_servers_sigterm.py runs it under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rx_discovery import Discovery, RegistrationStatus
from rx_discovery.asgi import discovery_lifespan
from rx_discovery.testing import make_host


@pytest.mark.slow
def test_registers_on_startup_then_removes_and_drains_on_shutdown_composed() -> None:
    made: list[Discovery] = []

    def make() -> Discovery:
        made.append(Discovery.in_memory())
        return made[-1]

    @contextlib.asynccontextmanager
    async def users_lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        # the README's composition: the app's own startup first, discovery last
        async with discovery_lifespan("api", make_host(1), drain=0.5, discovery=make,
                                      signals=(signal.SIGUSR1,))(app) as state:
            yield {**state, "mine": True}

    before = signal.getsignal(signal.SIGUSR1)
    seen: dict[str, Any] = {}

    async def run() -> float:
        async with users_lifespan(object()) as state:
            assert not made[0]._closed
            registration = state["registration"]
            await asyncio.to_thread(registration.wait, 10)
            seen.update(state, key=made[0].store.get(registration.key),
                        handler=signal.getsignal(signal.SIGUSR1))
            stopping = time.monotonic()
        return time.monotonic() - stopping

    shutdown = asyncio.run(run())
    assert seen["discovery"] is made[0] and seen["mine"] and seen["key"] is not None
    assert seen["handler"] is not before  # drain_on_signal installed during startup...
    assert signal.getsignal(signal.SIGUSR1) is before  # ...and the previous one restored
    registration = seen["registration"]
    assert registration.current_status is RegistrationStatus.DISPOSED
    assert made[0]._closed
    assert shutdown >= 0.5  # the shutdown phase drained
