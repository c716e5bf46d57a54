"""``rx-discovery demo``: hosts of two services come, go and crash, live.

The demo writes only under a keyspace prefix of its own (``<prefix>/rx-discovery-demo-<random>``),
so it never touches real services, even on a shared etcd, and it deletes every key it wrote
before it exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table

from rx_discovery.cli._connect import _connected, _etcd_configured, _settings, _subscribe_hosts
from rx_discovery.cli._demo_traffic import DemoTraffic
from rx_discovery.cli._loop import _blocking, _pump, _Step
from rx_discovery.cli._options import _add_command, _connection_options, _positive
from rx_discovery.cli._output import _note, _Output
from rx_discovery.cli._render import (
    _HOST_COLUMNS,
    _event_line,
    _host_cells,
    _sorted_hosts,
    _Tracker,
)
from rx_discovery.config import Settings
from rx_discovery.discovery import Discovery
from rx_discovery.hostset import HostSet
from rx_discovery.model import Host
from rx_discovery.registration import Registration

_DEMO_SERVICES = ("api", "db")


def _db_host(n: int, password: str) -> Host:
    return Host(hostname="db.demo.example", ports={"postgres": "5432"}, public=True,
                critical=True, user="demo", password=password,
                private_hostname=f"db-{n}.internal", private_ports={"postgres": "5432"})


class _DemoScript:
    """Registers hosts of two services and churns them on a timetable."""

    def __init__(self, discovery: Discovery, say: Callable[[str], None],
                 traffic: DemoTraffic) -> None:
        self._discovery = discovery
        self._traffic = traffic
        self._say = say
        self._password = secrets.token_urlsafe(12)  # never printed
        self.registrations: list[Registration] = []

    def steps(self, start: float, duration: float) -> list[_Step]:
        """The timetable: all up at once, a dispose at 30 %, a crash at 40 %, a newcomer
        at 60 % of ``duration``."""
        return [_Step(start, self.start), _Step(start + 0.3 * duration, self.dispose_one),
                _Step(start + 0.4 * duration, self.crash_one),
                _Step(start + 0.6 * duration, self.add_one)]

    def _register(self, service: str, host: Host, ttl: float = 5.0) -> Registration:
        registration = self._discovery.register(service, host, ttl)
        self.registrations.append(registration)
        return registration

    def start(self) -> None:
        self._say("* registering api x3 (sharded) and db x2 (public, with credentials)")
        for n in (1, 2, 3):
            self._traffic.registered(self._register("api", self._traffic.host(n)))
        self._register("db", _db_host(1, self._password))
        self._register("db", _db_host(2, self._password), ttl=3.0)

    def dispose_one(self) -> None:
        registration = self.registrations[0]
        self._say(f"* disposing api {registration.uuid}: its key is revoked at once")
        registration.dispose()
        self._traffic.retire(registration)

    def crash_one(self) -> None:
        from rx_discovery.testing import crash

        registration = self.registrations[4]
        self._say(f"* crashing db {registration.uuid}: no more keepalives; its lease "
                  f"expires within {registration.ttl:g}s")
        crash(registration)

    def dispose_all(self) -> None:
        for registration in self.registrations:
            registration.dispose()

    def add_one(self) -> None:
        self._say("* a new api host registers")
        self._traffic.registered(self._register("api", self._traffic.host(4)))


class _DemoView:
    """Shows the demo: event lines, plus a live table of hosts on a terminal."""

    def __init__(self, out: _Output, live: Live | None, traffic: DemoTraffic | None = None
                 ) -> None:
        self._out = out
        self._traffic = traffic
        self._live = live
        self._tracker = _Tracker()

    def say(self, text: str) -> None:
        self._out.line(text)

    def handle(self, item: object) -> None:
        if not isinstance(item, HostSet):
            return
        for event in self._tracker.update(item) or []:
            self._out.line(_event_line(item.service, event))
        if self._live is not None:
            self._live.update(self.render())

    def render(self) -> RenderableType:
        table = Table(title="rx-discovery demo (Ctrl-C to stop)", title_justify="left")
        for column in ["service", *_HOST_COLUMNS]:
            table.add_column(column, overflow="fold")
        for service in _DEMO_SERVICES:
            hosts = self._tracker.current.get(service)
            for host in _sorted_hosts((hosts or {}).values()):
                uuid, *cells = _host_cells(host)
                table.add_row(service, uuid[:8] + "…", *cells)
        revision = max((h.revision for h in self._tracker.current.values()), default=0)
        return Group(table, f"revision {revision}", *filter(None, [self._traffic]))

    def summary(self) -> None:
        for service in _DEMO_SERVICES:
            hosts = self._tracker.current.get(service)
            count = len(hosts) if hosts is not None else 0
            self._out.line(f"= {service}: {count} host{'' if count == 1 else 's'} at the end")


def _demo_settings(settings: Settings) -> Settings:
    """The user's settings, in a keyspace prefix no real service uses."""
    prefix = f"{settings.prefix}/rx-discovery-demo-{secrets.token_hex(4)}"
    return dataclasses.replace(settings, prefix=prefix)


