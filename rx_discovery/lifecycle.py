"""Running a service: register while healthy, leave gracefully, fork safely.

- :func:`http_probe`: an Observable of bool polling an HTTP health endpoint, for
  ``Discovery.register(..., healthy=http_probe(url))``.
- :func:`drain_on_signal`: on SIGTERM/SIGINT, remove the keys at once, keep serving for
  ``drain`` seconds (clients move away), then let the handler that was there before run (the
  default one ends the process).
- :class:`UsedAfterFork`: what a Discovery made before ``fork()`` raises when used in the child.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from types import FrameType
from typing import TYPE_CHECKING, Any

import reactivex
from reactivex import abc, operators
from reactivex.disposable import Disposable
from reactivex.scheduler import EventLoopScheduler

from rx_discovery._lifecycle import UsedAfterFork, validate_drain

if TYPE_CHECKING:
    from rx_discovery.discovery import Discovery
    from rx_discovery.registration import Registration

__all__ = ["UsedAfterFork", "drain_on_signal", "http_probe", "poll"]

log = logging.getLogger("rx_discovery")


def poll(check: Callable[[], bool], interval: float = 1.0, *,
         scheduler: abc.SchedulerBase | None = None) -> reactivex.Observable[bool]:
    """An Observable of bool: ``check()`` at once on subscribe, then every ``interval``
    seconds; emits its result when it changes (the first one always). A check that raises
    counts as False (logged at DEBUG). Cold: each subscription polls on its own.

    ``check`` runs on ``scheduler`` (measuring the interval too: a ``TestScheduler`` drives it
    in virtual time); by default on a thread of the subscription's own (never the
    subscriber's), ended when the subscription is disposed.

    Raises:
        ValueError: ``interval`` is not a number > 0.
    """
    interval = _seconds("interval", interval)

    def safe_check(_tick: int) -> bool:
        try:
            return bool(check())
        except Exception as error:  # a probe that fails says "not healthy"
            log.debug("health check failed: %s: %s", type(error).__name__, error)
            return False

    def subscribe(observer: abc.ObserverBase[bool],
                  _scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        timer = scheduler or EventLoopScheduler(exit_if_empty=True)
        ticks: reactivex.Observable[int] = reactivex.timer(0.0, float(interval),
                                                           scheduler=timer)
        results: reactivex.Observable[bool] = ticks.pipe(operators.map(safe_check))
        return results.pipe(operators.distinct_until_changed()).subscribe(observer)

    return reactivex.create(subscribe)


def http_probe(url: str, interval: float = 1.0, *, timeout: float | None = None,
               scheduler: abc.SchedulerBase | None = None) -> reactivex.Observable[bool]:
    """An Observable of bool: True while ``GET url`` answers 2xx or 3xx within ``timeout``
    seconds (default: ``interval``, at most 5); False on any other answer, a refused
    connection or a timeout. Asks ``url`` directly (the environment's ``HTTP_PROXY`` is not
    used). Polls as :func:`poll` does (at once, then every ``interval``;
    only changes are emitted; on a thread of its own unless ``scheduler`` is given).

    Example: ``discovery.register("api", host, healthy=http_probe("http://127.0.0.1:8000/healthz"))``

    Raises:
        ValueError: ``url`` is not an http(s) URL or holds credentials, or a bad
            ``interval``/``timeout``.
    """
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError("url must be an http:// or https:// URL")
    if "@" in urllib.parse.urlsplit(url).netloc:  # urllib cannot send them; its error shows them
        raise ValueError("url must not hold credentials (user:password@); use "
                         "lifecycle.poll with a check of your own")
    seconds = min(_seconds("interval", interval), 5.0) if timeout is None else _seconds(
        "timeout", timeout)

    # the endpoint itself, never through the environment's HTTP_PROXY (a pod's proxy must not
    # decide whether this process is ready)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def check() -> bool:
        try:
            with opener.open(url, timeout=seconds) as response:
                return 200 <= int(response.status) < 400
        except urllib.error.HTTPError:  # an answer, but 4xx/5xx
            return False

    return poll(check, interval, scheduler=scheduler)


def drain_on_signal(target: Discovery | Registration, drain: float = 2.0, *,
                    signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)
                    ) -> abc.DisposableBase:
    """On the first of ``signals``, remove ``target``'s keys at once (``close`` for a
    Discovery, ``dispose`` for a Registration) and keep the process running ``drain`` more
    seconds, so that clients see the hosts go and move away while the requests in flight are
    served; then run the handler that was installed before (the user's, or the default,
    which ends the process as the signal normally would; an ignored signal stays ignored).

    The handler itself returns at once (the main thread keeps serving): the removal and the
    drain run on a thread of their own, which then delivers the signal again to this process
    to run the previous handler on the main thread. A second signal during the drain runs the
    previous handler at once (an impatient operator), and only then: it does not run again
    when the drain ends. A signal ignored (``SIG_IGN``) when this is called stays ignored (a
    background job started by a shell ignores SIGINT: it is not an order to leave).

    Call it from the main thread, after your own signal handlers are installed (and after a
    framework's, e.g. in an ASGI lifespan: see :mod:`rx_discovery.asgi`). Returns a Disposable
    that puts the previous handlers back (from the main thread).

    Raises:
        ValueError: a bad ``drain`` (before anything is installed).
        RuntimeError: not called from the main thread (``signal.signal`` refuses), before
            anything is installed.
    """
    seconds = validate_drain(drain)
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("drain_on_signal must be called from the main thread (Python "
                           "installs signal handlers only there)")
    previous: dict[int, Any] = {}
    draining = threading.Event()
    chained = threading.Event()  # a signal during the drain ran the previous handler

    def remove_and_drain(signum: int) -> None:
        try:
            _leave(target, seconds)
        except Exception:
            log.exception("removing the registrations on signal %s failed", signum)
        if not chained.is_set():  # else it ran already: once is what the signal asked
            os.kill(os.getpid(), signum)  # the previous handler runs on the main thread

    def handler(signum: int, frame: FrameType | None) -> None:
        if not draining.is_set():  # handlers run one at a time, on the main thread
            draining.set()
            log.info("signal %s: removing the registrations, then draining %.1fs", signum,
                     seconds)
            threading.Thread(target=remove_and_drain, args=(signum,),
                             name="rx-discovery-drain", daemon=True).start()
            return
        chained.set()
        _chain(previous.get(signum), signum, frame)

    def restore() -> None:
        for signum, old in previous.items():
            if signal.getsignal(signum) is handler:
                signal.signal(signum, old if old is not None else signal.SIG_DFL)

    for signum in signals:
        if signal.getsignal(signum) == signal.SIG_IGN:  # ignored: left ignored
            continue
        try:
            previous[signum] = signal.signal(signum, handler)
        except BaseException:  # e.g. SIGKILL: not half installed
            restore()
            raise
        if _by_asyncio(previous[signum]):
            log.warning(
                "signal %s is handled by an asyncio event loop (loop.add_signal_handler): "
                "the loop's handler runs at once on the signal, the drain cannot delay it; "
                "drain in that handler instead (close(drain=...) on a worker thread)", signum)

    return Disposable(restore)


def _seconds(name: str, value: object) -> float:
    """``value`` as a finite number of seconds > 0, else ValueError naming ``name``."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
            or value == float("inf")):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def _leave(target: Discovery | Registration, drain: float) -> None:
    from rx_discovery.discovery import Discovery

    if isinstance(target, Discovery):
        target.close(drain=drain)
    else:
        target.dispose(drain=drain)


def _by_asyncio(handler: Any) -> bool:
    """Whether ``handler`` is the placeholder asyncio installs for ``loop.add_signal_handler``
    (the loop is woken through the signal wakeup fd, whatever Python handler runs)."""
    return (getattr(handler, "__name__", "") == "_sighandler_noop"
            and getattr(handler, "__module__", "").startswith("asyncio"))


def _chain(old: Any, signum: int, frame: FrameType | None) -> None:
    """Run the handler that was installed before ours (on the main thread)."""
    if callable(old):
        old(signum, frame)
    elif old == signal.SIG_IGN:
        return
    else:  # SIG_DFL (or a handler not installed from Python): what the signal normally does
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
