"""EtcdStore behaviour specific to real etcd: outages, frozen servers, compaction, the shared
keepalive stream, failover in a cluster, TLS and auth token expiry.

The Store contract itself (what the memory store does too) is in tests/store_contract.py.
Tests that kill or pause a server start their own; the others use the session's ``etcd``.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import etcd3
import grpc
import pytest
import trustme  # a dev dependency: the TLS tests must run, never be skipped
from helpers import Recorder, wait_until

from rx_discovery._errors import (
    AuthenticationFailed,
    LeaseNotFound,
    RevisionCompacted,
    StoreUnavailable,
)
from rx_discovery.config import Settings
from rx_discovery.embedded import EmbeddedEtcd, EmbeddedEtcdCluster, TLSFiles, etcd_binary
from rx_discovery.store import EventType, Store
from rx_discovery.store.etcd import EtcdStore

MakeStore = Callable[..., EtcdStore]


@pytest.fixture
def make_store() -> Iterator[MakeStore]:
    """``make_store(endpoints, **settings)``: an EtcdStore closed after the test."""
    stores: list[EtcdStore] = []

    def make(endpoints: list[str], **settings: Any) -> EtcdStore:
        settings.setdefault("timeout", 2.0)
        store = EtcdStore(Settings.build(endpoints, **settings))
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def private_etcd() -> Iterator[EmbeddedEtcd]:
    """An etcd of the test's own, free to kill or pause."""
    with EmbeddedEtcd(name="private") as server:
        yield server


def succeeds(call: Callable[[], object]) -> Callable[[], bool]:
    """A predicate for wait_until: ``call()`` no longer raises StoreUnavailable."""
    def attempt() -> bool:
        try:
            call()
        except StoreUnavailable:
            return False
        return True
    return attempt


def watch(store: Store, prefix: str, start_revision: int) -> Recorder:
    recorder = Recorder()
    recorder.subscription = store.watch(prefix, start_revision).subscribe(recorder)
    return recorder


def changes(recorder: Recorder) -> list[tuple[EventType, str, bytes]]:
    return [(e.type, e.key, e.value) for r in recorder.items for e in r.events]


# -- etcd down --------------------------------------------------------------------------------

def test_down_etcd_raises_store_unavailable_fast(make_store: MakeStore) -> None:
    """A refused connection fails the call at once, not at its deadline: with a 30 s timeout,
    each call must fail within 10 s (it takes milliseconds; 10 s leaves a loaded machine far
    more than 3x, and is still a third of the deadline)."""
    server = EmbeddedEtcd()  # never started: its port is free
    store = make_store([server.endpoint], timeout=30.0)  # no I/O here

    for call in (lambda: store.get("/k"), lambda: store.put("/k", b"v"),
                 lambda: store.grant(5), lambda: store.keepalive(1)):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            call()
        assert time.monotonic() - started < 10, "waited for the deadline, not the refusal"
    recorder = watch(store, "/", 1)
    wait_until(lambda: recorder.error is not None, timeout=3, message="the watch error")
    assert isinstance(recorder.error, StoreUnavailable)


def test_store_created_while_etcd_is_down_works_once_it_starts(make_store: MakeStore) -> None:
    with EmbeddedEtcd() as server:
        server.stop()
        store = make_store([server.endpoint])
        with pytest.raises(StoreUnavailable):
            store.put("/early", b"v")
        server.start()
        # No 300 s endpoint lock-out, no long gRPC reconnect backoff.
        started = time.monotonic()
        wait_until(succeeds(lambda: store.put("/early", b"v")), timeout=5)
        assert time.monotonic() - started < 5
        kv = store.get("/early")
        assert kv is not None and kv.value == b"v"


# -- watch faults -----------------------------------------------------------------------------

