"""Every watch of a store on one etcd ``Watch`` stream, by watch id, read by one thread.

etcd multiplexes any number of watches on one ``Watch`` call: a ``WatchCreateRequest`` per
watch (its id chosen here, so that every answer, a refusal included, names its watch), a
``WatchCancelRequest`` to end one, and the ``watch_id`` on every response. Its Go client keeps
one such stream per connection; so does this module, instead of a call and a reader thread
(plus gRPC's request-sending thread) per watch: watching 10,000 services costs two threads.

Per watch, everything a stream of its own did stays true:

- each watch remembers the revision after the last response it emitted; a new stream (after
  a token renewal) re-creates every watch from its own revision;
- compaction (``compact_revision``), a refusal (RBAC) or a cancel ends that watch alone, with
  its error; the others go on;
- fragments of a large response are joined per watch; progress notifications are emitted;
- a refused creation is checked with a read of the same range: an expired token (the read
  logs in again) re-creates the watches on a stream with the new token, a missing permission
  fails the watch with :class:`PermissionDenied`.

When the stream itself is lost (server down, frozen, failover) every watch on it fails with
:class:`StoreUnavailable`, as the :class:`~rx_discovery.store.Store` port says; their syncs
re-subscribe (jittered backoff) from their own revision + 1, onto the next stream, which the
first of them opens.

A call that ended is never trusted to end its iterator: grpcio (1.85 seen) can leave a
``Watch`` call opened as the server shuts down (its GOAWAY racing the call's transparent
retry) terminated, ``UNAVAILABLE``, with the reader blocked for ever waiting for a message
that never comes; its watches would then stay silent for ever. A watchdog, started when the
call ends, abandons a reader still blocked on that call after :data:`_STUCK_AFTER_S` and
fails (or re-creates) its watches itself, as the reader would have.

Threads: one daemon reader thread per open stream (it exits when no watch is left), which
emits every notification of every watch, in order per watch, outside every lock; gRPC adds
its request-sending thread. A refused creation is checked on a short-lived thread; a call's
end is watched over by a short-lived thread (which emits the errors of a stuck stream's
watches, once it has abandoned the reader).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc
from etcd3.etcdrpc import rpc_pb2
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
    watch_cancel_request,
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
# member cut off from the quorum cancels the stream ("no leader") instead of keeping it open
# and silent until the partition heals, so the watches fail over to another member.
_REQUIRE_LEADER = ("hasleader", "true")

# A reader still waiting for a message this long (checked twice) after its call ended is stuck
# in grpcio (see the module): abandoned. A normal end wakes the reader within milliseconds.
_STUCK_AFTER_S = 1.0


def _watch_call(channel: Any) -> Any:
    """etcd's ``Watch`` call on ``channel``, taking requests serialized already (see
    :func:`~rx_discovery.store.etcd._codec.watch_create_request`)."""
    return channel.stream_stream("/etcdserverpb.Watch/Watch", request_serializer=None,
                                 response_deserializer=rpc_pb2.WatchResponse.FromString)


def _queue_iterator(requests: queue.SimpleQueue[Any]) -> Iterator[Any]:
    """Requests of a bidi stream, until a None sentinel (which half-closes it)."""
    while (request := requests.get()) is not None:
        yield request


class _Watch(abc.DisposableBase):
    """One subscription to :meth:`EtcdStore.watch`: a watch on the shared stream. Disposing
    it cancels the watch (idempotent)."""

    __slots__ = ("done", "exact", "fragments", "id", "mux", "next_revision", "observer",
                 "prefix", "relogged")

    def __init__(self, mux: WatchMux, prefix: str, exact: bool, start_revision: int,
                 observer: abc.ObserverBase[WatchResponse]) -> None:
        self.mux = mux
        self.prefix = prefix
        self.exact = exact
        self.observer = observer
        self.next_revision = start_revision  # where a re-creation resumes
        # events of a fragmented response, so far (None: none; most watches never get one)
        self.fragments: list[Any] | None = None
        self.id = 0  # its id on the stream it was last created on
        self.relogged = False  # refused once already: a second refusal is final
        self.done = False  # disposed or failed: the observer is not called again

    def dispose(self) -> None:
        self.mux._cancel(self)

    @property
    def range(self) -> tuple[bytes, bytes]:
        """``(key, range_end)`` of the watch (computed when needed: thousands of idle watches
        need not keep it); an empty range_end selects the key alone."""
        return (_encode(self.prefix), b"") if self.exact else _prefix_range(self.prefix)


class _Stream:
    """One ``Watch`` call and the watches created on it, by id."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.call: Any = None
        self.channel: Any = None  # the channel it was opened on
        self.watches: dict[int, _Watch] = {}
        self.next_id = 1  # 0 asks etcd to choose
        self.ended = False  # no watch may be created on it any more
        self.refused: list[_Watch] = []  # refused creations awaiting their check
        # what the watchdog of an ended call looks at (under the mux's lock)
        self.waiting_next = False  # the reader waits in next(call)
        self.reads = 0  # messages read so far
        self.finished = threading.Event()  # the reader is done with it
        self.abandoned = False  # its reader was stuck: the watchdog took its watches

    def create(self, watch: _Watch) -> None:
        """Create ``watch`` on this stream (call under the mux's lock)."""
        watch.id, self.next_id = self.next_id, self.next_id + 1
        watch.fragments = None
        self.watches[watch.id] = watch
        start, end = watch.range
        self.requests.put(watch_create_request(start, end, watch.next_revision, watch.id))

    def forget(self, watch: _Watch, cancel: bool) -> bool:
        """Remove ``watch`` (and ask etcd to cancel it); False when it is not on this stream
        (call under the mux's lock)."""
        if self.watches.get(watch.id) is not watch:
            return False
        del self.watches[watch.id]
        if cancel and not self.ended:
            self.requests.put(watch_cancel_request(watch.id))
        return True


