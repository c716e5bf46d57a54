"""The watch mux never waits for ever on a ``Watch`` call that ended.

grpcio (1.85 seen) can leave a Watch call opened while the server shuts down (its GOAWAY racing
the call's transparent retry) terminated with UNAVAILABLE, its done callbacks run, but its
iterator blocked for ever: ``is_active()`` is False while ``next(call)`` waits in
``_MultiThreadedRendezvous._next`` for a ``receive_message`` that never completes; cancelling
it is a no-op. Every watch on that stream then stayed silent for ever, with no error (the
flake of ``tests/faults/test_security.py::test_expired_token_is_renewed_transparently``). Here
a fake call at the gRPC boundary behaves exactly so, deterministically.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from etcd3.etcdrpc import kv_pb2, rpc_pb2
from helpers import wait_until

from rx_discovery._errors import StoreError, StoreUnavailable
from rx_discovery.store import WatchResponse
from rx_discovery.store.etcd import _watch
from rx_discovery.store.etcd._watch import WatchMux

_END = object()  # the iterator ends with the call's error


class FakeCall(grpc.RpcError):
    """A grpcio stream-stream call: messages pushed by the test; ``terminate`` ends it as
    grpcio does (code set, done callbacks run); ``stuck`` leaves the iterator blocked then."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._code: grpc.StatusCode | None = None
        self._callbacks: list[Callable[[Any], None]] = []
        self.lock = threading.Lock()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        message = self.messages.get()
        if message is _END:
            self.messages.put(_END)
            raise self
        return message

    def terminate(self, code: grpc.StatusCode, stuck: bool) -> None:
        with self.lock:
            if self._code is not None:
                return
            self._code = code
            callbacks, self._callbacks = self._callbacks, []
        if not stuck:
            self.messages.put(_END)
        for callback in callbacks:
            callback(self)

    def cancel(self) -> bool:  # a no-op on an ended call, as grpcio's (the stuck one stays so)
        ended = self._code is not None
        self.terminate(grpc.StatusCode.CANCELLED, stuck=False)
        return not ended

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        with self.lock:
            if self._code is None:
                self._callbacks.append(callback)
                return
        callback(self)

    def is_active(self) -> bool:
        return self._code is None

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return "failed to connect to all addresses" if self._code else ""


class FakeChannel:
    """Opens a new FakeCall per ``Watch`` call, remembering each."""

    def __init__(self) -> None:
        self.calls: list[FakeCall] = []

    def stream_stream(self, method: str, request_serializer: Any = None,
                      response_deserializer: Any = None) -> Callable[..., FakeCall]:
        def open_call(requests: Iterator[Any], metadata: Any = None) -> FakeCall:
            call = FakeCall()
            self.calls.append(call)
            return call
        return open_call


class FakeStore:
    """What the mux asks of its EtcdStore, for streams only."""

    def __init__(self) -> None:
        self.channel = FakeChannel()
        self._client = object()
        self.reports: list[StoreError] = []
        self.failed_channels: list[Any] = []  # endpoints marked failed (to fail over)
        self.dropped: list[Any] = []  # clients dropped to log in again

    def _drop_client(self, stale: Any) -> None:
        self.dropped.append(stale)
        self._client = object()

    def _get_client(self) -> Any:
        return self._client

    def _stream_target(self, client: Any) -> tuple[Any, Any]:
        return self.channel, ()

    def _report(self, error: StoreError, scope: str = "") -> None:
        self.reports.append(error)

    def _served(self, scope: str = "", logged_in: bool = False) -> None:
        pass

    def _endpoint_failed(self, client: Any, channel: Any) -> None:
        self.failed_channels.append(channel)


class Recorded:
    """An observer keeping what it got, and on which thread."""

    def __init__(self, slow_first: float = 0.0) -> None:
        self.items: list[WatchResponse] = []
        self.errors: list[Exception] = []
        self.after_error: list[object] = []  # anything emitted after the error (a bug)
        self.slow_first = slow_first  # seconds the first on_next takes (a slow user)

    def on_next(self, value: WatchResponse) -> None:
        if self.errors:
            self.after_error.append(value)
        if not self.items and self.slow_first:
            threading.Event().wait(self.slow_first)
        self.items.append(value)

    def on_error(self, error: Exception) -> None:
        if self.errors:
            self.after_error.append(error)
        self.errors.append(error)

    def on_completed(self) -> None:
        self.after_error.append("completed")


