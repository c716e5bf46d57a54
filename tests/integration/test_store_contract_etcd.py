"""The Store contract (tests/store_contract.py) on the EtcdStore of the session's EmbeddedEtcd,
from the ``etcd_store`` and ``unique_prefix`` fixtures of tests/conftest.py. The same contract
runs on the memory store in tests/unit/test_store_contract_memory.py."""

from __future__ import annotations

from collections.abc import Callable

import etcd3
import pytest
from store_contract import StoreContract

from rx_discovery.config import parse_endpoint
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.store import Store
from rx_discovery.store.etcd import EtcdStore


@pytest.fixture
def store(etcd_store: EtcdStore) -> Store:
    return etcd_store


@pytest.fixture
def prefix(unique_prefix: str) -> str:
    return unique_prefix


@pytest.fixture
def compact(etcd: EmbeddedEtcd, request: pytest.FixtureRequest) -> Callable[[int], None]:
    """Compact the store's history up to a revision (EtcdStore has no compact(): ask etcd)."""
    endpoint = parse_endpoint(etcd.endpoint)
    client = etcd3.client(endpoint.host, endpoint.port)
    request.addfinalizer(client.close)

    def compact_etcd(revision: int) -> None:
        client.compact(revision, physical=True)

    return compact_etcd


class TestStoreContract(StoreContract):
    pass
