"""3. Cold snapshot: first ``hosts()`` emission for a service with N stored hosts, vs raw
``get_prefix`` + ``json.loads`` of the same keys."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any

from bench.common import BenchResult, Context, median, ms, now_ns

NAME = "snapshot"
TITLE = "3. cold snapshot"
SERVICE = "big"


def run(ctx: Context) -> BenchResult:
    result = BenchResult(NAME, TITLE)
    count = ctx.size(10_000, 2_000)
    repeats = ctx.size(7, 3)
    ctx.populate(SERVICE, count)
    d = ctx.discovery()
    client = ctx.raw_client()
    with contextlib.suppress(Exception):  # connect both clients before any timing
        d.get("warm-up").all()
    client.status()

    ours: list[int] = []
    raw: list[int] = []
    sizes: set[int] = set()
    for _ in range(repeats):
        got = threading.Event()
        first: list[Any] = []

        def on_set(hosts: Any, got: threading.Event = got, first: list[Any] = first) -> None:
            if not first:
                first.append((now_ns(), len(hosts)))
                got.set()

        start = now_ns()
        subscription = d.hosts(SERVICE).subscribe(on_next=on_set)
        ok = got.wait(30)
        subscription.dispose()  # last subscriber: the sync stops; the next one re-reads
        if not ok:
            raise RuntimeError("no first HostSet within 30 s")
        ours.append(first[0][0] - start)
        sizes.add(first[0][1])

        start = now_ns()
        hosts = {meta.key: json.loads(value)
                 for value, meta in client.get_prefix(f"/services/{SERVICE}/")}
        raw.append(now_ns() - start)
        sizes.add(len(hosts))
        time.sleep(0.1)
    result.add(f"first hosts() ({count} hosts), median", "ms", ms(median(ours)),
               ms(median(raw)), ("ratio<=", 1.5))
    result.add("best of runs", "ms", ms(min(ours)), ms(min(raw)))
    result.notes.append(
        f"median of {repeats} alternating runs on warm connections; raw = python3-etcd3 "
        f"get_prefix + json.loads into a dict by key; sizes seen {sorted(sizes)}. Ours: "
        "subscribe -> thread-pool hop -> get_range -> KeyValue -> decode_host -> HostSet.")
    return result
