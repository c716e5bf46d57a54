"""How hosts, services and events look on the command line (shared by every command and the
notebook view): ports as ``http=8080``, passwords as ``***``, rows by hostname then uuid."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from rx_discovery.cli._output import _MASK
from rx_discovery.hostset import HostEvent, HostSet
from rx_discovery.model import Host, Service


def _sorted_hosts(hosts: Iterable[Host]) -> list[Host]:
    """Hosts in display order: by hostname, then uuid (uuids are random)."""
    return sorted(hosts, key=lambda host: (host.hostname, host.uuid))


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

