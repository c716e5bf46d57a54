"""Survivors of the mutation run of ``_runtime`` and ``health`` (issue 17): each test names
the mutants it kills (``docs/mutants-core.md``). Server-free: TestSchedulers for the
runtime's timing; for the I/O pool and the health tracker's own thread, real threads that
the test holds with events (conditions with deadlines, no sleeps).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from helpers import wait_until
from reactivex.scheduler import ImmediateScheduler
from reactivex.testing import TestScheduler
from test_review17 import Clock

from rx_discovery._runtime import PoolScheduler, Runtime
from rx_discovery.health import Health, HealthState, HealthTracker

# --- PoolScheduler: the etcd path's I/O, keepalive and delivery pools -----------------------


@pytest.fixture
def pool() -> Iterator[PoolScheduler]:
    """A pool of one worker, shut down after the test."""
    pool = PoolScheduler(1)
    yield pool
    pool.shutdown()


def blocked_action(pool: PoolScheduler) -> tuple[threading.Event, list[threading.Thread]]:
    """Schedule on ``pool`` an action that holds its worker until the returned event is set;
    the list gets the worker's thread once the action runs."""
    release = threading.Event()
    ran_on: list[threading.Thread] = []

    def hold(_s: Any, _t: Any) -> None:
        ran_on.append(threading.current_thread())
        release.wait(30)

    pool.schedule(hold)
    wait_until(lambda: ran_on, message="the first action to start")
    return release, ran_on


def test_a_pool_runs_no_more_actions_at_once_than_its_workers_on_threads_named_for_it(
        pool: PoolScheduler) -> None:
    # mutants: PoolScheduler.__init__ 2, 4 (the executor's default size, min(32, cpus + 4),
    # instead of ``workers``: the Discovery's 8 I/O, 2 keepalive and 8 delivery workers
    # unbounded by their sizes); __init__ 3, 5, 6, 7 (threads named "ThreadPoolExecutor-..."
    # or otherwise: a stack dump, a log line's threadName and the tests that tell an I/O
    # worker from a delivery thread look for "rx-discovery-io")
    release, first = blocked_action(pool)
    second: list[threading.Thread] = []
    pool.schedule(lambda _s, _t: second.append(threading.current_thread()))
    release.set()
    wait_until(lambda: second, message="the second action to run")
    assert second == first  # it waited for the one worker instead of starting another
    assert first[0].name.startswith("rx-discovery-io"), first[0].name


def test_a_pool_passes_an_actions_state_on(pool: PoolScheduler) -> None:
    # mutants: PoolScheduler.schedule 5, 7 (the state dropped: a scheduler's contract, which
    # reactivex operators scheduling with a state rely on)
    got: list[Any] = []
    pool.schedule(lambda _s, state: got.append(state), state="the state")
    wait_until(lambda: got)
    assert got == ["the state"]


def test_a_pool_refuses_a_delayed_action_saying_why(pool: PoolScheduler) -> None:
    # mutants: PoolScheduler.schedule_relative 1, schedule_absolute 1 (no message); no test
    # reached either method before: a delay asked of the pool must fail, not run at once
    with pytest.raises(NotImplementedError, match=r"(?i)immediate actions only"):
        pool.schedule_relative(1.0, lambda _s, _t: None)
    with pytest.raises(NotImplementedError, match=r"(?i)immediate actions only"):
        pool.schedule_absolute(datetime.now() + timedelta(seconds=1), lambda _s, _t: None)


def test_shutdown_returns_at_once_and_drops_the_actions_not_started(
        pool: PoolScheduler) -> None:
    # mutants: PoolScheduler.shutdown 3, 5 (``wait=True``: Discovery.close() blocked until
    # a store call in flight returned, beyond its timeout); shutdown 2, 4, 6 (queued
    # actions not cancelled: reads, keepalives and deliveries asked before close() still ran
    # after it)
    release, _ = blocked_action(pool)
    queued: list[str] = []
    pool.schedule(lambda _s, _t: queued.append("ran"))
    try:
        stopping = threading.Thread(target=pool.shutdown, daemon=True)
        stopping.start()
        stopping.join(10)
        assert not stopping.is_alive(), "shutdown() waited for the action in flight"
    finally:
        release.set()
    pool.executor.shutdown(wait=True)  # the worker has finished whatever it was to run
    assert queued == []