def test_watch_fails_on_server_kill_and_resumes_gap_free(private_etcd: EmbeddedEtcd,
                                                        make_store: MakeStore) -> None:
    store = make_store([private_etcd.endpoint])
    start = store.put("/w/a", b"1")
    recorder = watch(store, "/w/", start)
    wait_until(lambda: recorder.items, message="the first event")

    private_etcd.kill()
    wait_until(lambda: recorder.error is not None, timeout=3, message="the watch error")
    assert isinstance(recorder.error, StoreUnavailable)

    private_etcd.restart()
    wait_until(succeeds(lambda: store.put("/w/b", b"2")), timeout=5)
    store.delete("/w/a")
    last_seen = recorder.items[-1].revision
    resumed = watch(store, "/w/", last_seen + 1)
    wait_until(lambda: len(changes(resumed)) >= 2, message="the missed events")
    assert changes(resumed) == [(EventType.PUT, "/w/b", b"2"), (EventType.DELETE, "/w/a", b"")]
    assert resumed.error is None
    resumed.subscription.dispose()


def test_frozen_server_fails_the_watch_then_recovers(private_etcd: EmbeddedEtcd,
                                                     make_store: MakeStore) -> None:
    store = make_store([private_etcd.endpoint])
    start = store.put("/f/a", b"1")
    recorder = watch(store, "/f/", start)
    wait_until(lambda: recorder.items, message="the first event")

    private_etcd.pause()
    try:
        paused = time.monotonic()
        # gRPC keepalive (6 s interval, 2 s ping timeout) notices the frozen server.
        wait_until(lambda: recorder.error is not None, timeout=12, message="the watch error")
        assert isinstance(recorder.error, StoreUnavailable)
        assert time.monotonic() - paused < 10
        with pytest.raises(StoreUnavailable):
            store.get("/f/a")
    finally:
        private_etcd.resume()

    wait_until(succeeds(lambda: store.put("/f/b", b"2")), timeout=8)
    again = watch(store, "/f/", start)
    wait_until(lambda: len(changes(again)) == 2, message="events after the resume")
    again.subscription.dispose()


def test_disposed_watch_is_silent_even_on_server_kill(private_etcd: EmbeddedEtcd,
                                                      make_store: MakeStore) -> None:
    store = make_store([private_etcd.endpoint])
    recorder = watch(store, "/d/", 1)
    store.put("/d/a", b"1")
    wait_until(lambda: recorder.items, message="the first event")
    recorder.subscription.dispose()
    private_etcd.kill()
    control = watch(store, "/d/", 1)  # fails: etcd is down
    wait_until(lambda: control.error is not None, timeout=3, message="the control's error")
    assert recorder.error is None and len(recorder.items) == 1


def test_revision_compacted_carries_the_compact_revision(etcd: EmbeddedEtcd,
                                                         etcd_store: EtcdStore,
                                                         unique_prefix: str) -> None:
    first = etcd_store.put(f"{unique_prefix}/k", b"1")
    etcd_store.put(f"{unique_prefix}/k", b"2")
    compacted = etcd_store.put(f"{unique_prefix}/k", b"3")
    raw = etcd3.client("127.0.0.1", etcd.client_port)
    try:
        raw.compact(compacted, physical=True)
    finally:
        raw.close()

    recorder = watch(etcd_store, f"{unique_prefix}/", first)
    wait_until(lambda: recorder.error is not None, message="RevisionCompacted")
    assert isinstance(recorder.error, RevisionCompacted)
    assert recorder.error.compact_revision == compacted
    assert recorder.items == []


def test_close_cancels_watches_silently(etcd: EmbeddedEtcd, unique_prefix: str,
                                        make_store: MakeStore) -> None:
    store = make_store([etcd.endpoint])
    start = store.put(f"{unique_prefix}/a", b"1")
    recorder = watch(store, f"{unique_prefix}/", start)
    wait_until(lambda: recorder.items, message="the first event")
    store.close()
    store.close()
    with pytest.raises(StoreUnavailable):
        store.get(f"{unique_prefix}/a")
    assert recorder.error is None
    wait_until(lambda: not [t for t in threading.enumerate() if "watch" in t.name],
               timeout=5, message="the watch thread to end")


