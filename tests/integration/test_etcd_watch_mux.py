"""Every watch of an EtcdStore on one etcd Watch stream, by watch id (issue 12).

What a stream of its own gave each watch stays true per watch: its own events only, its own
compaction error, its own cancel, its own resume revision. The Store contract itself is in
tests/store_contract.py; outages and token renewal in tests/faults.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from helpers import Recorder, wait_until

from rx_discovery._errors import RevisionCompacted
from rx_discovery.config import Settings
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.store import Store
from rx_discovery.store.etcd import EtcdStore

STREAMS = "etcd_debugging_mvcc_watch_stream_total"
WATCHERS = "etcd_debugging_mvcc_watcher_total"


@pytest.fixture
def store(etcd: EmbeddedEtcd) -> Iterator[EtcdStore]:
    with EtcdStore(Settings.build([etcd.endpoint], timeout=5.0)) as opened:
        yield opened


def watch(store: Store, prefix: str, start_revision: int, exact: bool = False) -> Recorder:
    recorder = Recorder()
    recorder.subscription = store.watch(prefix, start_revision, exact=exact).subscribe(recorder)
    return recorder


def keys(recorder: Recorder) -> list[str]:
    return [event.key for response in recorder.items for event in response.events]


def test_many_watches_share_one_stream_and_one_reader_thread(
        etcd: EmbeddedEtcd, store: EtcdStore, unique_prefix: str) -> None:
    count = 300
    store.get("/warm-up")  # the client's own threads are not the watches' cost
    threads, streams = threading.active_count(), etcd.metric(STREAMS)
    revision = store.get_prefix(unique_prefix).revision
    recorders = [watch(store, f"{unique_prefix}/s{i}/", revision + 1) for i in range(count)]
    exact = watch(store, f"{unique_prefix}/s0", revision + 1, exact=True)
    for i in range(count):
        store.put(f"{unique_prefix}/s{i}/host", str(i).encode())
    store.put(f"{unique_prefix}/s0", b"exact")
    wait_until(lambda: all(r.items for r in recorders) and exact.items, timeout=20,
               message="every watch delivered its own event")
    # each watch got its own key and nothing else (the exact one: its key alone)
    assert [keys(r) for r in recorders] == [[f"{unique_prefix}/s{i}/host"] for i in range(count)]
    assert keys(exact) == [f"{unique_prefix}/s0"]
    assert etcd.metric(STREAMS) - streams == 1
    assert etcd.metric(WATCHERS) >= count + 1
    # one reader thread and gRPC's request-sending thread (was two per watch)
    assert threading.active_count() - threads <= 3
    assert all(r.error is None for r in (*recorders, exact))


def test_a_compacted_watch_fails_alone(store: EtcdStore, unique_prefix: str) -> None:
    first = store.put(f"{unique_prefix}/old/k", b"1")
    store.put(f"{unique_prefix}/old/k", b"2")
    live = watch(store, f"{unique_prefix}/live/", store.get_prefix("/").revision + 1)
    last = store.put(f"{unique_prefix}/live/a", b"a")
    wait_until(lambda: keys(live) == [f"{unique_prefix}/live/a"])
    compactor = store._get_client()
    compactor.compact(last)
    # one subscribed without on_error: reactivex's default raises; the stream must go on
    careless = store.watch(f"{unique_prefix}/old/", first).subscribe(lambda _: None)
    compacted = watch(store, f"{unique_prefix}/old/", first)
    wait_until(lambda: compacted.error is not None, message="the compacted watch failed")
    assert isinstance(compacted.error, RevisionCompacted)
    careless.dispose()
    store.put(f"{unique_prefix}/live/b", b"b")
    wait_until(lambda: len(keys(live)) == 2, message="the other watch goes on")
    assert live.error is None


def test_disposing_one_watch_leaves_the_others_and_the_last_ends_the_stream(
        etcd: EmbeddedEtcd, store: EtcdStore, unique_prefix: str) -> None:
    store.get("/warm-up")
    threads, streams = threading.active_count(), etcd.metric(STREAMS)
    revision = store.get_prefix("/").revision
    kept = watch(store, f"{unique_prefix}/", revision + 1)
    gone = watch(store, f"{unique_prefix}/", revision + 1)
    store.put(f"{unique_prefix}/a", b"a")
    wait_until(lambda: keys(kept) and keys(gone))
    gone.subscription.dispose()
    store.put(f"{unique_prefix}/b", b"b")
    wait_until(lambda: len(keys(kept)) == 2)
    assert keys(gone) == [f"{unique_prefix}/a"]
    kept.subscription.dispose()
    wait_until(lambda: etcd.metric(STREAMS) == streams, message="the stream ended")
    wait_until(lambda: threading.active_count() <= threads, message="its threads ended")
    # a later watch opens a new stream, from its own revision
    again = watch(store, f"{unique_prefix}/", revision + 1)
    wait_until(lambda: len(keys(again)) == 2)
    assert keys(again) == [f"{unique_prefix}/a", f"{unique_prefix}/b"]
