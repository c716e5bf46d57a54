"""rx_discovery.notebook.live: one line, a table that does not wrap, "no hosts", health, a chart,
and outputs updated in place (server-free: the memory store, a fake IPython display)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from reactivex.testing import TestScheduler

from rx_discovery import Discovery, Host, notebook
from rx_discovery.notebook import live


class FakeDisplay:
    """Stands in for IPython.display: records what each display handle shows."""

    def __init__(self) -> None:
        self.shown: list[str] = []

    class HTML:
        def __init__(self, data: str) -> None:
            self.data = data

    def display(self, page: Any, display_id: bool) -> Any:
        assert display_id is True
        self.shown.append(page.data)
        outer = self

        class Handle:
            def update(self, page: Any) -> None:
                outer.shown.append(page.data)

        return Handle()


def test_live_view_renders_and_updates_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeDisplay()
    monkeypatch.setattr(notebook, "_ipython_display", lambda: fake)
    scheduler = TestScheduler()
    discovery = Discovery.in_memory(scheduler)
    discovery.register("api", Host("b-host", ports={"http": "8082"}), ttl=5)
    scheduler.advance_by(1)
    view = live(discovery, "api", "cache")
    view._ipython_display_()
    scheduler.advance_by(1)
    first = len(fake.shown)
    discovery.register("api", Host("a-host", ports={"http": "8081", "grpc": "9000"}), ttl=5)
    scheduler.advance_by(1)
    assert len(fake.shown) > first            # the same output, updated
    page = fake.shown[-1]
    assert 'style="white-space:nowrap"' in page
    rows = re.findall(r"<tr><td>api</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>", page)
    assert [hostname for _, hostname, _ in rows] == ["a-host", "b-host"]
    assert all(len(uuid) == 9 and uuid.endswith("…") for uuid, _, _ in rows)
    assert rows[0][2] == "grpc=9000,http=8081" or rows[0][2] == "http=8081,grpc=9000"
    assert "<td>cache</td><td colspan=\"5\"><i>no hosts</i></td>" in page
    assert 'data-state="connected"' in page
    assert len(re.findall(r'<polyline class="rx-series" data-service="(api|cache)"', page)) == 2
    view.dispose()
    shown = len(fake.shown)
    discovery.register("api", Host("c-host", ports={"http": "8083"}), ttl=5)
    scheduler.advance_by(1)
    assert len(fake.shown) == shown           # disposed: the output keeps its last state


def test_live_takes_a_plain_stream_and_refuses_mixed_arguments() -> None:
    scheduler = TestScheduler()
    discovery = Discovery.in_memory(scheduler)
    view = live(discovery.hosts("api"))
    scheduler.advance_by(1)
    assert "<i>no hosts</i>" in view._repr_html_()
    with pytest.raises(ValueError):
        live(discovery)
    with pytest.raises(ValueError):
        live(discovery.hosts("api"), "api")


def test_re_running_a_cell_stops_the_view_it_replaces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-running ``live(d, "api")`` (a notebook cell run again) stops the view it replaces:
    its watch is released and its old output no longer updated, instead of one more
    subscription per run, updated for ever."""
    fake = FakeDisplay()
    monkeypatch.setattr(notebook, "_ipython_display", lambda: fake)
    scheduler = TestScheduler()
    discovery = Discovery.in_memory(scheduler)
    first = live(discovery, "api")
    first._ipython_display_()
    scheduler.advance_by(1)
    again = live(discovery, "api")               # the same cell, run again
    other = live(discovery, "db")                # another view is left alone
    scheduler.advance_by(1)
    discovery.register("api", Host("a-host", ports={"http": "8081"}), ttl=5)
    discovery.register("db", Host("d-host", ports={"pg": "5432"}), ttl=5)
    scheduler.advance_by(1)
    assert len(first.latest()["api"]) == 0      # stopped before the host came
    assert "api" in again.latest() and len(again.latest()["api"]) == 1
    assert len(other.latest()["db"]) == 1
    again.dispose()
    other.dispose()


def test_an_interrupt_while_the_view_subscribes_leaves_no_subscription() -> None:
    """The kernel interrupts the cell (KeyboardInterrupt) while the view subscribes to its
    second stream: the first stream's subscription is released, not leaked for ever."""
    import reactivex
    from reactivex.disposable import Disposable

    from rx_discovery.notebook import LiveView

    disposed: list[str] = []

    def watched(_observer: Any, _scheduler: Any = None) -> Disposable:
        return Disposable(lambda: disposed.append("first"))

    def interrupted(_observer: Any, _scheduler: Any = None) -> Disposable:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        LiveView([reactivex.create(watched), reactivex.create(interrupted)])
    assert disposed == ["first"]
