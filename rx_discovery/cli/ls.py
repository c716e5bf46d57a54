"""``rx-discovery ls``: services and their hosts, read once."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from rx_discovery._errors import ServiceNotFound
from rx_discovery.cli._connect import _connected, _settings
from rx_discovery.cli._options import _add_command, _connection_options
from rx_discovery.cli._output import _Output
from rx_discovery.cli._render import _HOST_COLUMNS, _host_cells, _masked, _sorted_hosts
from rx_discovery.discovery import Discovery
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


def run(args: argparse.Namespace) -> int:
    service = validate_service_name(args.service) if args.service else None
    out = _Output()
    with _connected(_settings(args), args.inbox) as discovery:
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


def add(commands: Any) -> None:
    parser = _add_command(commands, "ls", run, "list services and hosts",
                          "List the services and their hosts (passwords shown as ***).")
    parser.add_argument("service", nargs="?", metavar="SERVICE", help="only this service")
    parser.add_argument("--json", action="store_true", help="print JSON")
    _connection_options(parser, defaults=False)

