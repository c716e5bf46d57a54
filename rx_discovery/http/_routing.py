"""What every HTTP client adapter shares: which names are services, where a request to a
host of one goes, and which failures are retried on another host.

The clients' own modules (httpx, requests) only translate their request and error types.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import threading
import time
from collections.abc import Callable, Collection, Generator
from dataclasses import dataclass
from typing import Literal, TypeVar

import reactivex
from reactivex.scheduler import ImmediateScheduler

from rx_discovery._errors import NoHostFound, UnknownScheme
from rx_discovery.balance import Balancer
from rx_discovery.discovery import Discovery
from rx_discovery.keys import validate_service_name
from rx_discovery.model import Host

__all__ = ["IDEMPOTENT", "Attempts", "Router", "Target", "attempt_loop", "send_all"]

P = TypeVar("P")   # a prepared request, as a client library holds it
R = TypeVar("R")   # its response

# RFC 9110 9.2.2: a repeated request has the same effect as one.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

Address = Literal["private", "public"] | Callable[[Host, str], tuple[str, int]]
RetryAfterSend = Literal["idempotent", "never", "always"]


@dataclass(frozen=True, slots=True)
class Target:
    """Where one request to one host goes.

    Attributes:
        hostname, port: the address to connect to; also the ``Host`` header, the TLS server
            name (SNI) and the name the certificate is verified for.
        host_header: ``hostname[:port]`` (the port only when not the scheme's default).
        authorization: a ``Basic`` header from the host's user and password, or None.
        url_port: the port as a URL holds it (None for the scheme's default).
        canonical: the hostname is already in the form URL parsers normalise to (lowercase
            ASCII name or IP literal), so a URL can take it without being parsed again.
    """

    hostname: str
    port: int
    host_header: str
    authorization: str | None
    url_port: int | None
    canonical: bool

    def __repr__(self) -> str:  # never the credentials
        return f"Target({self.hostname!r}, {self.port})"


class Router:
    """Decides whether a URL names a service, and keeps one balancer per service called.

    Args:
        discovery: where services are found.
        services: the names that are services (an allow-list); default: every single-label
            hostname (no dot, not ``localhost``, not an IP address) is a service name.
        suffix: instead, names ending with this suffix are services once it is removed
            (``suffix=".svc"``: ``http://api.svc/`` calls service ``api``).
        address: ``"private"`` (default: ``private_hostname`` and ``private_ports``, else the
            public ones, as ``Host.private_url``), ``"public"`` (``hostname``, ``ports``),
            or a function ``(host, scheme) -> (hostname, port)``.
        policy: the balancers' policy.
        retries: how many other hosts a request may try after the first (each at most once).
        retry_after_send: after a failure once the request may have been sent (read error,
            connection dropped, read timeout): ``"idempotent"`` (default: retry GET, HEAD,
            OPTIONS, TRACE, PUT, DELETE), ``"never"`` or ``"always"``. A failure to connect
            (nothing sent) is always retried.
        balancer_options: passed to :meth:`Discovery.balancer` (``wait``, ``eject_base``,
            ``eject_max``, ``scheduler``, ``shard``).

    Raises:
        ValueError: a bad option (before any I/O).
    """

    def __init__(self, discovery: Discovery, *, services: Collection[str] | None = None,
                 suffix: str | None = None, address: Address = "private",
                 policy: str = "round_robin", retries: int = 2,
                 retry_after_send: RetryAfterSend = "idempotent",
                 balancer_options: dict[str, object] | None = None) -> None:
        if services is not None and suffix is not None:
            raise ValueError("give services or suffix, not both")
        if services is not None:
            if isinstance(services, str):
                raise ValueError("services must be a collection of names, not a string")
            services = frozenset(validate_service_name(name) for name in services)
        if suffix is not None and (not isinstance(suffix, str) or not suffix.startswith(".")):
            raise ValueError(f"suffix must be a string starting with '.', got {suffix!r}")
        if address not in ("private", "public") and not callable(address):
            raise ValueError(f"address must be 'private', 'public' or a function, "
                             f"got {address!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        if retry_after_send not in ("idempotent", "never", "always"):
            raise ValueError("retry_after_send must be 'idempotent', 'never' or 'always', "
                             f"got {retry_after_send!r}")
        self.discovery = discovery
        self._services, self._suffix = services, suffix
        self._address = address
        self._policy = policy
        self.retries = retries
        self._retry_after_send = retry_after_send
        self._options = dict(balancer_options or {})
        self._lock = threading.Lock()
        self._balancers: dict[str, Balancer] = {}
        self._targets: dict[tuple[str, str], tuple[Host, Target]] = {}
        self._closed = False
        # a bad policy or option fails now, not on the first request (no watch opened)
        Balancer(reactivex.never(), "-", policy=policy,
                 **{"scheduler": ImmediateScheduler(), **self._options}).close()  # type: ignore[arg-type]

    def service_of(self, scheme: str, hostname: str, port: int | None) -> str | None:
        """The service a URL names, or None when it is not one (the request passes
        through untouched). A URL with an explicit port is never a service."""
        if port is not None or scheme not in _DEFAULT_PORTS:
            return None
        if self._services is not None:
            return hostname if hostname in self._services else None
        if self._suffix is not None:
            if not hostname.endswith(self._suffix):
                return None
            hostname = hostname[:-len(self._suffix)]
        if not hostname or "." in hostname or hostname == "localhost" or ":" in hostname:
            return None
        return hostname

    def existing_balancer(self, service: str) -> Balancer | None:
        """The balancer of ``service`` if a request created it already (no I/O)."""
        return self._balancers.get(service)

    def balancer(self, service: str) -> Balancer:
        """The balancer of ``service``, created on its first request: that subscribes to
        its hosts, which reads them from etcd on this thread (an async caller runs this on a
        worker thread)."""
        balancer = self._balancers.get(service)
        if balancer is not None:
            return balancer
        with self._lock:
            if self._closed:
                raise RuntimeError("this transport is closed")
            balancer = self._balancers.get(service)
            if balancer is None:
                balancer = self._balancers[service] = self.discovery.balancer(
                    service, self._policy, **self._options)  # type: ignore[arg-type]
            return balancer

    def target(self, host: Host, scheme: str) -> Target:
        """Where a request of ``scheme`` to ``host`` goes.

        Raises:
            UnknownScheme: the host has no port for the scheme.
        """
        cached = self._targets.get((host.uuid, scheme))
        if cached is not None and cached[0] is host:
            return cached[1]
        target = self._build_target(host, scheme)
        if len(self._targets) > 4096:  # hosts come and go: keep the cache bounded
            self._targets.clear()
        self._targets[(host.uuid, scheme)] = (host, target)
        return target

    def _build_target(self, host: Host, scheme: str) -> Target:
        if callable(self._address):
            hostname, port = self._address(host, scheme)
        else:
            if self._address == "public":
                hostname, ports = host.hostname, host.ports
            else:
                hostname = host.private_hostname or host.hostname
                ports = host.private_ports or host.ports
            text = ports.get(scheme)
            if text is None:
                raise UnknownScheme(f"host {host.uuid or host.hostname!r} of service "
                                    f"{host.service_name!r} has no {scheme} port")
            port = int(text)
        canonical = _canonical(hostname)
        if canonical is not None:
            hostname = canonical
        authority = f"[{hostname}]" if ":" in hostname else hostname
        url_port: int | None = port
        if port != _DEFAULT_PORTS.get(scheme):
            authority = f"{authority}:{port}"
        else:
            url_port = None
        authorization = None
        if host.user:
            token = base64.b64encode(f"{host.user}:{host.password}".encode()).decode("ascii")
            authorization = f"Basic {token}"
        return Target(hostname, port, authority, authorization, url_port, canonical is not None)

    def may_retry_after_send(self, method: str) -> bool:
        """Whether a failure after the request may have been sent is retried."""
        policy = self._retry_after_send
        return policy == "always" or (policy == "idempotent" and method.upper() in IDEMPOTENT)

    def close(self) -> None:
        """Close every balancer (idempotent)."""
        with self._lock:
            self._closed = True
            balancers, self._balancers = list(self._balancers.values()), {}
        for balancer in balancers:
            balancer.close()


class Attempts:
    """The hosts one request tries: the balancer's pick, then other hosts on a retryable
    failure, each host at most once, at most ``1 + retries`` of them."""

    __slots__ = ("_left", "_tried", "balancer", "host", "scheme", "target")

    def __init__(self, router: Router, balancer: Balancer, scheme: str,
                 started: float | None = None) -> None:
        """``started``: when the request began (``time.monotonic()``); the wait for the
        first host set counts from then (subscribing may have read etcd for a while)."""
        self.balancer = balancer
        self.scheme = scheme
        self._left = router.retries
        self._tried: set[str] = set()
        if started is not None and not balancer.ready and \
                not balancer.wait_ready(max(0.0, started + balancer.wait - time.monotonic())):
            raise NoHostFound(f"no host set of service {balancer.service!r} arrived within "
                              f"{balancer.wait:g} s")
        self.host = balancer.pick()
        self.target = self._target_of(router, self.host)

    def _target_of(self, router: Router, host: Host) -> Target:
        while True:
            try:
                return router.target(host, self.scheme)
            except UnknownScheme:  # not this host's fault: try one that has the port
                self._tried.add(host.uuid)
                other = self.balancer.pick_other(self._tried, timeout=0)
                if other is None:
                    raise
                self.host = host = other

    def failed(self, router: Router, retry: bool) -> bool:
        """The current host failed (it is reported, so ejected): move to another one.
        Returns False when the request must fail (``retry`` is False, no retry left, or
        every host was tried)."""
        self.balancer.report(self.host, ok=False)
        self._tried.add(self.host.uuid)
        if not retry or self._left <= 0:
            return False
        other = self.balancer.pick_other(self._tried, timeout=0)
        if other is None:
            return False
        self._left -= 1
        self.host = other
        try:
            self.target = self._target_of(router, other)
        except UnknownScheme:
            return False
        return True


_PLAIN_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\Z")


def _canonical(hostname: str) -> str | None:
    """``hostname`` as URL parsers store it (an IP literal in its compressed form, a name in
    lowercase ASCII), or None when it is neither (left to the URL parser)."""
    try:
        return str(ipaddress.ip_address(hostname.strip("[]")))
    except ValueError:
        pass
    try:   # what URL parsers make of a name: lowercase, IDNA (xn--) for non-ASCII labels
        name = hostname.lower().encode("idna").decode("ascii")
    except UnicodeError:
        return None
    return name if _PLAIN_NAME.match(name) else None



def attempt_loop(attempts: Attempts, router: Router, aim: Callable[[Target], P],
                 classify: Callable[[BaseException], bool | None]
                 ) -> Generator[P, R | BaseException, tuple[R, Host]]:
    """The retry loop of one request, without I/O, shared by every client adapter (sync or
    async): yields the request to send to each host in turn (``aim(target)``) and is sent
    back what sending it gave, a response or the exception raised. Returns the response and
    the host that gave it (still counted in flight: the caller counts it out when the
    response is done). An exception is re-raised once no retry is left.

    Args:
        classify: for an exception, True when the request may be retried on another host,
            False when the host failed but the request must not be retried, None when the
            host is not at fault (re-raised at once, nothing reported).
    """
    balancer = attempts.balancer
    while True:
        host = attempts.host
        prepared = aim(attempts.target)
        balancer.started(host)
        outcome = yield prepared
        if not isinstance(outcome, BaseException):
            balancer.report(host, ok=True)
            return outcome, host
        balancer.finished(host, ok=None)
        retry = classify(outcome)
        if retry is None or not attempts.failed(router, retry):
            raise outcome


def send_all(loop: Generator[P, R | BaseException, tuple[R, Host]],
             send: Callable[[P], R]) -> tuple[R, Host]:
    """Drive :func:`attempt_loop` with a blocking ``send``."""
    prepared = next(loop)
    while True:
        outcome: R | BaseException
        try:
            outcome = send(prepared)
        except BaseException as error:   # handed to the loop, which re-raises what it must
            outcome = error
        try:
            prepared = loop.send(outcome)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
