"""What the surviving mutants of ``rx_discovery/_keeper.py`` (issue 17) would break: which
outcome each lease is told, one batch call per TTL, no two batches of a TTL at once, no timer
left behind. LeaseKeeper on the memory store, timed by a TestScheduler (one unit: one second).
Equivalent mutants are listed in docs/mutants-core.md.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from reactivex import abc
from reactivex.disposable import Disposable
from reactivex.testing import TestScheduler

from rx_discovery import StoreUnavailable
from rx_discovery._keeper import LeaseKeeper
from rx_discovery._runtime import Runtime
from rx_discovery.store.memory import MemoryStore


def keep(keeper: LeaseKeeper, store: MemoryStore, ttl: int = 3
         ) -> tuple[int, list[Exception | None], abc.DisposableBase]:
    lease = store.grant(ttl).id
    outcomes: list[Exception | None] = []
    return lease, outcomes, keeper.keep(lease, ttl, outcomes.append)


class BatchStore(MemoryStore):
    """A store with etcd's batch call (one keepalive stream for many leases); ``fail`` makes
    the whole batch fail, as when etcd is unreachable."""

    fail = False

    def __init__(self, scheduler: TestScheduler) -> None:
        super().__init__(scheduler)
        self.batches: list[list[int]] = []

    def keepalive_many(self, leases: Sequence[int]) -> dict[int, Exception | None]:
        self.batches.append(list(leases))
        if self.fail:
            raise StoreUnavailable("etcd unreachable")
        return {lease: None for lease in leases}

    def keepalive(self, lease: int) -> int:
        raise AssertionError("one lease at a time, with a batch call at hand")


def test_leases_of_one_ttl_are_refreshed_in_one_batch_call(scheduler: TestScheduler) -> None:
    # mutants: keepalive_many not looked up (or looked up under another name, on None),
    # called with None (_keeper.py _keepalive)
    store = BatchStore(scheduler)
    keeper = LeaseKeeper(store, Runtime(scheduler, scheduler))
    first, first_outcomes, _ = keep(keeper, store)
    second, second_outcomes, _ = keep(keeper, store)
    scheduler.advance_to(1.5)
    assert store.batches == [[first, second]]
    assert first_outcomes == second_outcomes == [None]


def test_a_batch_that_fails_tells_every_lease_the_error(scheduler: TestScheduler) -> None:
    # mutants: the outcomes of a failed batch None, built from None, or every lease told
    # None (success) instead of the error (_keeper.py _refresh)
    store = BatchStore(scheduler)
    store.fail = True
    keeper = LeaseKeeper(store, Runtime(scheduler, scheduler))
    _, first_outcomes, _ = keep(keeper, store)
    _, second_outcomes, _ = keep(keeper, store)
    scheduler.advance_to(1.5)
    for outcomes in (first_outcomes, second_outcomes):
        assert len(outcomes) == 1 and isinstance(outcomes[0], StoreUnavailable)


def test_one_lease_at_a_time_a_failure_keeps_the_outcomes_already_known(
        scheduler: TestScheduler) -> None:
    # mutants: the rest of the batch built from None or from the error itself
    # (_keeper.py _keepalive): the lease refreshed before etcd went away was told it failed
    class LosesEtcdAtTheSecondLease(MemoryStore):
        def keepalive(self, lease: int) -> int:
            if lease == second:
                raise StoreUnavailable("etcd unreachable")
            return super().keepalive(lease)

    store = LosesEtcdAtTheSecondLease(scheduler)
    keeper = LeaseKeeper(store, Runtime(scheduler, scheduler))
    _, first_outcomes, _ = keep(keeper, store)
    second, second_outcomes, _ = keep(keeper, store)
    _, third_outcomes, _ = keep(keeper, store)
    scheduler.advance_to(1.5)
    assert first_outcomes == [None]
    for outcomes in (second_outcomes, third_outcomes):
        assert len(outcomes) == 1 and isinstance(outcomes[0], StoreUnavailable)


class CountingScheduler(TestScheduler):
    """Counts the timers scheduled on it."""

    timers = 0

    def schedule_relative(self, duetime: Any, action: Any, state: Any = None
                          ) -> abc.DisposableBase:
        self.timers += 1
        return super().schedule_relative(duetime, action, state)


def test_the_ticker_stops_when_the_last_lease_of_its_ttl_is_released() -> None:
    # mutants: the ticker not recorded, the cohort not found or kept when empty, the ticker
    # disposed only when None (_keeper.py _start, _release): a timer per TTL for ever
    scheduler = CountingScheduler()
    store = MemoryStore(TestScheduler())  # its lease timers on a clock of their own
    keeper = LeaseKeeper(store, Runtime(scheduler, scheduler))
    _, _, first = keep(keeper, store)
    _, _, second = keep(keeper, store)
    scheduler.advance_to(5)
    first.dispose()
    scheduler.advance_to(10)  # the other lease still needs the ticker
    second.dispose()
    timers = scheduler.timers
    scheduler.advance_to(100)
    assert scheduler.timers == timers


class Threads:
    """An I/O scheduler that runs each action on a thread of its own (as etcd's pool does)."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def schedule(self, action: Any, state: Any = None) -> abc.DisposableBase:
        thread = threading.Thread(target=action, args=(self, state), daemon=True)
        self.threads.append(thread)
        thread.start()
        return Disposable()


def test_a_tick_while_the_batch_waits_for_etcd_sends_no_second_batch(
        scheduler: TestScheduler) -> None:
    # mutants: ``busy`` never set (False/None) or tested with ``and`` (_keeper.py _refresh):
    # a slow etcd would get a second, overlapping keepalive batch of the same leases per tick
    entered, release = threading.Event(), threading.Event()

    class SlowBatchStore(BatchStore):
        def keepalive_many(self, leases: Sequence[int]) -> dict[int, Exception | None]:
            outcome = super().keepalive_many(leases)
            if len(self.batches) == 1:
                entered.set()
                assert release.wait(10)
            return outcome

    store = SlowBatchStore(scheduler)
    io = Threads()
    keeper = LeaseKeeper(store, Runtime(scheduler, io))  # type: ignore[arg-type]
    keep(keeper, store)
    scheduler.advance_to(1)  # the first tick: its batch waits for etcd
    assert entered.wait(10)
    scheduler.advance_to(2)  # the next tick while it waits
    io.threads[-1].join(10)
    assert not io.threads[-1].is_alive()
    batches = len(store.batches)
    release.set()
    io.threads[0].join(10)
    assert not io.threads[0].is_alive()
    assert batches == 1
