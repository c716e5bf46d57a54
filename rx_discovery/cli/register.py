"""``rx-discovery register``: hold a registration until Ctrl-C or SIGTERM, then revoke it and
say whether the revoke reached etcd."""

from __future__ import annotations

import argparse
import os
import time
from contextlib import ExitStack
from typing import Any

from rx_discovery._errors import ConfigError, RegistrationError
from rx_discovery.cli._connect import _connected, _settings
from rx_discovery.cli._loop import _pump, _Step
from rx_discovery.cli._options import _add_command, _connection_options, _port_pair
from rx_discovery.cli._output import _Output
from rx_discovery.discovery import Discovery
from rx_discovery.keys import Keyspace, validate_service_name
from rx_discovery.model import Host
from rx_discovery.registration import (
    Registration,
    RegistrationStatus,
    checked_host,
    validate_ttl,
)

# etcd grants a lease at least this long, whatever is asked (its minimum TTL).
_ETCD_MIN_TTL = 2.0


def _ttl(text: str) -> float:
    """A lease TTL in seconds, refused below what etcd grants (an argparse type)."""
    try:
        ttl = validate_ttl(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if ttl < _ETCD_MIN_TTL:
        raise argparse.ArgumentTypeError(f"{ttl:g} is below etcd's minimum lease TTL "
                                         f"({_ETCD_MIN_TTL:g}s, which etcd would grant instead)")
    return ttl


def _host_from_args(args: argparse.Namespace) -> Host:
    """The Host the ``register`` options describe.

    Raises:
        ConfigError: ``--password-env`` names an unset variable, or comes without ``--user``.
        ValueError: a bad field (from :class:`Host`).
    """
    password = ""
    if args.password_env:
        if not args.user:
            raise ConfigError("--password-env needs --user")
        password = os.environ.get(args.password_env, "")
        if not password:
            # the value is not echoed: it may be the password itself, typed by mistake
            raise ConfigError("--password-env: the environment variable it names is not set "
                              "or empty (give the variable's name, never the password)")
    return Host(hostname=args.hostname, ports=dict(args.port),
                private_ports=dict(args.private_port or []), public=args.public,
                critical=args.critical, user=args.user or "", password=password,
                private_hostname=args.private_hostname or "", shard=args.shard or "")


class _RegisterPrinter:
    """Prints a registration's status changes."""

    def __init__(self, out: _Output) -> None:
        self._out = out
        self.registered = False

    def handle(self, item: object) -> None:
        if isinstance(item, RegistrationStatus):
            self.registered = self.registered or item is RegistrationStatus.REGISTERED
            if item is not RegistrationStatus.DISPOSED:
                self._out.line(f"status: {item.value}")


def run(args: argparse.Namespace) -> int:
    service = validate_service_name(args.service)
    ttl: float = args.ttl
    host = _host_from_args(args)
    # what register() refuses is refused before connecting (a bad HOSTNAME, a size limit)
    settings = _settings(args)
    checked_host(Keyspace.of(settings), service, host)
    out = _Output()
    printer = _RegisterPrinter(out)
    inbox = args.inbox
    first_deadline = max(2 * args.timeout, ttl)
    with _connected(settings, inbox) as discovery, ExitStack() as stack:
        registration = discovery.register(service, host, ttl)
        stack.callback(lambda: _dispose_registration(discovery, registration, out))
        out.line(f"registering {service}: uuid {registration.uuid} key {registration.key} "
                 f"ttl {ttl:g}s")
        stack.callback(registration.status.subscribe(on_next=inbox.put).dispose)

        def check_registered() -> None:
            if not printer.registered:
                raise RegistrationError(f"{service!r} not registered after "
                                        f"{first_deadline:g}s; is etcd reachable?")

        _pump(inbox, printer.handle,
              steps=[_Step(time.monotonic() + first_deadline, check_registered)])
    return 0


def _dispose_registration(discovery: Discovery, registration: Registration,
                          out: _Output) -> None:
    """Dispose, then read the key back to say what happened: revoked, or left to expire."""
    registration.dispose()
    try:
        left = discovery.store.get(registration.key)
    except Exception as error:  # etcd is unreachable: the revoke could not have reached it
        out.line(f"disposed: {registration.key} not revoked (etcd unreachable: "
                 f"{type(error).__name__}); it expires within {registration.ttl:g}s")
        return
    if left is None:
        out.line(f"disposed: {registration.key} revoked")
    else:
        out.line(f"disposed: {registration.key} not revoked; it expires within "
                 f"{registration.ttl:g}s")


def add(commands: Any) -> None:
    parser = _add_command(commands, "register", run, "hold a registration",
                          "Register a host of SERVICE and keep it registered until Ctrl-C "
                          "or SIGTERM, which revoke it (its key vanishes at once).")
    parser.add_argument("service", metavar="SERVICE")
    parser.add_argument("--hostname", required=True, help="the host's (public) hostname")
    parser.add_argument("--port", type=_port_pair, action="append", required=True,
                        metavar="NAME=PORT", help="a port, e.g. http=80 (repeatable)")
    parser.add_argument("--private-hostname", help="hostname on the private network")
    parser.add_argument("--private-port", type=_port_pair, action="append",
                        metavar="NAME=PORT", help="a private port (repeatable)")
    parser.add_argument("--ttl", type=_ttl, default=5.0,
                        help=f"lease TTL in seconds (default 5; at least {_ETCD_MIN_TTL:g}, "
                             "etcd's minimum)")
    parser.add_argument("--public", action="store_true", help="a public service")
    parser.add_argument("--critical", action="store_true", help="a critical service")
    parser.add_argument("--user", help="user of the service's credentials")
    parser.add_argument("--password-env", metavar="VAR",
                        help="environment variable holding the password (never an argument)")
    parser.add_argument("--shard", help="the host's shard")
    _connection_options(parser, defaults=False)

