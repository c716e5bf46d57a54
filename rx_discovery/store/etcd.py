"""The :class:`~rx_discovery.store.Store` port on a real etcd v3 cluster.

This is the only module that imports ``etcd3`` (python3-etcd3) and ``grpc``. It works around
the client's known gaps (``/work/shared/reference/ETCD-CLIENT-NOTES.md``):

- a ``MultiEndpointEtcd3Client`` with failover even for one endpoint, and a short retry delay,
  so one failed call does not lock an endpoint out for 300 s;
- watches run on streams owned here, over the generated gRPC stubs and the client's own
  channels: the library's watcher thread dies silently when a stream ends;
- lease keepalives share one ``LeaseKeepAlive`` call on an HTTP/2 connection of its own
  (:mod:`._h2grpc`, protobuf messages from the generated modules): the library's
  ``refresh_lease`` opens one stream per refresh, and grpcio's per-message cost would be most
  of what holding many registrations costs;
- gRPC keepalive, so a frozen server (SIGSTOP, dead network) ends streams within seconds, and
  short reconnect backoffs, so a restarted server is usable at once;
- every error (raw ``grpc.RpcError``, ``etcd3.exceptions``, the client's ``ValueError``) is
  mapped in :func:`_translate` to the library's :class:`~rx_discovery.StoreError` family;
- an expired auth token makes the store log in again, transparently, once per call.

Threads: calls block the caller's thread (up to ``Settings.timeout``); each watch subscription
has one daemon reader thread, which emits its notifications; the shared lease keepalive
stream runs on one daemon asyncio event-loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import etcd3
import etcd3.exceptions
import grpc
import reactivex
from etcd3.etcdrpc import kv_pb2
from reactivex import abc
from reactivex.disposable import Disposable

from rx_discovery._errors import (
    AuthenticationFailed,
    LeaseNotFound,
    RevisionCompacted,
    StoreError,
    StoreUnavailable,
)
from rx_discovery.config import Settings
from rx_discovery.health import Health, HealthTracker
from rx_discovery.store import (
    EventType,
    KeyValue,
    Lease,
    Snapshot,
    WatchEvent,
    WatchResponse,
)
from rx_discovery.store._h2grpc import GrpcStream, StreamEnd

__all__ = ["EtcdStore"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# A failed endpoint is skipped for this long (python3-etcd3's default is 300 s).
_ENDPOINT_RETRY_S = 1.0

# etcd enforces a minimum ping interval of 5 s (--grpc-keepalive-min-time) and does not permit
# pings without an active stream: pinging faster, or when idle, earns a GOAWAY "too_many_pings"
# that kills every stream of the connection. 6 s + a 2 s ping timeout notices a frozen server
# within ~8 s. Unlimited pings without data: a watch never sends data after its creation, and
# gRPC's default (2) would stop pinging an idle watch, so a frozen server would go unnoticed.
_GRPC_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 6000),
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.http2.ping_timeout_ms", 2000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect within half a second of a server coming back (gRPC's default backoff grows to
    # 120 s, and calls fail at once while it waits): watches resume within ~1 s of recovery.
    # A connection attempt to a down server on loopback or a LAN costs next to nothing.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 500),
    # One subchannel per channel: a new store must not inherit another's connection backoff.
    ("grpc.use_local_subchannel_pool", 1),
]

_UNAVAILABLE_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
})
# Codes after which the endpoint is skipped for a while, so that the next call fails over.
_ENDPOINT_FAILURE_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
})
_MAX_DETAILS = 300
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}
_STATUS_OK = grpc.StatusCode.OK.value[0]
_KEEPALIVE_PATH = "/etcdserverpb.Lease/LeaseKeepAlive"
_KeepAliveRequest = etcd3.etcdrpc.LeaseKeepAliveRequest
_KeepAliveResponse = etcd3.etcdrpc.LeaseKeepAliveResponse
_NO_ENDPOINT = "no etcd endpoint available"
_DELETE = kv_pb2.Event.DELETE


class _TokenExpired(AuthenticationFailed):
    """The auth token expired or is unknown to the member: log in again and retry once."""


# -- error mapping ----------------------------------------------------------------------------

def _translate(error: BaseException, operation: str) -> StoreError | None:
    """The library error for an error raised by etcd3/gRPC, or None if it is not one of theirs.

    Messages carry the operation, the gRPC status code name and etcd's short reason, never the
    raw gRPC debug string (which may quote request metadata).
    """
    if isinstance(error, StoreError):
        return error
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return _from_status(error.code(), _details(error), operation)
    if isinstance(error, (etcd3.exceptions.ConnectionFailedError,
                          etcd3.exceptions.ConnectionTimeoutError,
                          etcd3.exceptions.InternalServerError)):
        cause = error.__context__  # python3-etcd3 raises these while handling the gRPC error
        if isinstance(cause, grpc.RpcError) and hasattr(cause, "code"):
            # its details say why (e.g. "Tls handshake failed ... BAD_CERTIFICATE")
            return _from_status(cause.code(), _details(cause), operation)
        return StoreUnavailable(f"{operation}: {str(error) or type(error).__name__}")
    if isinstance(error, etcd3.exceptions.NoServerAvailableError):
        return StoreUnavailable(f"{operation}: {_NO_ENDPOINT}")
    if isinstance(error, ValueError) and "failed node" in str(error):
        return StoreUnavailable(f"{operation}: {_NO_ENDPOINT}")
    if isinstance(error, etcd3.exceptions.Etcd3Exception):
        return StoreError(f"{operation}: {type(error).__name__}")
    return None


def _details(error: grpc.RpcError) -> str:
    try:
        details = error.details() or ""
    except Exception:  # a non-Call RpcError
        details = ""
    return str(details)[:_MAX_DETAILS]


def _from_status(code: grpc.StatusCode, details: str, operation: str) -> StoreError:
    """Map a gRPC status (code and etcd's reason) to a library error."""
    message = f"{operation}: {getattr(code, 'name', code)} {details}".rstrip()
    lowered = details.lower()
    if code == grpc.StatusCode.UNAUTHENTICATED and "invalid auth token" in lowered:
        return _TokenExpired(message)
    if "revision in header is old" in lowered:  # auth store changed: a retry succeeds
        return StoreUnavailable(message)
    if code in _UNAVAILABLE_CODES:
        return StoreUnavailable(message)
    if code == grpc.StatusCode.NOT_FOUND:
        return LeaseNotFound(message)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or any(
            reason in lowered for reason in ("authentication", "permission denied", "user name")):
        return AuthenticationFailed(message)
    return StoreError(message)


def _status_code(error: BaseException) -> grpc.StatusCode | None:
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        code: grpc.StatusCode = error.code()
        return code
    return None


def _public(error: StoreError) -> StoreError:
    """Hide the internal :class:`_TokenExpired` behind its public class."""
    return AuthenticationFailed(str(error)) if isinstance(error, _TokenExpired) else error


# -- keys -------------------------------------------------------------------------------------

def _encode(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def _prefix_range(prefix: str) -> tuple[bytes, bytes]:
    """``(key, range_end)`` selecting every key that starts with ``prefix`` (as etcd's Go
    client: the empty prefix selects every key)."""
    start = _encode(prefix)
    if not start:
        return b"\x00", b"\x00"
    end = bytearray(start)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return start, b"\x00"  # no upper bound
    end[-1] += 1
    return start, bytes(end)


def _key_value(kv: Any) -> KeyValue:
    # positional: this runs once per key of every read (10,000 for a big service)
    return KeyValue(kv.key.decode("utf-8", "surrogateescape"), kv.value, kv.create_revision,
                    kv.mod_revision, kv.version, kv.lease)


_EVENT_TYPES = {_DELETE: EventType.DELETE}


def _watch_response(events: Any) -> WatchResponse:
    """One etcd watch response as one :class:`WatchResponse`: etcd packs many whole revisions
    into a response when a watch catches up on history; keeping them together lets the sync
    apply a burst as one change instead of one per revision. ``revision`` is the last event's
    (the header's may be ahead of what was delivered)."""
    kinds, put = _EVENT_TYPES, EventType.PUT
    converted = tuple(
        WatchEvent(kinds.get(event.type, put), kv.key.decode("utf-8", "surrogateescape"),
                   kv.value, kv.mod_revision, kv.create_revision, kv.version, kv.lease)
        for event in events for kv in (event.kv,))
    return WatchResponse(revision=converted[-1].mod_revision, events=converted)


def _queue_iterator(requests: queue.SimpleQueue[Any]) -> Iterator[Any]:
    """Requests of a bidi stream, until a None sentinel (which half-closes it)."""
    while (request := requests.get()) is not None:
        yield request


# -- the store --------------------------------------------------------------------------------

class EtcdStore:
    """:class:`~rx_discovery.store.Store` over etcd v3 (python3-etcd3 and its gRPC stubs).

    Construction does no I/O: the client is built (and logs in) on the first call, so a store
    can be created before etcd is up. Every method is thread-safe and blocks its caller for at
    most ``settings.timeout`` (plus one transparent re-login when the auth token expired).

    Threads: :meth:`watch` notifications are emitted on that subscription's own daemon reader
    thread; lease keepalives run on one daemon event-loop thread shared by all leases.
    """

    def __init__(self, settings: Settings) -> None:
        """Keep the settings; connect lazily.

        Args:
            settings: endpoints, TLS material, credentials and per-call timeout.
        """
        self._settings = settings
        self._lock = threading.Lock()
        self._endpoints: list[Any] | None = None  # etcd3.Endpoint, each owning a gRPC channel
        self._client: Any | None = None  # etcd3.MultiEndpointEtcd3Client
        self._closed = False
        self._keepalive = _KeepAliveStream(self, settings)
        self._watches: set[_WatchSubscription] = set()
        self._last_failure = ""  # why the last call could not reach etcd
        self._health = HealthTracker("etcd")

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
        response = self._call("get_prefix", lambda client: client.get_range_response(
            start, end, sort_order="ascend", sort_target="key"))
        items = tuple(_key_value(kv) for kv in response.kvs)
        return Snapshot(revision=response.header.revision, items=items)

    def get(self, key: str) -> KeyValue | None:
        """One key, or None when absent.

        Raises:
            StoreUnavailable, AuthenticationFailed: as :meth:`get_prefix`.
        """
        response = self._call("get", lambda client: client.get_response(_encode(key)))
        return _key_value(response.kvs[0]) if response.kvs else None

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write ``key``, attached to ``lease`` unless 0. Returns the new revision.

        Raises:
            LeaseNotFound: ``lease`` expired or was revoked.
            StoreUnavailable, AuthenticationFailed: as :meth:`get_prefix`.
        """
        response = self._call("put", lambda client: client.put(_encode(key), value, lease=lease))
        revision: int = response.header.revision
        return revision

    def delete(self, key: str) -> int:
        """Delete ``key`` if present. Returns the revision after the call.

        Raises:
            StoreUnavailable, AuthenticationFailed: as :meth:`get_prefix`.
        """
        response = self._call("delete", lambda client: client.delete(
            _encode(key), return_response=True))
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

    def watch(self, prefix: str, start_revision: int) -> reactivex.Observable[WatchResponse]:
        """Changes under ``prefix`` from ``start_revision`` on (cold: one etcd watch stream per
        subscription).

        Emits one :class:`WatchResponse` per etcd response (whole revisions, in order, with
        ``revision`` = the last event's revision), and one per progress notification (empty
        ``events``, ``revision`` = the server's revision). Fails with
        :class:`RevisionCompacted` when ``start_revision`` is compacted,
        :class:`AuthenticationFailed` when refused, and :class:`StoreUnavailable` on any loss
        of the stream (server down, frozen, failover); never completes. Disposing cancels the
        stream; nothing is emitted afterwards.

        Threads: subscribing returns at once; the stream is opened, and every notification is
        emitted, on the subscription's own daemon reader thread.
        """
        def subscribe(observer: abc.ObserverBase[WatchResponse],
                      scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            subscription = _WatchSubscription(self, prefix, start_revision, observer)
            subscription.start()
            return Disposable(subscription.dispose)

        return reactivex.create(subscribe)

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
            watches, self._watches = list(self._watches), set()
            endpoints, self._endpoints, self._client = self._endpoints, None, None
        try:
            for watch in watches:
                watch.dispose()
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

    def _call(self, operation: str, action: Callable[[Any], _T]) -> _T:
        """Run ``action(client)``, mapping errors; log in again once if the token expired."""
        relogged = False
        while True:
            client = None
            try:
                client = self._get_client()
                result = action(client)
                self._last_failure = ""
                self._health.connected()
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
            self._report(error)
            raise error

    def _report(self, error: StoreError) -> None:
        """Tell :attr:`health` about a failed call or watch."""
        if error.permanent:
            self._health.denied(str(error))
        elif isinstance(error, StoreUnavailable):
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
                self._endpoints = self._make_endpoints()
            endpoints = self._endpoints
            _revive_if_all_failed(endpoints)
            if self._client is not None:
                return self._client
        # Logging in is network I/O: do it outside the lock. Clients share the endpoints (and so
        # the channels): replacing a client after a token expiry does not break open streams.
        client = etcd3.MultiEndpointEtcd3Client(
            endpoints=endpoints, timeout=self._settings.timeout, failover=True,
            user=self._settings.user, password=self._settings.password)
        with self._lock:
            if self._closed:
                raise StoreUnavailable("the store is closed")
            if self._client is None:
                self._client = client
            return self._client

    def _make_endpoints(self) -> list[Any]:
        settings = self._settings
        creds = None
        if settings.tls:
            creds = grpc.ssl_channel_credentials(root_certificates=settings.ca_cert,
                                                 private_key=settings.client_key,
                                                 certificate_chain=settings.client_cert)
        return [etcd3.Endpoint(e.host, e.port, secure=settings.tls, creds=creds,
                               time_retry=_ENDPOINT_RETRY_S, opts=_GRPC_OPTIONS)
                for e in settings.endpoints]

    def _drop_client(self, stale: Any) -> None:
        """Forget ``stale`` so that the next call builds (and logs in with) a new client."""
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

    def _add_watch(self, watch: _WatchSubscription) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._watches.add(watch)
            return True

    def _remove_watch(self, watch: _WatchSubscription) -> None:
        with self._lock:
            self._watches.discard(watch)


def _revive_if_all_failed(endpoints: list[Any]) -> None:
    """Clear the failed marks when every endpoint has one. The mark exists to make calls
    fail over to another endpoint; with none left, python3-etcd3 would refuse every call
    until a mark expires, delaying recovery by up to that long after etcd is back."""
    if all(endpoint.is_failed() for endpoint in endpoints):
        for endpoint in endpoints:
            endpoint.last_failed = 0


# -- lease keepalive --------------------------------------------------------------------------

class _KeepAliveStream:
    """One long-lived ``LeaseKeepAlive`` call shared by every lease of a store.

    The call runs on its own HTTP/2 connection (:mod:`._h2grpc`) on one daemon event-loop
    thread: through grpcio's API each message costs a C-core operation and two thread hops,
    ~100 us of CPU per keepalive; here a batch of requests goes out in one write, ~15-20 us
    each. Holding 1,000 registrations is 600 keepalives a second, so this is most of what
    holding them costs.

    Callers (any thread) hand a batch of leases to the loop and wait for the answers under one
    deadline. The call is opened on the client's current endpoint (with its auth token) on
    first use, and reopened by the first batch after it broke.
    """

    def __init__(self, store: EtcdStore, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        # used on the loop thread only
        self._stream: _LeaseStream | None = None
        self._ssl: ssl.SSLContext | None = None

    def refresh(self, client: Any, lease: int) -> int:
        """Send one keepalive for ``lease`` (or join the one in flight) and wait for its TTL.

        Raises:
            LeaseNotFound: the answer's TTL is 0.
            StoreUnavailable: no answer within the timeout, or the stream broke.
        """
        outcome = self._refresh(client, [lease])[lease]
        if isinstance(outcome, StoreError):
            raise outcome
        return outcome

    def refresh_many(self, client: Any, leases: Sequence[int]) -> dict[int, Exception | None]:
        """Send one keepalive per lease, then wait for all the answers under one deadline.

        Returns:
            ``lease -> None`` when refreshed, else the error.
        """
        return {lease: _public(outcome) if isinstance(outcome, StoreError) else None
                for lease, outcome in self._refresh(client, leases).items()}

    def _refresh(self, client: Any, leases: Sequence[int]) -> dict[int, int | StoreError]:
        """``lease -> TTL or error`` for ``leases``, refreshed over the stream.

        Raises:
            _TokenExpired: the stream was refused for an expired token (the caller logs in
                again and retries).
        """
        if not leases:
            return {}
        channel, metadata = self._store._stream_target(client)  # fails over as calls do
        endpoint = self._endpoint_of(channel)
        batch = _Batch(leases)
        loop = self._running_loop()
        try:
            loop.call_soon_threadsafe(self._submit, client, endpoint, metadata, batch)
        except RuntimeError:  # the loop was closed meanwhile
            raise StoreUnavailable("keepalive: the store is closed") from None
        late: StoreError | None = None
        timeout = self._settings.timeout
        if not batch.done.wait(timeout):
            # A stream that does not answer is stuck (e.g. its member lost the leader): drop
            # it and fail over, so that the next refresh opens a fresh one.
            late = StoreUnavailable(f"keepalive: no answer within {timeout:g} s")
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._give_up, batch, late)
        outcomes = batch.outcomes(late)
        for outcome in outcomes.values():
            if isinstance(outcome, _TokenExpired):
                raise outcome
        return outcomes

    def _endpoint_of(self, channel: Any) -> Any:
        """The ``etcd3.Endpoint`` whose synchronous channel is ``channel``."""
        for endpoint in self._store._endpoints or ():
            if endpoint.channel is channel:
                return endpoint
        raise StoreUnavailable("keepalive: the store is closed")

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise StoreUnavailable("keepalive: the store is closed")
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=_run_loop, args=(self._loop,),
                                 name="rx-discovery-lease-keepalive", daemon=True).start()
            return self._loop

    def _submit(self, client: Any, endpoint: Any, metadata: Any, batch: _Batch) -> None:
        """On the loop: send ``batch`` on the open stream (opened or reopened as needed)."""
        if self._closed:
            batch.fail(StoreUnavailable("keepalive: the store is closed"))
            return
        stream = self._stream
        if stream is None or stream.dead:
            try:
                if endpoint.secure and self._ssl is None:
                    self._ssl = _ssl_context(self._settings)
            except (ssl.SSLError, OSError, ValueError) as exc:
                batch.fail(StoreError(f"keepalive: TLS setup failed ({type(exc).__name__})"))
                return
            try:
                stream = self._stream = _LeaseStream(
                    self._store, client, endpoint, metadata,
                    self._ssl if endpoint.secure else None)
            except Exception as exc:  # the batch must not wait for its deadline
                batch.fail(StoreUnavailable(
                    f"keepalive: cannot open the stream ({type(exc).__name__})"))
                return
        stream.send(batch)

    @staticmethod
    def _give_up(batch: _Batch, error: StoreError) -> None:
        if batch.stream is not None:
            batch.stream.abort(error, endpoint_failed=True)

    def close(self) -> None:
        """Fail pending refreshes, end the stream and stop the loop."""
        with self._lock:
            self._closed = True
            loop, self._loop = self._loop, None
        if loop is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(
                self._settings.timeout)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)

    async def _shutdown(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.abort(StoreUnavailable("keepalive: the store is closed"))
            await asyncio.sleep(0)  # let the transport close its socket


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS for the keepalive connection, from the same material as the gRPC channels: the CA
    (else the system's), the client certificate, HTTP/2 by ALPN, host name checked."""
    ca = settings.ca_cert.decode("ascii") if settings.ca_cert is not None else None
    context = ssl.create_default_context(cadata=ca)
    if settings.client_cert is not None and settings.client_key is not None:
        _load_cert_chain(context, settings.client_cert + b"\n" + settings.client_key)
    context.set_alpn_protocols(["h2"])
    return context


def _load_cert_chain(context: ssl.SSLContext, pem: bytes) -> None:
    """Load a certificate and its key from memory. The ssl module reads them from a path
    only: an anonymous in-memory file where Linux has them, else a private temporary file
    removed at once."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd_create("rx-discovery-client-cert", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="rx-discovery-") as folder:
        path = os.path.join(folder, "client.pem")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            out.write(pem)
        context.load_cert_chain(path)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The keepalive thread: run ``loop`` until stopped, then end what is left on it."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    finally:
        loop.close()


class _Batch:
    """Leases refreshed together, and their outcomes (TTL or error) as the answers arrive.

    Resolved on the keepalive loop; read by the caller once :attr:`done` is set or its deadline
    passed.
    """

    __slots__ = ("_expired", "_lock", "_outcomes", "done", "leases", "stream")

    def __init__(self, leases: Sequence[int]) -> None:
        self.leases = list(dict.fromkeys(leases))
        self.done = threading.Event()
        self.stream: _LeaseStream | None = None  # the stream it was sent on
        self._outcomes: dict[int, int | StoreError] = {}
        self._lock = threading.Lock()
        self._expired = False

    def resolve(self, lease: int, outcome: int | StoreError) -> None:
        with self._lock:
            if self._expired or lease in self._outcomes:
                return
            self._outcomes[lease] = outcome
            if len(self._outcomes) == len(self.leases):
                self.done.set()

    def fail(self, error: StoreError) -> None:
        """Leases without an answer get ``error``."""
        with self._lock:
            for lease in self.leases:
                self._outcomes.setdefault(lease, error)
            self.done.set()

    def outcomes(self, late: StoreError | None) -> dict[int, int | StoreError]:
        """Every lease's outcome, ``late`` for those without one (whose answers are then
        ignored)."""
        with self._lock:
            self._expired = True
            outcomes = self._outcomes
            if late is None or len(outcomes) == len(self.leases):
                return dict(outcomes)
            return {lease: outcomes.get(lease, late) for lease in self.leases}


class _LeaseStream:
    """One open ``LeaseKeepAlive`` call, used on the keepalive loop only: requests go out as
    batches are sent, each answer resolves the batches waiting for its lease.

    Concurrent refreshes of one lease share its request in flight and its answer.
    """

    def __init__(self, store: EtcdStore, client: Any, endpoint: Any, metadata: Any,
                 ssl_context: ssl.SSLContext | None) -> None:
        self._store = store
        self._client = client
        self._channel = endpoint.channel  # the client's channel to the same endpoint
        self._pending: dict[int, list[_Batch]] = {}
        self.dead = False
        host, _, port = endpoint.netloc.rpartition(":")
        self._call = GrpcStream.open(host, int(port), _KEEPALIVE_PATH, tuple(metadata or ()),
                                     ssl_context, self._on_answer, self._on_end)

    def send(self, batch: _Batch) -> None:
        batch.stream = self
        requests = []
        for lease in batch.leases:
            waiting = self._pending.get(lease)
            if waiting is None:
                self._pending[lease] = [batch]
                requests.append(_KeepAliveRequest(ID=lease).SerializeToString())
            else:
                waiting.append(batch)
        self._call.send(requests)

    def abort(self, error: StoreError, endpoint_failed: bool = False) -> None:
        """End the call; pending requests fail with ``error``."""
        if self.dead:
            return
        if endpoint_failed:
            self._store._endpoint_failed(self._client, self._channel)
        self._call.close()
        self._finish(error)

    def _on_answer(self, data: bytes) -> None:
        answer = _KeepAliveResponse.FromString(data)
        waiting = self._pending.pop(answer.ID, None)
        if waiting is None:
            return
        outcome: int | StoreError = answer.TTL
        if answer.TTL <= 0:
            outcome = LeaseNotFound(
                f"keepalive: lease {answer.ID:x} not found (expired or revoked)")
        for batch in waiting:
            batch.resolve(answer.ID, outcome)

    def _on_end(self, end: StreamEnd) -> None:
        error: StoreError
        if end.status is None or end.status == _STATUS_OK:
            reason = end.message[:_MAX_DETAILS] or "the server ended the stream"
            error = StoreUnavailable(f"keepalive: {reason}")
            endpoint_failed = end.status is None
        else:
            code = _STATUS_CODES.get(end.status, grpc.StatusCode.UNKNOWN)
            error = _from_status(code, end.message[:_MAX_DETAILS], "keepalive")
            endpoint_failed = code in _ENDPOINT_FAILURE_CODES
        if endpoint_failed:
            self._store._endpoint_failed(self._client, self._channel)
        log.debug("lease keepalive stream ended: %s", error)
        self._finish(error)

    def _finish(self, error: StoreError) -> None:
        if self.dead:
            return
        self.dead = True
        pending, self._pending = self._pending, {}
        for batch in {id(b): b for waiting in pending.values() for b in waiting}.values():
            batch.fail(error)


# -- watch ------------------------------------------------------------------------------------

class _WatchSubscription:
    """One subscription to :meth:`EtcdStore.watch`: one etcd watch stream and its reader
    thread, which is the only thread calling the observer."""

    def __init__(self, store: EtcdStore, prefix: str, start_revision: int,
                 observer: abc.ObserverBase[WatchResponse]) -> None:
        self._store = store
        self._prefix = prefix
        self._start_revision = start_revision
        self._observer = observer
        self._lock = threading.Lock()
        self._disposed = False
        self._call: Any | None = None
        self._requests: queue.SimpleQueue[Any] | None = None  # of the open stream

    def start(self) -> None:
        threading.Thread(target=self._run, name=f"rx-discovery-watch {self._prefix}",
                         daemon=True).start()

    def dispose(self) -> None:
        """Cancel the stream; the observer is not called again. Idempotent."""
        with self._lock:
            if self._disposed:
                return
            self._disposed = True
            call = self._call
        if call is not None:
            call.cancel()
        self._store._remove_watch(self)

    def _run(self) -> None:
        """Reader thread: open the watch, emit its responses, report how it ended."""
        if not self._store._add_watch(self):
            self._fail(StoreUnavailable("watch: the store is closed"))
            return
        if self._disposed:  # disposed before this thread started
            self._store._remove_watch(self)
            return
        relogged = False
        while True:
            client: Any = None
            try:
                client = self._store._get_client()
                self._stream(client)
                error: StoreError = StoreUnavailable("watch: stream ended by the server")
            except Exception as exc:
                error = _translate(exc, "watch") or self._unexpected(exc)
            if self._disposed:
                return
            if isinstance(error, _TokenExpired) and not relogged and client is not None:
                relogged = True
                self._store._drop_client(client)
                continue
            self._store._report(_public(error))  # a watch alone must show that etcd is gone
            self._fail(_public(error))
            return

    def _stream(self, client: Any) -> None:
        """Open the watch on ``client`` and emit until the stream ends or is disposed.

        Raises:
            StoreError: a canceled watch; grpc.RpcError when the stream fails.
        """
        channel, metadata = self._store._stream_target(client)
        key, range_end = _prefix_range(self._prefix)
        create = etcd3.etcdrpc.WatchCreateRequest(
            key=key, range_end=range_end, start_revision=self._start_revision,
            progress_notify=True)
        # The request stream stays open (as Go's client keeps it) until the call ends; its
        # None sentinel then ends gRPC's request-sending thread.
        requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        requests.put(etcd3.etcdrpc.WatchRequest(create_request=create))
        call = etcd3.etcdrpc.WatchStub(channel).Watch(
            _queue_iterator(requests), metadata=metadata)
        with self._lock:
            self._call = call
            disposed = self._disposed
        try:
            if disposed:
                call.cancel()
                return
            for response in call:
                if self._disposed:
                    return
                self._on_response(response)
        except grpc.RpcError as exc:
            if _status_code(exc) in _ENDPOINT_FAILURE_CODES and not self._disposed:
                self._store._endpoint_failed(client, channel)
            raise
        finally:
            call.cancel()  # no-op when already ended
            requests.put(None)

    def _unexpected(self, error: Exception) -> StoreError:
        """An error that is not etcd's (e.g. raised by the observer): log it, and end the
        stream as unavailable so that callers retry rather than lose the stream silently."""
        if not self._disposed:
            log.error("watch %r: unexpected error", self._prefix, exc_info=error)
        return StoreUnavailable(f"watch: unexpected {type(error).__name__}")

    def _on_response(self, response: Any) -> None:
        if response.created:
            self._store._health.connected()
        if response.compact_revision > 0:
            raise RevisionCompacted(response.compact_revision)
        if response.canceled:
            reason = str(response.cancel_reason)[:_MAX_DETAILS] or "canceled by the server"
            if "permission denied" in reason or "auth" in reason:
                # etcd cancels a watch created with an expired token this way.
                raise _TokenExpired(f"watch: {reason}")
            raise StoreUnavailable(f"watch: {reason}")
        if not response.events:
            if not response.created:  # a progress notification
                self._emit(WatchResponse(revision=response.header.revision, events=()))
            return
        self._emit(_watch_response(response.events))

    def _emit(self, response: WatchResponse) -> None:
        if not self._disposed:
            self._observer.on_next(response)

    def _fail(self, error: StoreError) -> None:
        with self._lock:
            if self._disposed:
                return
            self._disposed = True  # nothing may follow an error
        self._store._remove_watch(self)
        self._observer.on_error(error)
