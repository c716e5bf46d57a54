"""Break-it review of issue 17: what a user would see from regressions the rest of the
server-free tier let through (each test names the one-line mutant it was seen to fail on).
Marble tests on the memory store: one TestScheduler drives everything; one unit is one second.
"""

from __future__ import annotations

import itertools
import logging
import random
from typing import Any

import pytest
import reactivex
from hypothesis import settings
from reactivex.testing import TestScheduler
from test_streams_marble import at

from rx_discovery import Discovery, PermissionDenied, RevisionCompacted, StoreUnavailable
from rx_discovery._runtime import Runtime
from rx_discovery.health import HealthState, HealthTracker
from rx_discovery.store import WatchResponse
from rx_discovery.store.memory import MemoryStore
from rx_discovery.testing import make_host, record


def put(store: Any, service: str, n: int) -> int:
    return int(store.put(f"/services/{service}/uuid-{n}", make_host(n).to_json().encode()))


def counted_reads(store: Any) -> list[str]:
    """The prefixes ``store`` (an instance) is asked to read from now on."""
    reads: list[str] = []
    read = store.get_prefix

    def counting(prefix: str) -> Any:
        reads.append(prefix)
        return read(prefix)

    store.get_prefix = counting
    return reads


# --- a resync that finds nothing new publishes nothing ----------------------------------

