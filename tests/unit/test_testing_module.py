"""The public testing module's documented example runs as written."""

from __future__ import annotations

import doctest

import rx_discovery.testing


def test_module_example() -> None:
    result = doctest.testmod(rx_discovery.testing, raise_on_error=False)
    assert result.attempted >= 10 and result.failed == 0


def test_exported_names() -> None:
    assert rx_discovery.testing.__all__ == [
        "MemoryStore", "Recorder", "TcpProxy", "crash", "make_host", "record"]
    for name in rx_discovery.testing.__all__:
        assert getattr(rx_discovery.testing, name).__doc__, name
