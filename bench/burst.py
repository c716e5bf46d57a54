"""11. Burst: 5,000 hosts written in 100-put transactions while subscribed, delivered live.

Both sides are subscribed to an empty service before the burst (live: not a replay of stored
history). A writer in a process of its own (``bench._burst_writer``: its CPU is neither
side's) writes N fresh hosts in transactions of 100 puts (N/100 revisions), back to back.
Ours: ``hosts(service)`` on a Discovery (the host of every event decoded, one HostSet per
revision); raw: python3-etcd3 ``add_watch_prefix_callback`` whose callback ``json.loads``
every value into a dict ``key -> value`` (what a raw-client user keeps). Measured per trial:
from the writer's first transaction to the consumer holding all N hosts (the clocks are
CLOCK_MONOTONIC, shared by the processes), the consumer process's CPU over that time per
event, and the writer's own time. Median of 5 trials per side, alternating (quick: 1,000
hosts, 3 trials).
"""

from __future__ import annotations

import gc
import json
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any

from bench._burst_writer import THREADS, BurstWriter
from bench.common import BenchResult, Context, now_ns

NAME = "burst"
TITLE = "11. live burst (100-put transactions)"

BATCH = 100
TIMEOUT = 60.0
SETTLE = 0.3  # s between subscribing and the burst: the watch is created, the heap settles


@dataclass
class Trial:
    burst_ms: float  # writer's first transaction -> the consumer holds every host
    tail_ms: float  # writer's last transaction answered -> the consumer holds every host
    cpu_us: float  # consumer process CPU per event over the burst
    writer_ms: float  # writer's first transaction -> its last one answered
    deliveries: int  # HostSets (ours) / watch responses (raw) with events


class _Until:
    """Set on the consumer's thread when it holds ``count`` hosts."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.done = threading.Event()
        self.deliveries = 0
        self.end_ns = 0
        self.end_cpu = 0.0

    def delivered(self, held: int) -> None:
        self.deliveries += 1
        if held >= self.count and not self.done.is_set():
            self.end_ns, self.end_cpu = now_ns(), time.process_time()
            self.done.set()

    def trial(self, writer: BurstWriter, service: str, what: str) -> Trial:
        time.sleep(SETTLE)
        gc.collect()
        start_cpu = time.process_time()
        times = writer.burst(service, self.count, BATCH)
        if not self.done.wait(TIMEOUT):
            raise RuntimeError(f"{what}: {self.count} hosts not delivered within {TIMEOUT:g} s")
        return Trial((self.end_ns - times["start_ns"]) / 1e6,
                     (self.end_ns - times["end_ns"]) / 1e6,
                     (self.end_cpu - start_cpu) / self.count * 1e6,
                     (times["end_ns"] - times["start_ns"]) / 1e6, self.deliveries)


def _ours(d: Any, writer: BurstWriter, admin: Any, service: str, count: int) -> Trial:
    until = _Until(count)
    live = threading.Event()

    def on_set(hosts: Any) -> None:
        if not hosts:
            live.set()  # the first, empty set
        else:
            until.delivered(len(hosts))

    subscription = d.hosts(service).subscribe(on_set)
    try:
        if not live.wait(10):
            raise RuntimeError(f"{service}: no first HostSet within 10 s")
        return until.trial(writer, service, f"{service} (ours)")
    finally:
        subscription.dispose()
        admin.delete_prefix(f"/services/{service}/")


def _raw(watcher: Any, writer: BurstWriter, admin: Any, service: str, count: int) -> Trial:
    until = _Until(count)
    hosts: dict[bytes, dict[str, Any]] = {}

    def on_response(response: Any) -> None:
        if isinstance(response, Exception):
            return
        for event in response.events:
            hosts[event.key] = json.loads(event.value)
        until.delivered(len(hosts))

    prefix = f"/services/{service}/"
    watch_id = watcher.add_watch_prefix_callback(prefix, on_response)  # created on return
    try:
        return until.trial(writer, service, f"{service} (raw)")
    finally:
        watcher.cancel_watch(watch_id)
        admin.delete_prefix(prefix)


def run(ctx: Context) -> BenchResult:
    result = BenchResult(NAME, TITLE)
    count = ctx.size(5000, 1000)
    trials = ctx.size(5, 3)
    writer = BurstWriter(ctx.host, ctx.port)
    ctx._cleanups.append(writer.close)
    admin = ctx.raw_client()  # deletes each trial's hosts
    watcher = ctx.raw_client()  # the raw consumer, on a connection of its own
    d = ctx.discovery()
    sides: dict[str, list[Trial]] = {"ours": [], "raw": []}
    for trial in range(trials):  # alternating, so drift hits both sides alike
        sides["ours"].append(_ours(d, writer, admin, f"burst-{trial}-ours", count))
        sides["raw"].append(_raw(watcher, writer, admin, f"burst-{trial}-raw", count))

    def med(side: str, field: str) -> float:
        return float(statistics.median(getattr(t, field) for t in sides[side]))

    def each(field: str) -> dict[str, list[float]]:
        return {side: [round(getattr(t, field), 2) for t in sides[side]] for side in sides}

    label = f"{count:,} hosts, {count // BATCH} txns"
    result.add(f"{label}: first put -> every host delivered", "ms", med("ours", "burst_ms"),
               med("raw", "burst_ms"), ("ratio<=", 1.1),
               extra={"trials": each("burst_ms"), "deliveries": each("deliveries")})
    result.add(f"{label}: last put answered -> every host delivered", "ms",
               med("ours", "tail_ms"), med("raw", "tail_ms"), extra={"trials": each("tail_ms")})
    result.add(f"{label}: consumer CPU per event", "us", med("ours", "cpu_us"),
               med("raw", "cpu_us"), extra={"trials": each("cpu_us")})
    result.add(f"{label}: the writer alone", "ms", med("ours", "writer_ms"),
               med("raw", "writer_ms"), extra={"trials": each("writer_ms")})
    result.notes.append(
        f"{count} fresh hosts written live (both sides subscribed to the empty service "
        f"{SETTLE:g} s before) in {BATCH}-put transactions, {THREADS} in flight, by a writer "
        "in its own process; ours = hosts() (every value decoded into a Host, one HostSet per "
        "revision), raw = add_watch_prefix_callback + json.loads of every value into a dict. "
        "'first put -> every host delivered' runs from the writer's first transaction to the "
        "consumer holding all hosts; 'last put answered -> ...' from the writer's last "
        "transaction answered (the consumer's lag behind the writes); 'consumer CPU' is the "
        "consumer process's CPU (all its threads) from just before the burst to the last "
        "delivery, over N; 'the writer alone' is the writer's own time: etcd applying the "
        "transactions paces both sides on this machine, so the first row is near it and the "
        "consumers differ in the lag and the CPU rows. Median of "
        f"{trials} alternating trials per side (each trial in the JSON).")
    return result