# -- leases -----------------------------------------------------------------------------------

def test_keepalive_of_many_leases_uses_one_stream(etcd: EmbeddedEtcd,
                                                  etcd_store: EtcdStore) -> None:
    leases = [etcd_store.grant(30).id for _ in range(200)]
    streams_before = etcd.metric("grpc_server_started_total", grpc_method="LeaseKeepAlive")

    with ThreadPoolExecutor(8) as pool:
        ttls = list(pool.map(etcd_store.keepalive, leases))
        # Concurrent refreshes of one lease each get the answer.
        same = list(pool.map(etcd_store.keepalive, [leases[0]] * 16))

    assert ttls == [30] * 200 and same == [30] * 16
    streams = etcd.metric("grpc_server_started_total", grpc_method="LeaseKeepAlive")
    assert streams - streams_before == 1
    for lease in leases:
        etcd_store.revoke(lease)


def test_keepalive_batch_beyond_the_flow_control_window(etcd: EmbeddedEtcd,
                                                         etcd_store: EtcdStore) -> None:
    """6,000 requests (~100 kB) are more than HTTP/2's first 64 kB window: they go out as etcd
    gives the window back, and every one is answered, on one stream."""
    live = [etcd_store.grant(30).id for _ in range(3)]
    unknown = [0x7E00_0000_0000 + i for i in range(6000)]  # etcd answers TTL 0
    streams_before = etcd.metric("grpc_server_started_total", grpc_method="LeaseKeepAlive")
    outcomes = etcd_store.keepalive_many([*unknown, *live])
    assert [outcomes[lease] for lease in live] == [None] * 3
    assert all(isinstance(outcomes[lease], LeaseNotFound) for lease in unknown)
    streams = etcd.metric("grpc_server_started_total", grpc_method="LeaseKeepAlive")
    assert streams - streams_before == 1
    for lease in live:
        etcd_store.revoke(lease)


def test_revoked_and_expired_leases_raise_lease_not_found(etcd_store: EtcdStore,
                                                          unique_prefix: str) -> None:
    revoked = etcd_store.grant(30).id
    etcd_store.revoke(revoked)
    etcd_store.revoke(revoked)  # already gone: not an error
    with pytest.raises(LeaseNotFound):
        etcd_store.keepalive(revoked)
    with pytest.raises(LeaseNotFound):
        etcd_store.put(f"{unique_prefix}/k", b"v", lease=revoked)

    expiring = etcd_store.grant(2).id  # etcd's shortest TTL
    etcd_store.put(f"{unique_prefix}/leased", b"v", lease=expiring)
    wait_until(lambda: etcd_store.get(f"{unique_prefix}/leased") is None, timeout=6,
               interval=0.1, message="the lease to expire")
    with pytest.raises(LeaseNotFound):
        etcd_store.keepalive(expiring)


def test_keepalive_stream_reopens_after_a_restart(private_etcd: EmbeddedEtcd,
                                                  make_store: MakeStore) -> None:
    store = make_store([private_etcd.endpoint])
    lease = store.grant(30).id
    assert store.keepalive(lease) == 30
    private_etcd.kill()
    with pytest.raises(StoreUnavailable):
        store.keepalive(lease)
    private_etcd.restart()
    wait_until(succeeds(lambda: store.keepalive(lease)), timeout=5)
    assert store.keepalive(lease) == 30


# -- cluster ----------------------------------------------------------------------------------

