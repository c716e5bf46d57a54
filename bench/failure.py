"""5. Failure detection.

- ``dispose()`` of a registration -> ``subscribe_down`` on another Discovery, vs raw
  ``revoke_lease`` -> raw watch DELETE event;
- SIGKILL of a registering subprocess (ttl 2 s) -> ``subscribe_down``, vs the same with a raw
  registrant (lease + refresh loop) -> raw watch DELETE event.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
import time
from typing import Any

from bench.common import (
    BenchResult,
    Context,
    Stamp,
    host_key,
    host_value,
    make_host,
    ms,
    now_ns,
    percentile,
    raw_watch,
)

NAME = "failure"
TITLE = "5. failure detection"
KILL_TTL = 2



def _seen(stamps: dict[str, int], uuid: str) -> bool:
    return uuid in stamps

def _dispose(ctx: Context, samples: int) -> tuple[list[int], list[int]]:
    watcher = ctx.discovery()
    holder = ctx.discovery()
    stamps: dict[str, int] = {}
    arrived = threading.Condition()

    def on_down(uuid: str) -> None:
        with arrived:
            stamps[uuid] = now_ns()
            arrived.notify_all()

    sub = watcher.subscribe_down("fail-dispose").subscribe(on_next=on_down)
    ready = threading.Event()
    first = watcher.hosts("fail-dispose").subscribe(on_next=lambda _s: ready.set())
    ready.wait(10)
    ours: list[int] = []
    try:
        for i in range(samples + 5):
            registration = holder.register("fail-dispose", make_host("fail-dispose", i), ttl=5)
            registration.wait(10)
            time.sleep(0.002)  # let the put event reach the watcher first
            start = now_ns()
            registration.dispose()
            with arrived:
                arrived.wait_for(functools.partial(_seen, stamps, registration.uuid), 5)
            if registration.uuid in stamps and i >= 5:  # 5 warm-up samples
                ours.append(stamps[registration.uuid] - start)
    finally:
        sub.dispose()
        first.dispose()

    client = ctx.raw_client()
    writer = ctx.raw_client()
    stamp = Stamp()

    def on_raw(response: Any) -> None:
        if isinstance(response, Exception):
            return
        if any(type(event).__name__ == "DeleteEvent" for event in response.events):
            stamp.hit()

    cancel = raw_watch(client, "/services/fail-dispose-raw/", on_raw)
    raw: list[int] = []
    try:
        for i in range(samples + 5):
            uuid, value = host_value("fail-dispose-raw", i)
            lease = writer.lease(5)
            writer.put(host_key("fail-dispose-raw", uuid), value, lease=lease)
            time.sleep(0.002)
            start = now_ns()
            writer.revoke_lease(lease.id)
            end = stamp.wait(5)
            if end is not None and i >= 5:
                raw.append(end - start)
    finally:
        cancel()
    return ours, raw


def _spawn(ctx: Context, kind: str, service: str) -> subprocess.Popen[str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-m", "bench._registrant", kind, ctx.etcd.endpoint, service,
         str(KILL_TTL)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=env, cwd=root)


def _kill(ctx: Context, samples: int) -> tuple[list[float], list[float], int]:
    """(ours delays s, raw delays s, missed) for SIGKILLed registrants."""
    watcher = ctx.discovery()
    client = ctx.raw_client()
    downs: dict[str, int] = {}
    lock = threading.Lock()

    def on_down(uuid: str) -> None:
        with lock:
            downs.setdefault(uuid, now_ns())

    def on_raw(response: Any) -> None:
        if isinstance(response, Exception):
            return
        for event in response.events:
            if type(event).__name__ == "DeleteEvent":
                with lock:
                    downs.setdefault(event.key.decode().rpartition("/")[2], now_ns())

    ready = threading.Event()
    sub = watcher.subscribe_down("fail-kill").subscribe(on_next=on_down)
    first = watcher.hosts("fail-kill").subscribe(on_next=lambda _s: ready.set())
    cancel = raw_watch(client, "/services/fail-kill-raw/", on_raw)
    ready.wait(10)
    procs: list[tuple[str, subprocess.Popen[str]]] = []
    try:
        for _ in range(samples):
            procs.append(("ours", _spawn(ctx, "ours", "fail-kill")))
            procs.append(("raw", _spawn(ctx, "raw", "fail-kill-raw")))
        uuids: list[tuple[str, str, subprocess.Popen[str]]] = []
        for kind, proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()  # blocks until registered (or it died)
            if line:
                uuids.append((kind, line, proc))
        time.sleep(1.0)  # each has kept its lease alive at least once
        killed: dict[str, tuple[str, int]] = {}
        for kind, uuid, proc in uuids:  # interleaved ours/raw, staggered over the ttl phase
            killed[uuid] = (kind, now_ns())
            proc.kill()
            time.sleep(0.21)
        deadline = time.monotonic() + KILL_TTL + 5
        while time.monotonic() < deadline:
            with lock:
                if all(uuid in downs for uuid in killed):
                    break
            time.sleep(0.05)
    finally:
        for _kind, proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        sub.dispose()
        first.dispose()
        cancel()
    ours: list[float] = []
    raw: list[float] = []
    missed = 0
    with lock:
        for uuid, (kind, at) in killed.items():
            if uuid not in downs:
                missed += 1
                continue
            (ours if kind == "ours" else raw).append((downs[uuid] - at) / 1e9)
    missed += samples * 2 - len(killed)
    return ours, raw, missed


def run(ctx: Context) -> BenchResult:
    result = BenchResult(NAME, TITLE)
    ours, raw = _dispose(ctx, ctx.size(100, 30))
    result.add("dispose -> down p99", "ms", ms(percentile(ours, 99)), ms(percentile(raw, 99)),
               ("<=", 50.0))
    result.add("dispose -> down p50", "ms", ms(percentile(ours, 50)), ms(percentile(raw, 50)))
    kill_samples = ctx.size(10, 2)
    k_ours, k_raw, missed = _kill(ctx, kill_samples)
    result.add("SIGKILL -> down max", "s", max(k_ours) if k_ours else None,
               max(k_raw) if k_raw else None, ("<=", KILL_TTL + 1.0),
               extra={"ours": sorted(round(v, 3) for v in k_ours),
                      "raw": sorted(round(v, 3) for v in k_raw), "missed": missed})
    result.add("SIGKILL -> down p50", "s", percentile(k_ours, 50), percentile(k_raw, 50))
    result.add("SIGKILL -> down min", "s", min(k_ours) if k_ours else None,
               min(k_raw) if k_raw else None)
    result.notes.append(
        f"dispose: {len(ours)}/{len(raw)} samples (raw: revoke_lease -> DELETE on a raw watch). "
        f"SIGKILL: ttl {KILL_TTL} s, {kill_samples} ours + {kill_samples} raw registrant "
        f"processes killed 0.21 s apart; missed {missed}. Delays ours "
        f"{sorted(round(v, 2) for v in k_ours)}, raw {sorted(round(v, 2) for v in k_raw)} s. "
        "Expiry is etcd's (lease TTL after the last keepalive, checked every 500 ms).")
    return result
