"""Small helpers shared by the tests (import as ``from helpers import wait_until``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from rx_discovery import Host


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01,
               message: str = "") -> None:
    """Poll ``predicate`` until it returns something truthy.

    Raises:
        AssertionError: still falsy after ``timeout`` seconds (with ``message``).
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for "
                                 f"{message or getattr(predicate, '__name__', 'a condition')}")
        time.sleep(interval)


class Recorder:
    """Observer that records what an observable emits (from any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Any] = []
        self.error: Exception | None = None
        self.completed = False
        self.subscription: Any = None  # set by the test, to dispose it

    def on_next(self, item: Any) -> None:
        with self._lock:
            self._items.append(item)

    def on_error(self, error: Exception) -> None:
        self.error = error

    def on_completed(self) -> None:
        self.completed = True

    @property
    def items(self) -> list[Any]:
        with self._lock:
            return list(self._items)


def slow_reads(store: Any, seconds: float) -> Callable[[], None]:
    """Make every ``get_prefix`` of ``store`` (an instance) take ``seconds`` longer, as an
    etcd that answers slowly; returns the undo."""
    read = store.get_prefix

    def slow_read(prefix: str) -> Any:
        time.sleep(seconds)
        return read(prefix)

    store.get_prefix = slow_read
    return lambda: setattr(store, "get_prefix", read)


def subscribe(observable: Any) -> Recorder:
    """Subscribe a :class:`Recorder` (kept in its ``subscription``) and return it."""
    recorder = Recorder()
    recorder.subscription = observable.subscribe(recorder)
    return recorder


def host(n: int, **fields: Any) -> Host:
    """Host n of a test: ``host-n.test``, http on port 8000 + n."""
    return Host(hostname=f"host-{n}.test", ports={"http": str(8000 + n)}, **fields)
