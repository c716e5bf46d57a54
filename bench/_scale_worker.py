"""The worker of bench.scale: one side (ours or raw) in a fresh interpreter, which imports
only what that side needs (the raw side never imports rx_discovery), so that the peak RSS and
thread figures are each side's own.

``python -m bench._scale_worker catalog ours|raw HOST PORT`` prints its figures as JSON.
``python -m bench._scale_worker watch ours|raw HOST PORT N ROOT`` watches N services under
the key root ROOT, prints its setup figures as JSON once every watch is open, then answers
each line on stdin with JSON: ``await`` (when the next event of service 0 arrived, on
``time.perf_counter_ns``: CLOCK_MONOTONIC, comparable across processes on Linux; the parent
puts it), ``blocked`` (an event behind a slow subscriber); at EOF it prints its peak RSS and
exits. The parent runs both sides at once and writes each sample to both in one transaction,
so that both see the same commit on the same machine."""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
import uuid as uuidlib
from typing import Any

now_ns = time.perf_counter_ns
SLOW_MS = 20  # what the slow subscriber spends on each event
UNLIMITED = [("grpc.max_receive_message_length", -1), ("grpc.use_local_subchannel_pool", 1)]


def service_name(index: int) -> str:
    return f"scale-{index}"


def host_json(service: str, index: int) -> tuple[str, bytes]:
    """``(uuid, host JSON)`` as a registration writes it (Go's field order, ~330 bytes),
    built without importing rx_discovery."""
    node = f"node-{index}.{service}.internal.example.com"
    uuid = f"{uuidlib.uuid4()}-{node}"
    ports = {"http": "8080", "https": "8443", "metrics": "9100"}
    value = {"name": node, "service_name": service, "ports": ports, "private_hostname": node,
             "private_ports": ports, "shard": f"shard-{index % 8}", "uuid": uuid}
    return uuid, json.dumps(value, separators=(",", ":")).encode()


def sampled(root: str, index: int, serial: int) -> tuple[str, bytes]:
    """The put of a latency sample: one key per service, updated (the services keep their
    size over the samples and the pairs: new keys each time grew service 0 by ~430 hosts a
    pair, its first read, RSS and HostSets with it); built before the clock starts."""
    name = service_name(index)
    return f"{root}/services/{name}/{name}-sampled", host_json(name, serial)[1]


def _ms(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round((len(ordered) - 1) * q))] / 1e6


