"""Balancers in virtual time: pickers, passive health (ejection), the Rx operator.

Everything runs on the in-memory store driven by a TestScheduler (one unit = one second):
ejection times are virtual, nothing sleeps.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

import pytest
from reactivex.testing import TestScheduler

from rx_discovery import Discovery, NoHostFound, NoHostFoundOnShard
from rx_discovery.balance import Balancer, LeastRequests, picker
from rx_discovery.testing import make_host, record


def registered(scheduler: TestScheduler, discovery: Discovery, *numbers: int,
               service: str = "api", **fields: Any) -> dict[int, Any]:
    regs = {n: discovery.register(service, make_host(n, **fields), ttl=5) for n in numbers}
    scheduler.advance_by(1)
    return regs


def picks(balancer: Balancer, count: int) -> collections.Counter[str]:
    return collections.Counter(balancer.pick().uuid for _ in range(count))


def at(scheduler: TestScheduler, time: float, action: Any) -> None:
    scheduler.schedule_absolute(time, lambda *_: action())


# --- policies ------------------------------------------------------------------------------

def test_round_robin_takes_each_host_in_turn(scheduler: TestScheduler,
                                             discovery: Discovery) -> None:
    registered(scheduler, discovery, 1, 2, 3)
    balancer = discovery.balancer("api", scheduler=scheduler, wait=0)
    scheduler.advance_by(1)
    sequence = [balancer.pick().uuid for _ in range(6)]
    assert sorted(sequence[:3]) == ["uuid-1", "uuid-2", "uuid-3"]
    assert sequence[3:] == sequence[:3]


def test_random_spreads_over_every_host(scheduler: TestScheduler, discovery: Discovery) -> None:
    registered(scheduler, discovery, 1, 2, 3)
    balancer = discovery.balancer("api", "random", scheduler=scheduler)
    scheduler.advance_by(1)
    counts = picks(balancer, 3000)
    assert set(counts) == {"uuid-1", "uuid-2", "uuid-3"}
    assert all(800 < n < 1200 for n in counts.values()), counts


def test_least_requests_avoids_the_busier_of_two(scheduler: TestScheduler,
                                                 discovery: Discovery) -> None:
    registered(scheduler, discovery, 1, 2)
    balancer = discovery.balancer("api", "least_requests", scheduler=scheduler)
    scheduler.advance_by(1)
    with balancer.call() as busy:
        assert balancer.in_flight == {busy.uuid: 1}
        assert {balancer.pick().uuid for _ in range(50)} == {"uuid-1", "uuid-2"} - {busy.uuid}
    assert balancer.in_flight == {}
    assert len(set(picks(balancer, 200))) == 2


def test_least_requests_with_many_hosts_never_picks_the_busiest() -> None:
    hosts = [make_host(n) for n in range(1, 6)]
    loads = {"uuid-1": 9, "uuid-2": 0, "uuid-3": 0, "uuid-4": 0, "uuid-5": 0}
    choose = LeastRequests(loads)
    chosen = collections.Counter(choose(hosts).uuid for _ in range(2000))
    assert "uuid-1" not in chosen
    assert set(chosen) == {"uuid-2", "uuid-3", "uuid-4", "uuid-5"}


def test_concurrent_round_robin_picks_are_exactly_even(scheduler: TestScheduler,
                                                       discovery: Discovery) -> None:
    registered(scheduler, discovery, 1, 2, 3, 4)
    balancer = discovery.balancer("api", scheduler=scheduler)
    scheduler.advance_by(1)
    counts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def work() -> None:
        mine = picks(balancer, 10_000)
        with lock:
            counts.update(mine)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counts == {f"uuid-{n}": 10_000 for n in (1, 2, 3, 4)}


# --- no host, first state, shards ----------------------------------------------------------

def test_pick_before_the_first_set_waits_then_says_so(scheduler: TestScheduler,
                                                      discovery: Discovery) -> None:
    # etcd unreachable when the balancer starts: no first state, so a pick waits, then says so
    discovery.store.disconnect()  # type: ignore[attr-defined]
    balancer = discovery.balancer("api", scheduler=scheduler, wait=0)
    assert not balancer.ready
    with pytest.raises(NoHostFound, match="arrived within"):
        balancer.pick()
    discovery.store.reconnect()  # type: ignore[attr-defined]
    scheduler.advance_by(1)
    assert balancer.ready
    with pytest.raises(NoHostFound, match="no host registered"):
        balancer.pick()
    registered(scheduler, discovery, 7)
    assert balancer.pick().uuid == "uuid-7"


def test_shard_restricts_picks(scheduler: TestScheduler, discovery: Discovery) -> None:
    registered(scheduler, discovery, 1, shard="eu")
    registered(scheduler, discovery, 2, shard="us")
    eu = discovery.balancer("api", shard="eu", scheduler=scheduler)
    asia = discovery.balancer("api", shard="asia", scheduler=scheduler)
    scheduler.advance_by(1)
    assert set(picks(eu, 10)) == {"uuid-1"}
    with pytest.raises(NoHostFoundOnShard):
        asia.pick()


def test_closed_balancer_refuses_to_pick(scheduler: TestScheduler, discovery: Discovery) -> None:
    registered(scheduler, discovery, 1)
    balancer = discovery.balancer("api", scheduler=scheduler)
    scheduler.advance_by(1)
    balancer.close()
    with pytest.raises(RuntimeError, match="closed"):
        balancer.pick()


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"policy": "fastest"}, "policy"), ({"shard": ""}, "shard"), ({"wait": -1}, "wait"),
    ({"eject_base": 0}, "eject_base"), ({"eject_base": 5, "eject_max": 1}, "eject_max"),
    ({"policy": None}, "policy"),
])
def test_bad_arguments_fail_before_any_io(discovery: Discovery, kwargs: dict[str, Any],
                                          field: str) -> None:
    with pytest.raises(ValueError, match=field):
        discovery.balancer("api", **kwargs)


def test_bad_service_name_fails(discovery: Discovery) -> None:
    with pytest.raises(ValueError):
        discovery.balancer("a/b")


# --- passive health ------------------------------------------------------------------------

def test_a_failed_host_is_ejected_then_comes_back_by_itself(scheduler: TestScheduler,
                                                            discovery: Discovery) -> None:
    registered(scheduler, discovery, 1, 2, 3)
    balancer = discovery.balancer("api", scheduler=scheduler, eject_base=2, eject_max=5)
    scheduler.advance_by(1)
    host = balancer.hosts["uuid-2"]  # type: ignore[index]
    start = scheduler.clock
    balancer.report(host, ok=False)
    assert balancer.ejected == {"uuid-2"}
    assert set(picks(balancer, 30)) == {"uuid-1", "uuid-3"}
    scheduler.advance_to(start + 1.9)
    assert "uuid-2" not in picks(balancer, 30)
    scheduler.advance_to(start + 2.0)
    assert balancer.ejected == frozenset()
    assert set(picks(balancer, 30)) == {"uuid-1", "uuid-2", "uuid-3"}
    # failures in a row: 4 s, then capped at 5 s
    for expected in (4.0, 5.0, 5.0):
        began = scheduler.clock
        balancer.report(host, ok=False)
        scheduler.advance_to(began + expected - 0.1)
        assert balancer.ejected == {"uuid-2"}, expected
        scheduler.advance_to(began + expected)
        assert balancer.ejected == frozenset(), expected
    # a success forgets the streak: back to 2 s
    balancer.report(host, ok=True)
    began = scheduler.clock
    balancer.report(host, ok=False)
    scheduler.advance_to(began + 2.0)
    assert balancer.ejected == frozenset()


def test_every_host_ejected_means_picking_among_all(scheduler: TestScheduler,
                                                    discovery: Discovery) -> None:
    registered(scheduler, discovery, 1, 2)
    balancer = discovery.balancer("api", scheduler=scheduler)
    scheduler.advance_by(1)
    for uuid in ("uuid-1", "uuid-2"):
        balancer.report(balancer.hosts[uuid], ok=False)  # type: ignore[index]
    assert balancer.ejected == {"uuid-1", "uuid-2"}
    assert set(picks(balancer, 20)) == {"uuid-1", "uuid-2"}


def test_a_host_whose_key_goes_is_dropped_at_once(scheduler: TestScheduler,
                                                  discovery: Discovery) -> None:
    regs = registered(scheduler, discovery, 1, 2, 3)
    balancer = discovery.balancer("api", scheduler=scheduler, eject_base=10)
    scheduler.advance_by(1)
    balancer.report(balancer.hosts["uuid-3"], ok=False)  # type: ignore[index]
    regs[1].dispose()
    regs[3].dispose()
    scheduler.advance_by(0.001)
    assert set(picks(balancer, 10)) == {"uuid-2"}
    assert balancer.ejected == frozenset()
    # the ejection's timer was cancelled with the host: coming back under the same uuid, it
    # is picked at once
    regs[3] = discovery.register("api", make_host(3), ttl=5)
    scheduler.advance_by(1)
    assert set(picks(balancer, 10)) == {"uuid-2", "uuid-3"}


def test_call_reports_a_failure_when_the_block_raises(scheduler: TestScheduler,
                                                      discovery: Discovery) -> None:
    registered(scheduler, discovery, 1, 2)
    balancer = discovery.balancer("api", scheduler=scheduler)
    scheduler.advance_by(1)
    with pytest.raises(ConnectionError), balancer.call() as host:
        raise ConnectionError("refused")
    assert balancer.ejected == {host.uuid}
    with balancer.call() as other:
        pass
    assert other.uuid != host.uuid and balancer.ejected == {host.uuid}


def test_a_report_about_an_unknown_host_changes_nothing(scheduler: TestScheduler,
                                                        discovery: Discovery) -> None:
    registered(scheduler, discovery, 1)
    balancer = discovery.balancer("api", scheduler=scheduler)
    scheduler.advance_by(1)
    balancer.report(make_host(9), ok=False)
    assert balancer.ejected == frozenset()


def test_pick_other_skips_hosts_already_tried(scheduler: TestScheduler,
                                              discovery: Discovery) -> None:
    registered(scheduler, discovery, 1, 2, 3)
    balancer = discovery.balancer("api", scheduler=scheduler)
    scheduler.advance_by(1)
    balancer.report(balancer.hosts["uuid-1"], ok=False)  # type: ignore[index]
    assert balancer.pick_other({"uuid-2"}).uuid == "uuid-3"  # type: ignore[union-attr]
    # the ejected host is still better than nothing on a retry
    assert balancer.pick_other({"uuid-2", "uuid-3"}).uuid == "uuid-1"  # type: ignore[union-attr]
    assert balancer.pick_other({"uuid-1", "uuid-2", "uuid-3"}) is None


# --- the Rx operator -----------------------------------------------------------------------

def test_picker_operator_follows_the_sets(scheduler: TestScheduler,
                                          discovery: Discovery) -> None:
    pickers = record(discovery.hosts("api").pipe(picker("round_robin")), scheduler)
    regs: dict[int, Any] = {}
    at(scheduler, 10, lambda: regs.setdefault(1, discovery.register("api", make_host(1))))
    at(scheduler, 20, lambda: regs.setdefault(2, discovery.register("api", make_host(2))))
    scheduler.advance_to(30)
    empty, one, two = pickers.items
    with pytest.raises(NoHostFound):
        empty.pick()
    assert one.pick().uuid == "uuid-1"
    assert sorted(two.pick().uuid for _ in range(2)) == ["uuid-1", "uuid-2"]


def test_picker_operator_rejects_an_unknown_policy() -> None:
    with pytest.raises(ValueError, match="policy"):
        picker("sticky")


# --- review: defects found by breaking the balancer ----------------------------------------

def test_concurrent_failures_of_one_outage_eject_once_not_exponentially(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    # eight calls in flight to one host all fail when it dies: that is one failure of the
    # host (one ejection of eject_base), not eight in a row (2**7 s, capped at eject_max)
    registered(scheduler, discovery, 1, 2)
    balancer = discovery.balancer("api", scheduler=scheduler, eject_base=1, eject_max=60)
    scheduler.advance_by(1)
    host = balancer.hosts["uuid-1"]  # type: ignore[index]
    start = scheduler.clock
    for _ in range(8):
        balancer.report(host, ok=False)
    assert balancer.ejected == {"uuid-1"}
    scheduler.advance_to(start + 1.0)
    assert balancer.ejected == frozenset()
    # failing again once it is back is the second ejection in a row: 2 s
    began = scheduler.clock
    for _ in range(3):
        balancer.report(host, ok=False)
    scheduler.advance_to(began + 1.9)
    assert balancer.ejected == {"uuid-1"}
    scheduler.advance_to(began + 2.0)
    assert balancer.ejected == frozenset()


def test_a_cancelled_call_neither_ejects_its_host_nor_stays_in_flight(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    # cancelling an asyncio task (or Ctrl-C) inside `with balancer.call()` says nothing about
    # the host: it must be counted out, not reported failed
    import asyncio

    registered(scheduler, discovery, 1, 2)
    balancer = discovery.balancer("api", "least_requests", scheduler=scheduler)
    scheduler.advance_by(1)

    async def main() -> None:
        entered = asyncio.Event()

        async def call() -> None:
            with balancer.call():
                entered.set()
                await asyncio.Event().wait()   # a response that never comes

        task = asyncio.get_running_loop().create_task(call())
        await entered.wait()
        assert sum(balancer.in_flight.values()) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert balancer.in_flight == {}
    assert balancer.ejected == frozenset()
    with pytest.raises(KeyboardInterrupt), balancer.call():
        raise KeyboardInterrupt
    assert balancer.in_flight == {} and balancer.ejected == frozenset()


def test_picker_operator_reads_the_callers_in_flight_dict_even_when_it_starts_empty(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    # the caller's counts live in its own dict, empty before the first call: the picker must
    # read that dict, not a copy taken (or a new one made) while it was empty
    in_flight: dict[str, int] = {}
    pickers = record(discovery.hosts("api").pipe(picker("least_requests", in_flight)),
                     scheduler)
    registered(scheduler, discovery, 1, 2)
    in_flight["uuid-1"] = 50
    latest = pickers.items[-1]
    assert len(latest) == 2
    assert collections.Counter(latest.pick().uuid for _ in range(200)) == {"uuid-2": 200}


def test_a_balancer_dropped_without_close_releases_its_watch(scheduler: TestScheduler,
                                                             discovery: Discovery) -> None:
    # a balancer nobody holds any more (a forgotten close) must not keep the service's watch
    # open for ever: the subscription alone must not keep it alive
    import gc
    import weakref

    store = discovery.store
    for n in (1, 2):   # written as by other processes: no registration here watches "api"
        store.put(f"/services/api/uuid-{n}", make_host(n, service_name="api").to_json().encode())
    before = store.watch_count  # type: ignore[attr-defined]
    balancer = discovery.balancer("api", scheduler=scheduler)
    scheduler.advance_by(1)
    assert balancer.pick().uuid in {"uuid-1", "uuid-2"}
    assert store.watch_count == before + 1  # type: ignore[attr-defined]
    dropped = weakref.ref(balancer)
    del balancer
    gc.collect()
    scheduler.advance_by(1)
    assert dropped() is None
    assert store.watch_count == before  # type: ignore[attr-defined]