def _put(watch_id: int, key: bytes, revision: int) -> Any:
    return rpc_pb2.WatchResponse(
        watch_id=watch_id, header=rpc_pb2.ResponseHeader(revision=revision),
        events=[kv_pb2.Event(type=kv_pb2.Event.PUT,
                             kv=kv_pb2.KeyValue(key=key, value=b"v", mod_revision=revision,
                                                create_revision=revision, version=1))])


@pytest.fixture
def quick_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_watch, "_STUCK_AFTER_S", 0.05)


def _open(mux: WatchMux, store: FakeStore, observer: Recorded) -> None:
    mux.watch("/services/a/", 5, False, observer)  # type: ignore[arg-type]
    wait_until(lambda: store.channel.calls, timeout=5, message="the Watch call opened")


def _served_once() -> tuple[FakeStore, WatchMux, Recorded, FakeCall, Any]:
    """A mux whose one watch got revision 5 on its first stream: (store, mux, observer, the
    stream's call, the stream)."""
    store = FakeStore()
    mux = WatchMux(store)  # type: ignore[arg-type]
    observer = Recorded()
    _open(mux, store, observer)
    call = store.channel.calls[0]
    call.messages.put(_put(1, b"/services/a/x", 5))
    wait_until(lambda: len(observer.items) == 1, timeout=5)
    return store, mux, observer, call, mux._stream


def test_a_call_that_ends_but_never_wakes_its_reader_fails_its_watches(
        quick_watchdog: None) -> None:
    store, mux, observer, call, stream = _served_once()
    call.terminate(grpc.StatusCode.UNAVAILABLE, stuck=True)  # as grpcio did under GOAWAY
    wait_until(lambda: observer.errors, timeout=10,
               message="the watch told that its stream is gone (its sync resumes it)")
    assert isinstance(observer.errors[0], StoreUnavailable), repr(observer.errors[0])
    assert "UNAVAILABLE" in str(observer.errors[0])
    assert any(isinstance(e, StoreUnavailable) for e in store.reports), "health was told"
    assert store.failed_channels == [store.channel], "the next stream fails over"

    # the watch re-subscribed (as its sync does) from its own revision, on a new stream
    again = Recorded()
    mux.watch("/services/a/", 6, False, again)  # type: ignore[arg-type]
    wait_until(lambda: len(store.channel.calls) == 2, timeout=5, message="a new stream")
    store.channel.calls[1].messages.put(_put(1, b"/services/a/y", 6))
    wait_until(lambda: [i.revision for i in again.items] == [6], timeout=5)

    # the abandoned reader, woken late, delivers nothing more and leaves
    call.messages.put(_put(1, b"/services/a/late", 7))
    call.messages.put(_END)
    assert stream.finished.wait(5), "the abandoned reader left"
    assert [i.revision for i in observer.items] == [5] and observer.after_error == []
    assert again.errors == [] and len(store.channel.calls) == 2
    mux.close()


def test_a_stuck_call_ended_here_re_creates_its_watches(quick_watchdog: None) -> None:
    """A stream ended by the mux itself (a token renewal) whose call then sticks: its watches
    are re-created on the next stream from their own revision, without an error."""
    store, mux, observer, first, stream = _served_once()
    with mux._lock:  # what _check_refused does before cancelling the stream's call
        stream.ended = True
    first.terminate(grpc.StatusCode.CANCELLED, stuck=True)
    wait_until(lambda: len(store.channel.calls) == 2, timeout=10,
               message="the watch re-created on a new stream")
    store.channel.calls[1].messages.put(_put(1, b"/services/a/y", 6))
    wait_until(lambda: len(observer.items) == 2, timeout=5)
    assert [i.revision for i in observer.items] == [5, 6]
    assert observer.errors == []
    first.messages.put(_END)  # the abandoned reader, woken late, leaves
    assert stream.finished.wait(5), "the abandoned reader left"
    mux.close()


