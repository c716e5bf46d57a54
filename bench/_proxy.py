"""A :class:`~rx_discovery.testing.TcpProxy` in its own process, driven over stdin.

The throughput benchmark cuts the network of the measured Discovery only; a proxy running in
the measured process would add its byte copying (and GIL contention) to the measured side.

Protocol: ``python -m bench._proxy HOST PORT`` prints the proxy's port, then obeys the lines
``cut``, ``restore`` (each answered with ``ok``) until stdin closes.
"""

from __future__ import annotations

import subprocess
import sys

from bench._child import end_child
from rx_discovery.testing import TcpProxy


class ProxyProcess:
    """The parent's handle: the same ``endpoint``/``cut()``/``restore()``/``close()`` as
    :class:`TcpProxy`."""

    def __init__(self, host: str, port: int) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench._proxy", host, str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        self.port = int(self._process.stdout.readline())
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def _command(self, line: str) -> None:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()
        if self._process.stdout.readline().strip() != "ok":
            raise RuntimeError(f"proxy process did not {line}")

    def cut(self) -> None:
        self._command("cut")

    def restore(self) -> None:
        self._command("restore")

    def close(self) -> None:
        end_child(self._process)


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    with TcpProxy(port, host) as proxy:
        print(proxy.port, flush=True)
        for line in sys.stdin:
            getattr(proxy, {"cut": "cut", "restore": "restore"}[line.strip()])()
            print("ok", flush=True)


if __name__ == "__main__":
    main()
