"""6. Fan-out: S subscribers on one service share one etcd watch; the extra cost per
subscriber per event (put -> last subscriber's emission, with 1 vs S subscribers)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from bench.common import BenchResult, Context, host_key, host_value, median, now_ns, raw_watch, us

NAME = "fanout"
TITLE = "6. fan-out"
WATCHERS = "etcd_debugging_mvcc_watcher_total"


class _Last:
    """Counts emissions of one event across subscribers; stamps the last one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.expected = 1
        self.count = 0
        self.done = threading.Event()
        self.ns = 0

    def arm(self, expected: int) -> None:
        with self.lock:
            self.expected, self.count, self.ns = expected, 0, 0
            self.done.clear()

    def hit(self, _value: Any = None) -> None:
        with self.lock:
            self.count += 1
            if self.count == self.expected:
                self.ns = now_ns()
                self.done.set()


def _watchers(ctx: Context) -> float:
    return ctx.etcd.metric(WATCHERS)


def _measure(ctx: Context, stream: Callable[[], Any], subscribers: int, events: int,
             blocks: int) -> tuple[list[int], list[int], float]:
    """(latencies with 1 subscriber, with ``subscribers``, etcd watches opened)."""
    writer = ctx.raw_client()
    last = _Last()
    counter = iter(range(10**9))
    base = _watchers(ctx)
    first = stream().subscribe(on_next=last.hit)

    def sample(expected: int, timeout: float = 5.0) -> int | None:
        uuid, value = host_value("fan", next(counter))
        last.arm(expected)
        start = now_ns()
        writer.put(host_key("fan", uuid), value)
        if not last.done.wait(timeout):
            return None
        return last.ns - start

    one: list[int] = []
    many: list[int] = []
    opened = 0.0
    try:
        for _ in range(200):  # until the shared watch delivers
            if sample(1, 0.05) is not None:
                break
        for _ in range(20):
            sample(1)
        per_block = events // blocks
        for _ in range(blocks):
            for _ in range(per_block):
                value = sample(1)
                if value is not None:
                    one.append(value)
            extra = [stream().subscribe(on_next=last.hit) for _ in range(subscribers - 1)]
            for _ in range(5):
                sample(subscribers)
            opened = max(opened, _watchers(ctx) - base)
            for _ in range(per_block):
                value = sample(subscribers)
                if value is not None:
                    many.append(value)
            for subscription in extra:
                subscription.dispose()
    finally:
        first.dispose()
    return one, many, opened


def run(ctx: Context) -> BenchResult:
    result = BenchResult(NAME, TITLE)
    subscribers = 100
    events = ctx.size(1000, 200)
    d = ctx.discovery()
    one, many, opened = _measure(ctx, lambda: d.subscribe_new("fan"), subscribers, events, 5)
    h_one, h_many, h_opened = _measure(ctx, lambda: d.hosts("fan"), subscribers,
                                       ctx.size(500, 100), 5)

    # Raw: what the same fan-out costs with the raw client, one watch per subscriber.
    client = ctx.raw_client()
    base = _watchers(ctx)
    cancels = [raw_watch(client, "/services/fan/", lambda _r: None) for _ in range(subscribers)]
    time.sleep(0.2)
    raw_opened = _watchers(ctx) - base
    for cancel in cancels:
        cancel()

    per_sub = (median(many) - median(one)) / (subscribers - 1)
    h_per_sub = (median(h_many) - median(h_one)) / (subscribers - 1)
    result.add(f"etcd watches for {subscribers} subscribers", "count", opened, raw_opened,
               ("==", 1.0))
    result.add("extra cost per subscriber per event (subscribe_new)", "us", us(per_sub), None,
               ("<=", 5.0))
    result.add("extra cost per subscriber per event (hosts)", "us", us(h_per_sub), None,
               ("<=", 5.0))
    result.add("put -> last emission, 1 sub (subscribe_new)", "us", us(median(one)), None)
    result.add(f"put -> last emission, {subscribers} subs (subscribe_new)", "us",
               us(median(many)), None)
    result.notes.append(
        f"extra cost = (median latency with {subscribers} subscribers - with 1) / "
        f"{subscribers - 1}, {len(one)}/{len(many)} sequential events in 5 interleaved blocks "
        f"(hosts(): {len(h_one)}/{len(h_many)}); watches = {WATCHERS} delta (hosts(): "
        f"{h_opened:g}); raw = {subscribers} python3-etcd3 add_watch_prefix_callback watches.")
    return result
