"""``rx-discovery watch``: a service's current hosts, then one line per event, and the state of
the connection to etcd (so that silence never hides an etcd that went away)."""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack
from typing import Any

from rx_discovery.cli._connect import _connected, _settings, _subscribe_hosts
from rx_discovery.cli._loop import _pump
from rx_discovery.cli._options import _add_command, _connection_options, _positive
from rx_discovery.cli._output import _note, _Output
from rx_discovery.cli._render import (
    _event_json,
    _event_line,
    _host_cells,
    _sorted_hosts,
    _Tracker,
)
from rx_discovery.health import Health, HealthState
from rx_discovery.hostset import HostSet
from rx_discovery.keys import validate_service_name


def _health_json(health: Health) -> dict[str, Any]:
    return {"kind": "health", "state": health.state.value, "reason": health.reason,
            "endpoint": health.endpoint}


class _WatchPrinter:
    """Prints the first HostSet of a service as its current hosts, then one line per event."""

    def __init__(self, out: _Output, as_json: bool) -> None:
        self._out = out
        self._json = as_json
        self._tracker = _Tracker()
        self._troubled = False

    def handle(self, item: object) -> None:
        if isinstance(item, Health):
            self._health(item)
            return
        if not isinstance(item, HostSet):
            return
        events = self._tracker.update(item)
        if events is None:
            self._snapshot(item)
            return
        for event in sorted(events, key=lambda e: (e.host.hostname, e.uuid)):
            if self._json:
                self._out.json(_event_json(item.service, event.kind, event.host, event.uuid,
                                           event.revision))
            else:
                self._out.line(_event_line(item.service, event))

    def _health(self, health: Health) -> None:
        """JSON lines: every state. Text: on stderr (it is not data), from the first state
        that is not "connected" on."""
        if self._json:
            self._out.json(_health_json(health))
            return
        if health.state not in (HealthState.CONNECTING, HealthState.CONNECTED):
            self._troubled = True
        if self._troubled:
            _note(f"# etcd: {health}")

    def _snapshot(self, hosts: HostSet) -> None:
        if self._json:
            self._out.json({"kind": "snapshot", "service": hosts.service,
                            "revision": hosts.revision, "hosts": len(hosts)})
            for host in _sorted_hosts(hosts.values()):
                self._out.json(_event_json(hosts.service, "current", host, host.uuid,
                                           hosts.revision))
            return
        count = f"{len(hosts)} host{'' if len(hosts) == 1 else 's'}"
        self._out.line(f"{hosts.service}: {count} at revision {hosts.revision}")
        for host in _sorted_hosts(hosts.values()):
            self._out.line("  " + "  ".join(cell for cell in _host_cells(host) if cell))


def run(args: argparse.Namespace) -> int:
    service = validate_service_name(args.service)
    printer = _WatchPrinter(_Output(), args.json)
    until = None if args.duration is None else time.monotonic() + args.duration
    inbox = args.inbox
    with _connected(_settings(args), inbox) as discovery, ExitStack() as stack:
        stack.callback(_subscribe_hosts(discovery, service, inbox))
        stack.callback(discovery.health.subscribe(on_next=inbox.put).dispose)
        _pump(inbox, printer.handle, until=until)
    return 0


def add(commands: Any) -> None:
    parser = _add_command(commands, "watch", run, "print a service's host events",
                          "Print the current hosts of SERVICE, then one line per host that "
                          "comes up (+), goes down (-) or changes (~), until Ctrl-C; and the "
                          "state of the connection to etcd when it is lost and comes back "
                          "('# etcd: ...' on stderr; with --json, every state as a line of "
                          "kind \"health\").")
    parser.add_argument("service", metavar="SERVICE")
    parser.add_argument("--json", action="store_true",
                        help="JSON lines: kind (snapshot, current, new, down, update, health), "
                             "service, uuid, hostname, ports, revision; health lines: state, "
                             "reason, endpoint")
    parser.add_argument("--duration", type=_positive, metavar="SECONDS",
                        help="stop after this many seconds (default: until Ctrl-C)")
    _connection_options(parser, defaults=False)

