"""Shared helpers: the run context, raw clients, host values, statistics, result rows."""

from __future__ import annotations

import contextlib
import json
import statistics
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlparse

import etcd3

from bench._proxy import ProxyProcess
from rx_discovery import Discovery, Host
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.registration import prepare_host

now_ns = time.perf_counter_ns  # CLOCK_MONOTONIC on Linux: comparable across processes

# gRPC options for raw clients that must survive a server restart (see ETCD-CLIENT-NOTES 9).
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.use_local_subchannel_pool", 1),
]
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


# -- results --------------------------------------------------------------------------------

@dataclass
class Metric:
    """One row of the table: a measurement of ours and (when there is one) of the raw client.

    ``target`` is ``(kind, value)`` with kind one of ``ratio<=``, ``ratio>=``, ``<=``, ``>=``,
    ``==`` (``ratio`` kinds compare ours/raw, the others compare ours), or None.
    """

    name: str
    unit: str
    ours: float | None
    raw: float | None = None
    target: tuple[str, float] | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.raw is None or self.raw == 0:
            return None
        return self.ours / self.raw

    @property
    def target_text(self) -> str:
        if self.target is None:
            return ""
        kind, value = self.target
        return f"{kind} {value:g}"

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        kind, value = self.target
        subject = self.ratio if kind.startswith("ratio") else self.ours
        if subject is None:
            return False
        op = kind.removeprefix("ratio")
        return {"<=": subject <= value, ">=": subject >= value,
                "==": subject == value}[op]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"] = self.target_text or None
        data["ratio"] = self.ratio
        data["pass"] = self.passed
        return data


@dataclass
class BenchResult:
    name: str
    title: str
    metrics: list[Metric] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def add(self, *args: Any, **kwargs: Any) -> Metric:
        metric = Metric(*args, **kwargs)
        self.metrics.append(metric)
        return metric

    @property
    def passed(self) -> bool | None:
        verdicts = [m.passed for m in self.metrics if m.passed is not None]
        if self.error:
            return False
        return all(verdicts) if verdicts else None

    def to_json(self) -> dict[str, Any]:
        primary = self.metrics[0] if self.metrics else None
        return {
            "title": self.title,
            # the headline metric, flattened (the first row)
            "ours": primary.ours if primary else None,
            "raw": primary.raw if primary else None,
            "ratio": primary.ratio if primary else None,
            "target": primary.target_text if primary else None,
            "pass": self.passed,
            "metrics": [m.to_json() for m in self.metrics],
            "notes": self.notes,
            "seconds": round(self.seconds, 2),
            "error": self.error,
        }


# -- statistics -----------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (pos - low))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ms(ns: float) -> float:
    return ns / 1e6


def us(ns: float) -> float:
    return ns / 1e3


# -- context --------------------------------------------------------------------------------

class Context:
    """What every benchmark gets: the server, the mode, and factories that are cleaned up."""

    def __init__(self, etcd: EmbeddedEtcd, quick: bool) -> None:
        self.etcd = etcd
        self.quick = quick
        parsed = urlparse(etcd.endpoint)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 2379
        self._cleanups: list[Callable[[], None]] = []

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def raw_client(self, *, reconnect: bool = False) -> Any:
        """A plain python3-etcd3 client (what a user of the raw client builds), on a TCP
        connection of its own (as rx-discovery's store has), so that the raw writer and a raw
        watcher do not share one HTTP/2 connection (which favours the raw side)."""
        client = etcd3.client(self.host, self.port,
                              grpc_options=RECONNECT_OPTIONS if reconnect else OWN_CONNECTION)
        self._cleanups.append(lambda: close_raw(client))
        return client

    def discovery(self) -> Discovery:
        d = Discovery(endpoints=[self.etcd.endpoint])
        self._cleanups.append(d.close)
        return d

    def proxied_discovery(self) -> tuple[Discovery, ProxyProcess]:
        """A Discovery whose connection to the server goes through a :class:`TcpProxy` (in its
        own process) that can be cut (network loss) while the server and every raw client
        stay up."""
        proxy = ProxyProcess(self.host, self.port)
        self._cleanups.append(proxy.close)
        d = Discovery(endpoints=[proxy.endpoint])
        self._cleanups.append(d.close)
        return d, proxy

    def cleanup(self) -> None:
        while self._cleanups:
            action = self._cleanups.pop()
            with contextlib.suppress(Exception):
                action()

    def populate(self, service: str, count: int) -> list[tuple[str, bytes]]:
        """Write ``count`` hosts under ``service`` (once per run) in 100-put transactions."""
        populated = _POPULATED.setdefault(id(self.etcd), {})
        if service in populated:
            return populated[service]
        items = [(host_key(service, value_uuid), value)
                 for value_uuid, value in (host_value(service, i) for i in range(count))]
        client = self.raw_client()
        bulk_put(client, items)
        populated[service] = items
        return items


# services already written in a server of this run: id(etcd) -> service -> items
_POPULATED: dict[int, dict[str, list[tuple[str, bytes]]]] = {}


def close_raw(client: Any) -> None:
    with contextlib.suppress(Exception):
        client.close()


def bulk_put(client: Any, items: Iterable[tuple[str, bytes]], batch: int = 100) -> None:
    pending = list(items)
    for start in range(0, len(pending), batch):
        chunk = pending[start:start + batch]
        client.transaction(compare=[], success=[client.transactions.put(k, v) for k, v in chunk],
                           failure=[])


# -- values ---------------------------------------------------------------------------------

def host_key(service: str, uuid: str) -> str:
    return f"/services/{service}/{uuid}"


def make_host(service: str, index: int) -> Host:
    """A realistic non-public host of ``service`` (defaults filled in as a registration does)."""
    host = Host(hostname=f"node-{index}.{service}.internal.example.com",
                ports={"http": "8080", "https": "8443", "metrics": "9100"},
                critical=index % 2 == 0, shard=f"shard-{index % 8}",
                uuid=f"{uuidlib.uuid4()}-node-{index}")
    return prepare_host(service, host)


def host_value(service: str, index: int) -> tuple[str, bytes]:
    """``(uuid, host JSON)`` of a fresh host (~330 bytes)."""
    host = make_host(service, index)
    return host.uuid, host.to_json().encode()


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def raw_watch(client: Any, prefix: str, callback: Callable[[Any], None]) -> Callable[[], None]:
    """Open a raw ``watch_prefix`` callback watch; returns its cancel function."""
    watch_id = client.add_watch_prefix_callback(prefix, callback)
    return lambda: client.cancel_watch(watch_id)


def decode_events(response: Any) -> list[tuple[Any, dict[str, Any] | None]]:
    """What a raw-client user does with a watch response: ``json.loads`` every put value."""
    out: list[tuple[Any, dict[str, Any] | None]] = []
    for event in getattr(response, "events", ()):
        value = event.value
        out.append((event, json.loads(value) if value else None))
    return out


class Stamp:
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


def stamping_decoder(stamp: Stamp) -> Callable[[Any], None]:
    """A raw watch callback that decodes each event's JSON (as a fair consumer must), then
    stamps the arrival."""
    def on_raw(response: Any) -> None:
        if isinstance(response, Exception):
            return
        for event in response.events:
            json.loads(event.value)
        stamp.hit()

    return on_raw
