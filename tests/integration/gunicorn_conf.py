"""The README's gunicorn recipe, for tests/integration/test_servers_sigterm.py: the master
registers the address once (its workers never use its Discovery) and drains on SIGTERM before
gunicorn's own handler stops accepting. ``BACKEND_PORT``, ``BACKEND_DRAIN`` configure it;
``ETCD_HOST``/``ETCD_PREFIX`` the Discovery."""

from __future__ import annotations

import os
from typing import Any

# Before grpc is imported (rx_discovery imports it): the master keeps gRPC calls in flight
# while gunicorn forks workers, and gRPC's fork handlers then hang fork() for ever (1 start
# in 80 under load: the master never registered). The workers never use gRPC.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from rx_discovery import Discovery, Host
from rx_discovery.lifecycle import drain_on_signal

bind = f"127.0.0.1:{os.environ['BACKEND_PORT']}"
workers = 2
loglevel = "warning"


def when_ready(server: Any) -> None:  # the master: sockets bound, gunicorn's handlers installed
    server.discovery = Discovery.from_env()
    server.discovery.register("web", Host(hostname="127.0.0.1",
                                          ports={"http": os.environ["BACKEND_PORT"]}), ttl=3.0)
    drain_on_signal(server.discovery, drain=float(os.environ["BACKEND_DRAIN"]))
