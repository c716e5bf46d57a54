"""The demo's traffic: requests reach the api hosts as they come and go.

The demo itself runs as a subprocess against the session's etcd (plain output: a
``~ requests:`` line of counts per second); the traffic module runs in-process on an
in-memory Discovery with its real HTTP servers on loopback and a real httpx client.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_until
from reactivex.testing import TestScheduler
from rich.console import Console

from rx_discovery import Discovery
from rx_discovery.cli._demo_traffic import DemoTraffic
from rx_discovery.embedded import EmbeddedEtcd

ROOT = Path(__file__).resolve().parents[2]
COUNTS = re.compile(r"(api-\d+) (\d+) \(\+\d+\)")


def _counts(line: str) -> dict[str, int]:
    return {name: int(total) for name, total in COUNTS.findall(line)}


def test_demo_requests_follow_the_api_hosts(etcd: EmbeddedEtcd, unique_prefix: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["ETCD_HOSTS"] = etcd.endpoint
    result = subprocess.run(
        [sys.executable, "-m", "rx_discovery", "demo", "--duration", "12", "--prefix",
         unique_prefix], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
        check=False)

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    requests = [n for n, line in enumerate(lines) if line.startswith("~ requests: ")]
    assert len(requests) == 12, result.stdout
    assert all(" | failed 0 | " in lines[n] for n in requests), result.stdout
    final = _counts(lines[requests[-1]])
    assert sum(total > 0 for total in final.values()) >= 3, result.stdout

    def totals_after(marker: str, skip: int) -> dict[str, int]:
        """The counts ``skip`` request lines after the first line starting with ``marker``
        (the client's own watch may see a change a moment after the demo's)."""
        at = next(n for n, line in enumerate(lines) if line.startswith(marker))
        return _counts(lines[[n for n in requests if n > at][skip]])

    # api-1 leaves gracefully: it answered before, never after its key went
    uuid_1 = next(line.split()[3] for line in lines if line.startswith("* disposing api "))
    assert totals_after(f"- api {uuid_1.rstrip(':')}", 0).get("api-1", 0) > 0, result.stdout
    assert totals_after(f"- api {uuid_1.rstrip(':')}", 2)["api-1"] == final["api-1"]
    # api-2 crashes: not one answer after its server died, and still no failed request
    assert totals_after("* crashing api-2 ", 1)["api-2"] == final["api-2"], result.stdout
    assert int(lines[requests[-1]].rsplit(" ", 1)[1]) >= 1   # ejections
    # api-4 comes: no answer before it registers, answers after
    assert all("api-4" not in _counts(lines[n]) for n in requests
               if n < lines.index("* a new api host registers")), result.stdout
    assert final["api-4"] > 0, result.stdout


@pytest.fixture
def scheduler() -> TestScheduler:
    return TestScheduler()


@pytest.fixture
def traffic(scheduler: TestScheduler) -> Iterator[tuple[Discovery, DemoTraffic]]:
    # host sets move only when the test advances the scheduler; requests flow in real time
    with Discovery.in_memory(scheduler) as discovery:
        traffic = DemoTraffic(discovery, lambda _: None, interval=0.02, enabled=True)
        try:
            yield discovery, traffic
        finally:
            traffic.close()


def test_graceful_stop_costs_nothing_and_a_crash_no_failed_request(
        scheduler: TestScheduler, traffic: tuple[Discovery, DemoTraffic]) -> None:
    discovery, demo = traffic
    first, second = (demo.registered(discovery.register("api", demo.host(n), ttl=60))
                     for n in (1, 2))
    demo.start()
    scheduler.advance_by(1)

    def totals() -> dict[str, int]:
        return demo.counts.snapshot()[0]

    def failed_and_ejections() -> tuple[int, int]:
        return demo.counts.snapshot()[2:]

    def more_answers(name: str, count: int = 10) -> None:
        before = totals().get(name, 0)
        wait_until(lambda: totals().get(name, 0) >= before + count, timeout=30,
                   message=f"{count} more answers from {name}")

    more_answers("api-1", 3)
    more_answers("api-2", 3)

    # graceful: disposed, api-1 answers until the client sees its key go, then stops
    first.dispose()
    demo.retire(first, drain=60)
    more_answers("api-1", 5)   # the client has not seen the change yet
    assert demo.servers["api-1"].state == "serving"
    scheduler.advance_by(1)    # now it does
    wait_until(lambda: demo.servers["api-1"].state == "stopped", timeout=30,
               message="api-1's server stopped after the client saw its key go")
    left = totals()["api-1"]
    more_answers("api-2")
    assert totals()["api-1"] == left
    assert failed_and_ejections() == (0, 0)   # not one refused connect

    # crash: the server dies, its key stays; the requests go on, none fails
    third = demo.registered(discovery.register("api", demo.host(3), ttl=60))
    scheduler.advance_by(1)
    more_answers("api-3", 3)
    demo.crash(third)
    wait_until(lambda: failed_and_ejections()[1] >= 1, timeout=30, message="api-3 ejected")
    console = Console(width=120, record=True)
    console.print(demo)   # the demo's live table
    table = console.export_text()
    assert "crashed, ejected" in table and "api-1 │ stopped" in table, table
    crashed = totals()["api-3"]
    more_answers("api-2")
    assert totals()["api-3"] == crashed
    assert failed_and_ejections()[0] == 0
    assert {second.uuid, third.uuid} <= set(discovery.get("api").hosts())   # keys stay
