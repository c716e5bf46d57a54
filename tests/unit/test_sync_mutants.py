"""What the surviving mutants of ``rx_discovery/sync.py`` (issue 17) would break, as outcomes a
user sees: an event's payload and order, a retry's pace, a diagnostic's fields. Marble tests on
the memory store: one TestScheduler drives everything; one unit is one second.

Equivalent mutants of sync.py (they cannot change what a user sees) are listed with the reason
in docs/mutants-core.md.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest
import reactivex
from reactivex.subject import Subject
from reactivex.testing import TestScheduler
from test_streams_marble import at

from rx_discovery import Discovery, PermissionDenied, StoreUnavailable
from rx_discovery._errors import MalformedValue
from rx_discovery._runtime import Runtime
from rx_discovery.store import EventType, WatchEvent, WatchResponse
from rx_discovery.store.memory import MemoryStore
from rx_discovery.sync import Change, Codec, Diagnostic, PrefixSync
from rx_discovery.testing import make_host, record


def host_json(n: int, **changes: Any) -> bytes:
    return make_host(n, **changes).to_json().encode()


def put(store: Any, n: int, **changes: Any) -> int:
    return int(store.put(f"/services/api/uuid-{n}", host_json(n, **changes)))


# --- one transaction, many keys: every item of it, in key order -------------------------

class ScriptedStore(MemoryStore):
    """Reads as a memory store; its watches emit what the test sends (``send``): responses
    etcd sends for a transaction that writes several keys in one revision."""

    def __init__(self, scheduler: TestScheduler) -> None:
        super().__init__(scheduler)
        self.watches: list[Subject[WatchResponse]] = []

    def watch(self, prefix: str, start_revision: int, **kwargs: Any
              ) -> reactivex.Observable[WatchResponse]:
        subject: Subject[WatchResponse] = Subject()
        self.watches.append(subject)
        return subject

    def send(self, revision: int, *events: tuple[EventType, int, bytes]) -> None:
        self.send_revisions((revision, events))

    def send_revisions(self, *revisions: tuple[int, tuple[tuple[EventType, int, bytes], ...]]
                       ) -> None:
        """One response holding several revisions (etcd batches what it has)."""
        self.watches[-1].on_next(WatchResponse(revisions[-1][0], tuple(
            WatchEvent(kind, f"/services/api/uuid-{n}", value, revision)
            for revision, events in revisions for kind, n, value in events)))


def test_a_transaction_of_many_keys_is_one_change_with_every_id_in_key_order(
        scheduler: TestScheduler) -> None:
    # mutants: ``continue`` -> ``break`` (later keys of the revision lost), added/updated not
    # sorted or sorted only from 3 on (sync.py _apply)
    store = ScriptedStore(scheduler)
    put(store, 1)
    put(store, 2)  # revision 3
    events = record(Discovery(store=store).events("api"), scheduler)
    store.send(4, (EventType.PUT, 4, host_json(4)), (EventType.PUT, 3, host_json(3)))
    store.send(5, (EventType.PUT, 2, host_json(2, user="u2")),
               (EventType.PUT, 1, host_json(1, user="u1")))
    store.send(6, (EventType.DELETE, 4, b""), (EventType.DELETE, 3, b""))
    assert [(e.kind, e.uuid, e.revision) for e in events.items] == [
        ("new", "uuid-3", 4), ("new", "uuid-4", 4),
        ("update", "uuid-1", 5), ("update", "uuid-2", 5),
        ("down", "uuid-3", 6), ("down", "uuid-4", 6)]


def test_a_response_of_many_revisions_is_one_change_per_revision(
        scheduler: TestScheduler) -> None:
    # mutants: _by_revision's ``start = None`` (at either place) and ``!=`` -> ``==``
    store = ScriptedStore(scheduler)
    changes = record(Discovery(store=store).changes("api"), scheduler)
    store.send_revisions((2, ((EventType.PUT, 2, host_json(2)), (EventType.PUT, 1, host_json(1)))),
                         (3, ((EventType.DELETE, 1, b""),)),
                         (4, ((EventType.PUT, 3, host_json(3)),)))
    assert [(c.revision, c.added, tuple(c.removed or ())) for c in changes.items[1:]] == [
        (2, ("uuid-1", "uuid-2"), ()), (3, (), ("uuid-1",)), (4, ("uuid-3",), ())]


def test_an_update_names_the_host_and_a_down_carries_its_last_value(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    # mutants: updated.append(None); removed[gone] = None (sync.py _apply)
    store = discovery.store
    put(store, 1)
    events = record(discovery.events("api"), scheduler)
    at(scheduler, 1, lambda: put(store, 1, user="renamed"))
    at(scheduler, 2, lambda: store.delete("/services/api/uuid-1"))
    scheduler.advance_to(3)
    assert [(e.kind, e.uuid, e.host.user if e.host else None) for e in events.items] == [
        ("update", "uuid-1", "renamed"), ("down", "uuid-1", "renamed")]


# --- a diagnostic names its key, its reason and its revision ----------------------------

def test_a_diagnostic_holds_the_reason_and_the_revision_of_the_bad_value(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    # mutants: Diagnostic(key, None, revision), (key, reason, None), (key, revision),
    # (key, reason) (sync.py _skip); _skip(key, None, revision) in _ident and _decode;
    # _ident(key) without the revision in _decode; _decode(..., None) in _read
    store: Any = discovery.store
    problems = record(discovery.diagnostics, scheduler)
    revision: dict[str, int] = {}
    bad_read, bad_value, bad_key = ("/services/api/bad-read", "/services/api/bad",
                                    "/services/api/uuid-1/extra")
    revision[bad_read] = store.put(bad_read, b"[")  # found by the first read
    record(discovery.hosts("api"), scheduler)
    at(scheduler, 1, lambda: revision.setdefault(bad_value, store.put(bad_value, b"{not")))
    at(scheduler, 2, lambda: revision.setdefault(bad_key, store.put(bad_key, host_json(1))))
    scheduler.advance_to(3)
    assert [p.key for p in problems.items] == [bad_read, bad_value, bad_key]
    for problem in problems.items:  # a value that does not decode, a key that is no host's
        assert problem.revision == revision[problem.key] > 1
        assert isinstance(problem.reason, str) and problem.reason
        assert str(problem) == f"{problem.key} (revision {problem.revision}): {problem.reason}"


# --- a bug while applying a watch response: reopen from what was applied ----------------

def flaky_codec(failures: list[bytes]) -> Codec[bytes]:
    """Ids are the last key segment; decoding a value in ``failures`` raises a bug (not a
    MalformedValue) once, as a codec with a transient fault would."""

    def decode(key: str, value: bytes) -> bytes:
        if value in failures:
            failures.remove(value)
            raise RuntimeError("codec bug")
        if value == b"bad":
            raise MalformedValue("bad value", key)
        return value

    return Codec(lambda key: key.rsplit("/", 1)[-1], decode)


def make_sync(store: MemoryStore, scheduler: TestScheduler, codec: Codec[bytes]
              ) -> tuple[PrefixSync[bytes], list[tuple[float, Change[bytes]]]]:
    changes: list[tuple[float, Change[bytes]]] = []
    sync = PrefixSync(store, "/k/", codec, Runtime(scheduler, scheduler, None),
                      lambda change: changes.append((scheduler.clock, change)),
                      lambda _: None, "test")
    return sync, changes


def test_a_revision_that_failed_to_apply_is_applied_when_the_watch_reopens_soon(
        scheduler: TestScheduler) -> None:
    # mutants: _on_error(None, error) (the failed revision is never re-read); getattr(error,
    # "permanent") without a default or defaulting to True (a bug is retried slowly, 0.5-1 s)
    store = MemoryStore(scheduler)
    sync, changes = make_sync(store, scheduler, flaky_codec([b"v1"]))
    sync.start(block=True)
    at(scheduler, 1, lambda: store.put("/k/a", b"v1"))
    scheduler.advance_to(1.1)
    assert [(c.items.get("a"), c.added) for _, c in changes] == [(None, ()), (b"v1", ("a",))]
    assert changes[-1][0] <= 1.06  # reopened after the transient backoff (<= 50 ms)


# --- a watch refused for good is retried slowly ------------------------------------------

class RefusingWatchStore(MemoryStore):
    """Watches fail at once with PermissionDenied (etcd RBAC) while ``refuse``; counts them."""

    refuse = True
    watches = 0

    def watch(self, prefix: str, start_revision: int, **kwargs: Any
              ) -> reactivex.Observable[WatchResponse]:
        self.watches += 1
        if self.refuse:
            return reactivex.throw(PermissionDenied("permission denied"))
        return super().watch(prefix, start_revision, **kwargs)


def test_a_watch_refused_for_good_is_retried_slowly_and_resumes_once_allowed(
        scheduler: TestScheduler) -> None:
    # mutant: _retry(self._open_watch, None, "watch") (the refusal retried every 0.5 s)
    store = RefusingWatchStore(scheduler)
    sets = record(Discovery(store=store).hosts("api"), scheduler)
    scheduler.advance_to(60)
    assert 3 <= store.watches <= 10  # 1 s doubling to 60 s: ~7 in a minute, not ~120
    store.refuse = False
    put(store, 1)
    scheduler.advance_to(200)
    assert [sorted(s) for s in sets.items] == [[], ["uuid-1"]]


# --- after a compaction the prefix is re-read at once -------------------------------------

def test_a_compacted_watch_is_resynced_at_once(scheduler: TestScheduler,
                                               discovery: Discovery) -> None:
    # mutant: _later(1, self._resync) (the difference comes a second late)
    store: Any = discovery.store
    sets = record(discovery.hosts("api"), scheduler)

    at(scheduler, 1, store.disconnect)

    def reconnect_after_compaction() -> None:
        store.reconnect()
        put(store, 1)
        put(store, 2)
        store.compact()
    at(scheduler, 10, reconnect_after_compaction)
    scheduler.advance_to(20)
    [(when, hosts)] = sets.values[1:]
    assert sorted(hosts) == ["uuid-1", "uuid-2"]
    assert 10 < when <= 10.6  # the watch retry (<= 0.5 s) then the resync at once


# --- a background first read that another thread already made is not made again ----------

def test_a_first_read_made_meanwhile_is_not_repeated_by_the_background_one(
        scheduler: TestScheduler) -> None:
    # mutants: _first_load(first=False/None) (a second read that reopens the watch and turns
    # the next change into a resync)
    store = MemoryStore(scheduler)
    sync, changes = make_sync(store, scheduler, flaky_codec([]))
    sync.start()  # the first read is scheduled on the I/O scheduler
    sync.ensure_loaded()  # a registration reads first (on its I/O worker)
    store.put("/k/a", b"v1")  # before the background read runs
    scheduler.advance_to(1)
    assert [(c.initial, c.added, c.resync) for _, c in changes] == [
        (True, (), False), (False, ("a",), False)]


# --- ensure_loaded reads only when nothing was read yet ----------------------------------

class ReadFailingStore(MemoryStore):
    """Reads fail while ``reads_fail``; writes work."""

    reads_fail = False

    def get_prefix(self, prefix: str) -> Any:
        if self.reads_fail:
            raise StoreUnavailable("reads fail")
        return super().get_prefix(prefix)


def test_a_loaded_sync_does_not_read_again_for_a_registration(
        scheduler: TestScheduler) -> None:
    # mutant: ``not loaded or not stopped`` (sync.py ensure_loaded): a registration would
    # read the hosts again, and while reads fail it would never write its key
    store = ReadFailingStore(scheduler)
    discovery = Discovery(store=store)
    news = record(discovery.subscribe_new("api"), scheduler)
    scheduler.advance_to(1)
    store.reads_fail = True
    registration = discovery.register("api", make_host(1), ttl=10)
    scheduler.advance_to(3)
    assert store.keys("/services/api/") == [registration.key]
    assert [h.uuid for h in news.items] == ["uuid-1"]


def test_diagnostic_str_names_key_revision_and_reason() -> None:
    assert str(Diagnostic("/k", "why", 7)) == "/k (revision 7): why"


def test_a_background_retry_of_a_first_read_made_meanwhile_is_not_repeated(
        scheduler: TestScheduler) -> None:
    # mutants: _load retries ``_resync`` for a first read; _load's _read(None)
    class WriteBeforeRead(ReadFailingStore):
        write_first = False

        def get_prefix(self, prefix: str) -> Any:
            if self.write_first:  # the retried read: a host registers just before it
                self.write_first = False
                self.put("/k/a", b"v1")
            return super().get_prefix(prefix)

    store = WriteBeforeRead(scheduler)
    store.reads_fail = True
    sync, changes = make_sync(store, scheduler, flaky_codec([]))
    sync.start()
    scheduler.advance_to(0.001)  # the background read failed: its retry is pending
    store.reads_fail = False
    sync.ensure_loaded()  # a registration reads first
    store.write_first = True
    scheduler.advance_to(5)
    assert [(c.initial, c.added, c.resync) for _, c in changes] == [
        (True, (), False), (False, ("a",), False)]


def test_stopped_during_its_first_read_a_sync_opens_no_watch_and_publishes_nothing(
        scheduler: TestScheduler) -> None:
    # mutants: stop() leaves ``_stopped`` unset (True -> False/None): the read in flight
    # would open a watch nobody disposes (an etcd watch leaked per such stream)
    class StopDuringRead(MemoryStore):
        def get_prefix(self, prefix: str) -> Any:
            sync.stop()  # the last subscriber left while the read was in flight
            return super().get_prefix(prefix)

    store = StopDuringRead(scheduler)
    sync, changes = make_sync(store, scheduler, flaky_codec([]))
    sync.start()
    scheduler.advance_to(10)
    assert store.watch_count == 0
    assert changes == []


def test_the_service_key_written_right_after_subscribe_is_seen(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    # mutant: the exact (service key) watch starts at revision + 2, missing the first write
    services = record(discovery.services("api"), scheduler)
    discovery.store.put("/services_infos/api", b'{"name":"api","critical":true}')
    scheduler.advance_to(1)
    assert [s.critical for s in services.items] == [True]


def test_background_reads_hand_deliveries_off_and_a_callers_read_delivers_itself(
        scheduler: TestScheduler) -> None:
    # mutants: ensure_loaded's hand_off default True or not passed on; _load's default False;
    # start's _load without hand_off=False.
    # An observer that blocks must not hold an I/O worker (background reads hand the delivery
    # to the delivery scheduler), and a subscriber's own first read delivers on its thread.
    delivery = TestScheduler()
    flushes: list[str] = []

    def start(sync_store: MemoryStore) -> PrefixSync[bytes]:
        return PrefixSync(sync_store, "/k/", flaky_codec([]),
                          Runtime(scheduler, scheduler, delivery), lambda _: None,
                          lambda _: None, "test", lambda: flushes.append("flushed"))

    start(MemoryStore(scheduler)).ensure_loaded()
    assert flushes == ["flushed"]  # on this thread, at once
    flushes.clear()
    start(MemoryStore(scheduler)).start(block=True)  # a subscriber's own first read
    assert flushes == ["flushed"]
    flushes.clear()
    start(MemoryStore(scheduler)).start()  # in the background, on the I/O scheduler
    scheduler.advance_to(1)
    assert flushes == []
    delivery.advance_to(1)
    assert flushes == ["flushed"]


# --- the retry pace: the delays the README promises ---------------------------------------

class Ceiling(random.Random):
    """Jitter that always draws the upper bound, so that each delay is exactly its ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


