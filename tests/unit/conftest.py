"""Fixtures of the marble tests: one TestScheduler drives a whole in-memory Discovery."""

from __future__ import annotations

import pytest
from reactivex.testing import TestScheduler

from rx_discovery import Discovery


@pytest.fixture
def scheduler() -> TestScheduler:
    return TestScheduler()


@pytest.fixture
def discovery(scheduler: TestScheduler) -> Discovery:
    return Discovery.in_memory(scheduler)
