"""The lease keepalive stream shared by every lease of a store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import etcd3
import grpc

from rx_discovery._errors import LeaseNotFound, StoreError, StoreUnavailable
from rx_discovery.config import Settings, load_cert_chain
from rx_discovery.store.etcd._client import grpc_proxy_applies
from rx_discovery.store.etcd._errors import (
    _ENDPOINT_FAILURE_CODES,
    _MAX_DETAILS,
    _STATUS_CODES,
    _STATUS_OK,
    MisconfiguredEndpoint,
    _from_status,
    _public,
    _TokenExpired,
    _translate,
)

if TYPE_CHECKING:
    from rx_discovery.store._h2grpc import StreamEnd
    from rx_discovery.store.etcd._store import EtcdStore

log = logging.getLogger(__name__)

_KEEPALIVE_PATH = "/etcdserverpb.Lease/LeaseKeepAlive"
_KeepAliveRequest = etcd3.etcdrpc.LeaseKeepAliveRequest
_KeepAliveResponse = etcd3.etcdrpc.LeaseKeepAliveResponse


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
        if grpc_proxy_applies(endpoint.host.strip("[]")):
            outcomes = self._refresh_over_grpc(channel, metadata, leases)
        else:
            outcomes = self._refresh_over_h2(client, endpoint, metadata, leases)
        failures = [outcome for outcome in outcomes.values()
                    if isinstance(outcome, StoreError) and not isinstance(outcome, LeaseNotFound)]
        for outcome in failures:
            if isinstance(outcome, _TokenExpired):
                raise outcome
        if failures and len(failures) == len(outcomes):
            raise failures[0]  # the stream failed, not the leases: the store reports it
        return outcomes

    def _refresh_over_grpc(self, channel: Any, metadata: Any,
                           leases: Sequence[int]) -> dict[int, int | StoreError]:
        """Refresh ``leases`` on one grpcio ``LeaseKeepAlive`` call on the client's channel:
        the path for an endpoint that grpcio reaches through an HTTP proxy (the HTTP/2
        connection of this module connects directly only). Slower per keepalive (~100 us of
        CPU), but it goes where every other call goes."""
        unique = list(dict.fromkeys(leases))
        outcomes: dict[int, int | StoreError] = {}
        requests = [_KeepAliveRequest(ID=lease) for lease in unique]
        try:
            for answer in etcd3.etcdrpc.LeaseStub(channel).LeaseKeepAlive(
                    iter(requests), timeout=self._settings.timeout, metadata=metadata):
                outcomes[answer.ID] = answer.TTL if answer.TTL > 0 else _not_found(answer.ID)
        except grpc.RpcError as exc:
            error = _translate(exc, "keepalive") or StoreUnavailable("keepalive: failed")
            return {lease: outcomes.get(lease, error) for lease in unique}
        missing = StoreUnavailable("keepalive: the stream ended without an answer")
        return {lease: outcomes.get(lease, missing) for lease in unique}

    def _refresh_over_h2(self, client: Any, endpoint: Any, metadata: Any,
                         leases: Sequence[int]) -> dict[int, int | StoreError]:
        """Refresh ``leases`` on the shared HTTP/2 stream, under one deadline."""
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
        return batch.outcomes(late)

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
                batch.fail(MisconfiguredEndpoint(
                    f"keepalive: TLS setup failed ({type(exc).__name__})"))
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


def _not_found(lease: int) -> LeaseNotFound:
    """A keepalive answered with TTL 0: the lease expired or was revoked."""
    return LeaseNotFound(f"keepalive: lease {lease:x} not found (expired or revoked)")


def grpc_roots_file() -> str:
    """The CA file grpcio trusts when no CA is given: ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``, else
    the roots bundled with grpcio (not the system's store, which Python's ssl would use)."""
    return (os.environ.get("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH")
            or os.path.join(os.path.dirname(grpc.__file__), "_cython", "_credentials",
                            "roots.pem"))


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS for the keepalive connection, trusting exactly what the gRPC channels trust: the
    CA, else grpcio's roots (:func:`grpc_roots_file`); the client certificate; HTTP/2 by ALPN;
    host name checked."""
    if settings.ca_cert is not None:
        context = ssl.create_default_context(cadata=settings.ca_cert.decode("ascii"))
    else:
        context = ssl.create_default_context(cafile=grpc_roots_file())
    if settings.client_cert is not None and settings.client_key is not None:
        load_cert_chain(context, settings.client_cert, settings.client_key)
    context.set_alpn_protocols(["h2"])
    return context


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
        # h2 is imported here, by the first keepalive: ~1.4 MB and ~1,700 objects (each full
        # garbage collection walks them) that a process that only watches never needs
        from rx_discovery.store._h2grpc import GrpcStream

        host, _, port = endpoint.netloc.rpartition(":")
        self._call = GrpcStream.open(host.strip("[]"), int(port), _KEEPALIVE_PATH,
                                     tuple(metadata or ()), ssl_context, self._on_answer,
                                     self._on_end)

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
        outcome: int | StoreError = answer.TTL if answer.TTL > 0 else _not_found(answer.ID)
        for batch in waiting:
            batch.resolve(answer.ID, outcome)

    def _on_end(self, end: StreamEnd) -> None:
        error: StoreError
        if end.status is None or end.status == _STATUS_OK:
            reason = end.message[:_MAX_DETAILS] or "the server ended the stream"
            # a TLS handshake refused is a configuration error (reported, not failed over)
            error = _from_status(grpc.StatusCode.UNAVAILABLE, reason, "keepalive")
            if not error.permanent:
                error = StoreUnavailable(f"keepalive: {reason}")
            endpoint_failed = end.status is None and not error.permanent
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
