"""The Store contract (tests/store_contract.py), run against every adapter.

``memory``: a MemoryStore on its own real-time EventLoopScheduler, so that it is exercised the
way the etcd adapter is (delivery on another thread). ``etcd``: the EtcdStore of the session's
EmbeddedEtcd, from the ``etcd_store`` and ``unique_prefix`` fixtures of tests/conftest.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from store_contract import StoreContract

from rx_discovery.config import parse_endpoint
from rx_discovery.store import Store
from rx_discovery.store.memory import MemoryStore


@pytest.fixture(params=["memory", pytest.param("etcd", marks=pytest.mark.etcd)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(backend: str, request: pytest.FixtureRequest) -> Iterator[Store]:
    if backend == "etcd":
        yield request.getfixturevalue("etcd_store")
        return
    memory = MemoryStore()
    yield memory
    memory.close()


@pytest.fixture
def prefix(backend: str, request: pytest.FixtureRequest) -> str:
    if backend == "etcd":
        return str(request.getfixturevalue("unique_prefix"))
    return f"/t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def compact(backend: str, store: Store, request: pytest.FixtureRequest) -> Callable[[int], None]:
    """Compact the store's history up to a revision (not part of the Store port)."""
    if isinstance(store, MemoryStore):
        return store.compact
    # EtcdStore has no compact(): ask the session's etcd directly.
    import etcd3

    endpoint = parse_endpoint(request.getfixturevalue("etcd").endpoint)
    client = etcd3.client(endpoint.host, endpoint.port)
    request.addfinalizer(client.close)

    def compact_etcd(revision: int) -> None:
        client.compact(revision, physical=True)

    return compact_etcd


class TestStoreContract(StoreContract):
    pass
