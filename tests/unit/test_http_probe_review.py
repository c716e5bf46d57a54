"""Review of lifecycle.http_probe (issue 15): it probes the URL itself, never through the
HTTP proxy of the environment (a pod's HTTP_PROXY must not decide whether it is ready)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
from reactivex.testing import TestScheduler

from rx_discovery.lifecycle import http_probe


class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/healthz"
    httpd.shutdown()
    httpd.server_close()


def test_the_probe_ignores_the_environments_http_proxy(
        server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:1")  # nothing listens: a proxy would fail
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    scheduler = TestScheduler()
    seen: list[bool] = []
    http_probe(server, interval=1.0, scheduler=scheduler).subscribe(seen.append)
    scheduler.advance_to(0.5)
    assert seen == [True]


def test_a_url_with_credentials_is_refused_before_any_io_without_showing_them(
        caplog: pytest.LogCaptureFixture) -> None:
    """urllib cannot send user:password@ (it reads "password@host" as a port) and its error,
    logged by the probe, held the password: refuse such a URL at once, naming the field."""
    scheduler = TestScheduler()
    with (caplog.at_level("DEBUG", logger="rx_discovery"),
          pytest.raises(ValueError, match="url") as raised):
        http_probe("http://probe:s3cret@127.0.0.1/healthz", scheduler=scheduler
                   ).subscribe(lambda _v: None)
        scheduler.advance_to(0.1)
    assert "s3cret" not in str(raised.value) and "s3cret" not in caplog.text
