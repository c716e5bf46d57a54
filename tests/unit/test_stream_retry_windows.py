"""A stream's background read that fails (and schedules its retry) before the call that
started it has stored its handle: the handle must not replace the retry (the window fixed in
Registration.start, found again in PrefixSync by review). Attempts run inline here
(ImmediateScheduler), which is what a fast failure on the I/O pool does now and then."""

from __future__ import annotations

from typing import Any

import pytest
from reactivex.scheduler import ImmediateScheduler
from reactivex.testing import TestScheduler

from rx_discovery import Discovery, StoreUnavailable
from rx_discovery._runtime import Runtime
from rx_discovery.store.memory import MemoryStore
from rx_discovery.testing import make_host, record


class ReadsFail(MemoryStore):
    """The next ``failures`` prefix reads fail (etcd refused the connection)."""

    failures = 0

    def get_prefix(self, prefix: str) -> Any:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("range: connection refused")
        return super().get_prefix(prefix)


def inline_discovery(store: MemoryStore, scheduler: TestScheduler) -> Discovery:
    discovery = Discovery(store=store)
    discovery._runtime = Runtime(scheduler, ImmediateScheduler())  # attempts run inline
    return discovery


@pytest.mark.parametrize("reads_that_fail", [2, 3])
def test_a_stream_whose_first_reads_fail_at_once_still_loads(reads_that_fail: int) -> None:
    """Before: with 2 or more failed first reads, hosts() never emitted, for ever."""
    scheduler = TestScheduler()
    store = ReadsFail(scheduler)
    store.failures = reads_that_fail
    hosts = record(inline_discovery(store, scheduler).hosts("api"), scheduler)
    scheduler.advance_to(10)
    assert len(hosts.items) == 1 and store.watch_count == 1


def test_a_stream_whose_resync_after_compaction_fails_at_once_still_resyncs() -> None:
    """Before: the re-read after a compaction failed and its retry was cancelled: the stream
    stayed silent for ever (no watch), missing every later host."""
    scheduler = TestScheduler()
    store = ReadsFail(scheduler)
    hosts = record(inline_discovery(store, scheduler).hosts("api"), scheduler)
    scheduler.advance_to(1)

    def gap() -> None:
        store.restart()
        for n in (1, 2):
            store.put(f"/services/api/uuid-{n}", make_host(n).to_json().encode())
        store.compact()  # the watch's next revision is gone
        store.failures = 2

    scheduler.schedule_absolute(2, lambda *_: gap())
    scheduler.advance_to(30)
    assert store.watch_count == 1
    assert sorted(hosts.items[-1]) == ["uuid-1", "uuid-2"]
