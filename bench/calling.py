"""9. Calling services: the cost of a pick per policy (vs ``HostSet.one()``), and of
``DiscoveryTransport`` per request (vs plain httpx to the same fixed URL on loopback)."""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from collections.abc import Callable

import httpx

from bench.common import BenchResult, Context, median, now_ns, percentile
from rx_discovery import Discovery, Host
from rx_discovery.balance import POLICIES
from rx_discovery.http import DiscoveryTransport

NAME = "calling"
TITLE = "9. calling services (balancer, httpx transport)"
HOSTS = 10


def ns_per_call(action: Callable[[], object], count: int) -> float:
    start = now_ns()
    for _ in range(count):
        action()
    return (now_ns() - start) / count


def best_of(action: Callable[[], object], count: int, rounds: int = 5) -> float:
    """The fastest of ``rounds`` runs: what the code costs, least disturbed by other load."""
    return min(ns_per_call(action, count) for _ in range(rounds))


def run(ctx: Context) -> BenchResult:
    result = BenchResult(NAME, TITLE)
    picks(ctx, result)
    transport(ctx, result)
    return result


def picks(ctx: Context, result: BenchResult) -> None:
    count = ctx.size(200_000, 20_000)
    with Discovery.in_memory() as d:
        for n in range(HOSTS):
            d.register("pick", Host(hostname=f"10.0.0.{n}", ports={"http": "80"}), ttl=30)
        balancers = {policy: d.balancer("pick", policy) for policy in POLICIES}
        for balancer in balancers.values():
            deadline = time.monotonic() + 10
            while (balancer.hosts is None or len(balancer.hosts) < HOSTS) \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
        hosts = balancers["random"].hosts
        assert hosts is not None and len(hosts) == HOSTS
        raw = best_of(hosts.one, count)
        for policy, balancer in balancers.items():
            ours = best_of(balancer.pick, count)
            result.add(f"pick, {policy}", "ns", ours, raw)
            result.add(f"picks per second, {policy}", "M/s", 1e3 / ours)
        call = balancers["least_requests"]

        def around() -> None:
            with call.call():
                pass

        result.add("call() context (pick + in-flight + report)", "ns",
                   best_of(around, count // 4), raw)
        for balancer in balancers.values():
            balancer.close()
    result.notes.append(
        f"{HOSTS} hosts; best of 5 runs of {count:,} picks on one thread; raw: HostSet.one() "
        "(a random host, what a user writes by hand: builds a list per pick).")


def _kill(process: subprocess.Popen[str]) -> None:
    process.kill()
    process.wait()


def transport(ctx: Context, result: BenchResult) -> None:
    requests = ctx.size(5000, 400)
    server = subprocess.Popen([sys.executable, "-m", "bench._http_server"],
                              stdout=subprocess.PIPE, text=True)
    ctx._cleanups.append(functools.partial(_kill, server))
    port = int(server.stdout.readline())  # type: ignore[union-attr]
    d = ctx.discovery()
    registration = d.register("bench-http", Host(hostname="127.0.0.1",
                                                 ports={"http": str(port)}), ttl=10)
    registration.wait(timeout=30)
    plain = httpx.Client()
    ours = httpx.Client(transport=DiscoveryTransport(d))
    ctx._cleanups += [plain.close, ours.close]
    fixed, service = f"http://127.0.0.1:{port}/", "http://bench-http/"
    for _ in range(50):  # warm: connections, the balancer's first host set
        plain.get(fixed)
        ours.get(service)
    samples: dict[str, list[int]] = {"ours": [], "raw": []}
    sides = (("raw", plain, fixed), ("ours", ours, service))
    for turn in range(requests):  # one of each in turn: load spikes hit both sides alike;
        # which goes first alternates, so that neither side always follows the other
        for side, client, url in (sides if turn % 2 else sides[::-1]):
            begin = now_ns()
            client.get(url)
            samples[side].append(now_ns() - begin)
    # medians of single requests: a request slowed by another job's burst moves a mean of
    # blocks by several %, the median hardly
    raw_us, ours_us = median(samples["raw"]) / 1e3, median(samples["ours"]) / 1e3
    allowed = max(0.05 * raw_us, 20.0)
    result.add("httpx GET on loopback, per request (median)", "us", ours_us, raw_us)
    result.add("transport overhead per request", "us", ours_us - raw_us, None,
               ("<=", round(allowed, 1)),
               extra={side: {"p10_us": percentile(values, 10) / 1e3,
                             "p90_us": percentile(values, 90) / 1e3}
                      for side, values in samples.items()},
               note="median of ours - median of plain; target: under 5 % of the plain "
                    "request or 20 us, whichever is larger")
    # the transport's own work, without the network: what the overhead is made of
    transport_only = DiscoveryTransport(d, transport=httpx.MockTransport(
        lambda request: httpx.Response(200)))
    mock_plain = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200)))
    mock_ours = httpx.Client(transport=transport_only)
    ctx._cleanups += [mock_plain.close, mock_ours.close]
    mock_ours.get(service)
    count = ctx.size(2000, 300)
    mocked: dict[str, list[float]] = {"ours": [], "raw": []}
    for _ in range(7):   # alternating rounds, the fastest of each side
        mocked["raw"].append(ns_per_call(lambda: mock_plain.get(fixed), count))
        mocked["ours"].append(ns_per_call(lambda: mock_ours.get(service), count))
    result.add("the same on a mock transport (no network)", "us", min(mocked["ours"]) / 1e3,
               min(mocked["raw"]) / 1e3)
    result.notes.append(
        f"{requests} sequential GETs per side, one of each in turn (which goes first "
        "alternates); the server is "
        "ThreadingHTTPServer in its own process (keep-alive); ours goes through "
        "DiscoveryTransport to the one registered host (round_robin). The mock row is the "
        "transport's own work (pick, rewrite, count) without a network: fastest of 7 rounds.")
