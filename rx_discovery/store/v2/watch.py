"""Watches on etcd's v2 keys API: long polls ``?wait=true&recursive=true&waitIndex=N``.

Each poll answers one event; the next poll asks for the index after it, so nothing is lost or
repeated. The polls of every watch of a store run as tasks on one event-loop thread (disposing
cancels the task, which closes its connection at once), and one delivery thread hands every
watch's responses to its observer, in order, as the v3 store's one watch thread does: a
gateway watching 1,000 services has two threads, not 1,001 (an observer that blocks delays
the other watches of the store by as long; the polls go on meanwhile).

etcd keeps the last 1,000 events only: a poll for an older index fails with error code 401
("event index cleared"), raised as :class:`~rx_discovery.RevisionCompacted` so that the sync
re-reads the prefix and emits the difference.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
from typing import Any

import httpx
from reactivex import abc

from rx_discovery._errors import RevisionCompacted, StoreError, StoreUnavailable
from rx_discovery._serial import SerialThread
from rx_discovery.config import Endpoint
from rx_discovery.store import EventType, WatchEvent, WatchResponse
from rx_discovery.store.v2.http import V2Disabled, V2Http, decode, error_of, keys_path, tls_failure

__all__ = ["WatchLoop", "directory_of", "watch_event"]

log = logging.getLogger(__name__)

_DELETES = frozenset({"delete", "compareAndDelete", "expire"})
_PUTS = frozenset({"set", "create", "update", "compareAndSwap"})
_SHUTDOWN_S = 10.0  # at most this long (or the call timeout) for close() to end the polls
_MIN_POLL_S = 10.0
"""After this long (or 2x the call timeout) without an answer to a long poll, the member is
asked for its /health on another connection: a frozen member, or one without a leader (cut off
from the quorum), is noticed (the poll is then ended); a healthy one keeps the poll open."""


def directory_of(prefix: str) -> str:
    """The v2 directory whose recursive read or watch covers every key starting with
    ``prefix``: the prefix itself when it ends with ``/``, else its parent."""
    if prefix.endswith("/"):
        return prefix.rstrip("/")
    return prefix[:prefix.rfind("/")] if "/" in prefix else ""


def watch_event(body: dict[str, Any], prefix: str, exact: bool = False) -> WatchEvent | None:
    """The :class:`WatchEvent` of one v2 watch answer, None when it concerns no key under
    ``prefix`` (or, when ``exact``, not the key ``prefix`` itself): another key of the watched
    directory, a directory created.

    Raises:
        RevisionCompacted: a directory holding the prefix's keys was deleted or expired: its
            keys vanished without one event each, so the sync must read the prefix again.
    """
    node = body.get("node") or {}
    action = body.get("action", "")
    key = str(node.get("key", ""))
    index = int(node.get("modifiedIndex", 0))
    if node.get("dir"):
        if action in _DELETES and ((key + "/").startswith(prefix)
                                   or prefix.startswith(key + "/")):
            raise RevisionCompacted(index)
        return None
    if key != prefix if exact else not key.startswith(prefix):
        return None
    created = int(node.get("createdIndex", index))
    if action in _DELETES:
        return WatchEvent(EventType.DELETE, key, b"", index, created)
    if action not in _PUTS:
        log.warning("v2 watch %r: unknown action %r ignored", prefix, action)
        return None
    value = str(node.get("value", "")).encode("utf-8", "surrogateescape")
    return WatchEvent(EventType.PUT, key, value, index, created, 1 if created == index else 0)


def _run(loop: asyncio.AbstractEventLoop) -> None:
    """The watch thread: run ``loop`` until stopped, then close it."""
    try:
        loop.run_forever()
    finally:
        loop.close()


async def _close(client: httpx.AsyncClient) -> None:
    """Close a poll client no watch uses any more: its idle connections would stay open."""
    try:
        await client.aclose()
    except Exception:  # best effort: the sockets are closed when collected
        log.debug("v2 watch: closing a poll client failed", exc_info=True)


class WatchLoop:
    """The event-loop thread running a store's long polls, and the thread delivering what
    they answer, both started on first use."""

    def __init__(self, http: V2Http) -> None:
        self._http = http
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.delivery = SerialThread("rx-discovery-v2-delivery")

    def submit(self, coroutine: Any) -> concurrent.futures.Future[Any]:
        with self._lock:
            if self._closed:
                coroutine.close()
                raise StoreUnavailable("watch: the store is closed")
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=_run, args=(self._loop,), daemon=True,
                                 name="rx-discovery-v2-watches").start()
            return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def close(self) -> None:
        """Cancel every poll, close the async client and stop the thread."""
        with self._lock:
            self._closed = True
            loop, self._loop = self._loop, None
        clients = self._http.close()
        if loop is None:
            return

        async def shutdown() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            # let them finish cancelling: a task still pending when the loop closes is
            # destroyed ("Task was destroyed but it is pending!")
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(_close(client) for client in clients))

        try:
            # cancelling a poll closes its connection: ~3 ms each on a loaded machine, so
            # 150 watches take ~1 s; a loop stopped before they end leaves "Task was destroyed
            # but it is pending!" on stderr
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(
                max(self._http.timeout, _SHUTDOWN_S))
        except Exception:  # closing is best effort: the thread is a daemon
            log.debug("v2 watch loop: shutdown did not finish", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        self.delivery.stop()  # once what the polls answered before is delivered


class Watch:
    """One subscription: its long-poll task, delivering on the loop's delivery thread.

    Args:
        http: the store's HTTP side (endpoint, client, health).
        loop: where the poll task runs.
        prefix: keys starting with it are delivered.
        start: the first index wanted (0: from now on).
        exact: deliver the key ``prefix`` alone (its own path is polled).
        observer: receives the responses, on the store's delivery thread.
    """

    def __init__(self, http: V2Http, loop: WatchLoop, prefix: str, start: int,
                 observer: abc.ObserverBase[WatchResponse], exact: bool = False) -> None:
        self._http = http
        self._loop = loop
        self._prefix = prefix
        self._exact = exact
        self._directory = prefix if exact else directory_of(prefix)
        self._index = start
        self._observer = observer
        self._future: concurrent.futures.Future[Any] | None = None
        self._disposed = False

    def start(self) -> None:
        try:
            self._future = self._loop.submit(self._poll())
        except StoreError as error:  # the store is closed: its delivery thread too
            self._deliver(error)

    def dispose(self) -> None:
        """Cancel the poll (its connection closes at once); nothing is delivered after."""
        self._disposed = True
        if self._future is not None:
            self._future.cancel()

    def _put(self, item: WatchResponse | StoreError) -> None:
        """Queue ``item`` for the observer, after what this watch queued before."""
        self._loop.delivery.submit(functools.partial(self._deliver, item))

    def _deliver(self, item: WatchResponse | StoreError) -> None:
        """Hand one response (or the error that ends the watch) to the observer."""
        if self._disposed:
            return  # disposed, or ended by an error: nothing after it
        if isinstance(item, StoreError):
            self._disposed = True
            self._fail(item)
            return
        try:
            self._observer.on_next(item)
        except Exception:  # an observer that raises must not end the watch silently
            log.exception("v2 watch %r: observer raised", self._prefix)
            self._disposed = True
            self._fail(StoreUnavailable("watch: the observer raised"))

    def _fail(self, error: StoreError) -> None:
        try:
            self._observer.on_error(error)
        except Exception:  # an observer without on_error (reactivex's default raises)
            log.exception("v2 watch %r: the observer raised on the error", self._prefix)

    async def _poll(self) -> None:
        try:
            client = self._http.lease_poll_client()
        except StoreError as error:
            self._put(error)
            return
        try:
            while not self._disposed:
                self._put(await self._next(client))
        except asyncio.CancelledError:
            raise
        except StoreError as error:
            self._put(error)
        except Exception as error:  # never end silently
            log.exception("v2 watch %r: unexpected error", self._prefix)
            self._put(StoreUnavailable(f"watch: unexpected {type(error).__name__}"))
        finally:
            if self._http.release_poll_client(client):
                await _close(client)

    async def _next(self, client: httpx.AsyncClient) -> WatchResponse:
        """The next event under the prefix, or a progress response (empty ``events``) for an
        event of the directory that is not ours.

        Raises:
            RevisionCompacted, StoreUnavailable, AuthenticationFailed...: as the store's calls.
        """
        http = self._http
        idle = max(_MIN_POLL_S, 2 * http.timeout)
        # no read timeout: an idle poll stays open (see below); the member is probed instead
        timeout = httpx.Timeout(http.timeout, read=None)
        params = {"wait": "true", "recursive": "true"}
        while True:
            endpoint = http.endpoint()
            if self._index:
                params["waitIndex"] = str(self._index)
            url = http.base_url(endpoint) + keys_path(self._directory)
            poll = asyncio.ensure_future(client.get(url, params=params, timeout=timeout))
            try:
                # Idle: is the member still there? The poll is kept open meanwhile. Reopened
                # from the same index, it would fall out of etcd's last 1,000 events once the
                # store moved on elsewhere, and answer "event index cleared": a re-read that
                # the open poll had proved needless.
                while not (await asyncio.wait({poll}, timeout=idle))[0]:
                    await self._probe(client, endpoint)
            finally:  # the loop is closed when a task left pending is destroyed at exit
                if not poll.done() and not poll.get_loop().is_closed():
                    poll.cancel()
            try:
                answer = decode(await poll)
            except V2Disabled as exc:
                http.health.denied(str(exc), endpoint.url)
                raise
            except (httpx.HTTPError, StoreUnavailable) as exc:
                refused = tls_failure(exc, "watch")
                if refused is not None:
                    http.health.denied(str(refused), endpoint.url)
                    raise refused from None
                http.failed(endpoint)
                reason = f"watch: {type(exc).__name__}"
                http.health.failed(reason, endpoint.url)
                raise StoreUnavailable(reason) from None
            if answer.status >= 400:
                error = error_of(answer, "watch")
                if error.permanent:
                    http.health.denied(str(error), endpoint.url)
                elif isinstance(error, StoreUnavailable):  # e.g. no leader: try another
                    http.failed(endpoint)
                    http.health.failed(str(error), endpoint.url)
                raise error
            http.health.connected(endpoint.url)
            if not answer.body.get("node"):  # etcd closed the poll without an event
                raise StoreUnavailable("watch: the poll ended without an event")
            event = watch_event(answer.body, self._prefix, self._exact)
            index = int(answer.body["node"].get("modifiedIndex", 0))
            self._index = index + 1
            if event is None:
                return WatchResponse(revision=index, events=())
            return WatchResponse(revision=index, events=(event,))

    async def _probe(self, client: httpx.AsyncClient, endpoint: Endpoint) -> None:
        """After an idle poll: the member must answer its ``/health`` within the timeout,
        and have a leader. v2 has no require-leader: a member cut off from the quorum keeps
        answering (stale reads, a poll that never fires) while the others move on.
        ``serializable=true``: the member's own view, no quorum read that would wait.

        Raises:
            StoreUnavailable: it did not answer (frozen, cut off) or has no leader: the sync
                reopens elsewhere.
        """
        url = self._http.base_url(endpoint)
        try:
            response = await client.get(url + "/health", params={"serializable": "true"})
        except httpx.HTTPError as exc:
            self._http.failed(endpoint)
            reason = f"watch: member silent ({type(exc).__name__})"
            self._http.health.failed(reason, url)
            raise StoreUnavailable(reason) from None
        health = _health_document(response)
        # etcd answers an unhealthy /health with 503 and its document. An alarm (NOSPACE:
        # the whole cluster is read-only) is no reason to move elsewhere; any other reason
        # is this member's ("RAFT NO LEADER"; "QGET ERROR: request timed out" from a 3.5.1
        # member cut off a moment ago; none at all from 3.4): the watch moves
        unhealthy = health is not None and health.get("health") == "false"
        why = str(health.get("reason", "")) if health is not None else ""
        if unhealthy and "ALARM" not in why.upper():
            self._http.failed(endpoint)
            what = "has no leader" if "LEADER" in why.upper() else "is not serving"
            reason = f"watch: the member {what} (cut off from the quorum?)"
            self._http.health.failed(reason, url)
            raise StoreUnavailable(reason)
        # a 5xx without etcd's document is a proxy's (a frozen or dead member behind it)
        if response.status_code >= 500 and health is None:
            raise StoreUnavailable(f"watch: member answered HTTP {response.status_code}")


def _health_document(response: httpx.Response) -> dict[str, Any] | None:
    """etcd's ``/health`` document (``{"health": "true"|"false", "reason": ...}``), or None
    when the answer is not one (a proxy's page)."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) and "health" in body else None
