"""SerialSubject and HealthTracker: values reach observers outside the caller's lock, in
order, one at a time; a raising observer is logged and the others still get every value."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from rx_discovery._serial import SerialSubject
from rx_discovery.health import HealthState, HealthTracker


def test_values_enqueued_under_a_lock_are_delivered_after_it_is_released() -> None:
    subject: SerialSubject[int] = SerialSubject("t")
    lock = threading.Lock()
    held_during_delivery: list[bool] = []
    subject.observe().subscribe(lambda _: held_during_delivery.append(lock.locked()))
    with lock:
        subject.enqueue(1)
        subject.enqueue(2)
        assert held_during_delivery == []  # nothing delivered while the lock is held
    subject.flush()
    assert held_during_delivery == [False, False]


def test_a_raising_observer_keeps_its_subscription_and_others_get_every_value(
        caplog: pytest.LogCaptureFixture) -> None:
    subject: SerialSubject[int] = SerialSubject("t")
    seen_by_bad: list[int] = []
    seen_by_good: list[int] = []

    def bad(value: int) -> None:
        seen_by_bad.append(value)
        raise RuntimeError("user bug")

    subject.observe().subscribe(bad)
    subject.observe().subscribe(seen_by_good.append)
    subject.on_next(1)
    subject.on_next(2)
    assert seen_by_bad == [1, 2] and seen_by_good == [1, 2]
    assert "an observer raised" in caplog.text


def test_reentrant_emission_is_delivered_after_the_current_one_not_inside_it() -> None:
    subject: SerialSubject[int] = SerialSubject("t")
    trace: list[str] = []

    def observer(value: int) -> None:
        trace.append(f"start {value}")
        if value == 1:
            subject.on_next(2)  # e.g. an observer that changes state and so emits
        trace.append(f"end {value}")

    subject.observe().subscribe(observer)
    subject.on_next(1)
    assert trace == ["start 1", "end 1", "start 2", "end 2"]


def test_replay_gives_a_late_subscriber_the_latest_then_every_later_value() -> None:
    subject: SerialSubject[str] = SerialSubject("t", replay=True, initial="a", has_initial=True)
    early: list[str] = []
    subject.observe().subscribe(early.append)
    subject.on_next("b")
    late: list[str] = []
    subject.observe().subscribe(late.append)
    subject.on_next("c")
    assert early == ["a", "b", "c"]
    assert late == ["b", "c"]


def test_completion_reaches_current_and_later_subscribers() -> None:
    subject: SerialSubject[int] = SerialSubject("t")
    done: list[str] = []
    subject.observe().subscribe(on_completed=lambda: done.append("early"))
    subject.on_completed()
    subject.on_next(1)  # dropped
    subject.observe().subscribe(on_next=lambda v: done.append(f"value {v}"),
                                on_completed=lambda: done.append("late"))
    assert done == ["early", "late"]


def test_concurrent_emitters_deliver_serially_and_lose_nothing() -> None:
    subject: SerialSubject[int] = SerialSubject("t")
    inside = threading.Lock()
    overlaps: list[int] = []
    seen: list[int] = []

    def observer(value: int) -> None:
        if not inside.acquire(blocking=False):
            overlaps.append(value)
            return
        try:
            seen.append(value)
        finally:
            inside.release()

    subject.observe().subscribe(observer)
    barrier = threading.Barrier(4)

    def emit(base: int) -> None:
        barrier.wait()
        for i in range(500):
            subject.on_next(base + i)

    threads = [threading.Thread(target=emit, args=(k * 1000,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    assert overlaps == []
    assert sorted(seen) == sorted(k * 1000 + i for k in range(4) for i in range(500))
    for k in range(4):  # each emitter's values in its own order
        mine = [v for v in seen if k * 1000 <= v < (k + 1) * 1000]
        assert mine == sorted(mine)


def test_disposed_subscriber_gets_nothing_more_even_if_already_queued() -> None:
    subject: SerialSubject[int] = SerialSubject("t")
    seen: list[int] = []
    subscription = subject.observe().subscribe(seen.append)
    subject.enqueue(1)
    subscription.dispose()
    subject.flush()
    assert seen == []


def test_health_reports_changes_only_and_never_under_its_lock() -> None:
    tracker = HealthTracker("t", unavailable_after=3600)
    states: list[Any] = []
    tracker.observable.subscribe(lambda h: states.append((h.state, h.reason)))
    tracker.connected("http://e1")
    tracker.connected("http://e1")
    tracker.failed("connection refused")
    tracker.failed("connection refused")
    tracker.denied("permission denied on /services/x")
    tracker.connected()
    tracker.closed()
    tracker.failed("late")
    assert states == [
        (HealthState.CONNECTING, ""),
        (HealthState.CONNECTED, ""),
        (HealthState.RECONNECTING, "connection refused"),
        (HealthState.DENIED, "permission denied on /services/x"),
        (HealthState.CONNECTED, ""),
        (HealthState.CLOSED, ""),
    ]


def test_health_becomes_unavailable_after_failing_long_enough() -> None:
    tracker = HealthTracker("t", unavailable_after=0.0)
    tracker.failed("connection refused")
    assert tracker.current.state is HealthState.UNAVAILABLE


def test_a_serial_thread_runs_what_it_accepted_before_a_stop_that_races_the_submit() -> None:
    # submit() checked "not stopped" under its lock but queued the action after letting it
    # go: a stop() in between queued the end first, and the accepted action never ran (a
    # v2 watch's response, a health change: lost without a word)
    from rx_discovery._serial import SerialThread

    thread = SerialThread("rx-discovery-test-serial")
    thread.submit(lambda: None)  # the thread runs
    ran = threading.Event()
    stopper_done = threading.Event()
    real = thread._queue

    class _StopInTheWindow:
        def put(self, item: object) -> None:
            if item is not None and not stopper_done.is_set():
                def stop() -> None:
                    thread.stop()
                    stopper_done.set()
                threading.Thread(target=stop, daemon=True).start()
                # a stop() that cannot finish before the action is queued is the fix;
                # one that can is the race, taken here at once
                stopper_done.wait(2.0)
            real.put(item)  # type: ignore[arg-type]

        def get(self) -> object:
            return real.get()

    thread._queue = _StopInTheWindow()  # type: ignore[assignment]
    thread.submit(ran.set)
    assert stopper_done.wait(10)
    assert ran.wait(10), "an action accepted before stop() never ran"
