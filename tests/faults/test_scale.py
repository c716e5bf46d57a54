"""2,000 services watched by one Discovery through a network cut and an etcd restart (issue 12).

Every stream stays live and gap-free: a host that came and went while the network was cut is
seen coming and going (the watches resume from their own revisions on the one shared stream),
and the thread count stays bounded (it was two threads per watched service).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

import etcd3
import pytest
from helpers import wait_until

from rx_discovery import Discovery, HostSet
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.testing import TcpProxy, make_host

SERVICES = 2000
THREADS_ALLOWED = 25  # pool, timer, the stream's two, the proxy's; was 4,000 for 2,000 services


class _Streams:
    """Every HostSet each service's stream emitted, and the peak thread count."""

    def __init__(self) -> None:
        self.sets: dict[str, list[HostSet]] = {}
        self.errors: list[Exception] = []
        self.peak_threads = 0

    def on_set(self, name: str) -> Callable[[HostSet], None]:
        emitted = self.sets.setdefault(name, [])
        return emitted.append

    def sample_threads(self) -> bool:
        self.peak_threads = max(self.peak_threads, threading.active_count())
        return True

    def all_have(self, predicate: Callable[[str, HostSet], bool]) -> bool:
        self.sample_threads()
        return all(sets and predicate(name, sets[-1]) for name, sets in self.sets.items())


def _put_all(client: etcd3.Etcd3Client, puts: list[tuple[str, bytes]]) -> None:
    for start in range(0, len(puts), 100):
        client.transaction(compare=[], success=[client.transactions.put(key, value)
                                                for key, value in puts[start:start + 100]],
                           failure=[])


def _delete_all(client: etcd3.Etcd3Client, keys: list[str]) -> None:
    for start in range(0, len(keys), 100):
        client.transaction(compare=[], success=[client.transactions.delete(key)
                                                for key in keys[start:start + 100]], failure=[])


@pytest.mark.timeout(240)
def test_two_thousand_services_stay_live_and_gap_free_through_a_cut_and_a_restart() -> None:
    names = [f"svc-{i}" for i in range(SERVICES)]
    hosts = {name: make_host(i) for i, name in enumerate(names)}
    with EmbeddedEtcd(name="scale") as server, TcpProxy(server.client_port) as proxy, \
            Discovery(proxy.endpoint, timeout=2) as discovery:
        client = etcd3.client("127.0.0.1", server.client_port, timeout=10)
        _put_all(client, [(f"/services/{n}/{hosts[n].uuid}", hosts[n].to_json().encode())
                          for n in names])
        discovery.store.get("/warm-up")  # type: ignore[attr-defined]
        threads = threading.active_count()
        streams = _Streams()
        subscriptions = [discovery.hosts(name).subscribe(
            streams.on_set(name), streams.errors.append) for name in names]
        # hosts() does not wait for etcd in subscribe(): the first states come in bulk after
        wait_until(lambda: streams.all_have(lambda n, s: list(s) == [hosts[n].uuid]),
                   timeout=60, interval=0.1, message="every first state")
        assert all(len(streams.sets[n]) == 1 for n in names)
        assert threading.active_count() - threads <= THREADS_ALLOWED

        # network cut: a host comes to every service and, for half of them, goes again
        proxy.cut()
        wait_until(lambda: discovery.store._watches.count == 0, timeout=20,  # type: ignore
                   message="every watch noticed the cut")
        transient = {n: make_host(10_000 + i) for i, n in enumerate(names)}
        _put_all(client, [(f"/services/{n}/{transient[n].uuid}",
                           transient[n].to_json().encode()) for n in names])
        gone = names[::2]
        _delete_all(client, [f"/services/{n}/{transient[n].uuid}" for n in gone])
        streams.sample_threads()
        proxy.restore()
        expected = {n: {hosts[n].uuid} | ({transient[n].uuid} if n not in gone else set())
                    for n in names}
        wait_until(lambda: streams.all_have(lambda n, s: set(s) == expected[n]), timeout=60,
                   interval=0.1, message="every stream caught up after the cut")
        # gap-free: the host that came and went during the cut was seen coming
        missed = [n for n in gone if not any(transient[n].uuid in s for s in streams.sets[n])]
        assert not missed, f"{len(missed)} streams skipped the transient host, e.g. {missed[:3]}"

        # etcd restart (data kept): every stream resumes and sees a host registered after
        server.restart()
        client.close()
        client = etcd3.client("127.0.0.1", server.client_port, timeout=10)
        late = {n: make_host(20_000 + i) for i, n in enumerate(names)}
        wait_until(lambda: _try(lambda: _put_all(client, [
            (f"/services/{n}/{late[n].uuid}", late[n].to_json().encode()) for n in names])),
            timeout=30, message="etcd back")
        wait_until(lambda: streams.all_have(lambda n, s: late[n].uuid in s), timeout=60,
                   interval=0.1, message="every stream resumed after the restart")
        assert all(set(streams.sets[n][-1]) == expected[n] | {late[n].uuid} for n in names)
        # revisions only grow on every stream: nothing repeated, nothing went back
        assert all(all(a.revision < b.revision for a, b in itertools.pairwise(s))
                   for s in streams.sets.values())
        assert not streams.errors
        assert streams.peak_threads - threads <= THREADS_ALLOWED, streams.peak_threads - threads
        for subscription in subscriptions:
            subscription.dispose()
        client.close()


def _try(action: Callable[[], None]) -> bool:
    try:
        action()
    except Exception:
        return False
    return True
