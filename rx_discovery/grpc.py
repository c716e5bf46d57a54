"""gRPC channels that follow the live hosts of a service (sync and ``grpc.aio``).

grpcio has no Python API for a name resolver (grpc/grpc#11685), so a channel cannot be told
that its addresses changed. What works instead: a channel on a multi-address target
(``ipv4:10.0.0.1:50051,10.0.0.2:50051``, or ``ipv6:`` when any address is IPv6) with gRPC's
``round_robin`` load balancing, **rebuilt on every change** of the service's host set. Calls
start on the newest channel; the previous one is drained: closed once the calls started on it
have finished, or after ``drain`` seconds (the sync channel counts its calls; a ``grpc.aio``
channel's ``close(grace)`` does the same by itself). gRPC's round_robin already skips
addresses it cannot connect to, so these channels need no ejection of their own.

The port is ``host.private_ports[port]`` (``port="grpc"`` by default) on the private address
(``address="public"`` for the public one), as the HTTP transports choose them. Hostnames are
resolved to addresses when the host set changes (on the channel's own thread, never per
call). A host without that port is left out. With TLS (``credentials=``), the certificate is
verified for the address unless you pass ``("grpc.ssl_target_name_override", name)`` in
``options``.

A call before the first host set waits for it up to ``wait`` seconds; a call when the service
has no host raises :class:`~rx_discovery.NoHostFound` (not an ``RpcError``: nothing was
sent). Generated stubs take these channels as they are: ``EchoStub(DiscoveryChannel(d, "echo"))``.
"""

# This module is rx_discovery.grpc: `import grpc` below is the absolute import of grpcio (no
# implicit relative imports in Python 3), and nothing else in the package imports this module.
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Literal

import grpc
import grpc.aio
from reactivex import abc
from reactivex.disposable import SerialDisposable
from reactivex.scheduler import EventLoopScheduler, TimeoutScheduler

from rx_discovery._errors import NoHostFound
from rx_discovery._lifecycle import check_grpc_usable, grpc_channel_made
from rx_discovery.discovery import Discovery
from rx_discovery.hostset import HostSet

__all__ = ["AioDiscoveryChannel", "DiscoveryChannel", "target_of"]

log = logging.getLogger("rx_discovery")

Address = tuple[str, int]
_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def target_of(addresses: Sequence[Address]) -> str:
    """The gRPC target of ``addresses`` (IP literals): ``ipv4:a:p,b:p`` when all are IPv4,
    else ``ipv6:[a]:p,...`` (IPv4 addresses mapped into IPv6)."""
    if all(ipaddress.ip_address(ip).version == 4 for ip, _ in addresses):
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in addresses)
    parts = []
    for ip, port in addresses:
        parsed = ipaddress.ip_address(ip)
        mapped = f"::ffff:{parsed}" if parsed.version == 4 else str(parsed)
        parts.append(f"[{mapped}]:{port}")
    return "ipv6:" + ",".join(parts)


