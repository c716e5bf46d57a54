"""The Store contract (tests/store_contract.py) on a MemoryStore on its own real-time
EventLoopScheduler, so that it is exercised the way the etcd adapter is (delivery on another
thread). The same contract runs on etcd in tests/integration/test_store_contract_etcd.py."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from store_contract import StoreContract

from rx_discovery.store import Store
from rx_discovery.store.memory import MemoryStore


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    memory = MemoryStore()
    yield memory
    memory.close()


@pytest.fixture
def prefix() -> str:
    return f"/t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def compact(store: Store) -> Callable[[int], None]:
    assert isinstance(store, MemoryStore)
    return store.compact


class TestStoreContract(StoreContract):
    pass
