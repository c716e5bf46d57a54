"""A watch stream opened while etcd shuts down is never left silent (real etcd over TLS).

grpcio can leave a ``Watch`` call opened in the few milliseconds around a server's graceful
shutdown (its GOAWAY racing the call's transparent retry) terminated, UNAVAILABLE, with its
reader blocked for ever: every watch on that stream then stayed silent, without an error (the
flake of ``test_security.py::test_expired_token_is_renewed_transparently``). Here many stores,
each connected already, open their watch stream one by one across the moment etcd receives
SIGTERM; after the restart, every watch must either deliver a new key or fail (a sync then
resumes it), within a deadline. Before the watch mux's watchdog, about half the runs left one
or more watches silent for ever. ``tests/unit/test_watch_stuck_call.py`` is the deterministic
version.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from faultkit import subscribe
from helpers import Recorder, wait_until
from test_security import Pki, pki  # noqa: F401

from rx_discovery._errors import StoreError
from rx_discovery.config import Settings
from rx_discovery.embedded import EmbeddedEtcd, TLSFiles
from rx_discovery.store.etcd import EtcdStore
from rx_discovery.store.etcd._watch import _watch_call

STORES = 60
SPACING_S = 0.001  # between two streams opened: the window seen was ~15 ms wide
KEY = "/stuck/after-restart"


@pytest.fixture
def tls_etcd(pki: Pki) -> Iterator[EmbeddedEtcd]:  # noqa: F811
    tls = TLSFiles(pki.cert, pki.key, pki.ca, client_cert_auth=False)
    with EmbeddedEtcd(name="stuck", tls=tls) as server:
        yield server


def _delivered(recorder: Recorder) -> bool:
    return any(event.key == KEY for response in recorder.items
               for event in response.events)  # type: ignore[attr-defined]


def test_no_watch_opened_across_a_shutdown_stays_silent(tls_etcd: EmbeddedEtcd,
                                                        pki: Pki) -> None:  # noqa: F811
    settings = Settings.build(tls_etcd.endpoint, ca_cert=pki.ca, timeout=3)
    stores = [EtcdStore(settings) for _ in range(STORES)]
    busy: list[Any] = []
    try:
        revision = 0
        keep = queue.SimpleQueue[bytes | None]()
        for store in stores:  # each connected, so that a stream opens at once
            revision = store.get_prefix("/stuck/").revision
            # a raw watch stream keeps each connection busy: etcd's graceful shutdown drains
            # it (GOAWAY) instead of closing it at once, the window where calls got stuck
            busy.append(_watch_call(store._get_client().channel)(
                iter(keep.get, None), metadata=(("hasleader", "true"),)))
        stopping = threading.Event()

        def restart() -> None:
            stopping.wait(10)
            tls_etcd.restart()

        restarter = threading.Thread(target=restart, daemon=True)
        restarter.start()
        watches: list[Recorder] = []
        for index, store in enumerate(stores):
            if index == STORES // 3:  # a third of the streams open before SIGTERM
                stopping.set()
            watches.append(subscribe(store.watch("/stuck/", revision + 1)))
            time.sleep(SPACING_S)  # pacing the streams across the shutdown, not a wait
        restarter.join(30)
        assert not restarter.is_alive(), "etcd restarted"

        def put_once() -> bool:
            try:
                writer.put(KEY, b"x")
            except StoreError:
                return False
            return True

        # a store of its own, connected after the restart: the put does not depend on the
        # reconnection of the watching stores' channels
        writer = EtcdStore(settings)
        stores.append(writer)
        wait_until(put_once, timeout=30, message="a put after the restart")
        wait_until(lambda: all(w.error is not None or _delivered(w) for w in watches),
                   timeout=15, message="every watch delivered the new key or failed")
        silent = [i for i, w in enumerate(watches) if w.error is None and not _delivered(w)]
        assert silent == []
    finally:
        for call in busy:
            call.cancel()
        for store in stores:
            store.close()
