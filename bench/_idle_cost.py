"""What a watched service that never changes costs this process, and what holds it (issue 12).

``python -m bench._idle_cost etcd|memory N [TOP]``: N services of one host each (on an
EmbeddedEtcd of its own, or a memory store), then ``hosts(name)`` subscribed for each; prints
the tracemalloc bytes, gc-tracked objects and threads added per service, and the TOP
allocation sites (file:line, bytes and objects per service). Not a timed benchmark: a tool
to find what to trim. The ``scale`` benchmark measures RSS against the raw client.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import tracemalloc
from typing import Any

from bench._scale_worker import host_json, service_name
from rx_discovery import Discovery


def _discovery(store: str, count: int) -> tuple[Discovery, Any]:
    if store == "memory":
        memory = Discovery.in_memory()
        for index in range(count):
            uuid, value = host_json(service_name(index), 0)
            memory.store.put(f"/services/{service_name(index)}/{uuid}", value)
        return memory, None
    import etcd3

    from rx_discovery.embedded import EmbeddedEtcd

    etcd = EmbeddedEtcd(name="idle-cost").start()
    client = etcd3.client("127.0.0.1", etcd.client_port)
    for start in range(0, count, 100):
        puts = []
        for index in range(start, min(count, start + 100)):
            uuid, value = host_json(service_name(index), 0)
            puts.append(client.transactions.put(f"/services/{service_name(index)}/{uuid}",
                                                value))
        client.transaction(compare=[], success=puts, failure=[])
    discovery = Discovery(endpoints=[etcd.endpoint])
    discovery.store.get("/warm-up")
    return discovery, etcd


def main(argv: list[str]) -> None:
    store, count = argv[0], int(argv[1])
    top = int(argv[2]) if len(argv) > 2 else 20
    discovery, etcd = _discovery(store, count)
    firsts = threading.Semaphore(0)
    subscriptions = [discovery.hosts("warm-up").subscribe(lambda _: None)]
    gc.collect()
    threads, objects = threading.active_count(), len(gc.get_objects())
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    start = tracemalloc.get_traced_memory()[0]
    subscriptions += [discovery.hosts(service_name(index)).subscribe(
        lambda _: firsts.release()) for index in range(count)]
    for _ in range(count):
        if not firsts.acquire(timeout=60):
            raise RuntimeError("a first state never came")
    gc.collect()
    size = tracemalloc.get_traced_memory()[0] - start
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    print(f"{store}, {count:,} services: {size / count:,.0f} B, "
          f"{(len(gc.get_objects()) - objects) / count:.1f} gc-tracked objects and "
          f"{(threading.active_count() - threads) / count:.4f} threads per watched service")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    for stat in after.compare_to(before, "lineno")[:top]:
        frame = stat.traceback[0]
        where = frame.filename.replace(root, "").split("site-packages/")[-1]
        print(f"{stat.size_diff / count:8.0f} B {stat.count_diff / count:6.2f} objects  "
              f"{where}:{frame.lineno}")
    if etcd is not None:
        etcd.stop()
    os._exit(0)  # skip the clients' shutdown: the figures are out


if __name__ == "__main__":
    main(sys.argv[1:])
