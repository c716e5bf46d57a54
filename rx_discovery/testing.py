"""Helpers for testing discovery pipelines in virtual time, without a server.

``Discovery.in_memory(scheduler)`` runs the whole library on :class:`MemoryStore`, an in-memory
store with etcd's semantics (revisions, leases, TTL, compaction) driven by any reactivex
scheduler. With ``reactivex.testing.TestScheduler`` one unit of virtual time is one second,
so a TTL of 6 expires 6.0 later, and minutes of virtual time run in milliseconds. A host that
registers at tick 10 with ttl 6 (keepalives every ttl/3: at 12, 14, ... 50) and crashes at
tick 50.5 is reported down at 56, its last keepalive + ttl, exactly as etcd would expire it:

>>> from reactivex.testing import TestScheduler
>>> from rx_discovery import Discovery
>>> from rx_discovery.testing import crash, make_host, record
>>> scheduler = TestScheduler()
>>> discovery = Discovery.in_memory(scheduler)
>>> downs = record(discovery.subscribe_down("api"), scheduler)
>>> held = {}
>>> _ = scheduler.schedule_absolute(
...     10, lambda *_: held.setdefault("api", discovery.register("api", make_host(1), ttl=6)))
>>> _ = scheduler.schedule_absolute(50.5, lambda *_: crash(held["api"]))
>>> scheduler.advance_to(100)
>>> downs.values
[(56.0, 'uuid-1')]

For integration tests against a real etcd, :class:`TcpProxy` cuts the network between your
code and the server (the server itself stays up, as in a real network outage).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import reactivex
from reactivex import abc
from reactivex.notification import Notification, OnCompleted, OnError, OnNext

from rx_discovery.model import Host
from rx_discovery.registration import Registration
from rx_discovery.store.memory import MemoryStore

__all__ = ["MemoryStore", "Recorder", "TcpProxy", "crash", "make_host", "record"]

T = TypeVar("T")


def make_host(n: int = 1, *, hostname: str | None = None, **fields: Any) -> Host:
    """A host for tests: ``host-{n}.test`` on port ``8000 + n``, with a stable uuid
    ``uuid-{n}`` (override any field by keyword)."""
    values: dict[str, Any] = {"ports": {"http": str(8000 + n)}, "uuid": f"uuid-{n}"}
    values.update(fields)
    return Host(hostname=hostname or f"host-{n}.test", **values)


def crash(registration: Registration) -> None:
    """Make ``registration`` behave as if its process was killed: keepalives stop and the
    lease is left to expire by its TTL (nothing is revoked)."""
    registration._stop(revoke=False)


@dataclass
class Recorder(Generic[T]):
    """What an observable emitted, with the scheduler's clock at each emission.

    Attributes:
        messages: ``(time, Notification)`` pairs, as reactivex's ``ReactiveTest`` writes them.
    """

    messages: list[tuple[float, Notification[T]]] = field(default_factory=list)
    subscription: abc.DisposableBase | None = None

    @property
    def values(self) -> list[tuple[float, T]]:
        """``(time, value)`` of each on_next."""
        return [(t, n.value) for t, n in self.messages if isinstance(n, OnNext)]

    @property
    def items(self) -> list[T]:
        """The values alone, in order."""
        return [value for _, value in self.values]

    @property
    def error(self) -> Exception | None:
        """The error the observable failed with, if it did."""
        for _, n in self.messages:
            if isinstance(n, OnError):
                return n.exception
        return None

    @property
    def completed(self) -> bool:
        return any(isinstance(n, OnCompleted) for _, n in self.messages)

    def dispose(self) -> None:
        if self.subscription is not None:
            self.subscription.dispose()


def record(observable: reactivex.Observable[T], scheduler: abc.SchedulerBase,
           clock: Callable[[], float] | None = None) -> Recorder[T]:
    """Subscribe to ``observable`` now and record every notification with the time at which
    it arrived on ``scheduler``'s clock (seconds; a ``TestScheduler``'s virtual clock)."""
    recorder: Recorder[T] = Recorder()
    now = clock or (lambda: float(getattr(scheduler, "clock", scheduler.now.timestamp())))

    def keep(notification: Notification[T]) -> None:
        recorder.messages.append((now(), notification))

    recorder.subscription = observable.subscribe(
        on_next=lambda value: keep(OnNext(value)),
        on_error=lambda error: keep(OnError(error)),
        on_completed=lambda: keep(OnCompleted()),
    )
    return recorder


class TcpProxy:
    """A TCP proxy on loopback whose link can be cut: a network outage between your code and
    a server (etcd), without touching the server.

    Connect your code to :attr:`endpoint` instead of the server. :meth:`cut` drops every open
    connection and turns new ones away (each is accepted and closed at once, as a lost network
    breaks them), while the server stays up and other clients still reach it directly;
    :meth:`restore` lets connections through again. Each connection is piped by two daemon
    threads. Use it as a context manager, or call :meth:`close`.

    Args:
        target_port: the server's port.
        target_host: the server's address.

    Attributes:
        port: the loopback port the proxy listens on (a free one, chosen at creation).

    Example:
        A watcher cut off from etcd misses nothing: when the network comes back its stream
        resumes and delivers what was written meanwhile (``writer`` reaches etcd directly)::

            with (EmbeddedEtcd() as etcd, TcpProxy(etcd.client_port) as proxy,
                  Discovery(etcd.endpoint) as writer,
                  Discovery(proxy.endpoint, timeout=1) as watcher):
                sets = []
                watcher.hosts("api").subscribe(sets.append)
                proxy.cut()  # the watcher loses its network
                writer.register("api", make_host(1)).wait(5)
                proxy.restore()  # within about a second, sets[-1] holds "uuid-1"
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self._target = (target_host, target_port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._open = True
        self._closed = False
        threading.Thread(target=self._accept, name=f"TcpProxy :{self.port}",
                         daemon=True).start()

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``: the address to give your code instead of the
        server's."""
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Drop every open connection and turn new ones away, until :meth:`restore`."""
        with self._lock:
            self._open = False
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close_socket(sock)

    def restore(self) -> None:
        """Let new connections through again (dropped ones stay dropped: clients reconnect)."""
        with self._lock:
            self._open = True

    def close(self) -> None:
        """Drop every connection and stop listening. Idempotent."""
        self._closed = True
        self.cut()
        _close_socket(self._server)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = self._admit(client)
            if upstream is None:
                _close_socket(client)
                continue
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _admit(self, client: socket.socket) -> socket.socket | None:
        """A connection to the target for ``client``; None when cut or the target is down."""
        if not self._open:
            return None
        try:
            upstream = socket.create_connection(self._target, timeout=2)
            upstream.settimeout(None)
        except OSError:
            return None
        with self._lock:  # a cut() while connecting must drop this pair too
            if self._open:
                self._sockets |= {client, upstream}
                return upstream
        _close_socket(upstream)
        return None

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets -= {source, sink}
            _close_socket(source)
            _close_socket(sink)


def _close_socket(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