# --- Runtime.after: a delayed action and its disposal ------------------------------------


def test_an_action_due_at_once_runs_in_the_order_asked_like_run(
        scheduler: TestScheduler) -> None:
    # mutant: Runtime.after 1 (``delay < 0``: ``after(0)`` goes through the timer first,
    # then hops to the I/O scheduler behind the work asked after it; on the etcd path, a
    # hop through the timer thread)
    runtime = Runtime(scheduler, scheduler)
    order: list[str] = []
    runtime.after(0, lambda: order.append("after(0)"))
    runtime.run(lambda: order.append("run"))
    scheduler.advance_to(1)
    assert order == ["after(0)", "run"]


def test_a_delayed_action_disposed_before_its_time_never_runs() -> None:
    # mutant: Runtime.after 14 (the timer not disposed: it still fires and hands the action
    # to the I/O scheduler, where a worker can pick it up before the hop's disposal cancels
    # it; an I/O scheduler that runs it at once shows that race's outcome every time)
    timer = TestScheduler()
    runtime = Runtime(timer, ImmediateScheduler())
    ran: list[str] = []
    runtime.after(1, lambda: ran.append("ran")).dispose()
    timer.advance_to(2)
    assert ran == []


def test_a_delayed_action_disposed_after_its_time_but_before_it_ran_never_runs() -> None:
    # mutant: Runtime.after 15 (the hop not disposed: an action already handed to the I/O
    # scheduler, waiting for a worker, ran although disposed: a retry after stop())
    timer, io = TestScheduler(), TestScheduler()
    runtime = Runtime(timer, io)
    ran: list[str] = []
    pending = runtime.after(1, lambda: ran.append("ran"))
    timer.advance_to(1)  # due: handed to the I/O scheduler, not run yet
    pending.dispose()
    io.advance_to(1)
    assert ran == []


def test_a_callers_timer_keeps_the_delivery_scheduler() -> None:
    # mutants: Runtime.with_timer 6, 9 (a stream subscribed with ``scheduler=`` on the etcd
    # path lost the delivery scheduler: its observers ran on the I/O workers that
    # registrations and keepalives need)
    timer, io, delivery, callers = (TestScheduler() for _ in range(4))
    runtime = Runtime(timer, io, delivery).with_timer(callers)
    delivered: list[str] = []
    runtime.hand_off(lambda: delivered.append("delivered"))
    assert delivered == []  # handed to the delivery scheduler, not run here
    delivery.advance_to(1)
    assert delivered == ["delivered"]


# --- HealthTracker: what a Health names -------------------------------------------------


def shown(health: Health) -> tuple[HealthState, str, str, str]:
    return health.state, health.reason, health.endpoint, str(health)