class _Stamp:
    """A timestamp set by a callback thread and awaited by the driver."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.ns = 0

    def hit(self) -> None:
        self.ns = now_ns()
        self.event.set()

    def wait(self, timeout: float) -> int | None:
        ok = self.event.wait(timeout)
        self.event.clear()
        return self.ns if ok else None


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """VmHWM: the peak of this process image (ru_maxrss would include the parent's peak,
    which Linux keeps across fork and exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _watch_worker(side: str, host: str, port: int, count: int, root: str) -> None:
    """Watch ``count`` services under ``root``, print the setup figures, then obey the
    parent's lines (see the module): ``sample K``, ``blocked``; at EOF print the peak RSS."""
    import etcd3

    writer = etcd3.client(host, port, grpc_options=UNLIMITED)
    writer.get("/warm-up")
    last = count - 1  # the last watch created: once it delivers, every watch is open
    stamps = {index: _Stamp() for index in (0, 1, last)}
    slow = threading.Event()  # while set, service 0's subscriber is slow
    firsts = threading.Semaphore(0)

    def on_event(index: int) -> None:
        if index == 0 and slow.is_set():
            time.sleep(SLOW_MS / 1000)
        if index in stamps:
            stamps[index].hit()

    if side == "ours":
        from rx_discovery import Discovery

        discovery = Discovery(endpoints=[f"http://{host}:{port}"], prefix=root)
        discovery.store.get("/warm-up")
        threads, rss = threading.active_count(), _rss_bytes()
        started = now_ns()
        subscriptions = []
        for index in range(count):
            first = [True]

            def on_next(_hosts: Any, index: int = index, first: list[bool] = first) -> None:
                if first[0]:
                    first[0] = False
                    firsts.release()
                else:
                    on_event(index)

            subscriptions.append(discovery.hosts(service_name(index)).subscribe(on_next))
    else:
        client = etcd3.client(host, port, grpc_options=UNLIMITED)
        client.get("/warm-up")
        threads, rss = threading.active_count(), _rss_bytes()
        started = now_ns()
        state: dict[str, dict[str, Any]] = {}
        for index in range(count):
            prefix = f"{root}/services/{service_name(index)}/"

            def on_raw(response: Any, index: int = index, prefix: str = prefix) -> None:
                if isinstance(response, Exception) or not response.events:
                    return  # an error or a progress notification: not an event
                hosts = state[prefix]  # kept up to date, as ours keeps its HostSet
                for event in response.events:
                    key = event.key.decode()
                    if event.value:
                        hosts[key] = json.loads(event.value)
                    else:
                        hosts.pop(key, None)
                on_event(index)

            state[prefix] = {meta.key.decode(): json.loads(value)
                             for value, meta in client.get_prefix(prefix)}
            firsts.release()
            client.add_watch_prefix_callback(prefix, on_raw)
    for _ in range(count):
        if not firsts.acquire(timeout=60):
            raise RuntimeError("a first state never came")
    first_state_s = (now_ns() - started) / 1e9

    def put(index: int, serial: int) -> None:
        writer.put(*sampled(root, index, serial))

    # every watch open (ours creates them after the first states, raw before): an event put
    # to the service subscribed last is delivered; the other figures are taken from then
    put(last, 999_999)
    if stamps[last].wait(60) is None:
        raise RuntimeError("the last watch never delivered")
    _answer({"first_state_s": first_state_s, "open_s": (now_ns() - started) / 1e9,
             "extra_threads": threading.active_count() - threads,
             "rss_per_service_b": (_rss_bytes() - rss) / count})
    serial = 1_000_000
    for line in sys.stdin:
        command = line.strip()
        if command == "await":  # the next event of service 0, put by the parent
            arrived = stamps[0].wait(10)
            if arrived is None:
                raise RuntimeError("an event never came")
            _answer({"ns": arrived})
        elif command == "blocked":  # service 1's event right behind a slow one of service 0
            blocked: list[int] = []
            slow.set()
            for _ in range(10):
                serial += 1
                put(0, serial)
                key, value = sampled(root, 1, serial)
                start = now_ns()
                writer.put(key, value)
                arrived = stamps[1].wait(10)
                stamps[0].wait(10)
                if arrived is not None:
                    blocked.append(arrived - start)
            slow.clear()
            _answer({"blocked_ms": statistics.median(blocked) / 1e6})
    _answer({"peak_rss_mb": _peak_rss_bytes() / 2**20})


def _answer(figures: dict[str, Any]) -> None:
    print(json.dumps(figures), flush=True)


def _catalog_worker(side: str, host: str, port: int) -> dict[str, Any]:
    import etcd3

    if side == "ours":
        from rx_discovery import Discovery

        discovery = Discovery(endpoints=[f"http://{host}:{port}"], prefix="/cat")
        discovery.store.get("/warm-up")
        started = now_ns()
        done = threading.Event()
        sizes: list[int] = []

        def on_catalog(catalog: Any) -> None:
            sizes.append(sum(len(entry.hosts) for entry in catalog.values()))
            done.set()

        discovery.catalog().subscribe(on_catalog)
        done.wait(120)
        hosts = sizes[0]
    else:
        client = etcd3.client(host, port, grpc_options=UNLIMITED)
        client.get("/warm-up")
        started = now_ns()
        state = {meta.key.decode(): json.loads(value)
                 for value, meta in client.get_prefix("/cat/services/")}
        hosts = len(state)
    return {"first_s": (now_ns() - started) / 1e9, "hosts": hosts,
            "peak_rss_mb": _peak_rss_bytes() / 2**20}



def main(argv: list[str]) -> None:
    kind, side, host, port, *rest = argv
    if kind == "watch":
        _watch_worker(side, host, int(port), int(rest[0]), rest[1])
    else:
        _answer(_catalog_worker(side, host, int(port)))
    os._exit(0)  # skip the clients' shutdown: the figures are out


if __name__ == "__main__":
    main(sys.argv[1:])