def _clean_up(discovery: Discovery) -> None:
    """Delete every key the demo wrote (its registrations are disposed by then; the crashed
    host's key and the service keys are left, by design of what they show)."""
    store = discovery.store
    try:
        for item in store.get_prefix(discovery.keyspace.prefix + "/").items:
            store.delete(item.key)
    except Exception as error:  # etcd went away: say what is left
        _note(f"could not delete the demo's keys under {discovery.keyspace.prefix}/ "
              f"({type(error).__name__}); hosts expire by their ttl, service keys stay")


def _demo_etcd(args: argparse.Namespace, stack: ExitStack) -> str | None:
    """Start an embedded etcd unless one is configured; returns its endpoint (or None)."""
    if _etcd_configured(args):
        return None
    from rx_discovery.embedded import EmbeddedEtcd

    etcd = EmbeddedEtcd(name="demo")
    stack.callback(etcd.close)
    _blocking(args.inbox, etcd.start)
    _note(f"started an embedded etcd at {etcd.endpoint} (set ETCD_HOSTS to use yours)")
    return etcd.endpoint


def run(args: argparse.Namespace) -> int:
    out = _Output()
    inbox = args.inbox
    with ExitStack() as stack:
        endpoint = _demo_etcd(args, stack)
        settings = _demo_settings(_settings(args, endpoint))
        discovery = stack.enter_context(_connected(settings, inbox))
        _note(f"the demo writes under {settings.prefix}/ only, and deletes it at the end")
        stack.callback(_clean_up, discovery)
        live = None
        if out.tty:
            live = stack.enter_context(Live(console=out.console, refresh_per_second=8))
        traffic = DemoTraffic(discovery, out.line, lines=not out.tty)
        view = _DemoView(out, live, traffic if traffic.enabled else None)
        for service in _DEMO_SERVICES:
            stack.callback(_subscribe_hosts(discovery, service, inbox))
        script = _DemoScript(discovery, view.say, traffic)
        stack.callback(script.dispose_all)
        stack.callback(traffic.close)   # first: the client stops before the hosts go
        start = time.monotonic()
        _pump(inbox, view.handle, until=start + args.duration,
              steps=script.steps(start, args.duration) + traffic.steps(
                  start, args.duration, lambda: script.registrations[1]))
        view.summary()
    return 0


def add(commands: Any) -> None:
    parser = _add_command(commands, "demo", run, "watch hosts come and go, live",
                          "Register hosts of two services (api, db), churn them (dispose, "
                          "crash, newcomer) and show them live. Starts an embedded etcd "
                          "unless --endpoints or ETCD_HOSTS says where one is. On an etcd of "
                          "yours it writes only in its own keyspace (PREFIX/rx-discovery-demo-"
                          "<random>), never into real services, and deletes what it wrote "
                          "when it ends.")
    parser.add_argument("--duration", type=_positive, default=20.0, metavar="SECONDS",
                        help="end after this many seconds (default: 20)")
    _connection_options(parser, defaults=False)

