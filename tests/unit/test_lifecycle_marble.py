"""Readiness-gated registration (``register(..., healthy=)``) and drain on dispose/close, in
virtual time (issue 15). One unit of virtual time is one second; nothing sleeps."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import reactivex
from helpers import wait_until
from reactivex import abc
from reactivex.disposable import Disposable
from reactivex.subject import Subject
from reactivex.testing import TestScheduler
from test_registration_marble import run_due_now

from rx_discovery import Discovery, RegistrationError, RegistrationStatus
from rx_discovery.store.memory import MemoryStore
from rx_discovery.testing import make_host, record

S = RegistrationStatus


@pytest.fixture
def scheduler() -> TestScheduler:
    return TestScheduler()


def at(scheduler: TestScheduler, time: float, action: Any) -> None:
    scheduler.schedule_absolute(time, lambda *_: action())


class PutHook(MemoryStore):
    """``during_put`` runs inside host puts, after the write (while it is "in flight");
    ``deletes`` records the deletions of host keys by revokes (not expiries)."""

    during_put: Any = None

    def __init__(self, scheduler: TestScheduler) -> None:
        super().__init__(scheduler)
        self.revoked_at: list[float] = []
        self.clock = scheduler

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        revision = super().put(key, value, lease)
        if self.during_put is not None and key.startswith("/services/"):
            hook, self.during_put = self.during_put, None
            hook()
        return revision

    def revoke(self, lease: int) -> None:
        self.revoked_at.append(self.clock.clock)
        super().revoke(lease)


def emitting(healthy: Subject[bool], scheduler: TestScheduler, *values: bool) -> Any:
    """A store hook: the health observable emits ``values``, each applied at once (what the
    gate task on another thread does while the store call is in flight)."""
    def hook() -> None:
        for value in values:
            healthy.on_next(value)
            run_due_now(scheduler)
    return hook


def gated(store: PutHook) -> tuple[Subject[bool], Any]:
    """A registration on ``store`` gated by a Subject (ttl 30 s: an expiry is never the
    reason a key is gone here)."""
    healthy: Subject[bool] = Subject()
    registration = Discovery(store=store).register("api", make_host(1), ttl=30,
                                                   healthy=healthy)
    return healthy, registration


def due(scheduler: TestScheduler, at_time: float) -> bool:
    """An action is scheduled at ``at_time`` (e.g. a drain's end, scheduled by another
    thread): advancing the clock before it is would move its deadline."""
    with scheduler._lock:
        return any(scheduler.to_seconds(item.duetime) == at_time and not item.is_cancelled()
                   for item, _ in scheduler._queue.items)


def statuses_of(recorder: Any) -> list[tuple[float, RegistrationStatus]]:
    return [(round(t, 3), n.value) for t, n in recorder.messages if n.kind == "N"]


# --- gating --------------------------------------------------------------------------------------

def test_registered_only_while_healthy_withdrawn_at_once_on_false_and_back_on_true(
        scheduler: TestScheduler) -> None:
    store = PutHook(scheduler)
    healthy, registration = gated(store)
    statuses = record(registration.status, scheduler)
    key = registration.key
    at(scheduler, 10, lambda: healthy.on_next(False))  # not healthy yet: nothing
    at(scheduler, 20, lambda: healthy.on_next(True))
    at(scheduler, 40, lambda: healthy.on_next(False))
    at(scheduler, 60, lambda: healthy.on_next(True))
    scheduler.advance_to(19.9)
    assert store.get(key) is None and not store.leases  # nothing before the first True
    assert registration.current_status is S.WITHDRAWN
    assert "first True" in registration.reason
    scheduler.advance_to(21)
    assert store.get(key) is not None and registration.ready
    scheduler.advance_to(40.5)  # well within 1 s of False, long before the 30 s ttl
    assert store.get(key) is None and not store.leases  # revoked, not left to expire
    assert store.revoked_at == [40]
    assert registration.current_status is S.WITHDRAWN and registration.reason == (
        "withdrawn: not healthy")
    scheduler.advance_to(59)  # stays withdrawn: no healing, no retry writes it back
    assert store.get(key) is None
    scheduler.advance_to(61)
    assert store.get(key) is not None and registration.ready
    assert [s for _, s in statuses_of(statuses)] == [
        S.WITHDRAWN, S.REGISTERING, S.REGISTERED, S.WITHDRAWN, S.REGISTERING, S.REGISTERED]
    assert all(t in (0, 20, 40, 60) for t, _ in statuses_of(statuses))
    registration.dispose()
    assert not healthy.observers  # the health subscription ends with the registration


def test_a_health_error_withdraws_until_disposed_and_a_completion_keeps_the_last_value(
        scheduler: TestScheduler) -> None:
    discovery = Discovery.in_memory(scheduler)
    store = discovery.store
    failing: Subject[bool] = Subject()
    completing: Subject[bool] = Subject()
    broken = discovery.register("api", make_host(1), healthy=failing)
    done = discovery.register("api", make_host(2), healthy=completing)
    at(scheduler, 1, lambda: (failing.on_next(True), completing.on_next(True)))
    at(scheduler, 5, lambda: (failing.on_error(OSError("probe crashed")),
                              completing.on_completed()))
    scheduler.advance_to(4)
    assert broken.ready and done.ready
    scheduler.advance_to(6)
    assert store.get(broken.key) is None
    assert broken.current_status is S.WITHDRAWN
    assert "health observable failed" in broken.reason and "probe crashed" in broken.reason
    assert store.get(done.key) is not None and done.ready  # the last value (True) holds
    scheduler.advance_to(100)  # keepalives go on for the completed one; none for the failed
    assert store.get(done.key) is not None and store.get(broken.key) is None


def test_a_health_observable_that_raises_on_subscribe_is_reported_like_an_error(
        scheduler: TestScheduler) -> None:
    discovery = Discovery.in_memory(scheduler)

    def subscribe(_observer: Any, _scheduler: Any = None) -> Any:
        raise RuntimeError("cannot start the probe")

    registration = discovery.register("api", make_host(1), healthy=reactivex.create(subscribe))
    scheduler.advance_to(1)
    assert registration.current_status is S.WITHDRAWN
    assert "cannot start the probe" in registration.reason


def test_false_while_the_first_write_is_in_flight_leaves_no_key_nor_lease(
        scheduler: TestScheduler) -> None:
    store = PutHook(scheduler)
    healthy, registration = gated(store)
    statuses = record(registration.status, scheduler)

    store.during_put = emitting(healthy, scheduler, False)
    at(scheduler, 1, lambda: healthy.on_next(True))
    scheduler.advance_to(10)
    assert store.get(registration.key) is None and not store.leases
    assert registration.current_status is S.WITHDRAWN
    assert S.REGISTERED not in [s for _, s in statuses_of(statuses)]


def test_false_then_true_while_a_write_is_in_flight_ends_registered_with_one_lease(
        scheduler: TestScheduler) -> None:
    store = PutHook(scheduler)
    healthy, registration = gated(store)

    store.during_put = emitting(healthy, scheduler, False, True)
    at(scheduler, 1, lambda: healthy.on_next(True))
    scheduler.advance_to(10)
    assert store.get(registration.key) is not None and registration.ready
    assert len(store.leases) == 1  # no lease leaked by the aborted write
    scheduler.advance_to(100)  # kept alive
    assert store.get(registration.key) is not None and len(store.leases) == 1


def test_false_while_healing_after_lost_stays_withdrawn_then_true_registers(
        scheduler: TestScheduler) -> None:
    store = PutHook(scheduler)
    discovery = Discovery(store=store)
    discovery.hosts("api").subscribe()  # the watch that sees the key deleted
    healthy: Subject[bool] = Subject()
    registration = discovery.register("api", make_host(1), ttl=30, healthy=healthy)
    at(scheduler, 1, lambda: healthy.on_next(True))
    scheduler.advance_to(5)
    assert registration.ready

    store.during_put = emitting(healthy, scheduler, False)  # inside the healing put
    at(scheduler, 10, lambda: store.delete(registration.key))  # LOST: it heals
    scheduler.advance_to(30)
    assert store.get(registration.key) is None and not store.leases
    assert registration.current_status is S.WITHDRAWN
    at(scheduler, 31, lambda: healthy.on_next(True))
    scheduler.advance_to(40)
    assert store.get(registration.key) is not None and registration.ready


def test_health_values_after_dispose_write_nothing_and_user_code_runs_outside_the_lock(
        scheduler: TestScheduler) -> None:
    discovery = Discovery.in_memory(scheduler)
    store = discovery.store
    seen_owned: list[bool] = []
    observers: list[abc.ObserverBase[bool]] = []
    registration: Any = None

    def subscribe(observer: abc.ObserverBase[bool], _s: Any = None) -> abc.DisposableBase:
        observers.append(observer)
        observer.on_next(True)  # at once, during register()
        return Disposable(lambda: seen_owned.append(registration._lock._is_owned()))

    registration = discovery.register("api", make_host(1), healthy=reactivex.create(subscribe))
    scheduler.advance_to(1)
    assert registration.ready
    registration.dispose()
    assert seen_owned == [False]  # its disposal ran outside the registration's lock
    assert store.get(registration.key) is None
    observers[0].on_next(False)  # a late value from another thread: ignored
    observers[0].on_next(True)
    scheduler.advance_to(10)
    assert store.get(registration.key) is None and not store.leases
    assert registration.current_status is S.DISPOSED


def test_wait_blocks_while_withdrawn(scheduler: TestScheduler) -> None:
    discovery = Discovery.in_memory(scheduler)
    not_yet: Subject[bool] = Subject()  # not healthy now, may be later (one that completed
    registration = discovery.register("api", make_host(1), healthy=not_yet)  # on False: see
    not_yet.on_next(False)  # test_gating_review.py)
    scheduler.advance_to(1)
    with pytest.raises(RegistrationError, match="not done after 0"):
        registration.wait(timeout=0)


def test_bad_healthy_and_drain_are_refused_before_any_io(scheduler: TestScheduler) -> None:
    discovery = Discovery.in_memory(scheduler)
    with pytest.raises(ValueError, match="healthy must be an Observable"):
        discovery.register("api", make_host(1), healthy=True)  # type: ignore[arg-type]
    assert not discovery.store.keys()
    registration = discovery.register("api", make_host(1))
    scheduler.advance_to(1)
    for bad in (-1, float("nan"), float("inf"), "2", True):
        with pytest.raises(ValueError, match="drain"):
            registration.dispose(drain=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="drain"):
            discovery.close(drain=bad)  # type: ignore[arg-type]
    assert registration.ready  # nothing was done


# --- drain ----------------------------------------------------------------------------------------

def test_dispose_with_drain_removes_the_key_at_once_then_returns_after_the_drain(
        scheduler: TestScheduler) -> None:
    discovery = Discovery.in_memory(scheduler)
    store = discovery.store
    registration = discovery.register("api", make_host(1), ttl=30)
    scheduler.advance_to(10)
    assert registration.ready
    disposer = threading.Thread(target=lambda: registration.dispose(drain=2.0), daemon=True)
    disposer.start()
    wait_until(lambda: due(scheduler, 12.0), message="the drain started")
    assert registration.current_status is S.DISPOSED
    assert store.get(registration.key) is None  # removed at once...
    scheduler.advance_to(11.9)
    disposer.join(0.2)
    assert disposer.is_alive()  # ...and still draining 1.9 s later
    scheduler.advance_to(12.0)
    disposer.join(10)
    assert not disposer.is_alive()
    registration.dispose(drain=5.0)  # already disposed: returns at once


def test_close_with_drain_removes_every_key_then_waits_once(scheduler: TestScheduler) -> None:
    discovery = Discovery.in_memory(scheduler)
    store = discovery.store
    registrations = [discovery.register("api", make_host(n), ttl=30) for n in range(3)]
    seen: list[int] = []
    discovery.hosts("api").subscribe(lambda hosts: seen.append(len(hosts)))
    scheduler.advance_to(10)
    assert all(r.ready for r in registrations)
    closer = threading.Thread(target=lambda: discovery.close(drain=3.0), daemon=True)
    closer.start()
    wait_until(lambda: due(scheduler, 13.0), message="the drain started")
    assert all(r.current_status is S.DISPOSED for r in registrations)
    assert not store.keys("/services/")
    scheduler.advance_to(12.9)
    closer.join(0.2)
    assert closer.is_alive()
    assert seen[-1] == 0  # streams still deliver during the drain (the hosts went down)
    scheduler.advance_to(13.0)
    closer.join(10)
    assert not closer.is_alive()


def test_true_again_while_an_aborted_write_revokes_its_lease_registers_again(
        scheduler: TestScheduler) -> None:
    """False reaches the write in flight (it revokes its own lease); True arrives while it
    does: the write that returns must register again (nothing else will)."""

    class RevokeHook(PutHook):
        during_revoke: Any = None

        def revoke(self, lease: int) -> None:
            super().revoke(lease)
            hook, self.during_revoke = self.during_revoke, None
            if hook is not None:
                hook()

    store = RevokeHook(scheduler)
    healthy, registration = gated(store)

    store.during_put = emitting(healthy, scheduler, False)
    store.during_revoke = emitting(healthy, scheduler, True)
    at(scheduler, 1, lambda: healthy.on_next(True))
    scheduler.advance_to(10)
    assert store.during_revoke is None  # the scenario happened
    assert store.get(registration.key) is not None and registration.ready
    assert len(store.leases) == 1


def test_a_permanent_error_of_a_write_withdrawn_in_flight_does_not_report_failed(
        scheduler: TestScheduler) -> None:
    from rx_discovery import PermissionDenied

    class Denying(PutHook):
        def put(self, key: str, value: bytes, lease: int = 0) -> int:
            if key.startswith("/services/") and self.during_put is not None:
                hook, self.during_put = self.during_put, None
                hook()
                raise PermissionDenied("put: permission denied")
            return super().put(key, value, lease)

    store = Denying(scheduler)
    healthy, registration = gated(store)

    store.during_put = emitting(healthy, scheduler, False)
    statuses = record(registration.status, scheduler)
    at(scheduler, 1, lambda: healthy.on_next(True))
    scheduler.advance_to(200)
    assert registration.current_status is S.WITHDRAWN
    assert S.FAILED not in [s for _, s in statuses_of(statuses)]
    assert store.get(registration.key) is None


# --- health probes --------------------------------------------------------------------------------

def test_poll_checks_at_once_then_every_interval_and_emits_changes_only(
        scheduler: TestScheduler) -> None:
    from rx_discovery.lifecycle import poll

    answers = iter([False, False, True, True, OSError("refused"), True, True])
    calls: list[float] = []

    def check() -> bool:
        calls.append(scheduler.clock)
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    recorder = record(poll(check, 2.0, scheduler=scheduler), scheduler)
    scheduler.advance_to(12.5)
    assert [(t, n.value) for t, n in recorder.messages] == [
        (0, False), (4, True), (8, False), (10, True)]  # a check that raises is False
    assert calls == [0, 2, 4, 6, 8, 10, 12]
    recorder.subscription.dispose()
    scheduler.advance_to(30)
    assert len(calls) == 7  # disposing stops the polling


def test_a_polled_health_gates_a_registration_in_virtual_time(scheduler: TestScheduler) -> None:
    from rx_discovery.lifecycle import poll

    discovery = Discovery.in_memory(scheduler)
    up = {"value": False}
    registration = discovery.register("api", make_host(1), ttl=30,
                                      healthy=poll(lambda: up["value"], 0.5,
                                                   scheduler=scheduler))
    at(scheduler, 3, lambda: up.update(value=True))
    at(scheduler, 10, lambda: up.update(value=False))
    scheduler.advance_to(2.9)
    assert discovery.store.get(registration.key) is None
    scheduler.advance_to(3.6)
    assert registration.ready
    scheduler.advance_to(10.6)  # the next poll (<= 0.5 s) withdraws it at once
    assert discovery.store.get(registration.key) is None
    assert registration.current_status is S.WITHDRAWN


@pytest.mark.parametrize("kwargs, field", [
    ({"url": "ftp://x"}, "url"), ({"url": "http://x", "interval": 0}, "interval"),
    ({"url": "http://x", "interval": float("inf")}, "interval"),
    ({"url": "http://x", "timeout": -1}, "timeout"),
])
def test_http_probe_refuses_bad_arguments(kwargs: dict[str, Any], field: str) -> None:
    from rx_discovery.lifecycle import http_probe

    with pytest.raises(ValueError, match=field):
        http_probe(**kwargs)


def test_dispose_during_a_withdrawal_returns_once_the_key_is_gone(
        scheduler: TestScheduler) -> None:
    """dispose() from another thread while a withdrawal's revoke is in flight: it must wait
    for it (the key is gone before dispose returns), as it waits for a registration write."""

    class SlowRevoke(PutHook):
        during_revoke: Any = None

        def revoke(self, lease: int) -> None:
            hook, self.during_revoke = self.during_revoke, None
            if hook is not None:
                hook()
            super().revoke(lease)

    store = SlowRevoke(scheduler)
    healthy, registration = gated(store)
    at(scheduler, 1, lambda: healthy.on_next(True))
    scheduler.advance_to(5)
    assert registration.ready
    after_dispose: list[object] = []

    def dispose() -> None:
        registration.dispose()
        after_dispose.append(store.get(registration.key))

    disposer = threading.Thread(target=dispose, daemon=True)

    def dispose_meanwhile() -> None:
        disposer.start()
        wait_until(lambda: registration._stopped, message="dispose() started")
        disposer.join(0.3)  # returned already (the bug), or waits for this revoke

    store.during_revoke = dispose_meanwhile
    at(scheduler, 10, lambda: healthy.on_next(False))
    scheduler.advance_to(11)
    disposer.join(10)
    assert after_dispose == [None]


def test_no_drain_when_no_key_was_live_withdrawn_or_lost(scheduler: TestScheduler) -> None:
    """A drain gives clients time to move away from a host they can see; a registration that
    was withdrawn (or whose key is gone) has no client to wait for: dispose and close return
    at once, without the clock moving."""
    store = PutHook(scheduler)
    healthy, withdrawn = gated(store)
    at(scheduler, 1, lambda: healthy.on_next(True))
    at(scheduler, 5, lambda: healthy.on_next(False))
    scheduler.advance_to(6)
    assert withdrawn.current_status is S.WITHDRAWN and store.get(withdrawn.key) is None
    disposer = threading.Thread(target=lambda: withdrawn.dispose(drain=30.0), daemon=True)
    disposer.start()
    disposer.join(10)  # nothing advances the clock: a drain would block until the deadline
    assert not disposer.is_alive(), "disposing a withdrawn registration drained"

    discovery = Discovery(store=store)
    never_healthy: Subject[bool] = Subject()
    discovery.register("api", make_host(2), ttl=30, healthy=never_healthy)
    scheduler.advance_to(7)
    closer = threading.Thread(target=lambda: discovery.close(drain=30.0), daemon=True)
    closer.start()
    closer.join(10)
    assert not closer.is_alive(), "closing with only withdrawn registrations drained"


def test_close_drains_when_one_registration_of_several_is_live(scheduler: TestScheduler) -> None:
    store = PutHook(scheduler)
    discovery = Discovery(store=store)
    never_healthy: Subject[bool] = Subject()
    discovery.register("api", make_host(1), ttl=30, healthy=never_healthy)
    live = discovery.register("api", make_host(2), ttl=30)
    scheduler.advance_to(10)
    assert live.ready
    closer = threading.Thread(target=lambda: discovery.close(drain=3.0), daemon=True)
    closer.start()
    wait_until(lambda: due(scheduler, 13.0), message="the drain started")
    closer.join(0.2)
    assert closer.is_alive()
    scheduler.advance_to(13.0)
    closer.join(10)
    assert not closer.is_alive()


class RefusesServiceKey(MemoryStore):
    """Host keys are stored; the service document is refused (etcd RBAC without a permission
    on ``services_infos``): the registration is FAILED while its host key is live."""

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        if "/services_infos/" in key:
            from rx_discovery._errors import PermissionDenied
            raise PermissionDenied("no write permission on the service key")
        return super().put(key, value, lease)


def assert_drains(scheduler: TestScheduler, action: Any, end: float, what: str) -> None:
    """``action`` (on another thread) waits until the virtual clock reaches ``end``."""
    worker = threading.Thread(target=action, daemon=True)
    worker.start()
    wait_until(lambda: due(scheduler, end) or not worker.is_alive(), message="the drain started")
    assert worker.is_alive(), f"{what} revoked a live host key without a drain"
    scheduler.advance_to(end)
    worker.join(10)
    assert not worker.is_alive()


def test_dispose_drains_when_the_host_key_is_live_though_not_registered(
        scheduler: TestScheduler) -> None:
    """A drain waits for clients that can see the host. A registration whose host key is
    written and kept alive is seen by every watcher of the service, whatever its status says
    (here FAILED: the service document is refused): dispose must drain it, and so must
    close()."""
    store = RefusesServiceKey(scheduler)
    discovery = Discovery(store=store)
    registration = discovery.register("api", make_host(1), ttl=30)
    hosts: list[Any] = []
    discovery.hosts("api").subscribe(hosts.append)  # what a client of the service sees
    scheduler.advance_to(5)
    assert registration.current_status is S.FAILED
    assert store.get(registration.key) is not None and registration.uuid in hosts[-1]
    assert_drains(scheduler, lambda: registration.dispose(drain=3.0), 8.0, "dispose")

    other = Discovery(store=store)
    live = other.register("api", make_host(2), ttl=30)
    scheduler.advance_to(12)
    assert live.current_status is S.FAILED and store.get(live.key) is not None
    assert_drains(scheduler, lambda: other.close(drain=3.0), 15.0, "close")
    discovery.close()
