"""Processes for tests/integration/test_lifecycle.py (run as a script; prints what the test
reads, one line each).

    lifecycle_process.py drain ENDPOINT PREFIX DRAIN [user-handler]
        registers host "drainer", installs drain_on_signal (after a user SIGTERM handler that
        prints "user handler" and exits 0, when asked); prints "ready UUID", then "tick N"
        every 0.05 s until the process ends.
    lifecycle_process.py fork ENDPOINT PREFIX WORKERS
        registers "parent", forks WORKERS workers (os.fork, and one more through
        multiprocessing's fork start method); each uses the parent's Discovery and disposes
        the parent's registration (prints each error), closes the Discovery, then registers
        "worker-N" with a Discovery of its own and prints "worker N registered", then exits;
        the parent prints "parent STATUS COUNT" after.
    lifecycle_process.py reaper
        starts an EmbeddedEtcd, forks a child that sleeps; prints "etcd PID DIR CHILD", then
        sleeps (the test SIGKILLs it).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from typing import Any

from rx_discovery import Discovery, Host, Registration


def say(*words: object) -> None:
    # one write of the whole line: forked workers share the pipe, and with PYTHONUNBUFFERED
    # print() writes each word and separator apart, so two workers' lines interleaved
    sys.stdout.write(" ".join(map(str, words)) + "\n")
    sys.stdout.flush()


def drain(endpoint: str, prefix: str, seconds: str, *flags: str) -> None:
    from rx_discovery.lifecycle import drain_on_signal

    discovery = Discovery(endpoint, prefix=prefix)
    registration = discovery.register("api", Host(hostname="drainer", ports={"http": "1"}))
    registration.wait(20)
    if "user-handler" in flags:
        def user_handler(_signum: int, _frame: Any) -> None:
            say("user handler")
            sys.exit(0)

        signal.signal(signal.SIGTERM, user_handler)
    drain_on_signal(discovery, drain=float(seconds))
    say("ready", registration.uuid)
    n = 0
    while True:  # the main thread keeps working during the drain
        n += 1
        say("tick", n)
        time.sleep(0.05)


def worker(endpoint: str, prefix: str, parent: Discovery, registration: Registration,
           n: int) -> None:
    for use in (lambda: parent.get("api").all(), registration.dispose):
        try:
            use()
            say("worker", n, "used the parent's Discovery without error")
        except Exception as error:
            say("worker", n, "error", type(error).__name__, str(error).replace("\n", " "))
    parent.close()  # does nothing in a child: the parent's registration must survive
    with Discovery(endpoint, prefix=prefix) as own:
        own.register("api", Host(hostname=f"worker-{n}", ports={"http": "1"})).wait(20)
        say("worker", n, "registered")


def fork(endpoint: str, prefix: str, workers: str) -> None:
    discovery = Discovery(endpoint, prefix=prefix)
    registration = discovery.register("api", Host(hostname="parent", ports={"http": "1"}))
    registration.wait(20)
    pids = []
    for n in range(int(workers)):
        pid = os.fork()
        if pid == 0:
            try:
                worker(endpoint, prefix, discovery, registration, n)
            finally:
                os._exit(0)
        pids.append(pid)
    context = multiprocessing.get_context("fork")
    process = context.Process(target=worker, args=(endpoint, prefix, discovery, registration,
                                                    len(pids)))
    process.start()
    for pid in pids:
        os.waitpid(pid, 0)
    process.join(60)
    say("parent", registration.current_status.name, len(discovery.get("api").all()))
    discovery.close()


def reaper() -> None:
    from rx_discovery.embedded import EmbeddedEtcd

    server = EmbeddedEtcd(name="reaped").start()
    child = os.fork()
    if child == 0:  # a worker that outlives its owner
        time.sleep(120)
        os._exit(0)
    say("etcd", server.pid, server.data_dir, child)
    time.sleep(120)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    {"drain": drain, "fork": fork, "reaper": reaper}[mode](*args)