class FailingWatchStore(MemoryStore):
    """Every watch fails at once with ``error``; records when each was opened."""

    def __init__(self, scheduler: TestScheduler, error: Exception) -> None:
        super().__init__(scheduler)
        self.error, self.opened = error, []  # type: list[float]

    def watch(self, prefix: str, start_revision: int, **kwargs: Any
              ) -> reactivex.Observable[WatchResponse]:
        self.opened.append(self.scheduler.clock)  # type: ignore[attr-defined]
        return reactivex.throw(self.error)


@pytest.mark.parametrize(("error", "delays"), [
    (StoreUnavailable("down"), [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]),  # 50 ms doubling to 0.5 s
    (PermissionDenied("denied"), [1, 2, 4, 8, 16, 32, 60, 60]),  # 1 s doubling to 60 s
])
def test_a_failing_watch_is_retried_at_the_documented_pace(
        scheduler: TestScheduler, monkeypatch: pytest.MonkeyPatch, error: Exception,
        delays: list[float]) -> None:
    # mutants: the transient backoff's initial delay (default 0.1, 1.05) and cap (default
    # 5 s); the permanent one's initial delay (2 s) and cap (61 s) (sync.py __init__)
    monkeypatch.setattr("rx_discovery._runtime._RNG", Ceiling())
    store = FailingWatchStore(scheduler, error)
    sync, _ = make_sync(store, scheduler, flaky_codec([]))
    sync.start(block=True)
    scheduler.advance_to(sum(delays) + 0.01)
    gaps = [round(b - a, 6) for a, b in zip(store.opened, store.opened[1:], strict=False)]
    assert gaps == delays


