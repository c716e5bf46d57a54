"""The writer of bench.burst, in a process of its own, so that its CPU and GIL are neither
side's: ``python -m bench._burst_writer HOST PORT`` prints ``ready``, then obeys lines
``SERVICE COUNT BATCH``: it writes COUNT fresh hosts of SERVICE in transactions of BATCH puts
(requests built before the clock starts; THREADS transactions in flight) and answers
``{"start_ns": ..., "end_ns": ...}`` (``time.perf_counter_ns``: CLOCK_MONOTONIC, comparable
across processes on Linux), until stdin closes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any

import etcd3
from etcd3 import etcdrpc

from bench._child import end_child
from bench.common import OWN_CONNECTION, host_key, host_value, now_ns

# transactions in flight at once: etcd commits them together, so the burst arrives faster
# than either consumer handles it (one at a time, etcd's fsync would pace both sides)
THREADS = 8


class BurstWriter:
    """The parent's handle on a writer process."""

    def __init__(self, host: str, port: int) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench._burst_writer", host, str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self._readline() != "ready":
            raise RuntimeError("the burst writer did not start")

    def _readline(self) -> str:
        assert self._process.stdout is not None
        return self._process.stdout.readline().strip()

    def burst(self, service: str, count: int, batch: int) -> dict[str, int]:
        """Write the burst; returns when its last transaction was answered."""
        assert self._process.stdin is not None
        self._process.stdin.write(f"{service} {count} {batch}\n")
        self._process.stdin.flush()
        line = self._readline()
        if not line.startswith("{"):
            raise RuntimeError(f"the burst writer failed: {line!r}")
        times: dict[str, int] = json.loads(line)
        return times

    def close(self) -> None:
        end_child(self._process)


def _write(client: Any, service: str, count: int, batch: int) -> dict[str, int]:
    items = [(host_key(service, uuid), value)
             for uuid, value in (host_value(service, i) for i in range(count))]
    # the requests python3-etcd3's transaction() sends, built before the clock starts
    requests = [etcdrpc.TxnRequest(compare=[], failure=[], success=client._ops_to_requests(
                    [client.transactions.put(key, value) for key, value in items[i:i + batch]]))
                for i in range(0, count, batch)]

    def write(share: list[Any]) -> None:
        for request in share:
            client.kvstub.Txn(request, client.timeout, credentials=client.call_credentials,
                              metadata=client.metadata)

    threads = [threading.Thread(target=write, args=(requests[i::THREADS],))
               for i in range(THREADS)]
    start = now_ns()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"start_ns": start, "end_ns": now_ns()}


def main() -> None:

    host, port = sys.argv[1], int(sys.argv[2])
    client = etcd3.client(host, port, grpc_options=OWN_CONNECTION)
    client.get("/warm-up")
    print("ready", flush=True)
    for line in sys.stdin:
        service, count, batch = line.split()
        try:
            print(json.dumps(_write(client, service, int(count), int(batch))), flush=True)
        except Exception as error:  # the parent reports it
            print(f"error {type(error).__name__}: {error}", flush=True)


if __name__ == "__main__":
    main()
