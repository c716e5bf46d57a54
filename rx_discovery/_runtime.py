"""Where background work runs: a time scheduler for delays and an I/O scheduler for calls.

Store calls block (network round trips with a deadline), so they never run on the timer
thread nor on a store's watch thread: timers hop to the I/O scheduler. User code that work
on the I/O scheduler has to deliver is handed off (:meth:`Runtime.hand_off`), so that an
observer that blocks never holds a worker that keepalives need. On the memory store all of
them are the store's scheduler (a ``TestScheduler`` in marble tests), so everything runs in
virtual time.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from reactivex import abc, typing
from reactivex.disposable import (
    CompositeDisposable,
    Disposable,
    SerialDisposable,
    SingleAssignmentDisposable,
)
from reactivex.internal.exceptions import DisposedException
from reactivex.scheduler.scheduler import Scheduler

__all__ = ["Backoff", "PoolScheduler", "Runtime"]

_TState = TypeVar("_TState")

log = logging.getLogger("rx_discovery")

_RNG = random.Random()  # seeding one per Backoff costs ~80 us (os.urandom)


@dataclass
class Backoff:
    """Jittered exponential backoff: the n-th delay is uniform in [d/2, d] with
    ``d = min(maximum, initial * 2**n)``, so many clients reconnecting at once spread out
    instead of stampeding the server.
    """

    initial: float = 0.1
    maximum: float = 5.0
    rng: random.Random = field(default_factory=lambda: _RNG, repr=False)
    attempt: int = 0

    def next(self) -> float:
        """The delay before the next attempt (and count the attempt)."""
        ceiling = min(self.maximum, self.initial * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Start again from the initial delay (after a success)."""
        self.attempt = 0


class PoolScheduler(Scheduler):
    """Runs actions on a thread pool: what reactivex's ``ThreadPoolScheduler`` does, without
    building an event-loop scheduler for every action (~85 us each). Only immediate actions:
    delays are measured on a :class:`Runtime`'s timer."""

    def __init__(self, workers: int) -> None:
        super().__init__()
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="rx-discovery-io")

    def schedule(self, action: abc.ScheduledAction[_TState], state: _TState | None = None
                 ) -> abc.DisposableBase:
        disposable = SingleAssignmentDisposable()

        def run() -> None:
            if not disposable.is_disposed:
                disposable.disposable = self.invoke_action(action, state)

        self.executor.submit(run)
        return disposable

    def schedule_relative(self, duetime: typing.RelativeTime,
                          action: abc.ScheduledAction[_TState], state: _TState | None = None
                          ) -> abc.DisposableBase:
        raise NotImplementedError("PoolScheduler runs immediate actions only")

    def schedule_absolute(self, duetime: typing.AbsoluteTime,
                          action: abc.ScheduledAction[_TState], state: _TState | None = None
                          ) -> abc.DisposableBase:
        raise NotImplementedError("PoolScheduler runs immediate actions only")

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class Runtime:
    """Runs actions on the I/O scheduler, now or after a delay measured on the timer.

    Args:
        delivery: where background work hands user code (observers) off to, so that an
            observer that blocks never holds an I/O worker that registrations and keepalives
            need; None: on the thread that did the work (the memory store's scheduler).
    """

    def __init__(self, timer: abc.SchedulerBase, io: abc.SchedulerBase,
                 delivery: abc.SchedulerBase | None = None) -> None:
        self.timer = timer
        self.io = io
        self.delivery = delivery

    def with_timer(self, timer: abc.SchedulerBase | None) -> Runtime:
        """The same I/O scheduler with another timer (a caller's ``scheduler=``)."""
        return self if timer is None else Runtime(timer, self.io, self.delivery)

    def hand_off(self, deliver: Callable[[], None]) -> None:
        """Run ``deliver`` (which calls user code) on the delivery scheduler, or here when
        there is none; exceptions are logged."""
        if self.delivery is None:
            deliver()
            return
        try:
            self.delivery.schedule(lambda _s, _t: _guard(deliver))
        except (DisposedException, RuntimeError):  # no thread to be had: deliver here
            deliver()

    def now(self) -> float:
        """The timer's clock, in seconds."""
        return self.timer.now.timestamp()

    def run(self, action: Callable[[], None]) -> abc.DisposableBase:
        """Run ``action`` on the I/O scheduler; exceptions are logged, never lost silently."""
        try:
            return self.io.schedule(lambda _s, _t: _guard(action))
        except (DisposedException, RuntimeError):  # closed (a pool refuses new work)
            return Disposable()

    def after(self, delay: float, action: Callable[[], None]) -> abc.DisposableBase:
        """Run ``action`` on the I/O scheduler once ``delay`` seconds passed on the timer."""
        if delay <= 0:
            return self.run(action)
        hop = SerialDisposable()

        def fire(_s: abc.SchedulerBase, _t: Any) -> None:
            hop.disposable = self.run(action)

        try:
            timer = self.timer.schedule_relative(delay, fire)
        except DisposedException:  # the Discovery closed meanwhile: nothing more to do
            return hop
        return CompositeDisposable(timer, hop)


def _guard(action: Callable[[], None]) -> None:
    try:
        action()
    except Exception:  # a bug must not kill a scheduler thread silently
        log.exception("rx-discovery background action failed")
