"""HTTP to etcd's v2 keys API (``/v2/keys``): endpoints, failover, TLS, basic auth, errors.

Built on httpx (the project's HTTP library): a synchronous client for calls and an asynchronous
one for watch long polls, which must be cancellable at once. Every failure becomes one of the
library's :class:`~rx_discovery.StoreError` family here, and feeds the store's
:class:`~rx_discovery.health.HealthTracker`. Messages carry the operation, the HTTP status and
etcd's error code and message, never a header (the basic auth header holds the password).
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from rx_discovery._errors import (
    AuthenticationFailed,
    PermissionDenied,
    RequestTooLarge,
    RevisionCompacted,
    StoreError,
    StoreUnavailable,
)
from rx_discovery.config import Endpoint, Settings, load_cert_chain
from rx_discovery.health import HealthTracker

__all__ = ["KEY_NOT_FOUND", "Answer", "TlsRefused", "V2Disabled", "V2Http", "keys_path",
           "tls_failure"]

log = logging.getLogger(__name__)

KEY_NOT_FOUND = 100
"""etcd v2 error code: the key does not exist."""
_EVENT_INDEX_CLEARED = 401
_MAX_DETAILS = 200
POLLS_PER_CLIENT = 32
"""Watches whose long polls share one ``httpx.AsyncClient``. httpcore's pool scans all its
connections, a socket poll each, whenever a request starts or ends: 150 polls on one client
stalled the watch loop for up to 1.8 s and polls failed with ConnectTimeout (2 runs in 30,
``tests/integration/test_v2.py::test_closing_a_store_with_many_busy_watches_ends_every_poll``).
Small pools keep each scan short; they share one TLS context."""
_CLEARED_RANGE = re.compile(r"\[(\d+)/(\d+)\]")  # "the requested history has been cleared [S/N]"


class TlsRefused(StoreError):
    """The TLS handshake failed (a certificate not trusted, either way, or TLS against plain
    text): a configuration error that retrying will not fix."""

    permanent = True


class V2Disabled(StoreError):
    """The endpoint answers HTTP but not etcd's v2 API (not enabled, or etcd 3.6+)."""

    permanent = True


def tls_failure(error: BaseException, operation: str) -> TlsRefused | None:
    """A :class:`TlsRefused` when ``error`` was caused by a TLS failure, else None."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            reason = getattr(cause, "reason", None) or type(cause).__name__
            return TlsRefused(f"{operation}: TLS handshake failed ({reason}): check the CA and "
                              "certificates, and http:// vs https://")
        cause = cause.__cause__ or cause.__context__
    return None


def keys_path(key: str) -> str:
    """The URL path of ``key`` under ``/v2/keys`` (percent-encoded; "" is the root)."""
    return "/v2/keys" + urllib.parse.quote(key if key.startswith("/") else "/" + key, safe="/")


@dataclass(frozen=True, slots=True)
class Answer:
    """A decoded answer of etcd: its JSON body and ``X-Etcd-Index`` (the store's index when
    it answered; 0 when absent)."""

    status: int
    body: dict[str, Any]
    index: int

    @property
    def error_code(self) -> int:
        code = self.body.get("errorCode", 0)
        return code if isinstance(code, int) else 0


def decode(response: httpx.Response) -> Answer:
    """The :class:`Answer` of ``response``.

    Raises:
        StoreUnavailable: the body is not etcd's JSON (a proxy's error page, a cut answer).
    """
    try:
        body = response.json()
    except ValueError:
        if response.status_code == 404:  # Go's "404 page not found": no /v2 handler at all
            raise V2Disabled("this etcd does not serve the v2 API: start etcd 3.5 with "
                             "--enable-v2=true (etcd 3.6 has no v2 API)") from None
        raise StoreUnavailable(f"HTTP {response.status_code}: not an etcd v2 answer") from None
    if not isinstance(body, dict):
        raise StoreUnavailable(f"HTTP {response.status_code}: not an etcd v2 answer")
    header = response.headers.get("X-Etcd-Index", "")
    index = int(header) if header.isdigit() else 0
    if not index and isinstance(body.get("index"), int):
        index = body["index"]
    return Answer(response.status_code, body, index)


def error_of(answer: Answer, operation: str) -> StoreError:
    """The library error for an etcd error answer (HTTP status >= 400)."""
    code, status = answer.error_code, answer.status
    message = str(answer.body.get("message", ""))[:_MAX_DETAILS]
    text = f"{operation}: HTTP {status}" + (f" etcd error {code} {message}" if code else "")
    if status == 401:
        return AuthenticationFailed(text)
    if status == 403 and not code:  # etcd's own 403s are "Not a file", "Directory not
        return PermissionDenied(text)  # empty" (v2 auth refuses with 401): not permissions
    if status == 413:
        return RequestTooLarge(text)
    if code == _EVENT_INDEX_CLEARED:
        cleared = _CLEARED_RANGE.search(str(answer.body.get("cause", "")))
        return RevisionCompacted(int(cleared.group(1)) if cleared else answer.index)
    if status >= 500 or code in (300, 301):  # raft internal error, leader elect: retried
        return StoreUnavailable(text)
    return StoreError(text)


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS from the same material as the v3 store: the CA (else the system's trust store),
    the client certificate and key from memory. Without TLS the URLs are ``http://`` and the
    context is never used, but built once: httpx would build one per client."""
    if not settings.tls:
        return ssl.create_default_context()
    ca = settings.ca_cert.decode("ascii") if settings.ca_cert is not None else None
    context = ssl.create_default_context(cadata=ca)
    if settings.client_cert is not None and settings.client_key is not None:
        load_cert_chain(context, settings.client_cert, settings.client_key)
    return context


