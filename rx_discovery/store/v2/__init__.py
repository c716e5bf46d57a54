"""The store on etcd's v2 keys API (``Discovery(api="v2")``), to join deployments of the Go
etcd-discovery package, which speaks only v2. See :mod:`.store`."""

from rx_discovery.store.v2.store import EtcdV2Store

__all__ = ["EtcdV2Store"]
