"""A ``requests`` adapter that sends ``http(s)://<service>/...`` to a live host of the service.

Mount it on a Session for both schemes; every other URL goes through it untouched (it is a
plain ``HTTPAdapter`` for them)::

    session = requests.Session()
    adapter = DiscoveryAdapter(discovery)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.get("http://my-service/v1/items")

The rules are :class:`rx_discovery.http.DiscoveryTransport`'s (which names are services,
which address, basic auth from the host's credentials, which failures are retried on another
host). A failure to connect is ``requests.exceptions.ConnectTimeout`` or a ``ConnectionError``
whose cause is urllib3's ``NewConnectionError`` (refused, unreachable, unknown name); other
``ConnectionError`` s and ``ReadTimeout`` happen after the request may have been sent. A
service with no live host raises ``requests.exceptions.ConnectionError``. Importing this
module does not need httpx (extra ``requests``).
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Collection, Generator, Mapping
from typing import Any

import requests
import requests.adapters
import requests.exceptions
import urllib3.exceptions

from rx_discovery._errors import NoHostFound, UnknownScheme
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

__all__ = ["DiscoveryAdapter"]

_Timeout = float | tuple[float, float] | tuple[float, None] | None
_Cert = bytes | str | tuple[bytes | str, bytes | str] | None

_MAYBE_SENT = (requests.exceptions.ConnectionError, requests.exceptions.ReadTimeout)


class DiscoveryAdapter(requests.adapters.HTTPAdapter):
    """A ``requests`` transport adapter for discovered services (see the module doc).

    Args:
        discovery: where services are found.
        services, suffix, address, policy, retries, retry_after_send, balancer_options: as
            :class:`rx_discovery.http.DiscoveryTransport`.
        adapter_options: passed to ``HTTPAdapter`` (``pool_connections``, ``pool_maxsize``,
            ``max_retries``...).
    """

    def __init__(self, discovery: Discovery, *, services: Collection[str] | None = None,
                 suffix: str | None = None, address: Address = "private",
                 policy: str = "round_robin", retries: int = 2,
                 retry_after_send: RetryAfterSend = "idempotent",
                 balancer_options: dict[str, Any] | None = None,
                 **adapter_options: Any) -> None:
        self.router = Router(discovery, services=services, suffix=suffix, address=address,
                             policy=policy, retries=retries, retry_after_send=retry_after_send,
                             balancer_options=balancer_options)
        super().__init__(**adapter_options)

    def send(self, request: requests.PreparedRequest, stream: bool = False,
             timeout: _Timeout = None, verify: bool | str = True, cert: _Cert = None,
             proxies: Mapping[str, str] | None = None) -> requests.Response:
        url = urllib.parse.urlsplit(request.url or "")
        service = self.router.service_of(url.scheme, url.hostname or "", url.port)
        if service is None:
            return super().send(request, stream, timeout, verify, cert, proxies)
        started = time.monotonic()   # the wait for the hosts counts from here
        balancer = self.router.balancer(service)
        try:
            attempts = Attempts(self.router, balancer, url.scheme, started)
        except (NoHostFound, UnknownScheme) as error:
            raise requests.exceptions.ConnectionError(f"service {service!r}: {error}",
                                                      request=request) from error
        callers_auth = "Authorization" in request.headers

        def aim(target: Target) -> requests.PreparedRequest:
            """A copy of ``request`` for the target (the caller's stays as it is)."""
            prepared = request.copy()
            hostname = f"[{target.hostname}]" if ":" in target.hostname else target.hostname
            prepared.url = urllib.parse.urlunsplit(
                url._replace(netloc=f"{hostname}:{target.port}"))
            prepared.headers["Host"] = target.host_header
            if target.authorization is not None and not callers_auth:
                prepared.headers["Authorization"] = target.authorization
            return prepared

        def classify(error: BaseException) -> bool | None:
            if not isinstance(error, _MAYBE_SENT):
                return None
            return _not_sent(error) or (
                self.router.may_retry_after_send(request.method or "GET")
                and (request.body is None or isinstance(request.body, (bytes, str))))

        def send(prepared: requests.PreparedRequest) -> requests.Response:
            return super(DiscoveryAdapter, self).send(prepared, stream, timeout, verify, cert,
                                                      proxies)

        loop: Generator[requests.PreparedRequest, requests.Response | BaseException,
                        tuple[requests.Response, Host]]
        loop = attempt_loop(attempts, self.router, aim, classify)
        response, host = send_all(loop, send)
        balancer.finished(host, ok=None)   # the body is read (stream=False) or the caller's
        # the caller's request and its service URL: requests joins a relative redirect with
        # response.url (so the redirect is balanced too), and strips Authorization from a
        # redirect to another hostname than response.request's (the host's address would
        # lose the caller's credentials, and expose the host's: the copy sent carries them)
        response.request, response.url = request, request.url or response.url
        return response

    def close(self) -> None:
        self.router.close()
        super().close()


def _not_sent(error: Exception) -> bool:
    """Whether ``error`` is a failure to connect: the request was not sent."""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    cause = error.args[0] if error.args else None
    reason = getattr(cause, "reason", cause)
    return isinstance(reason, urllib3.exceptions.NewConnectionError)
