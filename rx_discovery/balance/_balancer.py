"""Balancer: picks a live host of one service, from the latest host set, without I/O."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Collection
from types import TracebackType

import reactivex
from reactivex import abc

from rx_discovery import _lifecycle, metrics
from rx_discovery._errors import NoHostFound, NoHostFoundOnShard
from rx_discovery.balance._ejection import Ejections
from rx_discovery.balance._pickers import make_picker
from rx_discovery.hostset import HostSet
from rx_discovery.model import Host

__all__ = ["Balancer", "Call"]


class Balancer:
    """Picks hosts of one service, following its live host set, with passive health.

    It subscribes to the service's ``hosts()`` stream once and keeps the latest set, so a pick
    does no I/O: about a microsecond or less (see the README's benchmark). Picks are
    thread-safe. A host reported failed (:meth:`report`, or an exception in :meth:`call`) is
    ejected: left out of picks for ``eject_base`` seconds, doubling with each ejection in a
    row up to ``eject_max`` (failures reported while it is ejected, such as the other calls
    in flight when it went down, do not count), then it comes back by itself; a success
    forgets its streak. A host whose key goes is dropped at once. Every host is never
    ejected: when all are, picks are made among all of them (a failing host is better than
    none).

    Create it with :meth:`Discovery.balancer <rx_discovery.Discovery.balancer>`.

    Args:
        hosts: the service's ``hosts()`` stream.
        service: the service name (for messages).
        policy: ``"round_robin"``, ``"random"`` or ``"least_requests"`` (power of two
            choices on the calls in flight, counted by :meth:`call`).
        shard: pick only hosts of this shard.
        scheduler: measures ejection times (a ``TestScheduler`` in tests).
        wait: how long :meth:`pick` waits for the first host set, in seconds (0: not at all).
        eject_base, eject_max: the first ejection and the cap of its doubling, in seconds.

    Raises:
        ValueError: an unknown policy, a bad shard, wait or ejection time (before any I/O).
    """

    def __init__(self, hosts: reactivex.Observable[HostSet], service: str, *,
                 policy: str = "round_robin", shard: str | None = None,
                 scheduler: abc.SchedulerBase, wait: float = 5.0, eject_base: float = 1.0,
                 eject_max: float = 60.0) -> None:
        if shard is not None and (not isinstance(shard, str) or not shard):
            raise ValueError("shard must be a non-empty string or None")
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0:
            raise ValueError(f"wait must be a number of seconds >= 0, got {wait!r}")
        self.service, self.policy, self.shard = service, policy, shard
        self._in_flight: dict[str, int] = {}
        self._choose = metrics.counting_picks(service, make_picker(policy, self._in_flight))
        self.wait = float(wait)
        self._lock = threading.Lock()
        # made before a fork, it is frozen in the child (and its lock may be held there)
        self._fork_generation = _lifecycle.fork_generation()
        self._hosts: HostSet | None = None
        self._service_has_hosts = False   # on any shard: which error a pick raises
        self._candidates: tuple[Host, ...] = ()   # what picks choose from; swapped whole
        self._ready = threading.Event()
        self._closed = False
        self._ejections = Ejections(scheduler, eject_base, eject_max, self._refresh)
        self._subscription = _follow(self, hosts)
        # a balancer dropped without close() releases the service's watch when collected
        # (not at interpreter exit: the Discovery's own shutdown handles its watches then)
        weakref.finalize(self, self._subscription.dispose).atexit = False

    # --- state --------------------------------------------------------------------------

    @property
    def hosts(self) -> HostSet | None:
        """The latest host set (of the shard, when given); None before the first one."""
        return self._hosts

    @property
    def ejected(self) -> frozenset[str]:
        """The uuids of the hosts ejected now."""
        return self._ejections.ejected

    @property
    def in_flight(self) -> dict[str, int]:
        """uuid -> calls in flight through :meth:`call` (a copy)."""
        with self._lock:
            return {uuid: n for uuid, n in self._in_flight.items() if n}

    @property
    def ready(self) -> bool:
        """Whether the first host set has arrived (non-blocking)."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the first host set arrives; returns whether it did in ``timeout``."""
        return self._ready.wait(timeout)

    # --- picking ------------------------------------------------------------------------

    def pick(self, timeout: float | None = None) -> Host:
        """A host to call: live, not ejected (unless every host is), by the policy.

        Before the first host set arrives it waits for it, up to ``timeout`` seconds (default:
        the balancer's ``wait``).

        Raises:
            NoHostFound: no host is registered (or none arrived in time);
                NoHostFoundOnShard: none on the balancer's shard.
            RuntimeError: the balancer is closed.
            UsedAfterFork: the balancer was made before this process forked.
        """
        if self._fork_generation != _lifecycle._generation:  # a global read: picks are hot
            _lifecycle.check_fork(self._fork_generation, "this Balancer")
        candidates = self._candidates
        if candidates:
            return self._choose(candidates)
        return self._choose(self._require_candidates(timeout))

    def pick_other(self, tried: Collection[str], timeout: float | None = None) -> Host | None:
        """A host whose uuid is not in ``tried`` (for a retry), or None when every host was
        tried. Prefers hosts that are not ejected.

        Raises:
            the errors of :meth:`pick`.
        """
        _lifecycle.check_fork(self._fork_generation, "this Balancer")
        candidates = self._candidates or self._require_candidates(timeout)
        pool = [host for host in candidates if host.uuid not in tried]
        if not pool:
            hosts = self._hosts
            pool = [host for host in (hosts.values() if hosts else ()) if host.uuid not in tried]
        return self._choose(pool) if pool else None

    def _require_candidates(self, timeout: float | None) -> tuple[Host, ...]:
        if self._closed:
            raise RuntimeError(f"the balancer of {self.service!r} is closed")
        if not self._ready.wait(self.wait if timeout is None else timeout):
            raise NoHostFound(f"no host set of service {self.service!r} arrived within "
                              f"{self.wait if timeout is None else timeout:g} s")
        candidates = self._candidates
        if candidates:
            return candidates
        if self._closed:
            raise RuntimeError(f"the balancer of {self.service!r} is closed")
        if self.shard is not None and self._service_has_hosts:
            raise NoHostFoundOnShard(f"no host of service {self.service!r} on shard "
                                     f"{self.shard!r}")
        raise NoHostFound(f"no host registered for service {self.service!r}")

    # --- passive health -----------------------------------------------------------------

    def report(self, host: Host, ok: bool = True) -> None:
        """Tell the outcome of a call to ``host``: a failure (could not connect, no answer)
        ejects it; a success forgets its failures."""
        if ok:
            self._ejections.succeed(host.uuid)
            return
        hosts = self._hosts
        if hosts is not None and host.uuid in hosts and self._ejections.fail(host.uuid):
            metrics.host_ejected(self.service, host)
            self._refresh()

    def call(self) -> Call:
        """A context manager around one call: picks a host (``with b.call() as host:``),
        counts it in flight (for ``least_requests``), and reports a failure if the block
        raises an ``Exception``, a success otherwise (a cancellation or ``KeyboardInterrupt``
        reports nothing). Raises what :meth:`pick` raises."""
        return Call(self)

    def started(self, host: Host) -> None:
        """Count a call to ``host`` in flight (what :meth:`call` does on entry)."""
        with self._lock:
            self._in_flight[host.uuid] = self._in_flight.get(host.uuid, 0) + 1

    def finished(self, host: Host, ok: bool | None = True) -> None:
        """A call to ``host`` ended: count it out, and :meth:`report` ``ok`` unless None."""
        with self._lock:
            count = self._in_flight.get(host.uuid)
            if count is not None:
                self._in_flight[host.uuid] = max(0, count - 1)
        if ok is not None:
            self.report(host, ok)

    # --- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop following the service (disposes the subscription; idempotent). A balancer
        dropped without it releases its subscription when it is garbage-collected."""
        with self._lock:
            self._closed = True
            self._candidates = ()
        self._subscription.dispose()
        self._ejections.close()
        self._ready.set()  # a pick waiting for the first set fails now, not after its wait

    dispose = close

    def __enter__(self) -> Balancer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        hosts = self._hosts
        count = "no host set yet" if hosts is None else f"{len(hosts)} hosts"
        return (f"Balancer({self.service!r}, policy={self.policy!r}, {count}, "
                f"{len(self._ejections.ejected)} ejected)")

    # --- the stream ---------------------------------------------------------------------

    def _on_hosts(self, hosts: HostSet) -> None:
        """A new set (on the watch thread): keep it, forget the hosts that went."""
        mine = hosts if self.shard is None else hosts.on_shard(self.shard)
        with self._lock:
            if self._closed:
                return
            self._hosts = mine
            self._service_has_hosts = len(hosts) > 0
            for uuid in [u for u in self._in_flight if u not in mine]:
                del self._in_flight[uuid]
        self._ejections.retain(mine)
        self._refresh()
        self._ready.set()

    def _on_end(self, *_: object) -> None:
        """The stream ended (the Discovery closed): keep the last set; stop waiting."""
        self._ready.set()

    def _refresh(self) -> None:
        """Recompute the candidates: the hosts not ejected, or all when every one is."""
        with self._lock:
            hosts = self._hosts
            if self._closed or hosts is None:
                return
            ejected = self._ejections.ejected
            ordered = [hosts[uuid] for uuid in sorted(hosts)]
            live = tuple(host for host in ordered if host.uuid not in ejected)
            self._candidates = live or tuple(ordered)


def _follow(balancer: Balancer, hosts: reactivex.Observable[HostSet]) -> abc.DisposableBase:
    """Subscribe ``balancer`` to ``hosts`` through a weak reference: the subscription alone
    does not keep it alive."""
    ref = weakref.ref(balancer)

    def on_hosts(value: HostSet) -> None:
        target = ref()
        if target is not None:
            target._on_hosts(value)

    def on_end(*_: object) -> None:
        target = ref()
        if target is not None:
            target._on_end()

    return hosts.subscribe(on_hosts, on_end, on_end)


class Call:
    """One call through a :class:`Balancer` (see :meth:`Balancer.call`)."""

    __slots__ = ("_balancer", "host")

    def __init__(self, balancer: Balancer) -> None:
        self._balancer = balancer
        self.host: Host | None = None

    def __enter__(self) -> Host:
        host = self.host = self._balancer.pick()
        self._balancer.started(host)
        return host

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.host is not None:
            # a cancellation, Ctrl-C or exit (not an Exception) says nothing about the host:
            # counted out, not reported
            ok = None if exc_type is not None and not issubclass(exc_type, Exception) else \
                exc_type is None
            self._balancer.finished(self.host, ok=ok)
