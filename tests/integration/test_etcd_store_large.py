"""More than gRPC's default 4 MiB receive limit under one prefix: a first read, a watch that
catches up on history, and a catch-up after a network cut (TcpProxy) all deliver every key.

Values are 1 MiB each (etcd refuses a request over 1.5 MiB by default), five of them: 5 MiB.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import Recorder, wait_until

from rx_discovery._errors import StoreUnavailable
from rx_discovery.config import Settings
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.store import EventType
from rx_discovery.store.etcd import EtcdStore
from rx_discovery.testing import TcpProxy

VALUE = 1 << 20
COUNT = 5


def big(n: int) -> bytes:
    return bytes([65 + n]) * VALUE


@pytest.fixture
def server() -> Iterator[EmbeddedEtcd]:
    with EmbeddedEtcd(name="large") as etcd:
        yield etcd


def keys_seen(recorder: Recorder) -> dict[str, bytes]:
    seen: dict[str, bytes] = {}
    for response in recorder.items:
        for event in response.events:
            if event.type is EventType.PUT:
                seen[event.key] = event.value
    return seen


def test_first_read_and_watch_history_over_4_mib(server: EmbeddedEtcd) -> None:
    with EtcdStore(Settings.build(server.endpoint, timeout=10)) as store:
        first = store.put("/big/other", b"x")
        for n in range(COUNT):
            store.put(f"/big/k{n}", big(n))
        store.put("/bigger/outside", b"y")  # not under /big/

        snapshot = store.get_prefix("/big/")
        assert [kv.key for kv in snapshot.items] == ["/big/k0", "/big/k1", "/big/k2", "/big/k3",
                                                      "/big/k4", "/big/other"]
        assert all(snapshot.items[n].value == big(n) for n in range(COUNT))
        assert snapshot.revision == store.put("/elsewhere", b"z") - 1

        recorder = Recorder()
        recorder.subscription = store.watch("/big/", first).subscribe(recorder)
        wait_until(lambda: len(keys_seen(recorder)) == COUNT + 1 or recorder.error, timeout=20,
                   message="5 MiB of history on a watch")
        assert recorder.error is None
        assert keys_seen(recorder) == {"/big/other": b"x",
                                       **{f"/big/k{n}": big(n) for n in range(COUNT)}}
        # whole revisions, in order, none repeated
        revisions = [e.mod_revision for r in recorder.items for e in r.events]
        assert revisions == sorted(set(revisions))
        # etcd sends the catch-up as one response, in fragments of at most its request limit
        # (1.5 MiB): they are joined back into one
        assert len(recorder.items) == 1, [len(r.events) for r in recorder.items]
        recorder.subscription.dispose()


def test_catch_up_over_4_mib_after_a_network_cut(server: EmbeddedEtcd) -> None:
    with (TcpProxy(server.client_port) as proxy,
          EtcdStore(Settings.build(server.endpoint, timeout=10)) as writer,
          EtcdStore(Settings.build(proxy.endpoint, timeout=10)) as watcher):
        start = writer.put("/cut/first", b"1")
        recorder = Recorder()
        recorder.subscription = watcher.watch("/cut/", start).subscribe(recorder)
        wait_until(lambda: keys_seen(recorder), message="the first event")

        proxy.cut()
        wait_until(lambda: recorder.error is not None, timeout=15, message="the cut noticed")
        assert isinstance(recorder.error, StoreUnavailable)
        for n in range(COUNT):
            writer.put(f"/cut/k{n}", big(n))
        proxy.restore()

        # resume as the sync does: from the last delivered revision + 1, and a fresh read
        resumed = Recorder()
        last = recorder.items[-1].revision
        resumed.subscription = watcher.watch("/cut/", last + 1).subscribe(resumed)
        wait_until(lambda: len(keys_seen(resumed)) == COUNT or resumed.error, timeout=30,
                   message="5 MiB caught up after the cut")
        assert resumed.error is None
        assert keys_seen(resumed) == {f"/cut/k{n}": big(n) for n in range(COUNT)}
        snapshot = watcher.get_prefix("/cut/")
        assert len(snapshot.items) == COUNT + 1
        resumed.subscription.dispose()


def test_prefix_read_in_pages_is_one_consistent_snapshot(
        server: EmbeddedEtcd, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of 2 keys; between pages another client adds and deletes keys: the result is
    still the prefix as of the first page's revision."""
    from rx_discovery.store.etcd import _store

    with (EtcdStore(Settings.build(server.endpoint)) as store,
          EtcdStore(Settings.build(server.endpoint)) as other):
        for n in range(7):
            store.put(f"/pg/k{n}", b"%d" % n)
        before = store.get_prefix("/pg/")
        pages: list[int] = []
        original = _store._range_page

        def page(client: object, start: bytes, end: bytes, revision: int) -> object:
            response = original(client, start, end, revision)
            pages.append(revision)
            if len(pages) == 1:  # writes between the first and the second page
                other.put("/pg/k0a", b"new")
                other.delete("/pg/k5")
            return response

        monkeypatch.setattr(_store, "_PAGE", 2)
        monkeypatch.setattr(_store, "_range_page", page)
        snapshot = store.get_prefix("/pg/")
        assert len(pages) == 4 and pages[0] == 0 and set(pages[1:]) == {snapshot.revision}
        assert snapshot == before
        assert [kv.key for kv in snapshot.items] == [f"/pg/k{n}" for n in range(7)]
        monkeypatch.undo()
        after = store.get_prefix("/pg/")
        assert "/pg/k0a" in {kv.key for kv in after.items}
        assert after.revision == snapshot.revision + 2
