"""2. Throughput: N puts of distinct host keys, written as fast as possible by a separate
writer process, consumed through ``hosts()`` (until a HostSet of N hosts) vs through a raw
``watch_prefix`` callback that ``json.loads`` every value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

from bench.common import BenchResult, Context, now_ns, raw_watch

NAME = "throughput"
TITLE = "2. event throughput (hosts())"

WRITER_THREADS = 4


def _writer(ctx: Context, service: str, count: int) -> subprocess.Popen[str]:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._writer", ctx.host, str(ctx.port), service, str(count),
         str(WRITER_THREADS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=env, cwd=root)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "ready": values generated, clients connected
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"writer did not start: {line!r}")
    return proc


def _go(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    try:
        line = proc.stdout.readline()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    timing: dict[str, Any] = json.loads(line)
    return timing


def _measure(ctx: Context, service: str, count: int, subscribe: Any
             ) -> tuple[float, float, float, float]:
    """(events/s seen by the consumer, writer puts/s, consumer CPU us/event, lag ms)."""
    proc = _writer(ctx, service, count)
    done = threading.Event()
    finished = [0]

    def complete() -> None:
        finished[0] = now_ns()
        done.set()

    stop = subscribe(complete)
    try:
        time.sleep(0.3)  # let the watch settle
        cpu0 = time.process_time()
        timing = _go(proc)
        ok = done.wait(60)
        cpu = time.process_time() - cpu0
    finally:
        stop()
    if not ok:
        raise RuntimeError(f"{service}: consumer did not see {count} events within 60 s")
    start, end = timing["start_ns"], timing["end_ns"]
    rate = count / ((finished[0] - start) / 1e9)
    write_rate = count / ((end - start) / 1e9)
    return rate, write_rate, cpu / count * 1e6, (finished[0] - end) / 1e6


def run(ctx: Context) -> BenchResult:
    result = BenchResult(NAME, TITLE)
    count = ctx.size(5000, 1000)
    d = ctx.discovery()
    client = ctx.raw_client()

    def ours(complete: Any) -> Any:
        initial = threading.Event()

        def on_set(hosts: Any) -> None:
            initial.set()
            if len(hosts) >= count and not getattr(on_set, "fired", False):
                on_set.fired = True  # type: ignore[attr-defined]
                complete()

        subscription = d.hosts("tp-ours").subscribe(on_next=on_set)
        initial.wait(10)
        return subscription.dispose

    def raw(complete: Any) -> Any:
        hosts: dict[bytes, Any] = {}

        def on_response(response: Any) -> None:
            if isinstance(response, Exception):
                return
            for event in response.events:
                hosts[event.key] = json.loads(event.value)
            if len(hosts) >= count:
                complete()

        return raw_watch(client, "/services/tp-raw/", on_response)

    ours_rate, ours_write, ours_cpu, ours_lag = _measure(ctx, "tp-ours", count, ours)
    raw_rate, raw_write, raw_cpu, raw_lag = _measure(ctx, "tp-raw", count, raw)
    result.add("events/s delivered", "ev/s", ours_rate, raw_rate, ("ratio>=", 0.8))
    result.add("consumer CPU per event", "us", ours_cpu, raw_cpu)
    result.add("lag after last put", "ms", ours_lag, raw_lag)
    result.add("writer rate (same writer)", "puts/s", ours_write, raw_write)
    result.notes.append(
        f"{count} puts of distinct host keys from a separate process ({WRITER_THREADS} threads, "
        "one client each), started after the consumer's watch is open; rate = N / (first put "
        "-> consumer holds N hosts). Fairness: both consumers are bounded by the same writer, "
        "so a ratio near 1 means 'keeps up'; the writer-independent figure is the consumer's "
        "CPU per event (whole process, gRPC threads included, same on both sides). Ours "
        "builds a new immutable HostSet (dict copy) per revision; raw updates one dict.")
    return result
