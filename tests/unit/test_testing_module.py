"""The public testing module's documented example runs as written."""

from __future__ import annotations

import doctest

import rx_discovery.testing


def test_module_example() -> None:
    result = doctest.testmod(rx_discovery.testing, raise_on_error=False)
    assert result.attempted >= 10 and result.failed == 0
