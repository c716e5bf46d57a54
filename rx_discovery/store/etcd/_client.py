"""gRPC channels to the endpoints: options (keepalive, reconnect backoff) and failover marks."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import etcd3
import grpc

from rx_discovery._errors import StoreError
from rx_discovery._lifecycle import grpc_channel_made
from rx_discovery.config import Settings

log = logging.getLogger(__name__)

# python3-etcd3's client module (the package's name ``etcd3.client`` is a function)
_etcd3_client = sys.modules["etcd3.client"]

# A login that fails with these is tried on the next endpoint.
_LOGIN_FAILOVER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE,
                                   grpc.StatusCode.DEADLINE_EXCEEDED})

# A failed endpoint is skipped for this long (python3-etcd3's default is 300 s).
_ENDPOINT_RETRY_S = 1.0

# etcd enforces a minimum ping interval of 5 s (--grpc-keepalive-min-time) and does not permit
# pings without an active stream: pinging faster, or when idle, earns a GOAWAY "too_many_pings"
# that kills every stream of the connection. 6 s + a 2 s ping timeout notices a frozen server
# within ~8 s. Unlimited pings without data: a watch never sends data after its creation, and
# gRPC's default (2) would stop pinging an idle watch, so a frozen server would go unnoticed.
_GRPC_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 6000),
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.http2.ping_timeout_ms", 2000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect within half a second of a server coming back (gRPC's default backoff grows to
    # 120 s, and calls fail at once while it waits): watches resume within ~1 s of recovery.
    # A connection attempt to a down server on loopback or a LAN costs next to nothing.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 500),
    # One subchannel per channel: a new store must not inherit another's connection backoff.
    ("grpc.use_local_subchannel_pool", 1),
    # No receive limit (gRPC's default is 4 MiB): a larger answer would fail for ever, and a
    # retry would download it again. Prefix reads come in pages and watch responses in
    # fragments (see _store, _watch), so each message stays bounded anyway.
    ("grpc.max_receive_message_length", -1),
]


def make_endpoints(settings: Settings) -> list[Any]:
    """One ``etcd3.Endpoint`` (owning its gRPC channel) per configured member."""
    grpc_channel_made()
    creds = None
    if settings.tls:
        creds = grpc.ssl_channel_credentials(root_certificates=settings.ca_cert,
                                             private_key=settings.client_key,
                                             certificate_chain=settings.client_cert)
    # etcd3.Endpoint pastes host and port together: an IPv6 host goes in brackets.
    return [etcd3.Endpoint(e.netloc.rpartition(":")[0], e.port, secure=settings.tls, creds=creds,
                           time_retry=_ENDPOINT_RETRY_S, opts=_GRPC_OPTIONS)
            for e in settings.endpoints]


def login(endpoints: list[Any], settings: Settings) -> Any:
    """A ``MultiEndpointEtcd3Client`` on ``endpoints``, logged in when credentials are set.

    python3-etcd3 logs in from its constructor, on an endpoint drawn at random, and does not
    mark it failed when it does not answer: with a member down, every login that drew it
    failed, for as long as the member stayed down. Here the login is made on the client's
    current endpoint and fails over, as calls do, to each other endpoint in turn.

    Raises:
        grpc.RpcError: the login was refused, or no endpoint answered (the last error).
    """
    client = etcd3.MultiEndpointEtcd3Client(endpoints=endpoints, timeout=settings.timeout,
                                            failover=True)
    if settings.user is None or settings.password is None:
        return client
    request = etcd3.etcdrpc.AuthenticateRequest(name=settings.user, password=settings.password)
    for attempt in range(len(endpoints)):
        try:
            token = client.authstub.Authenticate(request, settings.timeout).token
        except grpc.RpcError as error:
            if _auth_not_enabled(error):
                # as etcd's Go client: go on without a token; once auth is enabled, a call
                # refused with "user name is empty" makes the store log in
                log.info("etcd authentication is not enabled: calls are made without a token")
                return client
            if (attempt == len(endpoints) - 1 or not hasattr(error, "code")
                    or error.code() not in _LOGIN_FAILOVER_CODES):
                raise
            # as python3-etcd3 does after a failed call (python3-etcd3==0.13.0 is pinned)
            client.endpoint_in_use.fail()
            client._clear_old_stubs()
            continue
        # what python3-etcd3's constructor sets after its own login
        client.metadata = (("token", token),)
        client.call_credentials = grpc.metadata_call_credentials(
            _etcd3_client.EtcdTokenCallCredentials(token))
        return client
    raise AssertionError("unreachable")


def _auth_not_enabled(error: grpc.RpcError) -> bool:
    try:
        return (error.code() == grpc.StatusCode.FAILED_PRECONDITION
                and "authentication is not enabled" in (error.details() or ""))
    except Exception:  # a non-Call RpcError
        return False


def _revive_if_all_failed(endpoints: list[Any]) -> None:
    """Clear the failed marks when every endpoint has one. The mark exists to make calls
    fail over to another endpoint; with none left, python3-etcd3 would refuse every call
    until a mark expires, delaying recovery by up to that long after etcd is back."""
    if all(endpoint.is_failed() for endpoint in endpoints):
        for endpoint in endpoints:
            endpoint.last_failed = 0


class LoginGate:
    """One login at a time per store, and a failed login remembered for a while.

    A wrong or rotated password fails every call; without this each would log in again
    (bcrypt on the server: ~80 ms of etcd CPU per attempt). Here the first caller logs in while
    the others wait for its outcome; a refusal is remembered and every call until
    :attr:`retry_at` fails at once with it, the wait doubling from 1 s to 60 s while the
    refusals go on (a fixed password then heals within a minute). Transient failures (etcd
    down) are not remembered: they are the connection's business.
    """

    first_delay = 1.0
    max_delay = 60.0

    def __init__(self) -> None:
        self.lock = threading.Lock()  # held while logging in
        self._failure: StoreError | None = None
        self._delay = self.first_delay
        self.retry_at = 0.0  # time.monotonic() of the next attempt allowed after a refusal

    def check(self) -> None:
        """Raise the remembered refusal while its wait lasts (call with :attr:`lock` held).

        Raises:
            StoreError: a copy of the refusal (permanent).
        """
        failure = self._failure
        if failure is not None and time.monotonic() < self.retry_at:
            wait = self.retry_at - time.monotonic()
            raise type(failure)(f"{failure} (login not retried for {wait:.0f} s)")

    def succeeded(self) -> None:
        self._failure, self._delay = None, self.first_delay

    def refused(self, error: StoreError) -> None:
        """Remember a permanent refusal of the login (call with :attr:`lock` held)."""
        self._failure = error
        self.retry_at = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, self.max_delay)


def grpc_proxy_applies(host: str, environ: Mapping[str, str] | None = None) -> bool:
    """True when grpcio reaches ``host`` through an HTTP proxy, by grpc core's rules
    (``http_proxy_mapper``): the first of ``grpc_proxy``, ``https_proxy``, ``http_proxy`` that
    is set names the proxy (empty: none), unless an entry of ``no_grpc_proxy`` (else
    ``no_proxy``) is ``*``, a suffix of ``host`` (case-insensitive), or a CIDR range holding
    it. Only the lowercase names count, as in grpc core."""
    env = os.environ if environ is None else environ
    proxy = next((env[name] for name in ("grpc_proxy", "https_proxy", "http_proxy")
                  if name in env), "")
    if not proxy.strip():
        return False
    exempt = env.get("no_grpc_proxy", env.get("no_proxy", ""))
    lowered = host.lower()
    for entry in (item.strip().lower() for item in exempt.split(",")):
        if not entry:
            continue
        if entry == "*" or lowered.endswith(entry):
            return False
        if "/" in entry:
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(lowered) in ipaddress.ip_network(entry, strict=False):
                    return False
    return True