def test_a_reader_busy_after_the_call_ended_is_not_abandoned(quick_watchdog: None) -> None:
    """The call ended with messages still to read and a slow observer (its first on_next
    takes six watchdog periods): the reader delivers every message, then the call's error
    once; the watchdog, which sees the reader busy, does not step in."""
    store = FakeStore()
    mux = WatchMux(store)  # type: ignore[arg-type]
    observer = Recorded(slow_first=0.3)
    _open(mux, store, observer)
    call = store.channel.calls[0]
    for revision in (5, 6, 7):
        call.messages.put(_put(1, b"/services/a/x", revision))
    call.terminate(grpc.StatusCode.UNAVAILABLE, stuck=False)
    wait_until(lambda: observer.errors, timeout=10)
    assert [i.revision for i in observer.items] == [5, 6, 7]
    assert len(observer.errors) == 1 and observer.after_error == []
    assert len(store.channel.calls) == 1
    mux.close()


class SteppedEvent(threading.Event):
    """A stream's ``finished`` whose timed waits (the watchdog's checks) each wait for the
    test's ``tick``: the test decides where the reader is at each check."""

    def __init__(self) -> None:
        super().__init__()
        self.ticks = threading.Semaphore(0)
        self.entered = 0  # timed waits begun: check n is done once n + 1 began

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is None:
            return super().wait()
        self.entered += 1
        while not self.is_set() and not self.ticks.acquire(timeout=0.01):
            pass
        return self.is_set()

    def tick(self, stream: Any) -> None:
        """Let the watchdog make one check, and wait until it made it."""
        done = self.entered + 1
        self.ticks.release()
        wait_until(lambda: self.entered >= done or stream.abandoned, timeout=5,
                   message="the watchdog checked")


def test_a_reader_that_just_began_waiting_after_a_slow_observer_is_not_abandoned() -> None:
    """The call ended while the reader was in a slow on_next (first check: not waiting); it
    then waits in next() for a message that comes (second check: waiting since moments).
    Waiting at one check only is not stuck: the reader delivers the message and the error."""
    store = FakeStore()
    mux = WatchMux(store)  # type: ignore[arg-type]
    release = threading.Event()
    observer = Recorded()
    observer.on_next = lambda value: (release.wait(10), Recorded.on_next(  # type: ignore
        observer, value))
    _open(mux, store, observer)
    call = store.channel.calls[0]
    stream = mux._stream
    assert stream is not None
    finished = stream.finished = SteppedEvent()
    call.messages.put(_put(1, b"/services/a/x", 5))
    wait_until(lambda: not stream.waiting_next and stream.reads == 1, timeout=5,
               message="the reader in the observer")
    call.terminate(grpc.StatusCode.UNAVAILABLE, stuck=True)
    wait_until(lambda: finished.entered == 1, timeout=5, message="the watchdog started")
    finished.tick(stream)  # first check: the reader is in the observer
    release.set()
    wait_until(lambda: stream.waiting_next, timeout=5, message="the reader waits in next()")
    finished.tick(stream)  # second check: the reader waits, since moments
    call.messages.put(_put(1, b"/services/a/x", 6))
    call.messages.put(_END)
    wait_until(lambda: observer.errors, timeout=5)
    assert not stream.abandoned
    assert [i.revision for i in observer.items] == [5, 6]
    assert len(observer.errors) == 1 and observer.after_error == []
    mux.close()


def test_a_stuck_call_whose_token_expired_logs_in_again(quick_watchdog: None) -> None:
    """A stuck call ended with an expired token: as its reader would, the watchdog drops the
    client (the next logs in again) and re-creates the watches, reporting no
    AuthenticationFailed (a permanent error) to health and no error to the watch."""
    store, mux, observer, call, stream = _served_once()
    client = store._client
    call.details = lambda: "etcdserver: invalid auth token"  # type: ignore[method-assign]
    call.terminate(grpc.StatusCode.UNAUTHENTICATED, stuck=True)
    wait_until(lambda: stream.abandoned, timeout=10, message="the reader abandoned")
    wait_until(lambda: len(store.channel.calls) == 2 or observer.errors, timeout=10,
               message="the watch re-created (or failed)")
    assert observer.errors == [] and store.reports == []
    assert store.dropped == [client], "the next stream logs in again"
    store.channel.calls[1].messages.put(_put(1, b"/services/a/y", 6))
    wait_until(lambda: len(observer.items) == 2, timeout=5)
    assert [i.revision for i in observer.items] == [5, 6]
    call.messages.put(_END)  # the abandoned reader, woken late, leaves
    assert stream.finished.wait(5), "the abandoned reader left"
    mux.close()
