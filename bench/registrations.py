"""4. Registrations at scale: N registrations (ttl 5 s) held by one Discovery.

- time to register all (register N, then wait N) vs N raw lease grants + puts (sequential),
  the median of alternating rounds;
- write RPCs (lease grants + puts) per registration, both sides (server metrics);
- steady-state CPU of this process while holding them (``time.process_time`` deltas);
- expiries seen by another Discovery's ``subscribe_down`` (must be 0);
- ``LeaseKeepAlive`` streams opened on the server (metric delta; one stream is the goal).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.common import BenchResult, Context, host_key, host_value, make_host
from rx_discovery import Discovery, Registration

NAME = "registrations"
TITLE = "4. registrations at scale"
SERVICE = "reg"
TTL = 5.0
WRITES = ("LeaseGrant", "Put")


def _writes(ctx: Context) -> float:
    """Lease grants and puts the server has handled so far."""
    return sum(ctx.etcd.metric("grpc_server_handled_total", grpc_method=method)
               for method in WRITES)


def _ours_register(ctx: Context, holder: Discovery, count: int,
                   round_: int) -> tuple[float, float, list[Registration]]:
    """Register ``count`` hosts on ``holder`` and wait for all: (seconds, write RPCs,
    registrations)."""
    hosts = [make_host(SERVICE, round_ * count + i) for i in range(count)]
    writes_before = _writes(ctx)
    start = time.perf_counter()
    registrations = [holder.register(SERVICE, host, ttl=TTL) for host in hosts]
    for registration in registrations:
        registration.wait(timeout=60)
    return time.perf_counter() - start, _writes(ctx) - writes_before, registrations


def _raw_register(ctx: Context, client: Any, count: int, round_: int) -> tuple[float, float]:
    """Sequential lease grant + put of ``count`` hosts, then revoke: (seconds, write RPCs)."""
    values = [host_value("reg-raw", round_ * count + i) for i in range(count)]
    writes_before = _writes(ctx)
    start = time.perf_counter()
    leases = []
    for uuid, value in values:
        lease = client.lease(int(TTL))
        client.put(host_key("reg-raw", uuid), value, lease=lease)
        leases.append(lease)
    seconds, writes = time.perf_counter() - start, _writes(ctx) - writes_before
    for lease in leases:
        client.revoke_lease(lease.id)
    return seconds, writes


def run(ctx: Context) -> BenchResult:
    result = BenchResult(NAME, TITLE)
    count = ctx.size(1000, 100)
    rounds = ctx.size(3, 1)
    window = float(ctx.size(30, 5))
    keepalive_metric = {"grpc_method": "LeaseKeepAlive"}
    client = ctx.raw_client()
    client.status()

    # Registering: alternating rounds (ours, then raw), the median of each side reported.
    ours_times: list[float] = []
    raw_times: list[float] = []
    ours_writes = raw_writes = 0.0
    for round_ in range(rounds - 1):
        with ctx.discovery() as holder:
            seconds, ours_writes, _ = _ours_register(ctx, holder, count, round_)
        ours_times.append(seconds)
        seconds, raw_writes = _raw_register(ctx, client, count, round_)
        raw_times.append(seconds)

    # The last round is held: steady-state CPU while the leases are kept alive.
    watcher = ctx.discovery()
    downs: list[str] = []
    down_sub = watcher.subscribe_down(SERVICE).subscribe(on_next=downs.append)
    holder = ctx.discovery()
    streams_before = ctx.etcd.metric("grpc_server_started_total", **keepalive_metric)
    seconds, ours_writes, registrations = _ours_register(ctx, holder, count, rounds - 1)
    ours_times.append(seconds)

    # Steady state: every registration has been kept alive at least once before we measure.
    time.sleep(TTL / 3 + 0.5)
    downs_before = len(downs)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    time.sleep(window)
    cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    expiries = len(downs) - downs_before
    not_ready = sum(not r.ready for r in registrations)
    streams = ctx.etcd.metric("grpc_server_started_total", **keepalive_metric) - streams_before
    down_sub.dispose()
    holder.close()  # revokes every lease
    seconds, raw_writes = _raw_register(ctx, client, count, rounds - 1)
    raw_times.append(seconds)

    result.add(f"register {count} (call all, wait all), median of {rounds}", "s",
               statistics.median(ours_times), statistics.median(raw_times), ("ratio<=", 1.5),
               extra={"trials": {"ours": [round(t, 3) for t in ours_times],
                                 "raw": [round(t, 3) for t in raw_times]}})
    result.add("write RPCs per registration", "count", ours_writes / count, raw_writes / count)
    result.add(f"steady CPU holding {count} ({window:g} s)", "% core", cpu * 100, None,
               ("<=", 10.0))
    result.add("expiries while holding", "count", float(expiries), None, ("==", 0.0))
    result.add("LeaseKeepAlive streams opened", "count", streams, None, ("<=", 1.0))
    result.add("registrations not ready at end", "count", float(not_ready), None, ("==", 0.0))
    result.notes.append(
        f"ttl {TTL:g} s (keepalive every ttl/3). Register: {rounds} alternating rounds per "
        "side (each in the JSON), the median reported. Ours: register() all, then wait() "
        "all; each registration grants a lease and puts its host key on the Discovery's "
        "8-thread pool; the registrations of a service share the service-key writes (these "
        "hosts alternate `critical`, so its document keeps changing): at most one write per "
        "50 ms, each covering every registration that asked before it started (counted in "
        "'write RPCs per registration'). Raw: lease() + put() sequentially, no service key. "
        "CPU is this whole process (the idle watcher Discovery included), over the last "
        "round; ours keeps every lease alive over one LeaseKeepAlive call on its own HTTP/2 "
        "connection. Raw has no keepalive of its own to compare: python3-etcd3 "
        "refresh_lease opens one stream per refresh (~1 ms each).")
    return result
