"""The main thread's loop: one queue that streams, timers and signals feed.

Signals never raise in the middle of library code: from the start of :func:`main`, SIGINT and
SIGTERM only post a :class:`_Stop` to the inbox (a ``KeyboardInterrupt`` landing inside
``Discovery.close()`` would leave gRPC channels to the interpreter's finalization, where they
can wait for ever on gRPC's frozen daemon threads). Blocking work that a stop must be able to
cut short (the first read, starting etcd) runs in a worker thread: :func:`_blocking`.
"""

from __future__ import annotations

import dataclasses
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import TypeVar

_T = TypeVar("_T")


class _Interrupted(Exception):
    """A stop request arrived before the command got going (exit 130)."""


# --- the main-thread inbox ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Stop:
    """A stop request (SIGINT or SIGTERM)."""

    signum: int


# How long the main thread sleeps in one wait at most. CPython runs a Python signal handler
# only when the main thread next executes bytecode; a signal that lands just before the main
# thread parks in a wait (after its last check), or on another thread (gRPC's), only sets a
# flag, and one endless wait would never run it: Ctrl-C ignored on a quiet keyspace (seen in
# 3 of 60 tries of `ls --watch`).
_SIGNAL_POLL = 0.2


class _Inbox:
    """A thread-safe queue feeding the main thread.

    ``queue.SimpleQueue.put`` is reentrant, so signal handlers post into it too. A blocked
    :meth:`get` wakes up at least every ``_SIGNAL_POLL`` seconds so that a signal delivered to
    another thread has its handler run (and its stop posted) promptly.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()

    def put(self, item: object) -> None:
        """Post ``item`` (any thread, or a signal handler)."""
        self._queue.put(item)

    def get(self, deadline: float | None) -> object | None:
        """The next item, or None once ``deadline`` (``time.monotonic()``) has passed."""
        while True:
            wait = _SIGNAL_POLL
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return None
            try:
                return self._queue.get(timeout=wait)
            except queue.Empty:
                continue  # the bytecode boundary where a pending signal handler runs


@contextmanager
def _stop_on_signals(inbox: _Inbox) -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`_Stop` items while the block runs."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        inbox.put(_Stop(signum))

    previous = {signum: signal.signal(signum, handler)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@dataclasses.dataclass(order=True)
class _Step:
    """An action to run on the main thread at ``at`` (``time.monotonic()``)."""

    at: float
    action: Callable[[], None] = dataclasses.field(compare=False)


def _pump(inbox: _Inbox, handle: Callable[[object], None], *, until: float | None = None,
          steps: Sequence[_Step] = ()) -> None:
    """Deliver inbox items to ``handle`` and run ``steps`` on time, on this (main) thread.

    Returns at ``until`` or on a stop request; an exception posted to the inbox (a stream's
    error) is raised here. Sleeps in the queue between items: no busy loop.
    """
    pending = sorted(steps)
    while True:
        now = time.monotonic()
        while pending and pending[0].at <= now:
            pending.pop(0).action()
        if until is not None and now >= until:
            return
        wake = until
        if pending and (wake is None or pending[0].at < wake):
            wake = pending[0].at
        item = inbox.get(wake)
        if isinstance(item, _Stop):
            return
        if isinstance(item, BaseException):
            raise item
        if item is not None and not isinstance(item, _Wake):
            handle(item)


def _blocking(inbox: _Inbox, action: Callable[[], _T]) -> _T:
    """Run ``action`` in a daemon thread and return its result, or raise
    :class:`_Interrupted` as soon as a stop request arrives (the thread is abandoned: the
    process is about to exit). Items other than stops that arrive meanwhile are kept."""
    done: queue.SimpleQueue[tuple[bool, object]] = queue.SimpleQueue()

    def run() -> None:
        try:
            done.put((True, action()))
        except BaseException as error:
            done.put((False, error))
        inbox.put(_Wake())

    threading.Thread(target=run, name="rx-discovery-cli-blocking", daemon=True).start()
    held: list[object] = []
    try:
        while done.empty():
            item = inbox.get(None)
            if isinstance(item, _Stop):
                raise _Interrupted()
            if not isinstance(item, _Wake):
                held.append(item)
    finally:
        for item in held:
            inbox.put(item)
    ok, value = done.get()
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]


class _Wake:
    """Wakes the main thread up (a blocking action finished)."""
