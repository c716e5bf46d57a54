"""Break-it review of issue 17: what a user would see from regressions the rest of the
server-free tier let through (each test names the one-line mutant it was seen to fail on).
Marble tests on the memory store: one TestScheduler drives everything; one unit is one second.
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from reactivex.testing import TestScheduler
from test_streams_marble import at

from rx_discovery import Discovery
from rx_discovery.testing import make_host, record


def put(store: Any, service: str, n: int) -> int:
    return int(store.put(f"/services/{service}/uuid-{n}", make_host(n).to_json().encode()))


def counted_reads(store: Any) -> list[str]:
    """The prefixes ``store`` (an instance) is asked to read from now on."""
    reads: list[str] = []
    read = store.get_prefix

    def counting(prefix: str) -> Any:
        reads.append(prefix)
        return read(prefix)

    store.get_prefix = counting
    return reads


# --- a resync that finds nothing new publishes nothing ----------------------------------

def test_a_resync_after_compaction_that_finds_the_same_hosts_emits_no_set(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    # mutant: PrefixSync._install publishes every re-read (``if first or not change.empty``
    # made ``if True``): a compaction of other services' writes made every subscriber of
    # hosts() get its unchanged set again (and subscribe_new/down an empty change)
    store: Any = discovery.store
    put(store, "api", 1)
    reads = counted_reads(store)
    sets = record(discovery.hosts("api"), scheduler)
    changes = record(discovery.changes("api"), scheduler)

    at(scheduler, 1, store.disconnect)

    def others_written_then_compacted() -> None:
        store.reconnect()
        put(store, "other", 2)  # not this stream's prefix: nothing changed for it
        put(store, "other", 3)
        store.compact()  # its watch's next revision is gone: it must re-read
    at(scheduler, 10, others_written_then_compacted)
    scheduler.advance_to(20)
    assert len(reads) == 2, "the compaction made the stream read the prefix again"
    assert [sorted(s) for _, s in sets.values] == [["uuid-1"]]
    assert [c.initial for _, c in changes.values] == [True]


# --- Hypothesis: no per-example deadline (a loaded 2-core machine is slow now and then) ----

def test_property_tests_run_without_a_per_example_deadline() -> None:
    # mutant: tests/conftest.py's profile without ``deadline=None`` (Hypothesis' default is
    # 200 ms per example: a property test then fails when the machine is busy, not when the
    # code is wrong)
    assert settings.default.deadline is None
