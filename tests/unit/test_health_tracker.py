"""HealthTracker without a server: states, scopes, observers, and after close."""

from __future__ import annotations

from typing import Any

from rx_discovery.health import HealthState, HealthTracker


def record(tracker: HealthTracker) -> tuple[list[Any], list[str]]:
    items: list[Any] = []
    ends: list[str] = []
    tracker.observable.subscribe(lambda h: items.append(h.state),
                                 on_error=lambda e: ends.append(f"error {e!r}"),
                                 on_completed=lambda: ends.append("completed"))
    return items, ends


def test_a_subscriber_after_close_is_told_closed_then_completes() -> None:
    """As the current state is replayed to every subscriber: one that subscribes after
    close() (a dashboard opened late, Discovery.health read after the with block) got a bare
    completion, no state at all."""
    tracker = HealthTracker("t")
    tracker.connected()
    before, before_end = record(tracker)
    tracker.closed()
    after, after_end = record(tracker)
    assert before == [HealthState.CONNECTED, HealthState.CLOSED] and before_end == ["completed"]
    assert after == [HealthState.CLOSED] and after_end == ["completed"]
    tracker.failed("late")  # nothing follows CLOSED
    tracker.connected()
    assert after == [HealthState.CLOSED] and tracker.current.state is HealthState.CLOSED


def test_a_denial_stands_until_its_own_scope_is_served_and_a_raising_observer_is_contained(
        ) -> None:
    tracker = HealthTracker("t", unavailable_after=60)

    def raising(_health: Any) -> None:
        raise RuntimeError("observer bug")

    tracker.observable.subscribe(raising)
    items, _ = record(tracker)
    tracker.connected()
    tracker.denied("permission denied", scope="/p")
    tracker.connected(scope="/q")  # served elsewhere: the denial of /p stands
    tracker.failed("gone")  # transient failures show, the denial comes back after them
    tracker.connected(scope="/q")
    assert items == [HealthState.CONNECTING, HealthState.CONNECTED, HealthState.DENIED,
                     HealthState.RECONNECTING, HealthState.DENIED]
    tracker.connected(scope="/p")
    assert items[-1] is HealthState.CONNECTED
