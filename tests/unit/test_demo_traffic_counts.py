"""The demo traffic's bookkeeping, server-free: counts and rates on a virtual clock, the
counts line, the timetable, and the api hosts when httpx is missing (names only)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from reactivex.testing import TestScheduler
from rich.console import Console

from rx_discovery import Discovery, Host
from rx_discovery.cli._demo_traffic import DemoTraffic, _Counts


@pytest.fixture
def discovery() -> Iterator[Discovery]:
    with Discovery.in_memory(TestScheduler()) as discovery:
        yield discovery


def test_rates_count_only_the_window_and_totals_everything() -> None:
    clock = [0.0]
    counts = _Counts(lambda: clock[0], window=2.0)
    for t, name in [(0.0, "api-1"), (0.5, "api-2"), (1.5, "api-1"), (2.5, "api-2")]:
        clock[0] = t
        counts.answered(name)
    counts.failure(ConnectionRefusedError())
    counts.ejected(1)

    totals, recent, failed, ejections = counts.snapshot()   # at 2.5: (0.5, 2.5] counts
    assert totals == {"api-1": 2, "api-2": 2}
    assert recent == {"api-1": 1, "api-2": 2}
    assert (failed, ejections, counts.last_error) == (1, 1, "ConnectionRefusedError")
    clock[0] = 10.0
    assert counts.snapshot()[1] == {}                       # a host that left: rate 0
    assert counts.snapshot()[0] == totals                   # its total stays


def test_the_counts_line_gives_totals_and_what_came_since_the_last_line(
        discovery: Discovery) -> None:
    traffic = DemoTraffic(discovery, lambda _: None, enabled=False)
    assert traffic.line() == "~ requests: none yet | failed 0 | ejections 0"
    for name in ["api-1", "api-2", "api-2"]:
        traffic.counts.answered(name)
    assert traffic.line() == "~ requests: api-1 1 (+1), api-2 2 (+2) | failed 0 | ejections 0"
    traffic.counts.answered("api-2")
    traffic.counts.ejected(2)
    assert traffic.line() == "~ requests: api-1 1 (+0), api-2 3 (+1) | failed 0 | ejections 2"


def test_timetable_and_hosts(discovery: Discovery) -> None:
    said: list[str] = []
    plain = DemoTraffic(discovery, said.append, lines=True, enabled=True)
    steps = plain.steps(100.0, 4.0, crash=lambda: pytest.fail("not called"))
    assert [step.at for step in steps] == [100.001, 102.0, 101.0, 102.0, 103.0, 104.0]
    steps[2].action()
    assert said == ["~ requests: none yet | failed 0 | ejections 0"]
    # on a terminal the live table shows the counts: no lines
    assert len(DemoTraffic(discovery, said.append, lines=False, enabled=True)
               .steps(100.0, 4.0, crash=lambda: pytest.fail("not called"))) == 2
    # without httpx: the api hosts of before, names only, and no traffic at all
    off = DemoTraffic(discovery, said.append, enabled=False)
    assert off.steps(100.0, 4.0, crash=lambda: pytest.fail("not called")) == []
    assert off.host(2) == Host(hostname="api-2.demo.local", ports={"http": "8082"},
                               shard="shard-0")
    off.start()
    off.close()
    console = Console(width=100, record=True)
    console.print(off)
    assert "failed 0, ejections 0" in console.export_text()