def test_a_failure_and_a_denial_name_the_member_given_and_none_when_none_is() -> None:
    # mutants: HealthTracker.failed 1, denied 1 (the default endpoint "XXXX": a health
    # shown as "RECONNECTING (XXXX): down"); failed 17, 20, denied 13 (the endpoint given
    # dropped: the member concerned no longer named)
    tracker = HealthTracker("t", unavailable_after=60)
    tracker.connected()
    assert shown(tracker.current) == (HealthState.CONNECTED, "", "", "CONNECTED")
    tracker.failed("down")
    assert shown(tracker.current) == (HealthState.RECONNECTING, "down", "",
                                      "RECONNECTING: down")
    tracker.failed("down", "http://m1:2379")
    assert shown(tracker.current) == (HealthState.RECONNECTING, "down", "http://m1:2379",
                                      "RECONNECTING (http://m1:2379): down")
    tracker.denied("refused")
    assert shown(tracker.current) == (HealthState.DENIED, "refused", "", "DENIED: refused")
    tracker.denied("refused", "http://m1:2379")
    assert shown(tracker.current) == (HealthState.DENIED, "refused", "http://m1:2379",
                                      "DENIED (http://m1:2379): refused")
    tracker.connected("http://m2:2379")
    assert shown(tracker.current) == (HealthState.CONNECTED, "", "http://m2:2379",
                                      "CONNECTED (http://m2:2379)")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The monotonic clock health measures failures on, moved by the test."""
    clock = Clock()
    monkeypatch.setattr("rx_discovery.health.time.monotonic", clock)
    return clock


def test_unavailable_after_ten_seconds_of_failures_by_default(clock: Clock) -> None:
    # mutant: HealthTracker.__init__ 3 (11 s: the README says "UNAVAILABLE after 10 s of
    # failures"; the etcd stores use the default)
    tracker = HealthTracker("t")
    tracker.connected()
    states = []
    for now in (0, 9.9, 10):
        clock.now = 1000 + now
        tracker.failed("down")
        states.append(tracker.current.state)
    assert states == [HealthState.RECONNECTING] * 2 + [HealthState.UNAVAILABLE]


def test_each_new_state_is_logged_once_at_warning_when_alarming(
        clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    # mutants: HealthTracker._set 6, 7 (no state logged, or a line per failed call and none
    # per change), _set 9 (DENIED and UNAVAILABLE at INFO), __init__ 5 (the tracker's label
    # gone from the line). The README: "a change of state is logged once, at WARNING for
    # DENIED and UNAVAILABLE"
    tracker = HealthTracker("etcd", unavailable_after=10)
    with caplog.at_level(logging.INFO, logger="rx_discovery.health"):
        tracker.connected()
        tracker.failed("down")
        tracker.failed("still down")  # the same state: not logged again
        clock.now += 10
        tracker.failed("down")
        tracker.denied("refused")
        tracker.connected()
        tracker.closed()  # (mutant _set 4 after the race fix: CLOSED not logged)
        tracker.failed("after close")  # nothing after CLOSED
    assert [(r.levelno, r.getMessage()) for r in caplog.records
            if r.name == "rx_discovery.health"] == [
        (logging.INFO, "etcd: CONNECTED"),
        (logging.INFO, "etcd: RECONNECTING: down"),
        (logging.WARNING, "etcd: UNAVAILABLE: down"),
        (logging.WARNING, "etcd: DENIED: refused"),
        (logging.INFO, "etcd: CONNECTED"),
        (logging.INFO, "etcd: CLOSED"),
    ]


# --- HealthTracker(own_thread=True), the etcd stores': its delivery thread ---------------


class Watcher:
    """Records what a tracker delivers and on which thread; ``hold`` (a state) makes the
    observer wait, on that state, until :attr:`release` is set."""

    def __init__(self, tracker: HealthTracker, hold: HealthState | None = None) -> None:
        self.release = threading.Event()
        self.states: list[HealthState | str] = []
        self.threads: list[threading.Thread] = []
        self._hold = hold
        tracker.observable.subscribe(self._on_next, on_completed=self._on_completed)

    def _on_next(self, health: Health) -> None:
        if health.state is self._hold:
            self.release.wait(30)
        self.states.append(health.state)
        self.threads.append(threading.current_thread())

    def _on_completed(self) -> None:
        self.states.append("completed")


@pytest.fixture
def tracker() -> Iterator[HealthTracker]:
    tracker = HealthTracker("t", unavailable_after=60, own_thread=True)
    yield tracker
    tracker.closed()


def in_thread(call: Callable[[], None]) -> tuple[threading.Thread, list[float]]:
    """Run ``call`` on a daemon thread; the list gets how long it took once it returned."""
    took: list[float] = []

    def timed() -> None:
        start = time.monotonic()
        call()
        took.append(time.monotonic() - start)

    thread = threading.Thread(target=timed, daemon=True)
    thread.start()
    return thread, took


def settle_while_held(tracker: HealthTracker, watcher: Watcher) -> None:
    """``tracker._settle(0.2)`` while ``watcher`` holds a delivery: it must wait that long
    for it, and no longer; then the watcher is released."""
    try:
        settling, took = in_thread(lambda: tracker._settle(0.2))
        settling.join(10)
        assert not settling.is_alive(), "_settle() waited past its timeout"
        assert took and took[0] >= 0.15, f"_settle() did not wait for the delivery: {took}"
    finally:
        watcher.release.set()


def test_an_etcd_stores_tracker_delivers_every_change_in_order_on_a_daemon_thread_of_its_own(
        ) -> None:
    # mutants: SerialThread.__init__ 4, 6, submit 1, 3, 6, 10, _run 1 (no change ever
    # delivered: Discovery.health silent on etcd); submit 5, 8, 9 (not a daemon: a
    # Discovery never closed kept the interpreter from exiting); __init__ 1, submit 4, 7
    # (the thread not named for the tracker); stop 2 (the thread never ended after close())
    tracker = HealthTracker("t", unavailable_after=60, own_thread=True)
    watcher = Watcher(tracker)
    tracker.connected()
    tracker.failed("down", "http://m1:2379")
    tracker.closed()
    wait_until(lambda: "completed" in watcher.states, message="the completion")
    assert watcher.states == [HealthState.CONNECTING, HealthState.CONNECTED,
                              HealthState.RECONNECTING, HealthState.CLOSED, "completed"]
    delivery = watcher.threads[1]
    assert watcher.threads[1:] == [delivery] * 3
    assert delivery is not threading.current_thread()
    assert delivery.name == "rx-discovery-t-health" and delivery.daemon
    delivery.join(10)
    assert not delivery.is_alive(), "the delivery thread outlived close()"


def test_settle_returns_once_the_changes_reached_the_observers(tracker: HealthTracker) -> None:
    # mutants: SerialThread.settle 4, 5 (nothing queued to say the changes were delivered:
    # _settle() waited its whole timeout every time)
    watcher = Watcher(tracker)
    tracker.connected()
    tracker.failed("down")
    settling, _ = in_thread(lambda: tracker._settle(60))
    settling.join(20)
    assert not settling.is_alive(), "_settle() waited for its timeout"
    assert watcher.states[-1] is HealthState.RECONNECTING


def test_settle_waits_for_an_observer_that_blocks_no_longer_than_its_timeout(
        tracker: HealthTracker) -> None:
    # mutants: HealthTracker._settle 2, SerialThread.settle 1, 2, 3 (returned at once, or
    # raised, before the change reached the observer: the tests that read what was
    # delivered after it raced the delivery thread); _settle 3, settle 7 (the timeout
    # dropped: an observer that blocks hung the test for ever)
    watcher = Watcher(tracker, hold=HealthState.RECONNECTING)
    tracker.connected()
    tracker.failed("down")
    settle_while_held(tracker, watcher)
    wait_until(lambda: HealthState.RECONNECTING in watcher.states)


def test_settle_after_close_waits_for_the_last_delivery_no_longer_than_its_timeout() -> None:
    # mutant: SerialThread.settle 6 (the timeout dropped once stopped: an observer that
    # blocks on CLOSED hung the test for ever)
    tracker = HealthTracker("t", unavailable_after=60, own_thread=True)
    watcher = Watcher(tracker, hold=HealthState.CLOSED)
    tracker.closed()
    settle_while_held(tracker, watcher)
    wait_until(lambda: "completed" in watcher.states)


@pytest.mark.parametrize("closes", [1, 2])
def test_settle_after_close_returns_once_the_thread_ended(closes: int) -> None:
    # mutants: SerialThread.stop 5, 6 (after one close()) and stop 3, 4 (after a second):
    # ``_stopped`` left false, so _settle() queued its marker for a thread that had ended
    # and waited its whole timeout
    tracker = HealthTracker("t", unavailable_after=60, own_thread=True)
    watcher = Watcher(tracker)
    for _ in range(closes):
        tracker.closed()
    settling, _ = in_thread(lambda: tracker._settle(60))
    settling.join(20)
    assert not settling.is_alive(), "_settle() waited for its timeout"
    assert watcher.states[-2:] == [HealthState.CLOSED, "completed"]


class _GapLock:
    """A lock that runs ``after_release`` once, right after its next release: a call on
    another thread landing in the gap between two locked sections of the caller."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.after_release: Callable[[], None] | None = None

    def __enter__(self) -> _GapLock:
        self._lock.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self._lock.release()
        hook, self.after_release = self.after_release, None
        if hook is not None:
            hook()


@pytest.mark.parametrize("first", ["failed", "denied"])
def test_a_call_served_while_a_failure_is_reported_is_not_overwritten_by_it(first: str) -> None:
    """failed()/denied() decided the new state under the lock and set it after releasing it:
    a connected() landing in between was overwritten, and health showed a stale
    RECONNECTING (or DENIED) until the next call result (review of the mutation triage:
    ``connected 6, 7, 22`` differed only there)."""
    tracker = HealthTracker("etcd")
    tracker.connected()
    gap = _GapLock()
    tracker._lock = gap  # type: ignore[assignment]
    gap.after_release = tracker.connected  # served on another thread, in the gap
    if first == "failed":
        tracker.failed("timeout")
    else:
        tracker.denied("authentication failed")  # connection-wide: cleared by any call
    assert tracker._current.state is HealthState.CONNECTED
