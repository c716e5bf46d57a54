"""Watch streams, owned here over the generated gRPC stubs."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import etcd3
import grpc
from reactivex import abc

from rx_discovery._errors import (
    PermissionDenied,
    RevisionCompacted,
    StoreError,
    StoreUnavailable,
)
from rx_discovery.store import WatchResponse
from rx_discovery.store.etcd._codec import (
    _encode,
    _prefix_range,
    _watch_response,
    is_fragment,
    watch_create_request,
)
from rx_discovery.store.etcd._errors import (
    _ENDPOINT_FAILURE_CODES,
    _MAX_DETAILS,
    _public,
    _status_code,
    _TokenExpired,
    _translate,
)

if TYPE_CHECKING:
    from rx_discovery.store.etcd._store import EtcdStore

log = logging.getLogger(__name__)

# etcd's require-leader metadata (as its Go client's WithRequireLeader, and Kubernetes): a
# member cut off from the quorum cancels the watch ("no leader") instead of keeping it open
# and silent until the partition heals, so the stream fails over to another member.
_REQUIRE_LEADER = ("hasleader", "true")


class _WatchRefused(_TokenExpired):
    """etcd canceled the watch with "permission denied": an expired token (log in again and
    retry once) or a missing permission (what it means when the retry is refused too)."""


def _queue_iterator(requests: queue.SimpleQueue[Any]) -> Iterator[Any]:
    """Requests of a bidi stream, until a None sentinel (which half-closes it)."""
    while (request := requests.get()) is not None:
        yield request

class _WatchSubscription:
    """One subscription to :meth:`EtcdStore.watch`: one etcd watch stream and its reader
    thread, which is the only thread calling the observer."""

    def __init__(self, store: EtcdStore, prefix: str, start_revision: int,
                 observer: abc.ObserverBase[WatchResponse], exact: bool = False) -> None:
        self._store = store
        self._prefix = prefix
        self._exact = exact
        self._start_revision = start_revision
        self._observer = observer
        self._lock = threading.Lock()
        self._disposed = False
        self._call: Any | None = None
        self._requests: queue.SimpleQueue[Any] | None = None  # of the open stream
        self._fragments: list[Any] = []  # events of a fragmented response, so far

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
            if isinstance(error, _WatchRefused):
                # refused again with a fresh token: the user lacks the permission (RBAC)
                error = PermissionDenied(str(error))
            error = _public(error)
            self._store._report(error, self._prefix)
            self._fail(error)
            return

    def _stream(self, client: Any) -> None:
        """Open the watch on ``client`` and emit until the stream ends or is disposed.

        Raises:
            StoreError: a canceled watch; grpc.RpcError when the stream fails.
        """
        channel, metadata = self._store._stream_target(client)
        # an empty range_end selects the key alone
        key, range_end = ((_encode(self._prefix), b"") if self._exact
                          else _prefix_range(self._prefix))
        # The request stream stays open (as Go's client keeps it) until the call ends; its
        # None sentinel then ends gRPC's request-sending thread.
        requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        requests.put(watch_create_request(key, range_end, self._start_revision))
        call = etcd3.etcdrpc.WatchStub(channel).Watch(
            _queue_iterator(requests), metadata=(*(metadata or ()), _REQUIRE_LEADER))
        self._fragments = []
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
        if response.compact_revision > 0:
            raise RevisionCompacted(response.compact_revision)
        if response.canceled:
            reason = str(response.cancel_reason)[:_MAX_DETAILS] or "canceled by the server"
            if "permission denied" in reason or "auth" in reason:
                # etcd cancels a watch created with an expired token this way, and one the
                # user may not read (RBAC) the same way.
                raise _WatchRefused(f"watch: {reason}")
            raise StoreUnavailable(f"watch: {reason}")
        self._store._served(self._prefix)  # a stream alone keeps health up to date
        if is_fragment(response):
            self._fragments.extend(response.events)
            return
        events = response.events
        if self._fragments:
            events, self._fragments = [*self._fragments, *events], []
        if not events:
            if not response.created:  # a progress notification
                self._emit(WatchResponse(revision=response.header.revision, events=()))
            return
        self._emit(_watch_response(events))

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
