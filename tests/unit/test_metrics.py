"""rx_discovery.metrics with the OpenTelemetry SDK's in-memory reader (issue 15), in virtual
time; and a no-op without OpenTelemetry."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

# dev dependencies (pyproject.toml): imported, never skipped, so a broken install fails here
# instead of leaving the metrics untested
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from reactivex.testing import TestScheduler

from rx_discovery import Discovery, RegistrationStatus, StoreUnavailable, metrics
from rx_discovery.store.memory import MemoryStore
from rx_discovery.testing import make_host


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.configure(provider)
    yield reader
    metrics.configure(None)
    provider.shutdown()


def points(reader: InMemoryMetricReader, name: str) -> list[tuple[dict[str, Any], Any]]:
    """(attributes, value) of each data point of ``name``: value for sums and gauges, the
    point itself for histograms (``count``, ``sum``)."""
    data = reader.get_metrics_data()
    found = []
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        found.append((dict(point.attributes or {}),
                                      getattr(point, "value", point)))
    return found


def value(reader: InMemoryMetricReader, name: str, **attributes: str) -> Any:
    matching = [v for a, v in points(reader, name) if all(a.get(k) == x for k, x in
                                                           attributes.items())]
    assert len(matching) == 1, (name, attributes, points(reader, name))
    return matching[0]


class GrantFails(MemoryStore):
    """Grants fail (etcd unreachable for writes) while ``down`` is set."""

    down = False

    def grant(self, ttl: int) -> Any:
        if self.down:
            raise StoreUnavailable("grant: connection refused")
        return super().grant(ttl)


def test_registration_status_reregister_time_keepalive_and_hosts(
        reader: InMemoryMetricReader) -> None:
    scheduler = TestScheduler()
    store = GrantFails(scheduler)
    discovery = Discovery(store=store)
    discovery.hosts("api").subscribe()
    one = discovery.register("api", make_host(1), ttl=6)
    discovery.register("api", make_host(2), ttl=6)
    scheduler.advance_to(9)
    assert value(reader, "rx_discovery.hosts", service="api") == 2
    assert value(reader, "rx_discovery.keepalive.duration").count >= 4  # every 2 s since 0
    store.down = True
    scheduler.schedule_absolute(10, lambda *_: store.delete(one.key))
    scheduler.schedule_absolute(13, lambda *_: setattr(store, "down", False))
    scheduler.advance_to(12)
    assert value(reader, "rx_discovery.hosts", service="api") == 1
    scheduler.advance_to(30)
    assert one.current_status is RegistrationStatus.REGISTERED
    assert value(reader, "rx_discovery.hosts", service="api") == 2
    assert value(reader, "rx_discovery.registration.status", service="api",
                 status="LOST") == 1
    assert value(reader, "rx_discovery.registration.status", service="api",
                 status="REGISTERED") == 3  # two first registrations, one healed
    healed = value(reader, "rx_discovery.registration.reregister", service="api")
    assert healed.count == 1 and 3 <= healed.sum <= 8  # lost at 10, grants work from 13
    one.dispose()
    scheduler.advance_to(31)
    assert value(reader, "rx_discovery.hosts", service="api") == 1


def test_the_hosts_gauge_reports_only_services_watched_now(
        reader: InMemoryMetricReader) -> None:
    """A gauge that kept its last value after the last subscriber left would report hosts
    nobody watches any more (stale for ever on a dashboard)."""
    scheduler = TestScheduler()
    store = MemoryStore(scheduler)
    discovery = Discovery(store=store)
    host = make_host(1)  # written by another process (a registration watches its service)
    store.put(discovery.keyspace.host_key("gauged-api", host.uuid), host.to_json().encode())
    watching = discovery.hosts("gauged-api").subscribe()
    other = discovery.hosts("gauged-web").subscribe()
    scheduler.advance_to(3)
    assert value(reader, "rx_discovery.hosts", service="gauged-api") == 1
    assert value(reader, "rx_discovery.hosts", service="gauged-web") == 0
    watching.dispose()
    gauged = [a for a, _ in points(reader, "rx_discovery.hosts")
              if a["service"].startswith("gauged-")]  # (other tests' Discoveries still run)
    assert gauged == [{"service": "gauged-web"}]
    again = discovery.hosts("gauged-api").subscribe()  # watched again: reported again
    scheduler.advance_to(4)
    assert value(reader, "rx_discovery.hosts", service="gauged-api") == 1
    again.dispose()
    other.dispose()
    assert not [a for a, _ in points(reader, "rx_discovery.hosts")
                if a["service"].startswith("gauged-")]


def test_watch_reconnects_resumes_resyncs_and_skipped_values(
        reader: InMemoryMetricReader) -> None:
    scheduler = TestScheduler()
    discovery = Discovery.in_memory(scheduler)
    store = discovery.store
    discovery.hosts("api").subscribe()
    discovery.register("api", make_host(1), ttl=6)
    scheduler.advance_to(5)
    store.put("/services/api/bad", b"not json")
    scheduler.advance_to(6)
    assert value(reader, "rx_discovery.skipped", stream="hosts of api") == 1
    scheduler.schedule_absolute(10, lambda *_: store.restart())  # the watch drops...
    scheduler.advance_to(12)  # ...reopens, and delivers the next change (resumed)
    scheduler.schedule_absolute(12, lambda *_: discovery.register("api", make_host(2)))
    scheduler.advance_to(14)
    assert value(reader, "rx_discovery.watch.reconnects", stream="hosts of api") == 1
    assert value(reader, "rx_discovery.watch.resumes", stream="hosts of api") == 1

    def drop_then_compact() -> None:  # what the watch missed is compacted away
        store.restart()
        store.put("/services/other/x", b"{}")
        store.put("/services/other/x", b"{}")
        store.compact()

    scheduler.schedule_absolute(20, lambda *_: drop_then_compact())
    scheduler.advance_to(25)
    assert value(reader, "rx_discovery.watch.resyncs", stream="hosts of api") == 1


def test_balancer_picks_and_ejections_per_host(reader: InMemoryMetricReader) -> None:
    scheduler = TestScheduler()
    discovery = Discovery.in_memory(scheduler)
    registrations = [discovery.register("api", make_host(n)) for n in range(2)]
    balancer = discovery.balancer("api")
    scheduler.advance_to(1)
    picked = [balancer.pick() for _ in range(6)]
    balancer.report(picked[0], ok=False)
    for registration in registrations:
        assert value(reader, "rx_discovery.balancer.picks", service="api",
                     host=registration.uuid) == 3
    assert value(reader, "rx_discovery.balancer.ejections", service="api",
                 host=picked[0].uuid) == 1


def test_without_opentelemetry_everything_is_a_no_op() -> None:
    script = textwrap.dedent("""
        import sys
        sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
        from reactivex.testing import TestScheduler
        from rx_discovery import Discovery, metrics
        from rx_discovery.balance import _pickers
        from rx_discovery.testing import make_host
        scheduler = TestScheduler()
        d = Discovery.in_memory(scheduler)
        d.hosts("api").subscribe()
        r = d.register("api", make_host(1))
        b = d.balancer("api")
        scheduler.advance_to(10)
        assert r.ready and b.pick().uuid == r.uuid
        b.report(b.pick(), ok=False)
        assert not metrics.enabled()
        assert b._choose.__module__ == _pickers.__name__  # the picker is not even wrapped
        try:
            metrics.configure(object())
        except RuntimeError as error:
            print("ok", error)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok") and "otel extra" in result.stdout


