"""Fixtures shared by the whole suite.

- ``etcd``: one real etcd server (:class:`~rx_discovery.embedded.EmbeddedEtcd`) per test
  session; tests that kill or pause a server start their own instead.
- ``etcd_store``: an :class:`~rx_discovery.store.etcd.EtcdStore` on it, closed after the test.
- ``unique_prefix``: a key prefix unique to the test (``/t-<hex>``), to isolate its keys.

``tests/helpers.py`` has ``wait_until`` for polling a condition with a deadline.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from rx_discovery.config import Settings, parse_endpoint
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.store.etcd import EtcdStore


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
