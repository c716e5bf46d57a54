"""7. Memory: bytes per cached host in a HostSet of N hosts (tracemalloc), vs the JSON size,
and vs the raw equivalent (a dict ``key -> json.loads(value)``).

The measurement runs in a fresh interpreter (``python -m bench.memory HOST PORT SERVICE``
prints its figures as JSON): in the benchmark's own process, the strings interned by the
earlier benchmarks decide whether the interpreter's table of interned strings grows during
the build, which moved the figure by a third from one run to the next.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

from immutables import Map

from bench.common import BenchResult, Context
from rx_discovery.discovery import _HostCodec
from rx_discovery.hostset import HostSet

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


def ours_host_set(service: str, stored: list[tuple[str, bytes]]) -> HostSet:
    """The HostSet of ``stored`` (keys and values as the store hands them over), built as a
    service's sync builds it: with the sync's own codec (each key's id and host in one call,
    sharing their strings), into a dict, then a persistent map."""
    codec = _HostCodec(f"/services/{service}/", service)
    return HostSet._wrap(service, Map(dict(codec.entry(key, value) for key, value in stored)),
                         1)


def _measure(host: str, port: int, service: str) -> dict[str, float]:
    """Per-host sizes of both caches of ``service``'s hosts, as read from etcd."""
    import etcd3

    client = etcd3.client(host, port)
    try:
        # The values exactly as the store hands them to the sync (key str, value bytes).
        stored = [(meta.key.decode(), bytes(value))
                  for value, meta in client.get_prefix(f"/services/{service}/")]
    finally:
        client.close()
    head = f"/services/{service}/"
    ours_size, ours_set = _traced(lambda: ours_host_set(service, stored))
    raw_size, raw_map = _traced(lambda: {key[len(head):]: json.loads(value)
                                         for key, value in stored})
    assert len(ours_set) == len(raw_map) == len(stored)
    return {"hosts": len(stored), "ours": ours_size / len(stored),
            "raw": raw_size / len(stored),
            "json": sum(len(value) for _key, value in stored) / len(stored),
            "uuid": sum(len(key) - len(head) for key, _value in stored) / len(stored)}


def run(ctx: Context) -> BenchResult:
    result = BenchResult(NAME, TITLE)
    count = ctx.size(10_000, 2_000)
    ctx.populate(SERVICE, count)
    measured = subprocess.run(
        [sys.executable, "-m", "bench.memory", ctx.host, str(ctx.port), SERVICE],
        capture_output=True, text=True, check=True, timeout=120)
    sizes = json.loads(measured.stdout)
    per_ours, per_raw, json_bytes = sizes["ours"], sizes["raw"], sizes["json"]
    result.add("bytes per cached host", "B", per_ours, per_raw)
    result.add("bytes per host / JSON size", "x", per_ours / json_bytes, per_raw / json_bytes,
               ("<=", 3.0))
    result.notes.append(
        f"{sizes['hosts']:.0f} hosts, JSON {json_bytes:.0f} B/host, uuid {sizes['uuid']:.0f} "
        "B; tracemalloc, in a fresh interpreter, of the HostSet built exactly as the sync "
        "builds it (its codec: uuid and host sharing strings, in a persistent map) vs a raw "
        "dict uuid -> json.loads(value).")
    return result


if __name__ == "__main__":
    print(json.dumps(_measure(sys.argv[1], int(sys.argv[2]), sys.argv[3])))
