"""Shared parts of the calling tests: service instances in their own processes, and the
scenarios a client must survive (one instance SIGKILLed, one stopped gracefully) whatever the
client (httpx sync or async, requests, gRPC)."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import wait_until

from rx_discovery.balance import Balancer
from rx_discovery.embedded import EmbeddedEtcd

SCRIPT = Path(__file__).with_name("backend_process.py")
SERVICE = "calc"


@dataclass
class Backend:
    name: str
    process: subprocess.Popen[str]
    port: int
    uuid: str


def start_backends(etcd: EmbeddedEtcd, prefix: str, count: int, *flags: str
                   ) -> list[Backend]:
    processes = [subprocess.Popen(
        [sys.executable, str(SCRIPT), etcd.endpoint, prefix, SERVICE, f"b{n}", *flags],
        stdout=subprocess.PIPE, text=True, env=os.environ.copy()) for n in range(count)]
    backends = []
    for n, process in enumerate(processes):
        line = process.stdout.readline().split()  # type: ignore[union-attr]
        assert line and line[0] == "ready", f"backend b{n} did not start"
        backends.append(Backend(f"b{n}", process, int(line[1]), line[2]))
    return backends


@pytest.fixture
def backend_factory(etcd: EmbeddedEtcd, unique_prefix: str
                    ) -> Iterator[Callable[..., list[Backend]]]:
    started: list[Backend] = []

    def start(count: int = 3, *flags: str) -> list[Backend]:
        backends = start_backends(etcd, unique_prefix, count, *flags)
        started.extend(backends)
        return backends

    yield start
    for backend in started:
        if backend.process.poll() is None:
            backend.process.kill()
        backend.process.wait(timeout=10)


def within(counts: collections.Counter[str], names: list[str], low: float, high: float) -> bool:
    total = sum(counts[name] for name in names)
    return total > 0 and all(low <= counts[name] / total <= high for name in names)


def sigkill_scenario(backends: list[Backend], balancer: Balancer, send: Callable[[], str],
                     failures_to: Callable[[int], int] | None) -> None:
    """Calls go on while one instance is SIGKILLed (its key stays until its TTL): no call
    fails, the dead instance leaves the rotation at its first failed attempt (counted by
    ``failures_to(port)``, when the client lets us count), and traffic stays even across the
    live ones."""
    wait_until(lambda: balancer.hosts is not None and len(balancer.hosts) == len(backends),
               message="every backend in the balancer's host set")
    before = collections.Counter(send() for _ in range(150))
    names = [b.name for b in backends]
    assert within(before, names, 0.2, 0.47), before
    victim, live = backends[0], [b.name for b in backends[1:]]
    victim.process.kill()
    victim.process.wait(timeout=10)
    after: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + 30
    while victim.uuid in (balancer.hosts or {}):    # its key stays until the lease expires
        after[send()] += 1
        assert time.monotonic() < deadline, "the dead backend's key never expired"
    after.update(send() for _ in range(100))
    assert victim.name not in after
    if failures_to is not None:
        assert failures_to(victim.port) == 1, "the dead host was tried again after its failure"
    assert within(after, live, 0.35, 0.65), after


def graceful_scenario(backends: list[Backend], balancer: Balancer, send: Callable[[], str],
                      failures_to: Callable[[int], int] | None) -> None:
    """Calls go on while one instance stops gracefully (dispose its registration, then drain,
    then exit): no call fails and none is even attempted on it after it stopped."""
    wait_until(lambda: balancer.hosts is not None and len(balancer.hosts) == len(backends),
               message="every backend in the balancer's host set")
    victim, live = backends[0], [b.name for b in backends[1:]]
    assert victim.name in collections.Counter(send() for _ in range(30))
    victim.process.send_signal(signal.SIGTERM)
    after: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + 30
    while victim.process.poll() is None:
        after[send()] += 1
        assert time.monotonic() < deadline, "the backend did not stop"
    after.update(send() for _ in range(100))
    assert victim.uuid not in (balancer.hosts or {})
    if failures_to is not None:
        assert failures_to(victim.port) == 0
    assert within(after, live, 0.35, 0.65), after
