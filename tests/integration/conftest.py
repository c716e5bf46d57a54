"""Fixtures of the integration tier (tests/conftest.py has the session's ``etcd``)."""

from __future__ import annotations

from collections.abc import Iterator

import etcd3
import pytest

from rx_discovery.embedded import EmbeddedEtcd


@pytest.fixture
def raw(etcd: EmbeddedEtcd) -> Iterator[etcd3.Etcd3Client]:
    """A raw python3-etcd3 client on the session's etcd, to look under the library."""
    host, port = etcd.endpoint.rsplit("//", 1)[1].split(":")
    client = etcd3.client(host=host, port=int(port))
    yield client
    client.close()