def test_cluster_keeps_working_when_a_member_dies(make_store: MakeStore) -> None:
    with EmbeddedEtcdCluster(3) as cluster:
        store = make_store(cluster.endpoints)
        lease = store.grant(30).id
        store.put("/c/a", b"1", lease=lease)

        # The leader dies: an election, and a failover if the store was using it.
        leader = cluster.leader()
        leader.kill()
        wait_until(succeeds(lambda: store.put("/c/b", b"2")), timeout=8)
        wait_until(succeeds(lambda: store.keepalive(lease)), timeout=5)
        leader.restart()

        # The member the store uses dies: calls, keepalives and watches fail over.
        in_use = store._client.endpoint_in_use.netloc  # type: ignore[union-attr]
        member = next(m for m in cluster.members if m.endpoint.endswith(in_use))
        member.kill()
        started = time.monotonic()
        wait_until(succeeds(lambda: store.put("/c/c", b"3")), timeout=8)
        wait_until(succeeds(lambda: store.keepalive(lease)), timeout=5)
        assert time.monotonic() - started < 6
        kv = store.get("/c/a")
        assert kv is not None and kv.lease == lease
        recorder = watch(store, "/c/", 1)
        wait_until(lambda: len(changes(recorder)) == 3, message="events through the others")
        recorder.subscription.dispose()


# -- TLS and auth -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[TLSFiles, Path]:
    """Server files (no client-cert auth: users log in with a password) and the CA path."""
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca_path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    server.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
    server.private_key_pem.write_to_path(str(directory / "server-key.pem"))
    files = TLSFiles(cert=str(directory / "server.pem"), key=str(directory / "server-key.pem"),
                     ca=str(ca_path), client_cert_auth=False)
    return files, ca_path


def _etcdctl(server: EmbeddedEtcd, ca: Path, *args: str) -> None:
    command = [etcd_binary("etcdctl"), f"--endpoints={server.endpoint}", f"--cacert={ca}",
               "--command-timeout=5s", *args]
    subprocess.run(command, check=True, capture_output=True, stdin=subprocess.DEVNULL,
                   timeout=20)


@pytest.mark.parametrize("read", ["get", "get_prefixes"])  # a bulk first read too
def test_tls_auth_relogs_in_after_the_token_expires(tls_files: tuple[TLSFiles, Path],
                                                    make_store: MakeStore,
                                                    caplog: pytest.LogCaptureFixture,
                                                    read: str) -> None:
    files, ca = tls_files
    with EmbeddedEtcd(tls=files, auth_token_ttl=2) as server:
        assert server.endpoint.startswith("https://")
        _etcdctl(server, ca, "user", "add", "root", "--new-user-password=s3cret-pw",
                "--interactive=false")
        _etcdctl(server, ca, "auth", "enable")

        wrong = make_store(server.endpoints, ca_cert=str(ca), user="root", password="nope-pw")
        with pytest.raises(AuthenticationFailed) as refused:
            wrong.get("/k")
        assert "nope-pw" not in str(refused.value)

        store = make_store(server.endpoints, ca_cert=str(ca), user="root", password="s3cret-pw")
        store.put("/k", b"v")
        lease = store.grant(30).id
        witness = etcd3.MultiEndpointEtcd3Client(
            [etcd3.Endpoint("127.0.0.1", server.client_port, secure=True,
                            creds=_creds(ca))], user="root", password="s3cret-pw")
        witness.get("/k")  # its token and the store's are now idle for the same time

        # Idle tokens expire after --auth-token-ttl (2 s, checked every second). Polling the
        # store's or the witness's token would keep it alive: each poll uses a probe token
        # obtained after them, once; when one is refused, theirs (idle longer) are gone too.
        probes = [_login(server, ca) for _ in range(12)]
        wait_until(lambda: _refused(server, ca, probes.pop(0)), timeout=6, interval=0.5,
                   message="idle auth tokens expired")
        with pytest.raises(Exception) as expired:
            witness.get("/k")
        assert "invalid auth token" in expired.value.details()  # type: ignore[attr-defined]
        with caplog.at_level(logging.INFO, logger="rx_discovery.store.etcd"):
            kv = (store.get("/k") if read == "get"  # logs in again, transparently
                  else store.get_prefixes(["/j", "/k"])[1].items[0])
        assert "logging in again" in caplog.text
        assert "s3cret-pw" not in caplog.text
        assert kv is not None and kv.value == b"v"
        assert store.keepalive(lease) == 30
        recorder = watch(store, "/", 1)
        wait_until(lambda: recorder.items, message="a watch after the re-login")
        recorder.subscription.dispose()
        witness.close()