def test_start_without_block_reads_nothing_on_the_callers_thread(
        scheduler: TestScheduler) -> None:
    # mutant: ``block or not stopped`` (a registration's non-waiting subscription would read
    # during register(), which returns at once)
    store = MemoryStore(scheduler)
    sync, changes = make_sync(store, scheduler, flaky_codec([]))
    sync.start()
    assert changes == [] and not sync.loaded
    scheduler.advance_to(0.001)
    assert [c.initial for _, c in changes] == [True]


def test_a_blocking_first_read_that_fails_is_made_again_at_once_in_the_background(
        scheduler: TestScheduler) -> None:
    # mutants: start's _load(retry=True) or without ``retry=False`` (the read retried after
    # a backoff instead of at once)
    class FailsOnce(MemoryStore):
        failed = False

        def get_prefix(self, prefix: str) -> Any:
            if not self.failed:
                self.failed = True
                raise StoreUnavailable("first read fails")
            return super().get_prefix(prefix)

    store = FailsOnce(scheduler)
    sync, changes = make_sync(store, scheduler, flaky_codec([]))
    sync.start(block=True)  # fails; goes on in the background
    scheduler.advance_to(1)
    assert [(when, c.initial) for when, c in changes] == [(0.0, True)]


# --- a first read on the caller's thread that another thread already made is not repeated --

