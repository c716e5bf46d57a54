"""What the surviving mutants of ``rx_discovery/store/memory.py`` (issue 17) would break: the
memory store is a product feature with etcd's semantics, so each test states one of them.
Virtual time on a TestScheduler; equivalent mutants are listed in docs/mutants-core.md.
"""

from __future__ import annotations

from reactivex.testing import TestScheduler

from rx_discovery.store.memory import MemoryStore
from rx_discovery.testing import record


def test_a_watch_from_a_future_revision_gets_nothing_before_that_revision(
        scheduler: TestScheduler) -> None:
    # etcd sends a watcher only events at or after its start revision (its ``minRev``). Found
    # by the sync.py mutant that watched from revision + 2: the memory store delivered the
    # revision before the start to it, so no test could see the gap it makes on etcd.
    store = MemoryStore(scheduler)
    responses = record(store.watch("/k/", store.revision + 2), scheduler)
    store.put("/k/a", b"1")  # revision 2: before the start
    store.put("/k/b", b"2")  # revision 3: the start
    scheduler.advance_to(1)
    assert [r.revision for r in responses.items] == [3]
