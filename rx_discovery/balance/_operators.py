"""The pickers as an Rx operator on ``hosts()``, for users who compose their own pipelines."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import reactivex
from reactivex import abc

from rx_discovery._errors import NoHostFound
from rx_discovery.balance._pickers import Picker, make_picker
from rx_discovery.hostset import HostSet
from rx_discovery.model import Host

__all__ = ["HostPicker", "picker"]


class HostPicker:
    """Picks among the hosts of one :class:`HostSet` (what :func:`picker` emits).

    Attributes:
        hosts: the set it picks from.
    """

    __slots__ = ("_candidates", "_choose", "hosts")

    def __init__(self, hosts: HostSet, choose: Picker) -> None:
        self.hosts = hosts
        self._candidates = tuple(hosts[uuid] for uuid in sorted(hosts))
        self._choose = choose

    def pick(self) -> Host:
        """A host of the set, by the policy.

        Raises:
            NoHostFound: the set is empty.
        """
        if not self._candidates:
            raise NoHostFound(f"no host registered for service {self.hosts.service!r}")
        return self._choose(self._candidates)

    def __len__(self) -> int:
        return len(self._candidates)

    def __repr__(self) -> str:
        return f"HostPicker({self.hosts!r})"


def picker(policy: str = "round_robin", in_flight: Mapping[str, int] | None = None
           ) -> Callable[[reactivex.Observable[HostSet]], reactivex.Observable[HostPicker]]:
    """An operator: each :class:`HostSet` becomes a :class:`HostPicker` over its hosts.

    The policy's state lives as long as the subscription, across sets: round robin goes on
    in turn when hosts come and go. ``least_requests`` compares the counts in ``in_flight``
    (uuid -> calls in flight, which you keep). Emits on the thread of the source::

        pickers = discovery.hosts("api").pipe(balance.picker("round_robin"))

    Raises:
        ValueError: an unknown policy (at once).
    """
    make_picker(policy)  # validates now, not at subscription

    def operator(source: reactivex.Observable[HostSet]) -> reactivex.Observable[HostPicker]:
        def subscribe(observer: abc.ObserverBase[HostPicker],
                      scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            # `is None`, not `or`: an empty dict is the caller's, to be filled later
            choose = make_picker(policy, {} if in_flight is None else in_flight)

            def on_next(hosts: HostSet) -> None:
                observer.on_next(HostPicker(hosts, choose))

            return source.subscribe(on_next, observer.on_error, observer.on_completed,
                                    scheduler=scheduler)

        return reactivex.create(subscribe)

    return operator
