"""Fixtures shared by the whole suite, and its tiers.

Tiers, by directory (markers are added here, so ``-m`` selects them):

- ``tests/unit``: server-free (memory store, marble tests, bad arguments); about 15 s. A unit
  test that asks for the ``etcd`` fixture fails: it belongs in ``tests/integration``.
- ``tests/integration``: a real etcd (marker ``etcd``).
- ``tests/faults``: fault injection against real etcd processes (markers ``etcd``, ``faults``).
- ``tests/interop``: the real Go etcd-discovery package (markers ``etcd``, ``go``).

Hypothesis: the ``ci`` profile (no per-example deadline: a loaded 2-core machine is slow
now and then) is loaded when ``CI`` is set; ``HYPOTHESIS_PROFILE`` chooses another.

- ``etcd``: one real etcd server (:class:`~rx_discovery.embedded.EmbeddedEtcd`) per test
  session; tests that kill or pause a server start their own instead.
- ``etcd_store``: an :class:`~rx_discovery.store.etcd.EtcdStore` on it, closed after the test.
- ``unique_prefix``: a key prefix unique to the test (``/t-<hex>``), to isolate its keys.

``tests/helpers.py`` has ``wait_until`` for polling a condition with a deadline.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from rx_discovery.config import Settings, parse_endpoint
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.store.etcd import EtcdStore

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

_TESTS = Path(__file__).resolve().parent
_TIER_MARKS = {"integration": ("etcd",), "faults": ("etcd", "faults"), "interop": ("etcd", "go")}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            tier = Path(item.path).resolve().relative_to(_TESTS).parts[0]
        except ValueError:
            continue
        for mark in _TIER_MARKS.get(tier, ()):
            item.add_marker(mark)
        if tier == "unit" and "etcd" in getattr(item, "fixturenames", ()):
            raise pytest.UsageError(f"{item.nodeid}: tests/unit is server-free; an etcd test "
                                    "belongs in tests/integration")


@pytest.fixture(scope="session")
def etcd() -> Iterator[EmbeddedEtcd]:
    """One etcd server for the session. Do not kill or pause it: start your own for that."""
    with EmbeddedEtcd(name="session") as server:
        yield server


@pytest.fixture
def etcd_store(etcd: EmbeddedEtcd) -> Iterator[EtcdStore]:
    """An EtcdStore on the session's etcd, closed after the test."""
    store = EtcdStore(Settings(endpoints=(parse_endpoint(etcd.endpoint),), timeout=5.0))
    yield store
    store.close()


@pytest.fixture
def unique_prefix() -> str:
    """A key prefix no other test uses, e.g. ``/t-0123456789ab``."""
    return f"/t-{uuid.uuid4().hex[:12]}"
