"""The requests adapter's decisions that need no server: which errors mean "nothing sent"."""

from __future__ import annotations

import pytest
import requests.exceptions
import urllib3.exceptions

from rx_discovery import Discovery
from rx_discovery.http.requests import DiscoveryAdapter, _not_sent


def max_retry(reason: Exception) -> urllib3.exceptions.MaxRetryError:
    return urllib3.exceptions.MaxRetryError(None, "/", reason)  # type: ignore[arg-type]


def test_a_refused_connection_was_not_sent() -> None:
    refused = urllib3.exceptions.NewConnectionError(None, "refused")  # type: ignore[arg-type]
    assert _not_sent(requests.exceptions.ConnectionError(max_retry(refused)))
    assert _not_sent(requests.exceptions.ConnectTimeout(max_retry(TimeoutError())))


def test_a_dropped_connection_or_a_read_timeout_may_have_been_sent() -> None:
    aborted = urllib3.exceptions.ProtocolError("Connection aborted.")
    assert not _not_sent(requests.exceptions.ConnectionError(aborted))
    assert not _not_sent(requests.exceptions.ConnectionError(max_retry(aborted)))
    assert not _not_sent(requests.exceptions.ReadTimeout("read timed out"))


@pytest.mark.parametrize(("options", "field"), [
    ({"retries": "2"}, "retries"), ({"address": None}, "address"), ({"policy": "x"}, "policy"),
])
def test_bad_options_fail_at_once(options: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        DiscoveryAdapter(Discovery.in_memory(), **options)  # type: ignore[arg-type]
