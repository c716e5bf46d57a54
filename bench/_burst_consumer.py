"""A consumer of bench.burst, in a process of its own, so that each side's CPU and GIL are
its own while both follow the same burst: ``python -m bench._burst_consumer ours|raw HOST
PORT`` prints ``ready``, then obeys lines ``SERVICE COUNT``: it subscribes to SERVICE, prints
``live`` once its watch is open, and ``{"end_ns": ..., "cpu_us": ..., "deliveries": ...}``
once it holds COUNT hosts (``end_ns`` on ``time.perf_counter_ns``: CLOCK_MONOTONIC,
comparable across processes on Linux), until stdin closes. The raw side never imports
rx_discovery."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

now_ns = time.perf_counter_ns  # as bench.common, which imports rx_discovery: not here
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]

TIMEOUT = 60.0


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


def _ours(host: str, port: int) -> Callable[[str, _Until, threading.Event], Callable[[], None]]:
    from rx_discovery import Discovery

    discovery = Discovery(endpoints=[f"http://{host}:{port}"])
    discovery.store.get("/warm-up")

    def subscribe(service: str, until: _Until, live: threading.Event) -> Callable[[], None]:
        def on_set(hosts: Any) -> None:  # every value decoded into a Host, a HostSet each
            if not hosts:  # revision
                live.set()  # the first, empty set
            else:
                until.delivered(len(hosts))

        return discovery.hosts(service).subscribe(on_set).dispose

    return subscribe


def _raw(host: str, port: int) -> Callable[[str, _Until, threading.Event], Callable[[], None]]:
    import etcd3

    client = etcd3.client(host, port, grpc_options=OWN_CONNECTION)
    client.get("/warm-up")

    def subscribe(service: str, until: _Until, live: threading.Event) -> Callable[[], None]:
        hosts: dict[bytes, dict[str, Any]] = {}  # what a raw-client user keeps

        def on_response(response: Any) -> None:
            if isinstance(response, Exception):
                return
            for event in response.events:
                hosts[event.key] = json.loads(event.value)
            until.delivered(len(hosts))

        watch_id = client.add_watch_prefix_callback(f"/services/{service}/", on_response)
        live.set()  # the watch is created when add_watch_prefix_callback returns
        return lambda: client.cancel_watch(watch_id)

    return subscribe


def main() -> None:
    side, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    subscribe = (_ours if side == "ours" else _raw)(host, port)
    print("ready", flush=True)
    for line in sys.stdin:
        service, count = line.split()
        until, live = _Until(int(count)), threading.Event()
        cancel = subscribe(service, until, live)
        if not live.wait(10):
            print(f"error {service}: not live within 10 s", flush=True)
            continue
        start_cpu = time.process_time()
        print("live", flush=True)
        if not until.done.wait(TIMEOUT):
            print(f"error {service}: {count} hosts not delivered within {TIMEOUT:g} s",
                  flush=True)
        else:
            print(json.dumps({"end_ns": until.end_ns, "deliveries": until.deliveries,
                              "cpu_us": (until.end_cpu - start_cpu) / until.count * 1e6}),
                  flush=True)
        cancel()


if __name__ == "__main__":
    main()
