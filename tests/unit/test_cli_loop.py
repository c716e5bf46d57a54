"""The CLI's main-thread inbox wakes up for a stop signal whichever thread the OS hands it to.

A SIGINT may land on another thread (gRPC's), or just before the main thread parks in a wait.
CPython then only sets a flag: its handler runs when the main thread next executes bytecode. A
main thread parked in a blocking queue wait for ever would never run it (seen: ``ls --watch`` on
a quiet keyspace ignored Ctrl-C), so the inbox must wake up on its own to let the handler run.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest

from rx_discovery.cli._loop import _Inbox, _pump, _Stop, _stop_on_signals

_UNBLOCK = object()  # posted by the guard if the stop never arrives (a failing test, not a hang)


def _signal_on_other_thread(inbox: _Inbox, guard_after: float) -> threading.Thread:
    def run() -> None:
        # Give the main thread time to park in its wait (were it still running bytecode, it
        # would run the handler at once and the test would pass for the wrong reason, never
        # fail for one), then deliver the signal to this thread.
        time.sleep(0.5)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        stopped.wait(guard_after)
        inbox.put(_UNBLOCK)

    stopped = threading.Event()
    thread = threading.Thread(target=run, daemon=True)
    thread.stopped = stopped  # type: ignore[attr-defined]
    thread.start()
    return thread


@pytest.mark.slow
def test_a_blocking_get_returns_the_stop_of_a_signal_delivered_to_another_thread() -> None:
    inbox = _Inbox()
    with _stop_on_signals(inbox):
        guard = _signal_on_other_thread(inbox, guard_after=10.0)
        item = inbox.get(None)
        guard.stopped.set()  # type: ignore[attr-defined]
        guard.join()
    assert isinstance(item, _Stop), "the main thread slept through the signal"
    assert item.signum == signal.SIGINT


@pytest.mark.slow
def test_the_pump_returns_on_a_signal_delivered_to_another_thread() -> None:
    inbox = _Inbox()
    handled: list[object] = []
    with _stop_on_signals(inbox):
        guard = _signal_on_other_thread(inbox, guard_after=10.0)
        _pump(inbox, handled.append)
        guard.stopped.set()  # type: ignore[attr-defined]
        guard.join()
    assert _UNBLOCK not in handled, "the pump slept through the signal"


def test_the_etcd_command_stops_while_etcd_is_still_starting(monkeypatch: Any) -> None:
    """``rx-discovery etcd``: a Ctrl-C while the server starts (an etcd that never gets ready
    waits 20 s) ends the command at once (exit 130), and the server is closed."""
    import argparse

    from rx_discovery.cli import _loop
    from rx_discovery.cli import etcd as etcd_command
    from rx_discovery.embedded import EmbeddedEtcd

    release = threading.Event()
    closed: list[bool] = []

    class NeverReady(EmbeddedEtcd):
        def start(self, wait: bool = True) -> EmbeddedEtcd:
            release.wait(30)  # a start that blocks (until the test ends)
            return self

        def close(self) -> None:
            closed.append(True)

    monkeypatch.setattr(etcd_command, "etcd_server",
                        lambda data_dir, client, peer: NeverReady(ports=(client, peer, 1)))
    inbox = _Inbox()
    inbox.put(_Stop(signal.SIGINT))  # Ctrl-C as the command starts
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(etcd_command.run(argparse.Namespace(
                data_dir=None, port=None, peer_port=None, inbox=inbox)))
        except BaseException as error:
            outcome.append(error)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        worker.join(10)
        assert not worker.is_alive(), "the stop waited for etcd to be ready"
    finally:
        release.set()
    assert len(outcome) == 1 and isinstance(outcome[0], _loop._Interrupted), outcome
    assert closed, "the server was not closed"