class ReadHook(MemoryStore):
    """``before_read`` runs once, inside the next ``get_prefix``, before it reads: what
    another thread does while this read is on its way to etcd."""

    before_read: Any = None

    def get_prefix(self, prefix: str) -> Any:
        if self.before_read is not None:
            hook, self.before_read = self.before_read, None
            hook()
        return super().get_prefix(prefix)


@pytest.mark.parametrize("first_read", ["start", "ensure_loaded"])
def test_a_callers_first_read_made_meanwhile_by_another_is_not_published_again(
        scheduler: TestScheduler, first_read: str) -> None:
    # mutants: start(block=True) and ensure_loaded() read with first=None/False: when another
    # thread's first read completes while theirs is on its way, they publish what they found
    # as a resync (a host added after the other read reported with ``resync`` True) instead
    # of leaving it to the watch the other read opened
    store = ReadHook(scheduler)
    sync, changes = make_sync(store, scheduler, flaky_codec([]))

    def another_thread_reads_first_then_a_host_comes() -> None:
        sync.ensure_loaded()
        store.put("/k/a", b"v1")

    store.before_read = another_thread_reads_first_then_a_host_comes
    if first_read == "start":
        sync.start(block=True)
    else:
        sync.ensure_loaded()
    scheduler.advance_to(1)
    assert [(c.initial, c.added, c.resync) for _, c in changes] == [
        (True, (), False), (False, ("a",), False)]


