"""HostSet: the immutable set of hosts of a service at one etcd revision."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from immutables import Map

from rx_discovery._errors import NoHostFound, NoHostFoundOnShard
from rx_discovery.model import Host, pick

__all__ = ["HostSet", "hosts_html"]


class HostSet(Mapping[str, Host]):
    """An immutable mapping ``uuid -> Host`` of one service, as of etcd ``revision``.

    Hosts iterate in no particular order (``sorted(host_set)`` gives etcd's key order; the
    reprs and tables are sorted); :meth:`first` is always the host with the smallest uuid (key
    order, as the Go package's ``First``). Empty sets are real values: an empty ``HostSet``
    means "no host registered", not "no data yet".

    Successive sets of a stream share their structure (a persistent map), so keeping many of
    them is cheap and each change costs O(log n).
    """

    __slots__ = ("_hosts", "revision", "service")

    def __init__(self, service: str, hosts: Mapping[str, Host] | Iterable[Host] = (),
                 revision: int = 0) -> None:
        self.service = service
        self.revision = revision
        if isinstance(hosts, Mapping):
            self._hosts: Map[str, Host] = Map(hosts)
        else:
            self._hosts = Map((host.uuid, host) for host in hosts)

    @classmethod
    def _wrap(cls, service: str, hosts: Map[str, Host], revision: int) -> HostSet:
        """A set over ``hosts`` without copying it."""
        self = cls.__new__(cls)
        self.service, self.revision = service, revision
        self._hosts = hosts
        return self

    def __getitem__(self, uuid: str) -> Host:
        return self._hosts[uuid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._hosts)

    def __len__(self) -> int:
        return len(self._hosts)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HostSet):
            return self.service == other.service and self._hosts == other._hosts
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def first(self) -> Host:
        """The host with the smallest uuid (the first key, as etcd lists them).

        Raises:
            NoHostFound: the set is empty.
        """
        if not self._hosts:
            raise NoHostFound(f"no host registered for service {self.service!r}")
        return self._hosts[min(self._hosts)]

    def one(self) -> Host:
        """A host picked at random (spreads load across hosts).

        Raises:
            NoHostFound: the set is empty.
        """
        if not self._hosts:
            raise NoHostFound(f"no host registered for service {self.service!r}")
        return pick(list(self._hosts.values()))

    def url(self, scheme: str | None = None, path: str = "") -> str:
        """The public URL of a random host (see :meth:`Host.url`), as the Go package's
        ``Get(name).URL`` gives for a non-public service; ``one().private_url(...)`` gives a
        private one.

        Raises:
            NoHostFound: the set is empty.
            UnknownScheme: the host has no port for ``scheme``.
        """
        return self.one().url(scheme, path)

    def on_shard(self, shard: str) -> HostSet:
        """The hosts of one shard (a new set; may be empty)."""
        return HostSet._wrap(self.service, Map(
            (uuid, host) for uuid, host in self._hosts.items() if host.shard == shard),
            self.revision)

    def require_shard(self, shard: str) -> HostSet:
        """Like :meth:`on_shard`, but an empty result is an error.

        Raises:
            NoHostFound: no host at all; NoHostFoundOnShard: none on that shard.
        """
        if not self._hosts:
            raise NoHostFound(f"no host registered for service {self.service!r}")
        subset = self.on_shard(shard)
        if not subset:
            raise NoHostFoundOnShard(f"no host of service {self.service!r} on shard {shard!r}")
        return subset

    def __repr__(self) -> str:
        names = ", ".join(f"{h.hostname}" + (f"[{h.shard}]" if h.shard else "")
                          for h in self._sorted())
        return f"HostSet({self.service!r}, revision={self.revision}, {len(self)} hosts: [{names}])"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        if cycle:
            printer.text("HostSet(...)")
            return
        printer.text(f"HostSet {self.service!r} at revision {self.revision}: {len(self)} hosts")
        for host in self._sorted():
            printer.break_()
            printer.text(f"  {_line(host)}")

    def _repr_html_(self) -> str:
        caption = (f"HostSet <b>{escape_html(self.service)}</b> at revision {self.revision}: "
                   f"{len(self)} host{'s' if len(self) != 1 else ''}")
        return hosts_html(self._sorted(), caption)

    def _sorted(self) -> list[Host]:
        """The hosts in uuid (etcd key) order, for display."""
        return [self._hosts[uuid] for uuid in sorted(self._hosts)]


def _ports(ports: Mapping[str, str]) -> str:
    return " ".join(f"{name}:{port}" for name, port in ports.items())


def _line(host: Host) -> str:
    flags = [flag for flag, on in (("public", host.public), ("critical", host.critical)) if on]
    parts = [host.uuid or "-", host.hostname, _ports(host.ports)]
    if host.private_hostname and host.private_hostname != host.hostname:
        parts.append(f"private={host.private_hostname} {_ports(host.private_ports)}")
    if host.shard:
        parts.append(f"shard={host.shard}")
    if host.user:
        parts.append(f"user={host.user} password=***")
    parts.extend(flags)
    return "  ".join(parts)


_COLUMNS = ("uuid", "hostname", "ports", "private", "shard", "user", "flags")


def escape_html(text: str) -> str:
    """:func:`html.escape`, imported on first use: the ``html`` package loads its entity table
    (~0.5 MB) into every process, and only notebooks render HTML."""
    import html

    return html.escape(text)


def hosts_html(hosts: Iterable[Host], caption: str = "") -> str:
    """An HTML table of hosts, every value escaped, passwords never shown."""
    rows = []
    for host in hosts:
        private = host.private_hostname
        if host.private_ports:
            private += " " + _ports(host.private_ports)
        flags = " ".join(f for f, on in (("public", host.public), ("critical", host.critical))
                         if on)
        user = f"{host.user} / ***" if host.user else ""
        cells = (host.uuid, host.hostname, _ports(host.ports), private, host.shard, user, flags)
        rows.append("<tr>" + "".join(f"<td>{escape_html(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{c}</th>" for c in _COLUMNS)
    cap = f"<caption>{caption}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


class HostEvent:
    """One host coming up, going down or changing (see :meth:`Discovery.events`).

    Attributes:
        kind: ``"new"``, ``"down"`` or ``"update"``.
        uuid: the host's uuid.
        host: the host (for ``"down"``, its last known value).
        revision: the etcd revision of the change.
        resync: the event was inferred by re-reading after a compaction.
    """

    __slots__ = ("host", "kind", "resync", "revision", "uuid")

    def __init__(self, kind: str, uuid: str, host: Host, revision: int,
                 resync: bool = False) -> None:
        self.kind, self.uuid, self.host = kind, uuid, host
        self.revision, self.resync = revision, resync

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HostEvent) and (
            (self.kind, self.uuid, self.host, self.revision)
            == (other.kind, other.uuid, other.host, other.revision))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"HostEvent({self.kind!r}, {self.uuid!r}, {self.host.hostname!r}, "
                f"revision={self.revision})")
