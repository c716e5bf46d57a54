"""7. Memory: bytes per cached host in a HostSet of N hosts (tracemalloc), vs the JSON size,
and vs the raw equivalent (a dict ``key -> json.loads(value)``)."""

from __future__ import annotations

import gc
import json
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

from immutables import Map

from bench.common import BenchResult, Context
from rx_discovery.hostset import HostSet
from rx_discovery.model import decode_host

NAME = "memory"
TITLE = "7. memory per cached host"
SERVICE = "big"


def _traced(build: Callable[[], Any]) -> tuple[int, Any]:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        value = build()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before, value


def run(ctx: Context) -> BenchResult:
    result = BenchResult(NAME, TITLE)
    count = ctx.size(10_000, 2_000)
    ctx.populate(SERVICE, count)
    client = ctx.raw_client()
    # The values exactly as the store hands them to the sync (key str, value bytes).
    stored = [(meta.key.decode(), bytes(value))
              for value, meta in client.get_prefix(f"/services/{SERVICE}/")]
    head = f"/services/{SERVICE}/"
    json_bytes = sum(len(value) for _key, value in stored) / len(stored)
    key_bytes = sum(len(key) - len(head) for key, _value in stored) / len(stored)

    ours_size, ours_set = _traced(lambda: HostSet._wrap(SERVICE, Map(
        {sys.intern(key[len(head):]): decode_host(value, key) for key, value in stored}), 1))
    raw_size, raw_map = _traced(lambda: {key[len(head):]: json.loads(value)
                                         for key, value in stored})
    assert len(ours_set) == len(raw_map) == len(stored)
    per_ours, per_raw = ours_size / len(stored), raw_size / len(stored)
    result.add("bytes per cached host", "B", per_ours, per_raw)
    result.add("bytes per host / JSON size", "x", per_ours / json_bytes, per_raw / json_bytes,
               ("<=", 3.0))
    result.notes.append(
        f"{len(stored)} hosts, JSON {json_bytes:.0f} B/host, uuid {key_bytes:.0f} B; "
        "tracemalloc of the HostSet built exactly as the sync builds it (interned uuid -> "
        "decode_host, in a persistent map) vs a raw dict uuid -> json.loads(value).")
    return result
