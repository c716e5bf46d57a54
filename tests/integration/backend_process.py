"""A service instance in its own process, for the calling tests: serves HTTP (or gRPC) on a
free loopback port and registers itself.

``python backend_process.py ENDPOINT PREFIX SERVICE NAME [--ttl S] [--drain S] [--grpc]``

Prints ``ready <port> <uuid>`` once registered. Every answer is its NAME (HTTP: the body,
but ``/redirect`` answers 302 to the relative ``/after-redirect``, NAME in X-Name;
with the request's Host and Authorization headers echoed as X-Seen-Host / X-Seen-Auth;
gRPC: the reply of ``/test.Echo/Name``, and of ``/test.Echo/Slow`` after sleeping the
request's seconds). SIGTERM is a graceful stop: dispose the registration
(its key goes at once), keep serving for ``--drain`` seconds, then exit. SIGKILL leaves the
key to its TTL.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from rx_discovery import Discovery, Host


def serve_http(name: str) -> tuple[int, Any]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"   # keep-alive: clients pool connections
        disable_nagle_algorithm = True   # no 40 ms wait on a delayed ACK

        def do_GET(self) -> None:
            if self.path == "/redirect":  # a relative redirect, as most frameworks send them
                self.send_response(302)
                self.send_header("Location", "/after-redirect")
                self.send_header("X-Name", name)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = name.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Seen-Host", self.headers.get("Host", ""))
            self.send_header("X-Seen-Auth", self.headers.get("Authorization", ""))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.do_GET()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1], server.shutdown


def serve_grpc(name: str) -> tuple[int, Any]:
    from concurrent import futures

    import grpc

    def reply(request: bytes, context: Any) -> bytes:
        return name.encode()

    def slow(request: bytes, context: Any) -> bytes:
        time.sleep(float(request or b"1"))
        return name.encode()

    handler = grpc.method_handlers_generic_handler("test.Echo", {
        "Name": grpc.unary_unary_rpc_method_handler(reply),
        "Slow": grpc.unary_unary_rpc_method_handler(slow)})
    server = grpc.server(futures.ThreadPoolExecutor(8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return port, lambda: server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser()
    for arg in ("endpoint", "prefix", "service", "name"):
        parser.add_argument(arg)
    parser.add_argument("--ttl", type=float, default=3.0)
    parser.add_argument("--drain", type=float, default=2.0)
    parser.add_argument("--grpc", action="store_true")
    args = parser.parse_args()
    port, stop = (serve_grpc if args.grpc else serve_http)(args.name)
    discovery = Discovery(endpoints=[args.endpoint], prefix=args.prefix)
    scheme = "grpc" if args.grpc else "http"
    registration = discovery.register(
        args.service, Host(hostname="127.0.0.1", ports={scheme: str(port)}), ttl=args.ttl)
    registration.wait(timeout=20)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    print(f"ready {port} {registration.uuid}", flush=True)
    stopping.wait()
    registration.dispose()          # the key goes at once: clients stop picking this host
    time.sleep(args.drain)          # requests already on their way are still answered
    stop()
    discovery.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