def _creds(ca: Path) -> Any:
    return grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())


def _channel(server: EmbeddedEtcd, ca: Path) -> grpc.Channel:
    return grpc.secure_channel(f"127.0.0.1:{server.client_port}", _creds(ca))


def _login(server: EmbeddedEtcd, ca: Path) -> str:
    """A fresh auth token of root, obtained over the raw stubs."""
    with _channel(server, ca) as channel:
        answer = etcd3.etcdrpc.AuthStub(channel).Authenticate(
            etcd3.etcdrpc.AuthenticateRequest(name="root", password="s3cret-pw"), timeout=5)
    return str(answer.token)


def _refused(server: EmbeddedEtcd, ca: Path, token: str) -> bool:
    """True when etcd no longer knows ``token`` (which this call uses, so it must be fresh)."""
    with _channel(server, ca) as channel:
        try:
            etcd3.etcdrpc.KVStub(channel).Range(etcd3.etcdrpc.RangeRequest(key=b"/k"),
                                                metadata=(("token", token),), timeout=5)
        except grpc.RpcError as error:
            return "invalid auth token" in (error.details() or "")
    return False


# -- IPv6 -------------------------------------------------------------------------------------

def _ipv6_loopback() -> bool:
    import socket
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_endpoint_serves_calls_watches_and_keepalives(make_store: MakeStore) -> None:
    server = EmbeddedEtcd(name="ipv6")
    v6 = f"http://[::1]:{server.client_port}"
    server.extra_args += ["--listen-client-urls", f"{server.endpoint},{v6}"]
    with server:
        store = make_store([v6])
        revision = store.put("/v6/a", b"1")
        lease = store.grant(10).id
        assert store.keepalive(lease) == 10  # the HTTP/2 keepalive connection too
        recorder = watch(store, "/v6/", revision)
        wait_until(lambda: changes(recorder), message="a watch over IPv6")
        assert changes(recorder) == [(EventType.PUT, "/v6/a", b"1")]
        recorder.subscription.dispose()


# -- bulk first reads ---------------------------------------------------------------------------

@contextlib.contextmanager
def counted_transactions() -> Iterator[list[int]]:
    """The number of ranges of each bulk-read transaction sent (refused ones too)."""
    from rx_discovery.store.etcd import _store

    calls: list[int] = []
    txn = _store._range_txn

    def counted(client: Any, ranges: Any) -> Any:
        calls.append(len(ranges))
        return txn(client, ranges)

    _store._range_txn = counted
    try:
        yield calls
    finally:
        _store._range_txn = txn


def test_get_prefixes_reads_many_prefixes_in_transactions_of_one_revision_each(
        etcd_store: EtcdStore, unique_prefix: str) -> None:
    # 150 prefixes (three transactions of 64 at most), one of 1,200 keys (past a page of 500,
    # read on at its transaction's revision), some empty; each answer equals get_prefix's
    for n in range(1200):
        etcd_store.put(f"{unique_prefix}/big/k{n:05d}", b"v%d" % n)
    for n in range(0, 150, 2):
        etcd_store.put(f"{unique_prefix}/s{n}/k", b"x%d" % n)
    prefixes = [f"{unique_prefix}/s{n}/" for n in range(150)]
    prefixes.insert(70, f"{unique_prefix}/big/")
    with counted_transactions() as calls:
        bulk = etcd_store.get_prefixes(prefixes)
    assert calls == [64, 64, 23]
    alone = [etcd_store.get_prefix(prefix) for prefix in prefixes]
    assert [s.items for s in bulk] == [s.items for s in alone]
    assert len(bulk[70].items) == 1200 and bulk[70].items[-1].key.endswith("k01199")
    for first in (0, 64, 128):  # one revision per transaction
        assert len({s.revision for s in bulk[first:first + 64]}) == 1


