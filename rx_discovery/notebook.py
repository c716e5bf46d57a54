"""Live views for Jupyter, in one line::

    from rx_discovery.notebook import live

    live(d, "api", "db")          # the hosts of two services, the connection's health, a chart
    live(d.hosts("api"))          # any stream of HostSets

The returned :class:`LiveView` renders where it is displayed (the last expression of a cell, or
``display(view)``) and updates that output in place on every change, through IPython's display
handles (``display(..., display_id=True)``), so it needs no widget extension and the last
state stays in the saved notebook. It shows:

- the connection's health (``Discovery.health``: CONNECTED, RECONNECTING, ... with a reason);
- one table row per host, sorted by hostname then uuid, that never wraps: uuids shortened,
  ports as ``http=8081`` (as the CLI prints them), passwords never; an empty set reads
  "no hosts", a service not read yet "waiting";
- a chart of the number of hosts of each service over time (an inline SVG).

Threads: updates happen on the threads the streams emit on (etcd's watch threads), outside
every library lock; the view's own lock only orders them. ``view.dispose()`` stops it; the
output keeps its last state.
"""

from __future__ import annotations

import html
import importlib
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from reactivex import abc
from reactivex.disposable import CompositeDisposable

from rx_discovery.cli._render import _flags, _ports, _sorted_hosts
from rx_discovery.discovery import Discovery
from rx_discovery.health import Health
from rx_discovery.hostset import HostSet

__all__ = ["LiveView", "live"]

_UUID_CHARS = 8          # shown of each uuid (enough to tell hosts apart on screen)
_HISTORY = 500           # points kept for the chart
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
_CHART_W, _CHART_H, _PAD = 480, 140, 28


def _ipython_display() -> Any:
    """IPython's display module (imported when a view is first displayed; untyped)."""
    return importlib.import_module("IPython.display")


