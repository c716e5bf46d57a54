"""Writer subprocess for the throughput benchmark: ``N`` puts of distinct host keys under a
prefix, as fast as possible from ``T`` threads (each with its own client), started by a line
on stdin. Prints ``{"start_ns": ..., "end_ns": ..., "errors": ...}`` (CLOCK_MONOTONIC)."""

from __future__ import annotations

import json
import sys
import threading
import time

import etcd3

from bench.common import host_key, host_value


def main() -> None:
    host, port, service, count, threads = (sys.argv[1], int(sys.argv[2]), sys.argv[3],
                                           int(sys.argv[4]), int(sys.argv[5]))
    items = [(host_key(service, uuid), value)
             for uuid, value in (host_value(service, i) for i in range(count))]
    clients = [etcd3.client(host, port) for _ in range(threads)]
    for client in clients:
        client.status()  # connect before the clock starts
    errors = [0]

    def work(index: int) -> None:
        client = clients[index]
        for key, value in items[index::threads]:
            for _attempt in range(3):
                try:
                    client.put(key, value)
                    break
                except Exception:
                    errors[0] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter_ns()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    end = time.perf_counter_ns()
    print(json.dumps({"start_ns": start, "end_ns": end, "errors": errors[0]}), flush=True)
    for client in clients:
        client.close()


if __name__ == "__main__":
    main()