def test_hosts_of_many_services_on_etcd_are_read_in_bulk_and_delivered_off_the_io_pool(
        etcd: EmbeddedEtcd, unique_prefix: str) -> None:
    from rx_discovery import Discovery, Host

    discovery = Discovery(endpoints=[etcd.endpoint], prefix=unique_prefix)
    with discovery:
        for n in range(300):
            host = Host(hostname=f"h{n}", ports={"http": "80"}, service_name=f"s{n}",
                        uuid=f"u{n}")
            discovery.store.put(discovery.keyspace.host_key(f"s{n}", f"u{n}"),
                                host.to_json().encode())
        singles: list[str] = []
        read = discovery.store.get_prefix

        def single(prefix: str) -> Any:
            singles.append(prefix)
            return read(prefix)

        discovery.store.get_prefix = single  # type: ignore[method-assign]
        firsts: dict[int, tuple[list[str], str]] = {}
        with counted_transactions() as transactions:
            subscriptions = [discovery.hosts(f"s{n}").subscribe(
                lambda hosts, n=n: firsts.setdefault(n, (list(hosts),
                                                         threading.current_thread().name)))
                for n in range(300)]
            wait_until(lambda: len(firsts) == 300, timeout=30)
        assert all(firsts[n][0] == [f"u{n}"] for n in range(300))
        assert singles == []  # every service read in bulk
        # batches form while reads are in flight (10,000 services: 159 transactions, 62.9
        # services each); one transaction per service would be 300
        assert sum(transactions) == 300 and len(transactions) <= 150, transactions
        assert not any(name.startswith("rx-discovery-io") for _, name in firsts.values())
        for subscription in subscriptions:
            subscription.dispose()


