"""Auth on the one shared watch stream (issue 12): a refusal ends one watch, not the stream.

Uses the ``auth`` server of test_security (TLS, etcd auth, a user ``svc`` who may read only
``/services/`` and ``/services_infos/``, tokens living ``TOKEN_TTL`` seconds).
"""

from __future__ import annotations

import time

from faultkit import subscribe
from helpers import wait_until
from test_security import SVC_PASSWORD, TOKEN_TTL, Pki, auth, pki, root_client  # noqa: F401

from rx_discovery._errors import PermissionDenied
from rx_discovery.config import Settings
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.store.etcd import EtcdStore

STREAMS = "etcd_debugging_mvcc_watch_stream_total"


def _keys(recorded: list[object]) -> list[str]:
    return [event.key for response in recorded for event in response.events]  # type: ignore[attr-defined]


def test_a_denied_watch_fails_alone_and_the_stream_goes_on_after_token_expiry(
        auth: EmbeddedEtcd, pki: Pki) -> None:  # noqa: F811
    settings = Settings.build(auth.endpoint, ca_cert=pki.ca, user="svc", password=SVC_PASSWORD,
                              timeout=3)
    raw = root_client(auth, pki)
    with EtcdStore(settings) as store:
        start = store.get_prefix("/services/mux/").revision + 1
        allowed = subscribe(store.watch("/services/mux/", start))
        raw.put("/services/mux/a", b"a")
        wait_until(lambda: _keys(allowed.items) == ["/services/mux/a"], timeout=5)
        streams = auth.metric(STREAMS)
        denied = subscribe(store.watch("/forbidden/", 1))
        wait_until(lambda: denied.error is not None, timeout=10)
        assert isinstance(denied.error, PermissionDenied), repr(denied.error)
        raw.put("/services/mux/b", b"b")
        wait_until(lambda: len(_keys(allowed.items)) == 2, timeout=5,
                   message="the allowed watch, on the same stream, goes on")
        assert allowed.error is None
        assert auth.metric(STREAMS) == streams  # the refusal did not restart the stream
        # once the stream's token expired, a new watch is refused, the store logs in again,
        # and the watches are re-created from their own revisions on a stream with the new
        # token: nothing is lost, nothing repeated
        client = store._client
        time.sleep(TOKEN_TTL + 1.0)  # idle for the token's life on the server
        raw.close()
        raw = root_client(auth, pki)  # its token expired too
        late = subscribe(store.watch("/services/mux-late/", start))
        raw.put("/services/mux-late/x", b"x")
        raw.put("/services/mux/c", b"c")
        wait_until(lambda: _keys(late.items) == ["/services/mux-late/x"], timeout=10,
                   message="a watch created after the token expired")
        wait_until(lambda: len(_keys(allowed.items)) == 3, timeout=10)
        assert _keys(allowed.items) == [f"/services/mux/{k}" for k in "abc"]
        assert late.error is None and allowed.error is None
        assert store._client is not client, "the store logged in again"
    raw.close()