def test_the_readme_prometheus_recipe_exports_the_instruments() -> None:
    """The README's recipe: OpenTelemetry's Prometheus reader on the global registry."""
    from prometheus_client import REGISTRY, generate_latest

    prometheus = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[prometheus])
    metrics.configure(provider)
    try:
        scheduler = TestScheduler()
        discovery = Discovery.in_memory(scheduler)
        discovery.hosts("api").subscribe()
        registration = discovery.register("api", make_host(1))
        balancer = discovery.balancer("api")
        scheduler.advance_to(1)
        balancer.pick()
        text = generate_latest(REGISTRY).decode()
    finally:
        metrics.configure(None)
        provider.shutdown()  # unregisters its collector
    lines = text.splitlines()
    assert any(line.startswith("rx_discovery_balancer_picks") and registration.uuid in line
               and line.endswith(" 1.0") for line in lines), text
    assert any(line.startswith("rx_discovery_hosts") and 'service="api"' in line
               and line.endswith(" 1.0") for line in lines), text


def test_the_status_counter_counts_changes_only_not_a_status_entered_again(
        reader: InMemoryMetricReader) -> None:
    """Review: a registered host rewriting its deleted service key stays REGISTERED; the
    status observers see no change (distinct), so neither may the status counter."""
    scheduler = TestScheduler()
    store = MemoryStore(scheduler)
    discovery = Discovery(store=store)
    registration = discovery.register("api", make_host(1), ttl=30)
    scheduler.advance_to(1)
    assert registration.current_status is RegistrationStatus.REGISTERED
    seen: list[RegistrationStatus] = []
    registration.status.subscribe(seen.append)
    for at in (2, 4, 6):  # someone deletes the service key; the host writes it again
        scheduler.schedule_absolute(at, lambda *_: store.delete(registration._service_key))
    scheduler.advance_to(8)
    assert store.get(registration._service_key) is not None  # rewritten
    assert seen == [RegistrationStatus.REGISTERED]
    assert value(reader, "rx_discovery.registration.status", service="api",
                 status="REGISTERED") == 1


