"""Connecting to etcd from the command line's options and environment."""

from __future__ import annotations

import argparse
import dataclasses
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rx_discovery._errors import ConfigError, StoreUnavailable
from rx_discovery.cli._loop import _blocking, _Inbox
from rx_discovery.cli._output import _note, _one_line
from rx_discovery.config import Settings, parse_endpoint
from rx_discovery.discovery import Discovery

# What gRPC says when the endpoint speaks HTTP but is not etcd: an HTTP/2 server without
# etcd's services answers UNIMPLEMENTED (often with an HTTP 404); an HTTP/1 server's answer
# is not HTTP/2 at all.
_NOT_ETCD = ("not an etcd", "UNIMPLEMENTED", "parsing HTTP/2", "Expected SETTINGS frame")


def _etcd_configured(args: argparse.Namespace) -> bool:
    """True when the user said where etcd is (``--endpoints``, ``ETCD_HOSTS``, ``ETCD_HOST``)."""
    return bool(args.endpoints or os.environ.get("ETCD_HOSTS") or os.environ.get("ETCD_HOST"))


def _settings(args: argparse.Namespace, endpoint: str | None = None) -> Settings:
    """Settings from the environment, overridden by the options (or by ``endpoint``, an etcd
    this command started).

    Raises:
        ConfigError: a bad setting.
    """
    if endpoint is not None:
        settings = Settings(endpoints=(parse_endpoint(endpoint),),
                            prefix=os.environ.get("ETCD_PREFIX", ""))
    else:
        settings = Settings.from_env()
        if args.endpoints:
            settings = dataclasses.replace(settings, endpoints=tuple(
                parse_endpoint(e, "--endpoints") for e in args.endpoints.split(",") if e.strip()))
    prefix = args.prefix if args.prefix is not None else settings.prefix
    if any(ch.isspace() for ch in prefix):
        raise ConfigError("--prefix must not contain whitespace")
    api = getattr(args, "api", None) or settings.api
    return dataclasses.replace(settings, prefix=prefix, timeout=args.timeout, api=api)


def _not_etcd(error: BaseException) -> bool:
    text = str(error)
    return any(marker in text for marker in _NOT_ETCD)


def _first_read(discovery: Discovery, settings: Settings) -> None:
    """One read, so that a wrong address fails now with one clear line.

    Raises:
        StoreUnavailable: etcd did not answer within the timeout, or the endpoint is not etcd.
    """
    where = ",".join(e.url for e in settings.endpoints)
    try:
        discovery.store.get(discovery.keyspace.services_root)
    except Exception as error:
        if _not_etcd(error):
            # neutral wording: the server may not speak HTTP at all (an SSH port)
            raise StoreUnavailable(f"{where} answers, but this is not an etcd endpoint "
                                   "(no etcd v3 gRPC API there); check the port") from None
        if isinstance(error, StoreUnavailable):
            raise StoreUnavailable(f"cannot reach etcd at {where} ({_one_line(error)}); set "
                                   "--endpoints or ETCD_HOSTS") from None
        raise


@contextmanager
def _connected(settings: Settings, inbox: _Inbox) -> Iterator[Discovery]:
    """A Discovery on ``settings`` whose etcd answered one read, closed when the block ends.

    The read runs in a worker thread, so a stop request ends the wait at once. Closing is
    bounded: a close that etcd keeps waiting (a revoke to an unreachable server) is abandoned
    after ``2 * timeout + 5`` s, with a note, since the process exits next.

    Raises:
        StoreUnavailable: etcd did not answer (one clear message).
        _Interrupted: a stop request arrived first.
    """
    discovery = Discovery(settings=settings)
    try:
        _blocking(inbox, lambda: _first_read(discovery, settings))
        yield discovery
    finally:
        _close_within(discovery, 2 * settings.timeout + 5)


def _close_within(discovery: Discovery, seconds: float) -> None:
    closer = threading.Thread(target=discovery.close, name="rx-discovery-cli-close",
                              daemon=True)
    closer.start()
    closer.join(seconds)
    if closer.is_alive():
        _note(f"rx-discovery: closing the connection to etcd took over {seconds:g}s; "
              "exiting anyway")


def _subscribe_hosts(discovery: Discovery, service: str, inbox: _Inbox) -> Callable[[], None]:
    """Feed ``discovery.hosts(service)`` into ``inbox``; returns the unsubscribe action."""
    subscription = discovery.hosts(service).subscribe(on_next=inbox.put, on_error=inbox.put)
    return subscription.dispose