class LiveView:
    """Host sets (and health) kept up to date, rendered as HTML where displayed.

    Build it with :func:`live`.
    """

    def __init__(self, streams: Sequence[abc.ObservableBase[HostSet]],
                 services: Sequence[str] = (),
                 health: abc.ObservableBase[Health] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Condition()
        self._services = list(services)  # rows in this order; others as they arrive
        self._sets: dict[str, HostSet] = {}
        self._health: Health | None = None
        self._history: list[tuple[float, dict[str, int]]] = []
        self._handles: list[Any] = []
        self._clock = clock
        self._subscriptions = CompositeDisposable()
        try:
            for stream in streams:
                self._subscriptions.add(stream.subscribe(on_next=self._on_hosts))
            if health is not None:
                self._subscriptions.add(health.subscribe(on_next=self._on_health))
        except BaseException:  # the kernel interrupted the cell: keep no watch behind
            self._subscriptions.dispose()
            raise

    # --- streams (any thread) -------------------------------------------------------------

    def _on_hosts(self, hosts: HostSet) -> None:
        with self._lock:
            if hosts.service not in self._services:
                self._services.append(hosts.service)
            self._sets[hosts.service] = hosts
            counts = {name: len(found) for name, found in self._sets.items()}
            self._history = [*self._history[-(_HISTORY - 1):], (self._clock(), counts)]
            self._refresh()

    def _on_health(self, health: Health) -> None:
        with self._lock:
            self._health = health
            self._refresh()

    def _refresh(self) -> None:
        """Update every output showing this view (under the view's lock, so in order)."""
        self._lock.notify_all()
        if self._handles:
            page = _ipython_display().HTML(self._html())
            for handle in self._handles:
                handle.update(page)

    # --- public ---------------------------------------------------------------------------

    def latest(self) -> dict[str, HostSet]:
        """The last host set of each service seen so far."""
        with self._lock:
            return dict(self._sets)

    def wait(self, predicate: Callable[[dict[str, HostSet]], bool],
             timeout: float | None = None) -> bool:
        """Block until ``predicate(latest())`` is true; False after ``timeout`` seconds."""
        with self._lock:
            return self._lock.wait_for(lambda: predicate(dict(self._sets)), timeout)

    def dispose(self) -> None:
        """Stop following the streams; displayed outputs keep their last state."""
        self._subscriptions.dispose()

    def _ipython_display_(self) -> None:
        ipython = _ipython_display()
        with self._lock:
            handle = ipython.display(ipython.HTML(self._html()), display_id=True)
            self._handles.append(handle)

    def _repr_html_(self) -> str:
        with self._lock:
            return self._html()

    # --- rendering (under the lock) -------------------------------------------------------

    def _html(self) -> str:
        return ('<div class="rx-live">' + self._health_html() + self._table_html()
                + self._chart_svg() + "</div>")

    def _health_html(self) -> str:
        health = self._health
        if health is None:
            return ""
        colour = {"connected": "#2ca02c", "connecting": "#888"}.get(health.state.value,
                                                                      "#d62728")
        return (f'<div class="rx-health" data-state="{health.state.value}" '
                f'style="color:{colour};margin-bottom:4px">etcd: '
                f"{html.escape(str(health))}</div>")

    def _table_html(self) -> str:
        head = "".join(f"<th>{name}</th>" for name in
                       ("service", "uuid", "hostname", "ports", "shard", "flags"))
        rows = [] if self._services else [
            '<tr><td colspan="6"><i>waiting for the first read</i></td></tr>']
        for service in self._services:
            hosts = self._sets.get(service)
            if not hosts:
                note = "waiting for the first read" if hosts is None else "no hosts"
                rows.append(f"<tr><td>{html.escape(service)}</td>"
                            f'<td colspan="5"><i>{note}</i></td></tr>')
                continue
            for host in _sorted_hosts(hosts.values()):
                uuid = host.uuid[:_UUID_CHARS] + ("…" if len(host.uuid) > _UUID_CHARS else "")
                cells = [service, uuid, host.hostname, _ports(host.ports), host.shard,
                         _flags(host)]
                rows.append("<tr>" + "".join(f"<td>{html.escape(cell)}</td>"
                                             for cell in cells) + "</tr>")
        return ('<table class="rx-hosts" style="white-space:nowrap">'
                f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")

    def _chart_svg(self) -> str:
        """Hosts per service over time: one step line per service, in an inline SVG."""
        points = self._history
        if not points:
            return ""
        start, end = points[0][0], max(points[-1][0], points[0][0] + 1e-3)
        top = max(1, *(max(counts.values(), default=0) for _, counts in points))

        def x(at: float) -> float:
            return _PAD + (at - start) / (end - start) * (_CHART_W - 2 * _PAD)

        def y(count: int) -> float:
            return _CHART_H - _PAD - count / top * (_CHART_H - 2 * _PAD)

        parts = [f'<svg class="rx-chart" xmlns="http://www.w3.org/2000/svg" '
                 f'width="{_CHART_W}" height="{_CHART_H}" role="img" '
                 f'aria-label="hosts per service over time">',
                 f'<line x1="{_PAD}" y1="{y(0):.1f}" x2="{_CHART_W - _PAD}" y2="{y(0):.1f}" '
                 'stroke="#999"/>',
                 f'<text x="4" y="{y(top) + 4:.1f}" font-size="10">{top}</text>',
                 f'<text x="4" y="{y(0) + 4:.1f}" font-size="10">0</text>']
        for index, service in enumerate(self._services):
            colour = _COLOURS[index % len(_COLOURS)]
            steps: list[str] = []
            previous: int | None = None
            for at, counts in points:
                if service not in counts:
                    continue
                if previous is not None:
                    steps.append(f"{x(at):.1f},{y(previous):.1f}")
                previous = counts[service]
                steps.append(f"{x(at):.1f},{y(previous):.1f}")
            if previous is not None:
                steps.append(f"{x(end):.1f},{y(previous):.1f}")
                parts.append(f'<polyline class="rx-series" data-service="{html.escape(service)}" '
                             f'fill="none" stroke="{colour}" stroke-width="2" '
                             f'points="{" ".join(steps)}"/>')
            parts.append(f'<text x="{_CHART_W - _PAD + 4 - 60}" y="{14 + 12 * index}" '
                         f'font-size="11" fill="{colour}">{html.escape(service)}</text>')
        parts.append("</svg>")
        return "".join(parts)


# The latest view of each (Discovery, services): a notebook cell run again replaces its view,
# which would otherwise keep its watches and update its vanished output for ever. Weak: a view
# the user dropped is not kept alive here.
_LATEST: weakref.WeakValueDictionary[tuple[int, tuple[str, ...]], LiveView] = (
    weakref.WeakValueDictionary())
_LATEST_LOCK = threading.Lock()


def live(source: Discovery | abc.ObservableBase[HostSet], *services: str,
         health: abc.ObservableBase[Health] | None = None) -> LiveView:
    """A live view of host sets, for notebooks: display it (the last expression of a cell) and
    it updates in place.

    Args:
        source: a :class:`~rx_discovery.Discovery` (then name the ``services``; its health is
            shown) or any stream of :class:`~rx_discovery.HostSet` (e.g. ``d.hosts("api")``).
        services: the services to show, with a Discovery.
        health: a health stream to show with a plain stream (e.g. ``d.health``).

    A view of a Discovery replaces (stops) the previous view of the same Discovery and services,
    so re-running a cell never piles up watches; a plain stream's view is stopped with
    ``view.dispose()``.

    Raises:
        ValueError: a Discovery without services, or services with a stream.
    """
    if isinstance(source, Discovery):
        if not services:
            raise ValueError("live(discovery, ...) needs at least one service name")
        view = LiveView([source.hosts(name) for name in services], services,
                        source.health if health is None else health)
        key = (id(source), services)
        with _LATEST_LOCK:
            replaced, _LATEST[key] = _LATEST.get(key), view
        if replaced is not None:  # the same cell run again: stop the view it replaces (after
            replaced.dispose()    # the new one subscribed, so the shared watch is kept)
        return view
    if services:
        raise ValueError("services are named only with a Discovery: live(d, 'api', 'db')")
    return LiveView([source], (), health)