class _Follower:
    """What both channels share: options, and the addresses of each host set (resolved on
    the channel's own thread)."""

    def __init__(self, discovery: Discovery, service: str, port: str,
                 address: Literal["private", "public"], shard: str | None, drain: float,
                 wait: float, options: Iterable[tuple[str, Any]]) -> None:
        if not isinstance(port, str) or not port:
            raise ValueError(f"port must be the name of a port (e.g. 'grpc'), got {port!r}")
        if address not in ("private", "public"):
            raise ValueError(f"address must be 'private' or 'public', got {address!r}")
        if shard is not None and (not isinstance(shard, str) or not shard):
            raise ValueError("shard must be a non-empty string or None")
        for name, value in (("drain", drain), ("wait", wait)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        check_grpc_usable()
        self.service, self._port, self._address, self._shard = service, port, address, shard
        self.drain, self.wait = float(drain), float(wait)
        self._options = [("grpc.lb_policy_name", "round_robin"), *options]
        self._thread = EventLoopScheduler()   # resolving names may block: not the watch thread
        self._hosts = discovery.hosts(service, observe_on=self._thread)

    def _follow(self, on_addresses: Callable[[tuple[Address, ...]], None]
                ) -> abc.DisposableBase:
        def on_hosts(hosts: HostSet) -> None:
            on_addresses(self._addresses(hosts))

        def start(*_: Any) -> None:
            subscription.disposable = self._hosts.subscribe(on_hosts)

        # subscribing may read the hosts from etcd (hosts() reads in the background, but at
        # once when called where first sets are delivered): on the channel's thread, never
        # the caller's (an aio channel is created on the event loop). Disposed before it ran,
        # the serial disposable disposes the subscription as soon as it is made.
        subscription = SerialDisposable()
        self._thread.schedule(start)
        return subscription

    def _addresses(self, hosts: HostSet) -> tuple[Address, ...]:
        if self._shard is not None:
            hosts = hosts.on_shard(self._shard)
        found: set[Address] = set()
        for host in hosts.values():
            if self._address == "private":
                name = host.private_hostname or host.hostname
                ports = host.private_ports or host.ports
            else:
                name, ports = host.hostname, host.ports
            port = ports.get(self._port)
            if port is None:
                continue
            ip = _resolve(name, int(port))
            if ip is not None:
                found.add((ip, int(port)))
        return tuple(sorted(found))

    def _no_host(self) -> NoHostFound:
        return NoHostFound(f"no host of service {self.service!r} with a {self._port!r} port")


def _resolve(name: str, port: int) -> str | None:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    try:
        return str(socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)[0][4][0])
    except OSError as error:
        log.warning("gRPC channel: cannot resolve host %r (%s); left out", name, error)
        return None


