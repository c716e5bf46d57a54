"""httpx transports that send requests for ``http://<service>/...`` to a live host of it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Collection, Generator, Iterator
from functools import partial
from typing import Any

import anyio.to_thread
import httpx

from rx_discovery._errors import NoHostFound, UnknownScheme
from rx_discovery.balance import Balancer
from rx_discovery.discovery import Discovery
from rx_discovery.http._routing import (
    Address,
    Attempts,
    RetryAfterSend,
    Router,
    Target,
    attempt_loop,
    send_all,
)
from rx_discovery.model import Host

__all__ = ["AsyncDiscoveryTransport", "DiscoveryTransport"]

# Nothing was sent: always safe to retry on another host.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
# The request may have reached the host: retried only as ``retry_after_send`` says.
_MAYBE_SENT = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadTimeout,
               httpx.WriteTimeout)


class _Common:
    """What both transports share: routing options, rewriting a request for a host."""

    def __init__(self, discovery: Discovery, services: Collection[str] | None,
                 suffix: str | None, address: Address, policy: str, retries: int,
                 retry_after_send: RetryAfterSend, balancer_options: dict[str, Any] | None
                 ) -> None:
        self.router = Router(discovery, services=services, suffix=suffix, address=address,
                             policy=policy, retries=retries, retry_after_send=retry_after_send,
                             balancer_options=balancer_options)

    def _service_of(self, request: httpx.Request) -> str | None:
        url = request.url
        return self.router.service_of(url.scheme, url.host, url.port)

    def _start(self, request: httpx.Request, service: str, balancer: Balancer,
               started: float | None = None) -> Attempts:
        try:
            return Attempts(self.router, balancer, request.url.scheme, started)
        except (NoHostFound, UnknownScheme) as error:
            raise httpx.ConnectError(f"service {service!r}: {error}", request=request) from error

    def _loop(self, request: httpx.Request, attempts: Attempts
              ) -> Generator[httpx.Request, httpx.Response | BaseException,
                             tuple[httpx.Response, Host]]:
        """The retry loop of ``request``: each attempt points it at the next host; at the
        end the request is the caller's again (its service URL and headers), so that httpx
        resolves a relative redirect against the service, not the host that answered."""
        service_url = request.url
        callers_auth = "authorization" in request.headers
        callers_host = request.headers.get("Host")

        def aim(target: Target) -> httpx.Request:
            request.url = _retarget(service_url, target)
            request.headers["Host"] = target.host_header
            if not callers_auth:   # the host's credentials (or none), never the caller's
                if target.authorization is not None:
                    request.headers["Authorization"] = target.authorization
                elif "authorization" in request.headers:
                    del request.headers["Authorization"]
            return request

        def classify(error: BaseException) -> bool | None:
            if isinstance(error, _NOT_SENT):
                return True
            if isinstance(error, _MAYBE_SENT):
                return (self.router.may_retry_after_send(request.method)
                        and isinstance(request.stream, httpx.ByteStream))  # can be sent again
            return None

        try:
            return (yield from attempt_loop(attempts, self.router, aim, classify))
        finally:
            request.url = service_url
            if callers_host is None:
                request.headers.pop("Host", None)
            else:
                request.headers["Host"] = callers_host
            if not callers_auth:
                request.headers.pop("Authorization", None)


class DiscoveryTransport(_Common, httpx.BaseTransport):
    """An httpx transport that sends ``http(s)://<service>/...`` to a live host of the
    service, and every other request to a plain transport, untouched::

        client = httpx.Client(transport=DiscoveryTransport(discovery))
        client.get("http://my-service/v1/items")

    **Which names are services**: by default every single-label hostname without a port
    (``my-service``; not ``localhost``, not an IP, not ``api.example.com``); ``services=``
    (an allow-list) or ``suffix=".svc"`` narrow it. The first request to a service subscribes
    to its hosts and waits for their first set (``balancer_options={"wait": ...}``, default
    5 s); later requests pick from the latest set with no etcd I/O.

    **Where it goes**: the scheme picks the port (``host.private_ports[scheme]``);
    ``address="private"`` (the default: services call each other inside a network) uses the
    private hostname and ports, or the public ones when a host has none; ``"public"`` the
    public ones; or give a function ``(host, scheme) -> (hostname, port)``. The request is then
    exactly one to that address: the ``Host`` header, the TLS server name (SNI) and the name
    the certificate is verified for are that hostname. A host with a ``user`` gets its
    credentials as basic auth, unless the request has its own ``Authorization`` header
    (credentials are never logged nor put in the URL).

    **Failures**: a failure to connect (``ConnectError``, ``ConnectTimeout``: nothing was
    sent) ejects the host and retries on another one, up to ``retries`` other hosts. A failure
    after the request may have been sent (read/write errors, a dropped connection, a read
    timeout) ejects the host too and is retried only as ``retry_after_send`` says (default
    ``"idempotent"``: GET, HEAD, OPTIONS, TRACE, PUT, DELETE, with a body that can be sent
    again). Any HTTP response, 5xx included, is returned as it is and counts as a success.
    When no host is left, the last error is raised; a service with no live host raises
    ``httpx.ConnectError``.

    Args:
        discovery: where services are found.
        transport: the transport that sends (default: ``httpx.HTTPTransport(**options)``,
            e.g. ``verify=``, ``cert=``, ``http2=``, ``limits=``).
        policy: ``"round_robin"``, ``"random"`` or ``"least_requests"``.
    """

    def __init__(self, discovery: Discovery, *, transport: httpx.BaseTransport | None = None,
                 services: Collection[str] | None = None, suffix: str | None = None,
                 address: Address = "private", policy: str = "round_robin", retries: int = 2,
                 retry_after_send: RetryAfterSend = "idempotent",
                 balancer_options: dict[str, Any] | None = None, **options: Any) -> None:
        super().__init__(discovery, services, suffix, address, policy, retries,
                         retry_after_send, balancer_options)
        self.transport = transport or httpx.HTTPTransport(**options)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        service = self._service_of(request)
        if service is None:
            return self.transport.handle_request(request)
        started = time.monotonic()   # the wait for the hosts counts from here
        balancer = self.router.balancer(service)
        attempts = self._start(request, service, balancer, started)
        response, host = send_all(self._loop(request, attempts), self.transport.handle_request)
        return _counted(response, host, balancer, _CountedStream)

    def close(self) -> None:
        self.router.close()
        self.transport.close()


class AsyncDiscoveryTransport(_Common, httpx.AsyncBaseTransport):
    """:class:`DiscoveryTransport` for ``httpx.AsyncClient``: the same rules, the same
    options (the default transport is ``httpx.AsyncHTTPTransport(**options)``). The first
    request to a service reads its hosts on a worker thread and waits for their first set
    without blocking the loop."""

    def __init__(self, discovery: Discovery, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 services: Collection[str] | None = None, suffix: str | None = None,
                 address: Address = "private", policy: str = "round_robin", retries: int = 2,
                 retry_after_send: RetryAfterSend = "idempotent",
                 balancer_options: dict[str, Any] | None = None, **options: Any) -> None:
        super().__init__(discovery, services, suffix, address, policy, retries,
                         retry_after_send, balancer_options)
        self.transport = transport or httpx.AsyncHTTPTransport(**options)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        service = self._service_of(request)
        if service is None:
            return await self.transport.handle_async_request(request)
        # the first request to a service subscribes to its hosts, which reads them from
        # etcd: on a worker thread, not the loop
        started = time.monotonic()   # the wait for the hosts counts from here
        balancer = self.router.existing_balancer(service)
        if balancer is None:
            balancer = await anyio.to_thread.run_sync(self.router.balancer, service)
        if not await _first_set(balancer, started):
            # fail here: the pick below would wait for the set again, on the loop
            raise httpx.ConnectError(f"service {service!r}: no host set of service "
                                     f"{service!r} arrived within {balancer.wait:g} s",
                                     request=request)
        attempts = self._start(request, service, balancer)
        loop = self._loop(request, attempts)
        prepared = next(loop)
        while True:
            outcome: httpx.Response | BaseException
            try:
                outcome = await self.transport.handle_async_request(prepared)
            except BaseException as error:   # handed to the loop, which re-raises it
                outcome = error
            try:
                prepared = loop.send(outcome)
            except StopIteration as done:
                result: tuple[httpx.Response, Host] = done.value
                return _counted(*result, balancer, _AsyncCountedStream)

    async def aclose(self) -> None:
        self.router.close()
        await self.transport.aclose()


async def _first_set(balancer: Balancer, started: float) -> bool:
    """Whether the balancer's first host set came within its wait from ``started``
    (``time.monotonic()``), without blocking the loop nor taking a worker thread per request
    (anyio lends 40 at a time: many requests while etcd is down would queue for them, several
    waits in turn). The flag is set on the watch thread, so this polls it, more slowly as
    the wait goes on."""
    if balancer.ready:
        return True
    deadline = started + balancer.wait
    interval = 0.002
    while not balancer.ready:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await anyio.sleep(min(interval, left))
        interval = min(interval * 2, 0.05)
    return True


class _CountedStream(httpx.SyncByteStream):
    """A response body that counts its call out of flight when it is closed."""

    def __init__(self, stream: httpx.SyncByteStream, done: Callable[[], None]) -> None:
        self._stream, self._done = stream, done

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._stream)

    def close(self) -> None:
        done, self._done = self._done, _nothing
        try:
            self._stream.close()
        finally:
            done()


class _AsyncCountedStream(httpx.AsyncByteStream):
    """The asynchronous :class:`_CountedStream`."""

    def __init__(self, stream: httpx.AsyncByteStream, done: Callable[[], None]) -> None:
        self._stream, self._done = stream, done

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream.__aiter__()

    async def aclose(self) -> None:
        done, self._done = self._done, _nothing
        try:
            await self._stream.aclose()
        finally:
            done()


def _nothing() -> None:
    pass


def _counted(response: httpx.Response, host: Host, balancer: Balancer,
             wrap: Callable[[Any, Callable[[], None]], Any]) -> httpx.Response:
    """``response``, its call counted in flight until its body is closed, with the host
    that answered in its ``rx_discovery.host`` extension."""
    response.extensions["rx_discovery.host"] = host
    if response.is_closed:  # read already (a body given as bytes)
        balancer.finished(host, ok=None)
    else:
        response.stream = wrap(response.stream, partial(balancer.finished, host, None))
    return response


def _retarget(url: httpx.URL, target: Target) -> httpx.URL:
    """``url`` on the target's host and port. ``URL.copy_with`` parses the whole URL again
    (~40 us, most of the transport's cost); for a hostname already in canonical form, replacing
    the two fields of httpx's parsed URL gives the same URL (a unit test compares the two on
    every kind of host) at ~2 us. Any other httpx layout takes the documented path."""
    reference = getattr(url, "_uri_reference", None)
    if target.canonical and isinstance(reference, tuple) and hasattr(reference, "_replace"):
        moved = httpx.URL.__new__(httpx.URL)
        moved._uri_reference = reference._replace(host=target.hostname, port=target.url_port)
        return moved
    return url.copy_with(host=target.hostname, port=target.port)
