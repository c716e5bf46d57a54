"""EtcdStore: the unary calls, the client (built lazily, logging in), health."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
import reactivex
from etcd3.etcdrpc import rpc_pb2
from reactivex import abc

from rx_discovery._errors import (
    AuthenticationFailed,
    LeaseNotFound,
    PermissionDenied,
    RequestTooLarge,
    StoreError,
    StoreUnavailable,
)
from rx_discovery._lifecycle import check_grpc_usable
from rx_discovery._serial import as_observer
from rx_discovery.config import Settings
from rx_discovery.health import Health, HealthTracker
from rx_discovery.store import KeyValue, Lease, Snapshot, WatchResponse
from rx_discovery.store.etcd._client import (
    LoginGate,
    _revive_if_all_failed,
    login,
    make_endpoints,
)
from rx_discovery.store.etcd._codec import _encode, _key_value, _prefix_range
from rx_discovery.store.etcd._errors import _NO_ENDPOINT, _public, _TokenExpired, _translate
from rx_discovery.store.etcd._keepalive import _KeepAliveStream
from rx_discovery.store.etcd._watch import WatchMux

__all__ = ["EtcdStore"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Keys per page of a prefix read: a host is ~300 bytes, so a page is ~150 KB and 10,000 hosts
# are 20 round trips; a page of 500 values at etcd's 1.5 MiB limit is still a finite message.
_PAGE = 500
# Keys of each range in a bulk read's transaction (the rest of a longer range goes on in pages
# of _PAGE at its revision): 64 ranges of 100 hosts are ~2 MB, not 64 pages' worth.
_TXN_PAGE = 100
_READ_ATTEMPTS = 3
# Ranges per transaction of a bulk read: etcd refuses a transaction of more than
# --max-txn-ops operations (128 unless configured); a server set lower is met by halving
# (see _TOO_MANY_OPS).
_TXN_RANGES = 64
# etcd's answer to a transaction of more than --max-txn-ops operations
_TOO_MANY_OPS = "too many operations in txn request"
# The health scope of a refused login: cleared by a call served, not by an old watch.
_LOGIN_SCOPE = "(login)"


class EtcdStore:
    """:class:`~rx_discovery.store.Store` over etcd v3 (python3-etcd3 and its gRPC stubs).

    Construction does no I/O: the client is built (and logs in) on the first call, so a store
    can be created before etcd is up. Every method is thread-safe and blocks its caller for at
    most ``settings.timeout`` (plus one transparent re-login when the auth token expired).

    Threads: :meth:`watch` notifications of every watch are emitted on the one daemon reader
    thread of the store's shared watch stream; lease keepalives run on one daemon event-loop
    thread shared by all leases.
    """

    def __init__(self, settings: Settings) -> None:
        """Keep the settings; connect lazily.

        Args:
            settings: endpoints, TLS material, credentials and per-call timeout.

        Raises:
            ConfigError: gRPC cannot work in this process (a forked child, see
                :func:`~rx_discovery._lifecycle.check_grpc_usable`).
        """
        check_grpc_usable()
        self._settings = settings
        self._lock = threading.Lock()
        self._endpoints: list[Any] | None = None  # etcd3.Endpoint, each owning a gRPC channel
        self._client: Any | None = None  # etcd3.MultiEndpointEtcd3Client
        self._closed = False
        self._keepalive = _KeepAliveStream(self, settings)
        self._watches = WatchMux(self)
        self._last_failure = ""  # why the last call could not reach etcd
        self._health = HealthTracker("etcd", own_thread=True)
        self._login = LoginGate()
        # Ranges per bulk transaction: lowered to what the server takes (its --max-txn-ops)
        self._txn_ranges = _TXN_RANGES

    def __repr__(self) -> str:
        endpoints = ",".join(e.url for e in self._settings.endpoints)
        return f"<EtcdStore {endpoints}{' closed' if self._closed else ''}>"

    # -- key-value ----------------------------------------------------------------------------

    def get_prefix(self, prefix: str) -> Snapshot:
        """Every key starting with ``prefix``, sorted by key, with the revision of the read.

        Raises:
            StoreUnavailable: etcd cannot be reached within the timeout.
            AuthenticationFailed: credentials or permission refused.
        """
        start, end = _prefix_range(prefix)
        for attempt in range(_READ_ATTEMPTS):
            try:
                return self._read_pages(start, end, prefix)
            except StoreError as error:
                # The first page's revision was compacted before the last page was read:
                # read again at the current revision.
                if "compacted" not in str(error) or attempt == _READ_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def get_prefixes(self, prefixes: Sequence[str]) -> list[Snapshot]:
        """:meth:`get_prefix` of each prefix, in order, :data:`_TXN_RANGES` at a time in one
        transaction (fewer when the server's ``--max-txn-ops`` is lower: learnt from its
        refusal) (one round trip, every range of it at one revision): how thousands of
        services subscribed at once are read. A range longer than a page goes on in pages at
        its transaction's revision. Only an unreachable etcd is reported on health (as
        RECONNECTING, then UNAVAILABLE): a refused batch is read again one prefix at a time by
        its callers, whose own reads report, each for its own prefix.

        Raises:
            StoreError: the transaction failed (any of its ranges refused, etcd unreachable).
        """
        snapshots: list[Snapshot] = []
        first = 0
        while first < len(prefixes):
            size = self._txn_ranges
            chunk = prefixes[first:first + size]
            ranges = [_prefix_range(prefix) for prefix in chunk]
            try:
                response = self._call("get_prefixes",
                                      functools.partial(_range_txn, ranges=ranges), report=False)
            except StoreError as error:
                if isinstance(error, StoreUnavailable):  # the connection's state: reported
                    self._report(error)  # (the first reads wait for etcd together)
                # a server with a lower --max-txn-ops: every transaction this large would be
                # refused, and every service read alone, for ever; take what it allows
                if _TOO_MANY_OPS not in str(error) or size == 1:
                    raise
                self._txn_ranges = min(self._txn_ranges, max(1, size // 2))
                log.info("etcd refuses %d operations per transaction (--max-txn-ops); bulk "
                         "reads now use %d", size, self._txn_ranges)
                continue
            first += len(chunk)
            revision = response.header.revision
            for prefix, (_, end), answer in zip(chunk, ranges, response.responses, strict=True):
                page = answer.response_range
                items = [_key_value(kv) for kv in page.kvs]
                if page.more and page.kvs:  # the rest in pages, at the same revision
                    try:
                        items.extend(self._read_pages(page.kvs[-1].key + b"\x00", end, prefix,
                                                      revision).items)
                    except StoreError as error:
                        if "compacted" not in str(error):
                            raise
                        snapshots.append(self.get_prefix(prefix))  # a fresh read, its own
                        continue  # revision
                snapshots.append(Snapshot(revision=revision, items=tuple(items)))
            for prefix in chunk:
                self._served(prefix, logged_in=True)
        return snapshots

    def _read_pages(self, start: bytes, end: bytes, prefix: str, revision: int = 0
                    ) -> Snapshot:
        """A range read in pages of :data:`_PAGE` keys, every page at the first one's revision
        (one consistent snapshot, however large, in messages of bounded size), or at
        ``revision`` when given. etcd returns a range sorted by key: each page starts just
        after the previous page's last key."""
        items: list[KeyValue] = []
        while True:
            response = self._call("get_prefix", functools.partial(
                _range_page, start=start, end=end, revision=revision), prefix)
            items.extend(_key_value(kv) for kv in response.kvs)
            if not revision:
                revision = response.header.revision
            if not response.more or not response.kvs:
                return Snapshot(revision=revision, items=tuple(items))
            start = response.kvs[-1].key + b"\x00"

    def get(self, key: str) -> KeyValue | None:
        """One key, or None when absent.

        Raises:
            StoreUnavailable, AuthenticationFailed: as :meth:`get_prefix`.
        """
        response = self._call("get", lambda client: client.get_response(_encode(key)), key)
        return _key_value(response.kvs[0]) if response.kvs else None

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write ``key``, attached to ``lease`` unless 0. Returns the new revision.

        Raises:
            LeaseNotFound: ``lease`` expired or was revoked.
            StoreUnavailable, AuthenticationFailed: as :meth:`get_prefix`.
        """
        response = self._call(
            "put", lambda client: client.put(_encode(key), value, lease=lease), key)
        revision: int = response.header.revision
        return revision

    def delete(self, key: str) -> int:
        """Delete ``key`` if present. Returns the revision after the call.

        Raises:
            StoreUnavailable, AuthenticationFailed: as :meth:`get_prefix`.
        """
        response = self._call("delete", lambda client: client.delete(
            _encode(key), return_response=True), key)
        revision: int = response.header.revision
        return revision

    # -- leases -------------------------------------------------------------------------------

    def grant(self, ttl: int) -> Lease:
        """Grant a lease of ``ttl`` seconds (etcd grants at least 2).

        Raises:
            StoreUnavailable, AuthenticationFailed: as :meth:`get_prefix`.
        """
        lease = self._call("grant", lambda client: client.lease(int(ttl)))
        return Lease(id=lease.id, ttl=lease.ttl)

    def keepalive(self, lease: int) -> int:
        """Refresh ``lease`` over the store's shared keepalive stream; returns its TTL.

        Concurrent refreshes of one lease share a single request and answer.

        Raises:
            LeaseNotFound: the lease expired or was revoked.
            StoreUnavailable: no answer within the timeout, or the stream broke.
            AuthenticationFailed: as :meth:`get_prefix`.
        """
        return self._call("keepalive", lambda client: self._keepalive.refresh(client, lease))

    def keepalive_many(self, leases: Sequence[int]) -> dict[int, Exception | None]:
        """Refresh many leases at once over the shared stream: every request is sent, then the
        answers are awaited together, under one deadline. Used by the lease keeper.

        Returns:
            ``lease -> None`` when refreshed, else the error (LeaseNotFound,
            StoreUnavailable...).
        """
        try:
            return self._call("keepalive",
                              lambda client: self._keepalive.refresh_many(client, leases))
        except StoreError as error:
            return dict.fromkeys(leases, error)

    def revoke(self, lease: int) -> None:
        """Revoke ``lease``, deleting its keys. A lease that is already gone is not an error.

        Raises:
            StoreUnavailable, AuthenticationFailed: as :meth:`get_prefix`.
        """
        with contextlib.suppress(LeaseNotFound):
            self._call("revoke", lambda client: client.revoke_lease(lease))

    # -- watch --------------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int, *, exact: bool = False
              ) -> reactivex.Observable[WatchResponse]:
        """Changes under ``prefix`` (with ``exact``: of the key ``prefix`` alone) from
        ``start_revision`` on (cold: one etcd watch stream per subscription).

        Emits one :class:`WatchResponse` per etcd response (whole revisions, in order, with
        ``revision`` = the last event's revision), and one per progress notification (empty
        ``events``, ``revision`` = the server's revision). Fails with
        :class:`RevisionCompacted` when ``start_revision`` is compacted,
        :class:`AuthenticationFailed` when refused, and :class:`StoreUnavailable` on any loss
        of the stream (server down, frozen, failover); never completes. Disposing cancels the
        stream; nothing is emitted afterwards.

        Threads: subscribing returns at once (on a closed store, it fails at once); the
        watch is created, and every notification of every watch of the store is emitted, on
        the shared stream's daemon reader thread; an error found elsewhere (a refused watch
        checked, a stuck stream's watchdog) on that short-lived thread (see :mod:`._watch`).
        """
        return _WatchObservable(self._watches, prefix, start_revision, exact)

    @property
    def health(self) -> reactivex.Observable[Health]:
        """The connection state, from the outcome of every call (see
        :class:`~rx_discovery.health.HealthTracker`)."""
        return self._health.observable

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Cancel every watch (silently: their observers are not called again), the keepalive
        stream and pending keepalives, and close the connections. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            endpoints, self._endpoints, self._client = self._endpoints, None, None
        try:
            self._watches.close()
            self._health.closed()
            self._keepalive.close()
        finally:
            # Even when interrupted (a KeyboardInterrupt in a script's `finally: close()`):
            # a channel left to the garbage collector at interpreter exit waits for ever in
            # grpc's _ChannelCallState.__del__ for calls only its (frozen) daemon threads end.
            for endpoint in endpoints or ():
                endpoint.close()

    def __enter__(self) -> EtcdStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals used by the streams --------------------------------------------------------

    def _call(self, operation: str, action: Callable[[Any], _T], scope: str = "",
              report: bool = True) -> _T:
        """Run ``action(client)``, mapping errors and reporting the outcome on health (for
        ``scope``: the key or prefix concerned; nothing when not ``report``); log in again
        once if the token expired."""
        relogged = False
        while True:
            client = None
            try:
                client = self._get_client()
                result = action(client)
                if report:
                    self._served(scope, logged_in=True)
                return result
            except Exception as exc:
                error = _translate(exc, operation)
                if error is None:
                    raise
            if (isinstance(error, _TokenExpired) and not relogged and client is not None
                    and self._settings.user):
                log.info("etcd auth token expired; logging in again")
                relogged = True
                self._drop_client(client)
                continue
            error = self._explained(_public(error))
            if report:
                self._report(error, scope)
            raise error

    def _served(self, scope: str = "", logged_in: bool = False) -> None:
        """A call or stream was served: report it on health. Only a call made now
        (``logged_in``) clears a refused login: a watch opened before the refusal (a password
        rotated) goes on delivering while nothing can log in."""
        self._last_failure = ""
        self._health.connected(scope=scope)
        if logged_in:
            self._health.connected(scope=_LOGIN_SCOPE)

    def _report(self, error: StoreError, scope: str = "") -> None:
        """Report a failed call or stream on health: DENIED for a permanent error (for its
        scope, or the whole connection for a refused login or TLS), else RECONNECTING (then
        UNAVAILABLE). The reason is the error's message, which never holds a secret."""
        if error.permanent:
            if isinstance(error, (PermissionDenied, RequestTooLarge)):
                pass  # its own key or prefix
            elif isinstance(error, AuthenticationFailed):
                scope = _LOGIN_SCOPE
            else:
                scope = ""  # the whole connection (TLS, not etcd)
            self._health.denied(str(error), scope=scope)
        elif isinstance(error, StoreUnavailable) and not self._closed:
            self._health.failed(str(error))

    def _explained(self, error: StoreError) -> StoreError:
        """Remember why the last call could not reach etcd, and say it when a later call
        fails only because every endpoint is still marked failed (which tells nothing)."""
        if type(error) is not StoreUnavailable:
            return error
        message = str(error)
        if not message.endswith(_NO_ENDPOINT):
            self._last_failure = message.split(": ", 1)[-1]
        elif self._last_failure:
            return StoreUnavailable(f"{message} (last failure: {self._last_failure})")
        return error

    def _get_client(self) -> Any:
        """The current client, built on first use (logging in when credentials are set)."""
        with self._lock:
            if self._closed:
                raise StoreUnavailable("the store is closed")
            if self._endpoints is None:
                self._endpoints = make_endpoints(self._settings)
            endpoints = self._endpoints
            _revive_if_all_failed(endpoints)
            if self._client is not None:
                return self._client
        # Logging in is network I/O: do it outside the store's lock, one login at a time.
        # Clients share the endpoints (and so the channels): replacing a client after a token
        # expiry does not break open streams.
        with self._login.lock:
            with self._lock:
                if self._client is not None:  # another caller logged in meanwhile
                    return self._client
            self._login.check()
            try:
                client = login(endpoints, self._settings)
            except Exception as exc:
                error = _translate(exc, "login")
                if error is not None and error.permanent:
                    self._login.refused(_public(error))
                raise
            self._login.succeeded()
            with self._lock:
                if self._closed:
                    raise StoreUnavailable("the store is closed")
                self._client = client
                return client

    def _drop_client(self, stale: Any) -> None:
        """Forget ``stale`` so that the next call builds (and logs in with) a new client,
        unless its token is still good: a watch refused with "permission denied" (which is
        what etcd answers for an expired token and for a missing permission alike) calls this
        too, and a missing permission must not cost a login (bcrypt on the server) on every
        retry of the watch."""
        with self._lock:
            if self._client is not stale:  # another caller dropped it already
                return
        if _token_still_valid(stale, self._settings.timeout):
            return
        with self._lock:
            if self._client is stale:
                self._client = None

    def _stream_target(self, client: Any) -> tuple[Any, Any]:
        """``(channel, metadata)`` for a new stream: the client's current endpoint's channel
        (so streams fail over with it) and its auth token metadata."""
        return client.channel, client.metadata

    def _endpoint_failed(self, client: Any, channel: Any) -> None:
        """Skip the endpoint of ``channel`` for a while, so that calls and new streams fail
        over, as the client itself does after a failed call."""
        for endpoint in self._endpoints or ():
            if endpoint.channel is channel and not endpoint.is_failed():
                endpoint.fail()
                # python3-etcd3 caches stubs bound to the old channel; it clears them the same
                # way in _manage_grpc_errors (python3-etcd3==0.13.0 is pinned).
                client._clear_old_stubs()


class _WatchObservable(reactivex.Observable[WatchResponse]):
    """:meth:`EtcdStore.watch`: subscribing creates a watch on the shared stream, without
    reactivex's per-subscription objects (an auto-detaching observer, two disposables, each
    with a lock: ~1 KB for every watched service). The stream already calls the observer
    serially, never after an error, and ends the watch when ``on_next`` raises."""

    def __init__(self, mux: WatchMux, prefix: str, start_revision: int, exact: bool) -> None:
        super().__init__()
        self._mux = mux
        self._prefix = prefix
        self._start_revision = start_revision
        self._exact = exact

    def subscribe(self, on_next: Any = None, on_error: Any = None, on_completed: Any = None,
                  *, scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        return self._mux.watch(self._prefix, self._start_revision, self._exact,
                               as_observer(on_next, on_error, on_completed))


def _token_still_valid(client: Any, timeout: float) -> bool:
    """True when etcd still accepts ``client``'s auth token: an empty transaction needs a
    valid token and no permission (etcd answers "invalid auth token" to an expired one)."""
    if not client.metadata:
        return False
    try:
        client.kvstub.Txn(rpc_pb2.TxnRequest(), timeout, credentials=client.call_credentials,
                          metadata=client.metadata)
    except Exception:  # expired, or not known: log in again
        return False
    return True


def _range_txn(client: Any, ranges: Sequence[tuple[bytes, bytes]]) -> Any:
    """One transaction of range reads (the first page of each), at one revision. As the
    client's own calls, a gRPC failure marks the endpoint failed (so the next call fails
    over) and becomes the client's exception."""
    request = rpc_pb2.TxnRequest(success=[
        rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=start, range_end=end,
                                                             limit=_TXN_PAGE))
        for start, end in ranges])
    try:
        return client.kvstub.Txn(request, client.timeout, credentials=client.call_credentials,
                                 metadata=client.metadata)
    except grpc.RpcError as error:
        client._manage_grpc_errors(error)  # raises
        raise


def _range_page(client: Any, start: bytes, end: bytes, revision: int) -> Any:
    """One page of a range read (at ``revision`` unless 0: the latest)."""
    return client.get_range_response(start, end, limit=_PAGE, revision=revision or None)