def test_a_resync_after_compaction_that_finds_the_same_hosts_emits_no_set(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    # mutant: PrefixSync._install publishes every re-read (``if first or not change.empty``
    # made ``if True``): a compaction of other services' writes made every subscriber of
    # hosts() get its unchanged set again (and subscribe_new/down an empty change)
    store: Any = discovery.store
    put(store, "api", 1)
    reads = counted_reads(store)
    sets = record(discovery.hosts("api"), scheduler)
    changes = record(discovery.changes("api"), scheduler)

    at(scheduler, 1, store.disconnect)

    def others_written_then_compacted() -> None:
        store.reconnect()
        put(store, "other", 2)  # not this stream's prefix: nothing changed for it
        put(store, "other", 3)
        store.compact()  # its watch's next revision is gone: it must re-read
    at(scheduler, 10, others_written_then_compacted)
    scheduler.advance_to(20)
    assert len(reads) == 2, "the compaction made the stream read the prefix again"
    assert [sorted(s) for _, s in sets.values] == [["uuid-1"]]
    assert [c.initial for _, c in changes.values] == [True]


# --- Hypothesis: no per-example deadline (a loaded 2-core machine is slow now and then) ----

def test_property_tests_run_without_a_per_example_deadline() -> None:
    # mutant: tests/conftest.py's profile without ``deadline=None`` (Hypothesis' default is
    # 200 ms per example: a property test then fails when the machine is busy, not when the
    # code is wrong)
    assert settings.default.deadline is None


# --- retries are jittered: each delay drawn in [d/2, d] (README, Operations) ------------

class FailingWatches(MemoryStore):
    """Reads work; every watch fails at once (etcd refusing watches); records when each
    watch was opened."""

    def __init__(self, scheduler: TestScheduler) -> None:
        super().__init__(scheduler)
        self.opened: list[float] = []

    def watch(self, prefix: str, start_revision: int, **kwargs: Any
              ) -> reactivex.Observable[WatchResponse]:
        self.opened.append(self.scheduler.clock)  # type: ignore[attr-defined]
        return reactivex.throw(StoreUnavailable("watch refused"))


def test_watch_retries_are_jittered_between_half_and_all_of_each_delay(
        scheduler: TestScheduler, monkeypatch: pytest.MonkeyPatch) -> None:
    # mutants: Backoff.next without jitter (``uniform(ceiling, ceiling)``: every client that
    # lost etcd at once retries at the same instants, the stampede the README rules out), or
    # drawn from [0, d] (retries faster than the documented pace). Seeded: deterministic.
    monkeypatch.setattr("rx_discovery._runtime._RNG", random.Random(17))
    store = FailingWatches(scheduler)
    discovery = Discovery(store=store)
    record(discovery.hosts("api"), scheduler)
    scheduler.advance_to(30)
    gaps = [b - a for a, b in itertools.pairwise(store.opened)]
    ceilings = [min(0.5, 0.05 * 2 ** n) for n in range(len(gaps))]
    assert len(gaps) >= 40
    assert all(c / 2 <= gap <= c for gap, c in zip(gaps, ceilings, strict=True)), gaps
    assert sum(gap < 0.75 * c for gap, c in zip(gaps, ceilings, strict=True)) >= len(gaps) // 4


class CompactedThenReadsFail(MemoryStore):
    """The first watch is told its revision was compacted; the re-read that follows fails
    six times (etcd unreachable), then works; every later watch fails at once. Records when
    each watch was opened."""

    def __init__(self, scheduler: TestScheduler) -> None:
        super().__init__(scheduler)
        self.opened: list[float] = []
        self.reads = 0

    def get_prefix(self, prefix: str) -> Any:
        self.reads += 1
        if 2 <= self.reads <= 7:
            raise StoreUnavailable("down")
        return super().get_prefix(prefix)

    def watch(self, prefix: str, start_revision: int, **kwargs: Any
              ) -> reactivex.Observable[WatchResponse]:
        self.opened.append(self.scheduler.clock)  # type: ignore[attr-defined]
        if len(self.opened) == 1:
            return reactivex.throw(RevisionCompacted(start_revision))
        return reactivex.throw(StoreUnavailable("watch refused"))


def test_a_successful_read_starts_the_watch_backoff_again_from_its_first_delay(
        scheduler: TestScheduler) -> None:
    # mutant: PrefixSync._install no longer resets the backoffs (``self._backoff =
    # self._slow_backoff = None`` removed): a watch failing right after a re-read that
    # needed seven tries was retried at the read's escalated pace (up to 0.5 s) instead of
    # within 0.05 s ("watches: 0.05 s doubling to 0.5 s", README, Operations)
    store = CompactedThenReadsFail(scheduler)
    discovery = Discovery(store=store)
    record(discovery.hosts("api"), scheduler)
    scheduler.advance_to(10)
    assert store.reads >= 8  # the first read, six failed re-reads, the one that worked
    assert len(store.opened) >= 3
    assert store.opened[2] - store.opened[1] <= 0.05


# --- a bulk first read refused as a whole: each stream reads alone, at once -------------

class OnePrefixDenied(MemoryStore):
    """Reads of ``/services/secret/`` are refused (etcd RBAC), so a bulk read holding it
    fails as a whole."""

    def get_prefix(self, prefix: str) -> Any:
        if prefix == "/services/secret/":
            raise PermissionDenied("permission denied")
        return super().get_prefix(prefix)


def test_a_bulk_first_read_refused_for_one_service_delivers_the_others_at_once(
        scheduler: TestScheduler) -> None:
    # mutant: PrefixSync.read_alone schedules its own read 1 s later instead of at once (the
    # other services' first sets, subscribed together with a denied one, came a second late)
    store = OnePrefixDenied(scheduler)
    put(store, "api", 1)
    discovery = Discovery(store=store)
    sets = record(discovery.hosts("api"), scheduler)
    denied = record(discovery.hosts("secret"), scheduler)
    scheduler.advance_to(0.5)
    assert [(when, sorted(s)) for when, s in sets.values] == [(0.0, ["uuid-1"])]
    assert denied.values == []  # refused: retried slowly, reported by health


# --- a background action that raises is logged, and the scheduler goes on ----------------

def test_a_background_action_that_raises_is_logged_and_the_next_one_still_runs(
        scheduler: TestScheduler, caplog: pytest.LogCaptureFixture) -> None:
    # mutant: _runtime._guard re-raises: on a TestScheduler the bug escapes into the
    # caller's advance_to(); on the etcd path's thread pool it is kept in a future nobody
    # reads, lost silently ("exceptions are logged, never lost silently")
    runtime = Runtime(scheduler, scheduler)
    ran: list[str] = []

    def bug() -> None:
        raise ZeroDivisionError("a library bug")

    runtime.run(bug)
    runtime.after(1, bug)
    runtime.after(2, lambda: ran.append("next"))
    with caplog.at_level(logging.ERROR, logger="rx_discovery"):
        scheduler.advance_to(3)
    assert ran == ["next"]
    failures = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ZeroDivisionError]
    assert len(failures) == 2


