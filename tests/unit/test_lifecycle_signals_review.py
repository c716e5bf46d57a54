"""Review of drain_on_signal (issue 15): handlers chained once, ignored signals left alone,
a clear error off the main thread. In-process, on SIGUSR1 (nothing else uses it here)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import wait_until

from rx_discovery.lifecycle import drain_on_signal

SIG = signal.SIGUSR1


class Target:
    """Stands for a Registration: dispose(drain=) blocks until released (the drain)."""

    def __init__(self) -> None:
        self.disposed = threading.Event()
        self.release = threading.Event()
        self.done = threading.Event()

    def dispose(self, drain: float = 0.0) -> None:
        self.disposed.set()
        self.release.wait(10)
        self.done.set()


@pytest.fixture
def saved() -> Iterator[None]:
    old = signal.getsignal(SIG)
    try:
        yield
    finally:
        signal.signal(SIG, old)


@pytest.mark.slow
def test_a_second_signal_during_the_drain_runs_the_previous_handler_once_only(
        saved: None) -> None:
    calls: list[int] = []
    signal.signal(SIG, lambda signum, _frame: calls.append(signum))
    target = Target()
    restore = drain_on_signal(target, 1.0, signals=[SIG])  # type: ignore[arg-type]
    try:
        os.kill(os.getpid(), SIG)
        wait_until(target.disposed.is_set, 10.0, 0.01, "the drain started")
        os.kill(os.getpid(), SIG)  # impatient: the previous handler runs at once
        wait_until(lambda: calls == [SIG], 10.0, 0.01, "the previous handler ran")
        target.release.set()  # the drain ends
        wait_until(target.done.is_set, 10.0, 0.01, "the drain ended")
        deadline = threading.Event()
        for _ in range(50):  # the drain thread's re-delivery, if any, lands meanwhile
            deadline.wait(0.02)
        assert calls == [SIG]  # once: not again when the drain ends
    finally:
        restore.dispose()


@pytest.mark.slow
def test_an_ignored_signal_stays_ignored_and_removes_nothing(saved: None) -> None:
    signal.signal(SIG, signal.SIG_IGN)
    target = Target()
    target.release.set()
    restore = drain_on_signal(target, 0.0, signals=[SIG])  # type: ignore[arg-type]
    try:
        assert signal.getsignal(SIG) == signal.SIG_IGN
        os.kill(os.getpid(), SIG)
        for _ in range(25):
            threading.Event().wait(0.02)
        assert not target.disposed.is_set()
    finally:
        restore.dispose()


def test_drain_on_signal_off_the_main_thread_is_a_runtime_error_installing_nothing(
        saved: None) -> None:
    errors: list[BaseException] = []

    def install() -> None:
        try:
            drain_on_signal(Target(), 1.0, signals=[SIG])  # type: ignore[arg-type]
        except BaseException as error:
            errors.append(error)

    before: Any = signal.getsignal(SIG)
    thread = threading.Thread(target=install)
    thread.start()
    thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError), errors
    assert "main thread" in str(errors[0])
    assert signal.getsignal(SIG) == before


def test_a_signal_handled_by_an_asyncio_loop_is_reported_since_the_drain_cannot_delay_it(
        saved: None, caplog: pytest.LogCaptureFixture) -> None:
    """asyncio's loop.add_signal_handler is woken by the signal itself (the wakeup fd), so its
    handler runs at once whatever Python handler is installed: the drain cannot come first.
    That must not pass in silence."""
    import asyncio

    async def install() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(SIG, lambda: None)
        try:
            drain_on_signal(Target(), 1.0, signals=[SIG]).dispose()  # type: ignore[arg-type]
        finally:
            loop.remove_signal_handler(SIG)

    with caplog.at_level("WARNING", logger="rx_discovery"):
        asyncio.run(install())
    assert any("asyncio" in r.getMessage() and "at once" in r.getMessage()
               for r in caplog.records), caplog.text


def test_a_signal_that_cannot_be_handled_installs_nothing(saved: None) -> None:
    """SIGKILL cannot be caught: the call fails, and the signals before it in the list are
    left as they were (not half installed)."""
    before = signal.getsignal(SIG)
    with pytest.raises((OSError, ValueError)):
        drain_on_signal(Target(), 1.0, signals=[SIG, signal.SIGKILL])  # type: ignore[arg-type]
    assert signal.getsignal(SIG) == before