def _underlying(channel: Any, callables: dict[Hashable, Any], kind: str, method: str,
                args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The underlying ``channel``'s multicallable of ``method`` with these arguments, made
    once per channel. The (de)serializers are part of the key: two stubs of one method may
    differ in them."""
    key = (kind, method, args, tuple(sorted(kwargs.items())))
    try:
        callable_ = callables.get(key)
    except TypeError:   # an unhashable argument: made afresh for each call
        return getattr(channel, kind)(method, *args, **kwargs)
    if callable_ is None:
        callable_ = callables[key] = getattr(channel, kind)(method, *args, **kwargs)
    return callable_


class _Generation:
    """One underlying channel and the calls in flight on it."""

    __slots__ = ("addresses", "callables", "channel", "closed", "in_flight", "retired")

    def __init__(self, channel: Any, addresses: tuple[Address, ...]) -> None:
        self.channel, self.addresses = channel, addresses
        self.callables: dict[Hashable, Any] = {}
        self.in_flight = 0
        self.retired = self.closed = False


class DiscoveryChannel(_Follower):
    """A ``grpc.Channel`` to the live hosts of ``service`` (see the module doc).

    Args:
        discovery: where the service is found.
        service: the service name.
        port: the name of the port in the hosts' ports (default ``"grpc"``).
        address: ``"private"`` (default) or ``"public"``.
        credentials: ``grpc.ChannelCredentials`` for TLS; None: plaintext.
        options: extra channel options (``round_robin`` is set already).
        shard: only hosts of this shard.
        drain: seconds an old channel's calls may run on after a rebuild.
        wait: seconds a call waits for the first host set.
        scheduler: times the drain (default: a timer thread).

    Raises:
        ValueError: a bad argument (before any I/O).
    """

    def __init__(self, discovery: Discovery, service: str, *, port: str = "grpc",
                 address: Literal["private", "public"] = "private", credentials: Any = None,
                 options: Iterable[tuple[str, Any]] = (), shard: str | None = None,
                 drain: float = 5.0, wait: float = 5.0,
                 scheduler: abc.SchedulerBase | None = None) -> None:
        super().__init__(discovery, service, port, address, shard, drain, wait, options)
        self._credentials = credentials
        self._timer = scheduler or TimeoutScheduler.singleton()
        self._lock = threading.Lock()
        self._current: _Generation | None = None
        self._ready = threading.Event()
        self._closed = False
        self._generations: set[_Generation] = set()
        self._subscription = self._follow(self._on_addresses)

    # --- grpc.Channel -------------------------------------------------------------------

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> _MultiCallable:
        return _MultiCallable(self, "unary_unary", method, args, kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> _MultiCallable:
        return _MultiCallable(self, "unary_stream", method, args, kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> _MultiCallable:
        return _MultiCallable(self, "stream_unary", method, args, kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> _MultiCallable:
        return _MultiCallable(self, "stream_stream", method, args, kwargs)

    def subscribe(self, callback: Callable[[Any], None], try_to_connect: bool = False) -> None:
        """Connectivity of the current underlying channel (it changes on a rebuild)."""
        generation = self._current
        if generation is not None:
            generation.channel.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Callable[[Any], None]) -> None:
        generation = self._current
        if generation is not None:
            generation.channel.unsubscribe(callback)

    def close(self) -> None:
        """Stop following the service and close every underlying channel (idempotent)."""
        with self._lock:
            self._closed = True
            generations, self._generations = list(self._generations), set()
            self._current = None
        self._subscription.dispose()
        self._thread.dispose()
        for generation in generations:
            self._close(generation)
        self._ready.set()

    def __enter__(self) -> DiscoveryChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def target(self) -> str | None:
        """The current target (``ipv4:...``), None while there is no host."""
        generation = self._current
        return None if generation is None else target_of(generation.addresses)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the first host set arrived; returns whether it did in ``timeout``."""
        return self._ready.wait(timeout)

    # --- generations --------------------------------------------------------------------

    def _on_addresses(self, addresses: tuple[Address, ...]) -> None:
        current = self._current
        if current is not None and current.addresses == addresses:
            self._ready.set()
            return
        generation = None
        if addresses:
            target = target_of(addresses)
            grpc_channel_made()
            channel = (grpc.insecure_channel(target, self._options)
                       if self._credentials is None else
                       grpc.secure_channel(target, self._credentials, self._options))
            generation = _Generation(channel, addresses)
        with self._lock:
            if self._closed:
                old = generation
            else:
                old, self._current = self._current, generation
                if generation is not None:
                    self._generations.add(generation)
        self._ready.set()
        if old is not None:
            self._retire(old)

    def _retire(self, generation: _Generation) -> None:
        """Close ``generation`` once its calls are over, at most ``drain`` seconds later."""
        with self._lock:
            generation.retired = True
            idle = generation.in_flight == 0
        if idle:
            self._close(generation)
        else:
            self._timer.schedule_relative(self.drain, lambda *_: self._close(generation))

    def _close(self, generation: _Generation) -> None:
        with self._lock:
            if generation.closed:
                return
            generation.closed = True
            self._generations.discard(generation)
        generation.channel.close()

    def _enter(self, kind: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
               ) -> tuple[_Generation, Any]:
        """The current generation, with one more call in flight, and its multicallable."""
        while True:
            generation = self._current
            if generation is None:
                if self._closed:
                    raise RuntimeError(f"the channel to {self.service!r} is closed")
                if not self._ready.is_set() and not self._ready.wait(self.wait):
                    raise NoHostFound(f"no host set of service {self.service!r} arrived "
                                      f"within {self.wait:g} s")
                generation = self._current
                if generation is None:
                    raise self._no_host()
            with self._lock:
                if generation.closed:
                    continue   # closed between the read and the count: take the new one
                generation.in_flight += 1
            return generation, _underlying(generation.channel, generation.callables, kind,
                                           method, args, kwargs)

    def _exit(self, generation: _Generation) -> None:
        with self._lock:
            generation.in_flight -= 1
            done = generation.retired and generation.in_flight == 0
        if done:
            self._close(generation)


class _MultiCallable:
    """A multicallable of a :class:`DiscoveryChannel`: each call runs on the channel's
    current underlying channel and counts there while in flight."""

    __slots__ = ("_args", "_channel", "_kind", "_kwargs", "_method")

    def __init__(self, channel: DiscoveryChannel, kind: str, method: str,
                 args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._channel, self._kind, self._method = channel, kind, method
        self._args, self._kwargs = args, kwargs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._invoke("__call__", args, kwargs)

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        return self._invoke("with_call", args, kwargs)

    def future(self, *args: Any, **kwargs: Any) -> Any:
        return self._invoke("future", args, kwargs)

    def _invoke(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        channel = self._channel
        generation, callable_ = channel._enter(self._kind, self._method, self._args,
                                               self._kwargs)
        try:
            result = getattr(callable_, name)(*args, **kwargs)
        except BaseException:
            channel._exit(generation)
            raise
        if isinstance(result, grpc.Future):   # a stream or a future: counted until done
            result.add_done_callback(lambda _: channel._exit(generation))
        else:
            channel._exit(generation)
        return result


class AioDiscoveryChannel(_Follower):
    """A ``grpc.aio.Channel`` to the live hosts of ``service``; create it on the event loop
    (``async with AioDiscoveryChannel(d, "svc") as channel:`` waits for the first host set).
    Old channels are closed with ``close(grace=drain)``: their calls may finish. The
    arguments are :class:`DiscoveryChannel`'s."""

    def __init__(self, discovery: Discovery, service: str, *, port: str = "grpc",
                 address: Literal["private", "public"] = "private", credentials: Any = None,
                 options: Iterable[tuple[str, Any]] = (), shard: str | None = None,
                 drain: float = 5.0, wait: float = 5.0) -> None:
        super().__init__(discovery, service, port, address, shard, drain, wait, options)
        self._loop = asyncio.get_running_loop()
        self._credentials = credentials
        self._current: tuple[Any, tuple[Address, ...], dict[Hashable, Any]] | None = None
        self._ready = asyncio.Event()
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False
        self._subscription = self._follow(self._hand_over)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> _AioMultiCallable:
        return _AioMultiCallable(self, "unary_unary", method, args, kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> _AioMultiCallable:
        return _AioMultiCallable(self, "unary_stream", method, args, kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> _AioMultiCallable:
        return _AioMultiCallable(self, "stream_unary", method, args, kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> _AioMultiCallable:
        return _AioMultiCallable(self, "stream_stream", method, args, kwargs)

    @property
    def target(self) -> str | None:
        """The current target, None while there is no host."""
        return None if self._current is None else target_of(self._current[1])

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait for the first host set; returns whether it came within ``timeout``."""
        try:
            async with asyncio.timeout(self.wait if timeout is None else timeout):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, grace: float | None = None) -> None:
        """Stop following the service and close every underlying channel."""
        self._closed = True
        self._subscription.dispose()
        self._thread.dispose()
        current, self._current = self._current, None
        if current is not None:
            self._retire(current[0], grace)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def __aenter__(self) -> AioDiscoveryChannel:
        if not await self.wait_ready():
            raise NoHostFound(f"no host set of service {self.service!r} arrived within "
                              f"{self.wait:g} s")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _hand_over(self, addresses: tuple[Address, ...]) -> None:
        """From the channel's thread to the loop, which owns the aio channels."""
        with contextlib.suppress(RuntimeError):   # a closed loop: nothing to update
            self._loop.call_soon_threadsafe(self._swap, addresses)

    def _swap(self, addresses: tuple[Address, ...]) -> None:
        """On the loop: build the channel of a new host set, drain the previous one."""
        if self._closed:
            return
        self._ready.set()
        current = self._current
        if current is not None and current[1] == addresses:
            return
        new: tuple[Any, tuple[Address, ...], dict[Hashable, Any]] | None = None
        if addresses:
            target = target_of(addresses)
            channel = (grpc.aio.insecure_channel(target, self._options)
                       if self._credentials is None else
                       grpc.aio.secure_channel(target, self._credentials, self._options))
            new = (channel, addresses, {})
        self._current = new
        if current is not None:
            self._retire(current[0], self.drain)

    def _retire(self, channel: Any, grace: float | None) -> None:
        task = self._loop.create_task(channel.close(grace))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _callable(self, kind: str, method: str, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
        current = self._current
        if current is None:
            if self._closed:
                raise RuntimeError(f"the channel to {self.service!r} is closed")
            if not self._ready.is_set():
                raise NoHostFound(f"no host set of service {self.service!r} yet: await "
                                  "wait_ready() (or use `async with`) first")
            raise self._no_host()
        channel, _, callables = current
        return _underlying(channel, callables, kind, method, args, kwargs)


class _AioMultiCallable:
    """A multicallable of an :class:`AioDiscoveryChannel`: each call runs on the channel's
    current underlying channel."""

    __slots__ = ("_args", "_channel", "_kind", "_kwargs", "_method")

    def __init__(self, channel: AioDiscoveryChannel, kind: str, method: str,
                 args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._channel, self._kind, self._method = channel, kind, method
        self._args, self._kwargs = args, kwargs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._channel._callable(self._kind, self._method, self._args,
                                       self._kwargs)(*args, **kwargs)