# --- a registration that succeeded retries its next failure from the first delay ----------

class GrantsFail(MemoryStore):
    """``grant`` fails (etcd unreachable for new leases) while ``failing``; records when
    each grant was asked for."""

    failing = False

    def __init__(self, scheduler: TestScheduler) -> None:
        super().__init__(scheduler)
        self.grants: list[float] = []

    def grant(self, ttl: int) -> Any:
        self.grants.append(self.scheduler.clock)  # type: ignore[attr-defined]
        if self.failing:
            raise StoreUnavailable("down")
        return super().grant(ttl)


def test_after_registering_the_next_outage_is_retried_from_the_first_delay(
        scheduler: TestScheduler) -> None:
    # mutant: Backoff.reset does nothing (_runtime is not mutation-run): a registration that
    # waited out one outage (its delays grown to the 5 s cap) retried a lost lease 2.5-5 s
    # apart instead of from 0.2 s ("registrations: 0.2 s doubling to ttl/3, at most 5 s")
    store = GrantsFail(scheduler)
    store.failing = True
    discovery = Discovery(store=store)
    registration = discovery.register("api", make_host(1), ttl=30)
    at(scheduler, 60, lambda: setattr(store, "failing", False))
    scheduler.advance_to(70)
    assert registration.ready

    def lease_lost_while_grants_fail() -> None:
        store.failing = True
        [lease] = store.leases  # the registration's
        store.expire_lease(lease)
    at(scheduler, 100, lease_lost_while_grants_fail)
    scheduler.advance_to(110)
    after = [t for t in store.grants if t >= 100]
    assert len(after) >= 3
    assert after[1] - after[0] <= 0.2


# --- HealthTracker (not mutation-run): what a recovery clears ----------------------------

class Clock:
    """A monotonic clock the test moves (``HealthTracker`` measures failures on it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_after_a_recovery_a_new_outage_is_reconnecting_before_it_is_unavailable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # mutant: connected() no longer clears ``_failing_since``: the first failure after an
    # outage that had healed long ago made the health UNAVAILABLE at once (an alert for a
    # blip), measured from the start of the old outage
    clock = Clock()
    monkeypatch.setattr("rx_discovery.health.time.monotonic", clock)
    tracker = HealthTracker("t", unavailable_after=10)
    tracker.failed("down")
    clock.now += 11
    tracker.failed("down")
    assert tracker.current.state is HealthState.UNAVAILABLE
    tracker.connected()
    clock.now += 100
    tracker.failed("blip")
    assert tracker.current.state is HealthState.RECONNECTING
    clock.now += 11
    tracker.failed("down again")
    assert tracker.current.state is HealthState.UNAVAILABLE


def test_a_refused_login_is_cleared_by_any_call_served_whatever_its_scope() -> None:
    # mutant: connected(scope=...) no longer clears the connection-wide denial (scope "",
    # a refused login or TLS): once the login worked again, health stayed DENIED for ever
    # unless a call without a scope was served
    tracker = HealthTracker("t", unavailable_after=60)
    tracker.connected(scope="/services/api/")
    tracker.denied("authentication failed")
    assert tracker.current.state is HealthState.DENIED
    tracker.connected(scope="/services/api/")
    assert tracker.current.state is HealthState.CONNECTED


def test_of_the_denials_standing_health_shows_the_latest() -> None:
    # mutant: denied() no longer moves a scope denied again to the end: after a blip, the
    # health came back as an older denial than the one last seen
    tracker = HealthTracker("t", unavailable_after=60)
    tracker.denied("no read on /a", scope="/a")
    tracker.denied("no read on /b", scope="/b")
    tracker.denied("no write on /a", scope="/a")
    tracker.failed("blip")
    tracker.connected(scope="/c")
    assert (tracker.current.state, tracker.current.reason) == (
        HealthState.DENIED, "no write on /a")