class V2Http:
    """The HTTP side of :class:`~rx_discovery.store.v2.EtcdV2Store`.

    Calls go to the current endpoint; a connection failure or timeout moves to the next one
    and tries again within the same call, until every endpoint failed once.

    Args:
        settings: endpoints, TLS material, credentials and the per-call timeout.
        health: told the outcome of every call.
    """

    def __init__(self, settings: Settings, health: HealthTracker) -> None:
        self._settings = settings
        self.health = health
        self._lock = threading.Lock()
        self._current = 0
        self._sync: httpx.Client | None = None
        self._polls: dict[httpx.AsyncClient, int] = {}  # poll client -> its watches
        self._tls: ssl.SSLContext | None = None
        self.closed = False
        if settings.user is not None and not settings.tls:
            # allowed, as the Go package allows it (v3 refuses it: gRPC would not send it)
            log.warning("etcd v2 basic auth over plain HTTP: the password crosses the network "
                        "readable; use https:// endpoints")

    @property
    def timeout(self) -> float:
        return self._settings.timeout

    def endpoint(self) -> Endpoint:
        """The endpoint calls go to now."""
        endpoints = self._settings.endpoints
        return endpoints[self._current % len(endpoints)]

    def failed(self, endpoint: Endpoint) -> None:
        """``endpoint`` did not answer: the next calls go to the next one."""
        endpoints = self._settings.endpoints
        with self._lock:
            if endpoints[self._current % len(endpoints)] == endpoint:
                self._current = (self._current + 1) % len(endpoints)

    def base_url(self, endpoint: Endpoint) -> str:
        """``http(s)://host:port`` of ``endpoint``: https whenever TLS material is set, as
        the v3 store uses TLS then, whatever the scheme written."""
        return f"{'https' if self._settings.tls else 'http'}://{endpoint.netloc}"

    def _options(self) -> dict[str, Any]:
        """Client options: TLS (built once; bad PEM material is a permanent error)."""
        if self._tls is None:
            try:
                self._tls = _ssl_context(self._settings)
            except (ssl.SSLError, OSError, ValueError) as exc:
                error = TlsRefused(f"TLS setup failed: the CA or client certificate/key is "
                                   f"not usable PEM ({type(exc).__name__})")
                self.health.denied(str(error))
                raise error from None
        auth = None
        if self._settings.user is not None and self._settings.password is not None:
            auth = httpx.BasicAuth(self._settings.user, self._settings.password)
        return {"verify": self._tls, "auth": auth, "timeout": self._settings.timeout}

    def client(self) -> httpx.Client:
        options = self._options()  # outside the lock: a failure is reported on health
        with self._lock:
            if self.closed:
                raise StoreUnavailable("the store is closed")
            if self._sync is None:
                self._sync = httpx.Client(**options)
            return self._sync

    def lease_poll_client(self) -> httpx.AsyncClient:
        """The client of one watch's long polls and probes, shared with fewer than
        :data:`POLLS_PER_CLIENT` other watches; hand it back with :meth:`release_poll_client`.
        Called on the store's event-loop thread only.

        Raises:
            StoreUnavailable: the store is closed.
            TlsRefused: the TLS material is not usable.
        """
        options = self._options()
        with self._lock:
            if self.closed:
                raise StoreUnavailable("the store is closed")
            client = next((c for c, n in self._polls.items() if n < POLLS_PER_CLIENT), None)
            if client is None:
                # each watch holds a connection for its long poll: httpx's default of 100
                # connections would starve the 101st watch's probe
                client = httpx.AsyncClient(**options,
                                           limits=httpx.Limits(max_connections=None))
            self._polls[client] = self._polls.get(client, 0) + 1
            return client

    def release_poll_client(self, client: httpx.AsyncClient) -> bool:
        """A watch no longer uses ``client``. True when no watch does: the caller closes it
        (on the event loop); after :meth:`close`, whoever called that closes it."""
        with self._lock:
            watches = self._polls.get(client)
            if watches is None:
                return False
            if watches > 1:
                self._polls[client] = watches - 1
                return False
            del self._polls[client]
            return True

    def poll_clients(self) -> list[httpx.AsyncClient]:
        """The clients of the open watches' polls."""
        with self._lock:
            return list(self._polls)

    def call(self, operation: str, method: str, key: str,
             params: Mapping[str, str] | None = None, form: Mapping[str, str] | None = None,
             missing_ok: bool = False) -> Answer:
        """One request on ``/v2/keys{key}``, failing over between endpoints.

        Returns:
            etcd's answer; an answer with ``KEY_NOT_FOUND`` only when ``missing_ok``.

        Raises:
            StoreUnavailable: no endpoint answered within the timeout.
            AuthenticationFailed, PermissionDenied, RequestTooLarge, StoreError: refused.
        """
        client = self.client()
        path = keys_path(key)
        last = ""
        for _ in self._settings.endpoints:
            endpoint = self.endpoint()
            try:
                response = client.request(method, self.base_url(endpoint) + path,
                                          params=params, data=form)
                answer = decode(response)
            except httpx.HTTPError as exc:
                refused = tls_failure(exc, operation)
                if refused is not None:
                    self.health.denied(str(refused), endpoint.url)
                    raise refused from None
                last = f"{type(exc).__name__}"
                self.failed(endpoint)
                self.health.failed(f"{operation}: {last}", endpoint.url)
                continue
            except V2Disabled as exc:
                self.health.denied(str(exc), endpoint.url)
                raise
            except StoreUnavailable as exc:
                last = str(exc)
                self.failed(endpoint)
                continue
            if answer.status < 400 or (missing_ok and answer.error_code == KEY_NOT_FOUND):
                self.health.connected(endpoint.url)
                return answer
            error = error_of(answer, operation)
            if error.permanent:
                self.health.denied(str(error), endpoint.url)
                raise error
            if isinstance(error, StoreUnavailable):
                last = str(error)
                self.failed(endpoint)
                self.health.failed(last, endpoint.url)
                continue
            self.health.connected(endpoint.url)
            raise error
        if self.closed:
            raise StoreUnavailable(f"{operation}: the store is closed")
        raise StoreUnavailable(f"{operation}: no etcd endpoint answered (last: {last})")

    def close(self) -> list[httpx.AsyncClient]:
        """Close the synchronous client; returns the poll clients, which the caller closes
        on its event loop."""
        with self._lock:
            self.closed = True
            sync, self._sync = self._sync, None
            polls, self._polls = list(self._polls), {}
        if sync is not None:
            sync.close()
        return polls
