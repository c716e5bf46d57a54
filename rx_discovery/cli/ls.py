"""``rx-discovery ls``: services and their hosts, read once (or, with ``--watch``, the live
catalog: the listing again on every change, from one etcd watch)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from rx_discovery._errors import ServiceNotFound
from rx_discovery.catalog import Catalog
from rx_discovery.cli._connect import _connected, _settings
from rx_discovery.cli._loop import _pump
from rx_discovery.cli._options import _add_command, _connection_options, _positive
from rx_discovery.cli._output import _note, _Output
from rx_discovery.cli._render import _HOST_COLUMNS, _host_cells, _masked, _sorted_hosts
from rx_discovery.discovery import Discovery
from rx_discovery.health import Health, HealthState
from rx_discovery.keys import validate_service_name
from rx_discovery.model import Host, Service


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
        listings.append(_Listing(name, document, _sorted_hosts(hosts.values())))
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


def _catalog_listings(catalog: Catalog, service: str | None) -> list[_Listing]:
    return [_Listing(name, entry.service, _sorted_hosts(entry.hosts.values()))
            for name, entry in sorted(catalog.items()) if service in (None, name)]


def _show(out: _Output, as_json: bool, prefix: str, revision: int,
          listings: Sequence[_Listing]) -> None:
    if as_json:
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


def _watch(args: argparse.Namespace, service: str | None, out: _Output) -> int:
    """The listing at once, then again on every change of the catalog (a JSON line each with
    ``--json``; on a terminal, the screen redrawn), until Ctrl-C or ``--duration``; states of
    the connection other than connected go to stderr."""
    until = None if args.duration is None else time.monotonic() + args.duration
    inbox = args.inbox
    with _connected(_settings(args), inbox) as discovery:
        prefix = discovery.keyspace.prefix

        def handle(item: object) -> None:
            if isinstance(item, Health):
                if item.state not in (HealthState.CONNECTING, HealthState.CONNECTED):
                    _note(f"# etcd: {item}")
            elif isinstance(item, Catalog):
                if out.tty and not args.json:
                    out.console.clear()
                _show(out, args.json, prefix, item.revision,
                      _catalog_listings(item, service))

        catalogs = discovery.catalog().subscribe(on_next=inbox.put, on_error=inbox.put)
        health = discovery.health.subscribe(on_next=inbox.put)
        try:
            _pump(inbox, handle, until=until)
        finally:
            health.dispose()
            catalogs.dispose()
    return 0


def run(args: argparse.Namespace) -> int:
    service = validate_service_name(args.service) if args.service else None
    out = _Output()
    if args.watch:
        return _watch(args, service, out)
    with _connected(_settings(args), args.inbox) as discovery:
        revision, listings = _read_listings(discovery, service)
        prefix = discovery.keyspace.prefix
    _show(out, args.json, prefix, revision, listings)
    return 0


def add(commands: Any) -> None:
    parser = _add_command(commands, "ls", run, "list services and hosts",
                          "List the services and their hosts (passwords shown as ***).")
    parser.add_argument("service", nargs="?", metavar="SERVICE", help="only this service")
    parser.add_argument("--json", action="store_true",
                        help="print JSON (with --watch: one line per catalog)")
    parser.add_argument("--watch", action="store_true",
                        help="keep the listing live: print it again on every change (one "
                             "etcd watch for every service), until Ctrl-C")
    parser.add_argument("--duration", type=_positive, metavar="SECONDS",
                        help="with --watch: stop after this many seconds")
    _connection_options(parser, defaults=False)

