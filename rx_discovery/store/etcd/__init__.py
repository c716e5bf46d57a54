"""The :class:`~rx_discovery.store.Store` port on a real etcd v3 cluster.

This is the only package that imports ``etcd3`` (python3-etcd3) and ``grpc``. It works around
the client's known gaps (``/work/shared/reference/ETCD-CLIENT-NOTES.md``):

- a ``MultiEndpointEtcd3Client`` with failover even for one endpoint, and a short retry delay,
  so one failed call does not lock an endpoint out for 300 s;
- watches run on streams owned here, over the generated gRPC stubs and the client's own
  channels: the library's watcher thread dies silently when a stream ends;
- lease keepalives share one ``LeaseKeepAlive`` call on an HTTP/2 connection of its own
  (:mod:`._h2grpc`, protobuf messages from the generated modules): the library's
  ``refresh_lease`` opens one stream per refresh, and grpcio's per-message cost would be most
  of what holding many registrations costs;
- gRPC keepalive, so a frozen server (SIGSTOP, dead network) ends streams within seconds, and
  short reconnect backoffs, so a restarted server is usable at once;
- every error (raw ``grpc.RpcError``, ``etcd3.exceptions``, the client's ``ValueError``) is
  mapped in :func:`._errors._translate` to the library's :class:`~rx_discovery.StoreError`
  family; permanent ones (a refused login, RBAC, a value over etcd's limit, a TLS handshake
  refused, an endpoint that is not etcd) carry ``permanent = True``;
- an expired auth token makes the store log in again, transparently, once per call; logins
  happen one at a time, and a refused one is remembered and retried after 1 s, doubling to
  60 s (:class:`._client.LoginGate`);
- no gRPC receive limit, prefix reads in pages at one revision, fragmented watch responses:
  any amount of data under a prefix is read and watched;
- watches carry etcd's require-leader metadata, so a member cut off from the quorum ends them;
- every outcome (calls, watch streams, keepalives) feeds the store's
  :class:`~rx_discovery.health.HealthTracker`.

Threads: calls block the caller's thread (up to ``Settings.timeout``); every watch of the
store is multiplexed on one etcd ``Watch`` stream, whose one daemon reader thread emits every
notification (:mod:`._watch`); the shared lease keepalive
stream runs on one daemon asyncio event-loop thread.

Modules: :mod:`._store` (the store: unary calls, health), :mod:`._client` (clients, endpoints
and failover), :mod:`._errors` (error mapping), :mod:`._codec` (keys and events),
:mod:`._watch` (the multiplexed watch stream), :mod:`._keepalive` (the shared lease
keepalive stream).
"""

from rx_discovery.store.etcd._store import EtcdStore

__all__ = ["EtcdStore"]