class WatchMux:
    """The watches of one :class:`EtcdStore` on one stream at a time (see the module)."""

    def __init__(self, store: EtcdStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._waiting: list[_Watch] = []  # to create on the next stream
        self._stream: _Stream | None = None  # the open stream, if any
        self._reading = False  # a reader thread runs (it opens the next stream)
        self._closed = False

    def watch(self, prefix: str, start_revision: int, exact: bool,
              observer: abc.ObserverBase[WatchResponse]) -> abc.DisposableBase:
        """Create a watch for ``observer``; returns what cancels it. Never blocks."""
        watch = _Watch(self, prefix, exact, start_revision, observer)
        with self._lock:
            closed = watch.done = self._closed
            stream = self._stream
            if closed:
                stream = None
            elif stream is not None and not stream.ended:
                stream.create(watch)
            else:
                self._waiting.append(watch)
        if closed:
            observer.on_error(StoreUnavailable("watch: the store is closed"))
        else:
            self._start_reader()
        return watch

    @property
    def count(self) -> int:
        """Watches open or waiting for a stream."""
        stream = self._stream
        return len(self._waiting) + (len(stream.watches) if stream is not None else 0)

    def close(self) -> None:
        """End the stream; no observer is called again. Idempotent."""
        with self._lock:
            self._closed = True
            stream, self._stream = self._stream, None
            for watch in self._waiting:
                watch.done = True
            self._waiting = []
            if stream is not None:
                for watch in stream.watches.values():
                    watch.done = True
                stream.ended = True
        if stream is not None and stream.call is not None:
            stream.call.cancel()

    def _cancel(self, watch: _Watch) -> None:
        call = None
        with self._lock:
            if watch.done:
                return
            watch.done = True
            if watch in self._waiting:
                self._waiting.remove(watch)
            stream = self._stream
            if (stream is not None and stream.forget(watch, cancel=True)
                    and not stream.watches and not self._waiting and not stream.refused):
                stream.ended = True  # the last watch: end the stream and its thread
                call = stream.call
        if call is not None:
            call.cancel()

    # -- the reader thread ---------------------------------------------------------------

    def _run(self) -> None:
        """Open a stream while watches wait for one; read it until it ends."""
        relogged = False
        while True:
            with self._lock:
                if self._closed or not self._waiting:
                    self._reading = False
                    return
            stream = _Stream(None)  # no client: a failed login is not retried by a new one
            served = ended_here = False
            try:
                stream = _Stream(self._store._get_client())
                served, ended_here = self._serve(stream)
                error: StoreError = StoreUnavailable("watch: stream ended by the server")
            except Exception as exc:
                error = _translate(exc, "watch") or _unexpected(exc)
            if self._finished(stream):
                return  # abandoned while stuck: the watchdog did the rest, another reads
            if served:
                relogged = False
            if self._resume(stream, error, ended_here, relog=not relogged):
                relogged = True

    def _resume(self, stream: _Stream, error: StoreError, ended_here: bool,
                relog: bool) -> bool:
        """Detach the watches of ``stream``, which ended, and do with them what its end
        asks (for its reader, or the watchdog that abandoned it): re-create them when it was
        ended here (its last watch went, a token renewal); log in again and re-create them
        on an expired token, when ``relog``; else fail them with ``error``. Returns whether
        it logged in again."""
        orphans = self._ended(stream)
        if self._closed:
            return False
        if ended_here:
            self._requeue(orphans)
            return False
        if relog and isinstance(error, _TokenExpired) and stream.client is not None:
            self._store._drop_client(stream.client)
            self._requeue(orphans)
            return True
        self._fail_all(orphans, error)
        return False

    def _fail_all(self, orphans: list[_Watch], error: StoreError) -> None:
        """Fail every watch of a lost stream, those waiting for it too: their syncs
        re-subscribe after a jittered backoff (a retry here would spin while etcd is down)."""
        error = _public(error)
        self._store._report(error, "")
        for watch in (*orphans, *self._take_waiting()):
            self._fail(watch, error)

    def _serve(self, stream: _Stream) -> tuple[bool, bool]:
        """Open ``stream``, create the waiting watches on it and dispatch its responses until
        it ends. Returns whether it delivered anything, and whether it was ended here (no
        watch left, a token renewal, close) rather than by the server.

        Raises:
            grpc.RpcError: the stream failed.
        """
        channel, metadata = self._store._stream_target(stream.client)
        stream.channel = channel
        call = _watch_call(channel)(
            _queue_iterator(stream.requests), metadata=(*(metadata or ()), _REQUIRE_LEADER))
        with self._lock:
            stream.call = call
            if self._closed:
                stream.ended = True
            else:
                self._stream = stream
                waiting, self._waiting = self._waiting, []
                for watch in waiting:
                    stream.create(watch)
        # called at once if it ended already
        call.add_done_callback(functools.partial(self._call_done, stream))
        served = False
        try:
            if stream.ended:
                return served, True
            while (response := self._next(stream, call)) is not None:
                served = True
                self._dispatch(stream, response)
            return served, stream.ended
        except grpc.RpcError as exc:
            if stream.ended or stream.abandoned:  # cancelled here, or taken by the watchdog
                return served, True
            self._endpoint_lost(stream, exc)
            raise
        finally:
            call.cancel()  # no-op when already ended
            stream.requests.put(None)  # ends gRPC's request-sending thread

    def _endpoint_lost(self, stream: _Stream, error: grpc.RpcError) -> None:
        """Skip the stream's endpoint for a while after a failure that says it is gone, so
        that the next stream fails over."""
        if _status_code(error) in _ENDPOINT_FAILURE_CODES:
            self._store._endpoint_failed(stream.client, stream.channel)

    def _next(self, stream: _Stream, call: Any) -> Any:
        """The next message of ``call`` (None at its end, or once abandoned), telling the
        watchdog while the reader waits for it.

        Raises:
            grpc.RpcError: the call failed.
        """
        with self._lock:
            stream.waiting_next = True
        try:
            response = next(call, None)
        finally:
            with self._lock:
                stream.waiting_next = False
                stream.reads += 1
                abandoned = stream.abandoned
        return None if abandoned else response

    def _finished(self, stream: _Stream) -> bool:
        """The reader is done with ``stream``: True when the watchdog abandoned it (the
        reader thread then leaves at once, touching nothing)."""
        with self._lock:
            stream.finished.set()
            return stream.abandoned

    def _call_done(self, stream: _Stream, call: Any) -> None:
        """gRPC ended ``stream``'s call (any reason, on gRPC's thread): watch over its reader
        until it is done with the stream."""
        if not stream.finished.is_set():
            threading.Thread(target=self._watch_reader, args=(stream, call),
                             name="rx-discovery-watch-watchdog", daemon=True).start()

    def _watch_reader(self, stream: _Stream, call: Any) -> None:
        """Abandon the reader if it waits in next() for the same message at two checks in a
        row (so for :data:`_STUCK_AFTER_S` at least) after its call ended; then do what it
        would have done with the call's error."""
        seen = -1
        while not stream.finished.wait(_STUCK_AFTER_S):
            with self._lock:
                if stream.finished.is_set():
                    return
                if not stream.waiting_next:
                    seen = -1  # reading (a slow observer): not stuck
                    continue
                if stream.reads != seen:
                    seen = stream.reads  # began waiting since the last check: not stuck yet
                    continue
                stream.abandoned = True  # this thread reads for it now, then starts another
                ended_here = stream.ended  # its last watch went, or a token renewal
                reads = stream.reads
            log.warning("watch: the stream's call ended (%s) but gRPC never woke its reader; "
                        "resuming its watches without it", _call_status(call))
            stream.requests.put(None)  # ends gRPC's request-sending thread, if it still runs
            if not ended_here:
                self._endpoint_lost(stream, call)
            # as its reader would have; an expired token logs in again if the stream was
            # served (with a good token, then), as the reader's does
            self._resume(stream, _translate(call, "watch") or StoreUnavailable(
                "watch: the stream ended without a status"), ended_here, relog=reads > 0)
            if self._closed:
                return
            with self._lock:
                self._reading = False
            self._start_reader()  # for the watches that came meanwhile
            return

    def _ended(self, stream: _Stream) -> list[_Watch]:
        """Detach the watches of an ended stream (to fail them, or re-create them)."""
        with self._lock:
            stream.ended = True
            if self._stream is stream:
                self._stream = None
            orphans = [w for w in (*stream.watches.values(), *stream.refused) if not w.done]
            stream.watches, stream.refused = {}, []
            return orphans

    def _requeue(self, watches: list[_Watch]) -> None:
        with self._lock:
            self._waiting[:0] = [w for w in watches if not w.done]

    def _take_waiting(self) -> list[_Watch]:
        with self._lock:
            waiting, self._waiting = self._waiting, []
            return waiting

    # -- responses -----------------------------------------------------------------------

    def _dispatch(self, stream: _Stream, response: Any) -> None:
        watch = stream.watches.get(response.watch_id)
        if watch is None or watch.done:
            return  # cancelled meanwhile (its last answers may still come)
        if response.compact_revision > 0:
            self._end(stream, watch, RevisionCompacted(response.compact_revision), False)
            return
        if response.canceled:
            reason = str(response.cancel_reason)[:_MAX_DETAILS] or "canceled by the server"
            if "permission denied" in reason or "auth" in reason:
                # etcd refuses a watch created with an expired token this way, and one the
                # user may not read (RBAC) the same way: check which it is.
                self._refused(stream, watch, reason)
                return
            self._end(stream, watch, StoreUnavailable(f"watch: {reason}"), False)
            return
        watch.relogged = False  # served: a later refusal is checked again
        self._store._served(watch.prefix)  # a stream alone keeps health up to date
        if is_fragment(response):
            if watch.fragments is None:
                watch.fragments = []
            watch.fragments.extend(response.events)
            return
        events = response.events
        if watch.fragments is not None:
            events, watch.fragments = [*watch.fragments, *events], None
        if events:
            converted = _watch_response(events)
        elif not response.created:  # a progress notification
            converted = WatchResponse(revision=response.header.revision, events=())
        else:
            return
        watch.next_revision = max(watch.next_revision, converted.revision + 1)
        try:
            watch.observer.on_next(converted)
        except Exception as exc:  # not etcd's: end this watch alone, as unavailable
            log.error("watch %r: unexpected error", watch.prefix, exc_info=exc)
            self._end(stream, watch, StoreUnavailable(
                f"watch: unexpected {type(exc).__name__}"), True)

    def _end(self, stream: _Stream, watch: _Watch, error: StoreError, cancel: bool) -> None:
        """Fail one watch of ``stream`` (etcd ended it, unless ``cancel``)."""
        with self._lock:
            stream.forget(watch, cancel)
        self._store._report(error, watch.prefix)
        self._fail(watch, error)

    def _fail(self, watch: _Watch, error: StoreError) -> None:
        with self._lock:
            if watch.done:
                return
            watch.done = True  # nothing may follow an error
        try:
            watch.observer.on_error(error)
        except Exception:  # an observer without on_error (reactivex's default raises)
            log.exception("watch %r: the observer raised on the error", watch.prefix)

    def _refused(self, stream: _Stream, watch: _Watch, reason: str) -> None:
        if watch.relogged:
            # refused again with a checked token: the user lacks the permission (RBAC)
            self._end(stream, watch, PermissionDenied(f"watch: {reason}"), False)
            return
        with self._lock:
            stream.forget(watch, cancel=False)
            stream.refused.append(watch)
            check = len(stream.refused) == 1  # one checking thread per stream at a time
        if check:
            threading.Thread(target=self._check_refused, args=(stream, reason),
                             name="rx-discovery-watch-check", daemon=True).start()

    def _check_refused(self, stream: _Stream, reason: str) -> None:
        """Read each refused watch's range (one key): an expired token logs in again there,
        a missing permission raises. Then re-create the watches that may read."""
        while True:
            with self._lock:
                pending = [w for w in stream.refused if not w.done]
                if not pending:
                    stream.refused = []
                    return
            watch = pending[0]
            try:
                self._store._call("watch", functools.partial(_read_one, span=watch.range),
                                  watch.prefix)
                error: StoreError | None = None
            except StoreError as exc:
                error = exc
            except Exception as exc:
                error = _unexpected(exc)
            call = None
            with self._lock:
                # not there any more: its stream ended meanwhile, and took it back
                owned = watch in stream.refused
                if owned:
                    stream.refused.remove(watch)
                retry = owned and error is None and not watch.done
                if retry:
                    watch.relogged = True
                    if stream.ended or self._stream is not stream:
                        self._waiting.append(watch)
                    elif stream.client is not self._store._client:
                        # the stream's token expired (the read logged in again): a new stream,
                        # with the new token, re-creates every watch from its own revision
                        self._waiting.append(watch)
                        self._waiting.extend(w for w in stream.refused if not w.done)
                        stream.refused = []
                        stream.ended = True
                        call = stream.call
                    else:
                        stream.create(watch)
            if error is not None and owned:
                if isinstance(error, PermissionDenied):
                    error = PermissionDenied(f"watch: {reason}")
                self._store._report(error, watch.prefix)
                self._fail(watch, error)
            if call is not None:
                call.cancel()
            self._start_reader()

    def _start_reader(self) -> None:
        """Start a reader thread when watches wait and none runs."""
        with self._lock:
            start = bool(self._waiting) and not self._reading and not self._closed
            if start:
                self._reading = True
        if start:
            threading.Thread(target=self._run, name="rx-discovery-watch", daemon=True).start()


def _call_status(call: Any) -> str:
    """``CODE details`` of an ended call, for a log line (never its metadata)."""
    code = _status_code(call)
    details = call.details() if hasattr(call, "details") else ""
    return f"{getattr(code, 'name', code)} {str(details or '')[:_MAX_DETAILS]}".rstrip()


def _unexpected(error: Exception) -> StoreError:
    """An error that is not etcd's: log it, and end as unavailable so that callers retry
    rather than lose the stream silently."""
    log.error("watch: unexpected error", exc_info=error)
    return StoreUnavailable(f"watch: unexpected {type(error).__name__}")


def _read_one(client: Any, span: tuple[bytes, bytes]) -> Any:
    """Read one key of a watch's range: what a watch needs permission for."""
    start, end = span
    return client.get_range_response(start, end or None, limit=1, keys_only=True)