# --- the fresh run after the per-service memory trimming ----------------------------------

def test_a_host_deleted_while_a_malformed_value_is_on_record_goes_down(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    # mutants: the deleted key's bad-value record dropped with ``pop(None)`` or ``pop(key)``
    # without a default (KeyError: the revision never applies, the host never goes down)
    store: Any = discovery.store
    sets = record(discovery.hosts("api"), scheduler)
    at(scheduler, 1, lambda: store.put("/services/api/bad", b"not json"))  # on record
    at(scheduler, 2, lambda: put(store, 1))
    at(scheduler, 3, lambda: store.delete("/services/api/uuid-1"))
    scheduler.advance_to(10)
    assert [sorted(s) for s in sets.items] == [[], ["uuid-1"], []]


def test_a_resumed_watch_says_so_once_not_on_every_later_response(
        scheduler: TestScheduler, discovery: Discovery, caplog: pytest.LogCaptureFixture
        ) -> None:
    # mutant: the backoffs reset to "" (not None) when the watch resumes: every later
    # response is taken for a resume again (logged, and counted in the resumes metric)
    store: Any = discovery.store
    record(discovery.hosts("api"), scheduler)
    at(scheduler, 1, store.restart)  # the watch drops and reopens
    for n in (1, 2, 3):
        at(scheduler, 2 + n, lambda n=n: put(store, n))
    with caplog.at_level(logging.INFO, "rx_discovery"):
        scheduler.advance_to(10)
    assert caplog.text.count("watch resumed from revision") == 1