def test_closing_with_bulk_first_reads_queued_and_in_flight_delivers_nothing_after(
        etcd: EmbeddedEtcd, unique_prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """close() in the window where thousands of first reads wait or are in flight: no first
    set reaches a subscriber after close() returned, no error is raised or logged (a read
    cut by the closing channel is not an outage), and every library thread ends."""
    from rx_discovery import Discovery

    before = set(threading.enumerate())
    caplog.set_level(logging.WARNING)
    closed = threading.Event()
    late: list[object] = []
    errors: list[Exception] = []
    discovery = Discovery(endpoints=[etcd.endpoint], prefix=unique_prefix)
    for n in range(2000):
        discovery.hosts(f"s{n}").subscribe(
            lambda hosts: late.append(hosts) if closed.is_set() else None, errors.append)
    discovery.close()
    closed.set()
    wait_until(lambda: not [t for t in threading.enumerate()
                            if t not in before and t.name.startswith("rx-discovery")],
               timeout=30, message="every library thread ended")
    assert late == [] and errors == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_bulk_reads_fit_a_server_that_allows_fewer_operations_per_transaction(
        make_store: MakeStore) -> None:
    # etcd started with --max-txn-ops below the 64 ranges of a bulk read refuses every such
    # transaction ("too many operations in txn request"): each batch then failed, and every
    # service was read alone, one round trip each, for ever (a wasted transaction per batch
    # on top). The store learns the server's limit and reads in transactions that fit.
    with EmbeddedEtcd(name="few-ops", extra_args=["--max-txn-ops", "8"]) as server:
        store = make_store([server.endpoint])
        for n in range(40):
            store.put(f"/ops/s{n}/k", b"v%d" % n)
        prefixes = [f"/ops/s{n}/" for n in range(40)]
        with counted_transactions() as calls:
            first = store.get_prefixes(prefixes)
            calls_first = list(calls)
            calls.clear()
            again = store.get_prefixes(prefixes)  # the limit is remembered
        for bulk in (first, again):
            assert [[kv.value for kv in s.items] for s in bulk] == [
                [b"v%d" % n] for n in range(40)]
        assert max(calls_first[-5:]) <= 8 and len(calls_first) <= 5 + 4  # a few refused
        assert calls == [8] * 5


def test_services_subscribed_before_etcd_is_up_wait_together_and_load_in_bulk() -> None:
    # a gateway that starts before etcd: each first read failed alone and retried alone
    # (2,000 services: ~1,100 failed calls and a whole core per second); and when etcd came,
    # each service was read alone. Now the waiting reads rest together, and load in bulk.
    from rx_discovery import Discovery, HealthState, Host

    with EmbeddedEtcd(name="late") as server:
        discovery = Discovery(endpoints=[server.endpoint], timeout=2)
        with discovery:
            for n in range(500):
                discovery.store.put(discovery.keyspace.host_key(f"s{n}", f"u{n}"), Host(
                    hostname=f"h{n}", ports={"http": "80"}, service_name=f"s{n}",
                    uuid=f"u{n}").to_json().encode())
            server.stop()
            health = Recorder()
            discovery.health.subscribe(health)
            calls: list[str] = []
            call = discovery.store._call

            def counted(operation: str, *args: Any, **kwargs: Any) -> Any:
                calls.append(operation)
                return call(operation, *args, **kwargs)

            discovery.store._call = counted  # type: ignore[method-assign]
            firsts: dict[int, list[str]] = {}
            subscriptions = [discovery.hosts(f"s{n}").subscribe(
                lambda hosts, n=n: firsts.setdefault(n, list(hosts))) for n in range(500)]
            time.sleep(3)  # etcd down: what do 500 waiting streams cost meanwhile?
            assert len(calls) <= 40, len(calls)  # ~1 per backoff (0.5 s at most), not 500
            assert firsts == {}
            assert health.items[-1].state in (HealthState.RECONNECTING, HealthState.UNAVAILABLE)
            calls.clear()
            server.restart()
            wait_until(lambda: len(firsts) == 500, timeout=30,
                       message="every first set after etcd came")
            assert all(firsts[n] == [f"u{n}"] for n in range(500))
            assert "get_prefix" not in calls  # read in bulk, none alone
            assert calls.count("get_prefixes") <= 30, calls.count("get_prefixes")
            for subscription in subscriptions:
                subscription.dispose()


def test_a_bulk_read_compacted_before_its_pages_reads_that_prefix_afresh(
        private_etcd: EmbeddedEtcd, make_store: MakeStore) -> None:
    # a prefix longer than a page goes on in pages at its transaction's revision; when that
    # revision is compacted meanwhile, the prefix is read again at the current revision
    store = make_store([private_etcd.endpoint])
    for n in range(600):
        store.put(f"/c/big/k{n:04d}", b"%d" % n)
    store.put("/c/small/k", b"s")
    raw = etcd3.client("127.0.0.1", private_etcd.client_port)
    from rx_discovery.store.etcd import _store

    txn = _store._range_txn

    def then_compacted(client: Any, ranges: Any) -> Any:
        answer = txn(client, ranges)
        store.delete("/c/big/k0001")
        raw.compact(store.put("/c/big/k9999", b"new"), physical=True)
        return answer

    _store._range_txn = then_compacted
    try:
        small, big = store.get_prefixes(["/c/small/", "/c/big/"])
    finally:
        _store._range_txn = txn
        raw.close()
    fresh = store.get_prefix("/c/big/")
    assert big == fresh and len(big.items) == 600
    assert "/c/big/k0001" not in {kv.key for kv in big.items}
    assert [kv.value for kv in small.items] == [b"s"] and small.revision < big.revision