def test_disposed_is_counted_as_a_status_change(reader: InMemoryMetricReader) -> None:
    """Review: DISPOSED is a status the observers see; the counter of changes saw none."""
    scheduler = TestScheduler()
    registration = Discovery(store=MemoryStore(scheduler)).register("api", make_host(1), ttl=30)
    scheduler.advance_to(1)
    registration.dispose()
    assert value(reader, "rx_discovery.registration.status", service="api",
                 status="DISPOSED") == 1


def test_an_opentelemetry_api_without_a_synchronous_gauge_does_not_break_the_import() -> None:
    """Review: opentelemetry-api before 1.23 has no ``Meter.create_gauge`` (another package may
    pin one): ``import rx_discovery`` must still work, the other instruments still record."""
    script = textwrap.dedent("""
        from opentelemetry.metrics import _internal
        for cls in (_internal.Meter, _internal._ProxyMeter, _internal.NoOpMeter):
            if "create_gauge" in vars(cls):
                delattr(cls, "create_gauge")  # as in opentelemetry-api 1.20-1.22
        from reactivex.testing import TestScheduler
        from rx_discovery import Discovery, metrics
        from rx_discovery.testing import make_host
        scheduler = TestScheduler()
        d = Discovery.in_memory(scheduler)
        d.hosts("api").subscribe()
        r = d.register("api", make_host(1))
        scheduler.advance_to(10)
        assert r.ready and metrics.enabled()
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok")


class _Sync:
    """A sync that only records its calls (a Stoppable)."""

    loaded = False

    def __init__(self) -> None:
        self.calls: list[str] = []

    def start(self, block: bool = False) -> None:
        self.calls.append("start")

    def stop(self) -> None:
        self.calls.append("stop")

    def ensure_loaded(self, hand_off: bool = False) -> None:
        pass


def test_a_hosts_sync_stopped_before_it_started_is_never_watched(
        reader: InMemoryMetricReader) -> None:
    """``Discovery.close()`` can stop a sync between its creation by the first subscriber and
    that subscriber's ``start()`` (outside the shared lock): the late start must not put it in
    the gauge's set, where nothing would ever take it out again."""
    sync = _Sync()
    counted = metrics.counting_hosts("raced-api", lambda publish: sync, lambda change: None)
    before = len(metrics._watched)
    counted.stop()
    counted.start()
    assert len(metrics._watched) == before, "a stopped sync stays in the gauge's set for ever"


def test_the_hosts_gauge_is_reported_to_the_configured_provider_only() -> None:
    """``configure(provider)`` records "instead of" the provider before: the previous one no
    longer gets the hosts gauge (its callback would otherwise go on reporting to it)."""
    first, second = InMemoryMetricReader(), InMemoryMetricReader()
    first_provider = MeterProvider(metric_readers=[first])
    second_provider = MeterProvider(metric_readers=[second])
    scheduler = TestScheduler()
    discovery = Discovery(store=MemoryStore(scheduler))
    try:
        metrics.configure(first_provider)
        watching = discovery.hosts("switched-api").subscribe()
        scheduler.advance_to(1)
        assert value(first, "rx_discovery.hosts", service="switched-api") == 0
        metrics.configure(second_provider)
        metrics.configure(second_provider)  # again: its meter keeps its first instruments
        assert value(second, "rx_discovery.hosts", service="switched-api") == 0
        assert not [a for a, _ in points(first, "rx_discovery.hosts")
                    if a.get("service") == "switched-api"], "the old provider still gets it"
        watching.dispose()
    finally:
        metrics.configure(None)
        discovery.close()
        first_provider.shutdown()
        second_provider.shutdown()


def test_a_forked_child_reports_no_hosts_its_parent_watched() -> None:
    """A pre-fork server's worker: the parent's syncs do not run in the child, so the counts
    it inherited would be reported for ever, frozen at the fork (what the observable gauge
    was made to end)."""
    script = textwrap.dedent("""
        import os
        from reactivex.testing import TestScheduler
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from rx_discovery import Discovery, metrics
        from rx_discovery.store.memory import MemoryStore

        scheduler = TestScheduler()
        discovery = Discovery(store=MemoryStore(scheduler))
        discovery.hosts("parents-api").subscribe()
        scheduler.advance_to(1)
        pid = os.fork()
        if pid == 0:
            reader = InMemoryMetricReader()
            metrics.configure(MeterProvider(metric_readers=[reader]))
            data = reader.get_metrics_data()
            names = [p.attributes.get("service") for r in (data.resource_metrics if data else ())
                     for s in r.scope_metrics for m in s.metrics if m.name == "rx_discovery.hosts"
                     for p in m.data.data_points]
            print("child", names, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "child []", result.stdout
