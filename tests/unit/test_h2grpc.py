"""The gRPC-over-h2 stream used for lease keepalives, against a small real HTTP/2 server.

The server (``h2`` in server mode, on the test's event loop) plays each scenario: echoing
requests back in awkward frame sizes, answering with a status in trailers, a trailers-only
answer, an HTTP error, a GOAWAY, a tiny flow-control window. The etcd side of the same code is
covered by tests/test_etcd_store.py (keepalives against real etcd, TLS, auth).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import hpack
import pytest

from rx_discovery.store._h2grpc import GrpcStream, StreamEnd

PATH = "/test.Echo/Chat"
Scenario = Callable[["Server", Any], None]


def frame(message: bytes) -> bytes:
    return struct.pack(">BI", 0, len(message)) + message


class Server(asyncio.Protocol):
    """One HTTP/2 server connection; ``scenario(server, event)`` answers each h2 event."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8"))
        self.headers: dict[str, str] = {}
        self.raw_headers: list[Any] = []
        self.answered = 0  # requests a scenario has answered
        self.pending: list[bytes] = []  # answer bytes a scenario still has to send
        self.received = bytearray()  # request bytes (gRPC frames) of the stream
        self.reset = asyncio.Event()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.raw_headers = list(event.headers)
                self.headers = dict(event.headers)  # type: ignore[arg-type]
            elif isinstance(event, h2.events.DataReceived):
                self.received += event.data
            elif isinstance(event, h2.events.StreamReset):
                self.reset.set()
            self.scenario(self, event)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.reset.set()

    def flush(self) -> None:
        if self.transport is not None:
            self.transport.write(self.conn.data_to_send())

    def messages(self) -> list[bytes]:
        """The complete request messages received so far."""
        out, data = [], bytes(self.received)
        while len(data) >= 5:
            length = struct.unpack_from(">I", data, 1)[0]
            out.append(data[5:5 + length])
            data = data[5 + length:]
        return out

    def respond(self, stream_id: int, **extra: str) -> None:
        self.conn.send_headers(stream_id, [(":status", "200"),
                                           ("content-type", "application/grpc"),
                                           *extra.items()])


class Client:
    """A :class:`GrpcStream` with its answers and end recorded."""

    def __init__(self) -> None:
        self.answers: list[bytes] = []
        self.ends: list[StreamEnd] = []
        self.ended = asyncio.Event()
        self.stream: GrpcStream | None = None

    def open(self, port: int, metadata: tuple[tuple[str, str], ...] = ()) -> GrpcStream:
        def on_end(end: StreamEnd) -> None:
            self.ends.append(end)
            self.ended.set()

        self.stream = GrpcStream.open("127.0.0.1", port, PATH, metadata, None,
                                      self.answers.append, on_end)
        return self.stream

    async def wait_answers(self, count: int) -> None:
        async def enough() -> None:
            while len(self.answers) < count and not self.ends:
                await asyncio.sleep(0.001)

        await asyncio.wait_for(enough(), 5)
        assert len(self.answers) >= count, f"ended early: {self.ends}"

    async def wait_end(self) -> StreamEnd:
        await asyncio.wait_for(self.ended.wait(), 5)
        assert len(self.ends) == 1
        return self.ends[0]


def connection_lost_event(stream: GrpcStream) -> asyncio.Event:
    """An event set once the stream's connection is closed (its ``connection_lost`` ran)."""
    lost = asyncio.Event()
    original = stream.connection_lost

    def connection_lost(exc: Exception | None) -> None:
        original(exc)
        lost.set()

    stream.connection_lost = connection_lost  # type: ignore[method-assign]
    return lost


async def start(scenario: Scenario) -> tuple[asyncio.AbstractServer, int,
                                             asyncio.Future[Server]]:
    """Listen on a free port; the future resolves to the connection's :class:`Server`."""
    made: asyncio.Future[Server] = asyncio.get_running_loop().create_future()

    def factory() -> Server:
        server = Server(scenario)
        if not made.done():
            made.set_result(server)
        return server

    listener = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    return listener, listener.sockets[0].getsockname()[1], made


def call_until_end(scenario: Scenario,
                   requests: tuple[bytes, ...] = (b"x",)) -> tuple[StreamEnd, list[bytes]]:
    """Serve ``scenario``, send ``requests`` and wait for the call to end: (how it ended,
    the answers before)."""
    async def call() -> tuple[StreamEnd, list[bytes]]:
        listener, port, _ = await start(scenario)
        async with listener:
            client = Client()
            client.open(port).send(requests)
            return await client.wait_end(), client.answers

    return asyncio.run(call())


def echo_in_small_pieces(server: Server, event: Any) -> None:
    """Answer every complete request with ``b"re:" + request``, sent 3 bytes per DATA frame."""
    if isinstance(event, h2.events.RequestReceived):
        server.respond(event.stream_id)
    elif isinstance(event, h2.events.DataReceived):
        server.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        messages = server.messages()
        data = b"".join(frame(b"re:" + m) for m in messages[server.answered:])
        server.answered = len(messages)
        for i in range(0, len(data), 3):
            server.conn.send_data(event.stream_id, data[i:i + 3])


def test_messages_split_across_frames_and_batched_in_one_send() -> None:
    async def scenario() -> None:
        listener, port, made = await start(echo_in_small_pieces)
        async with listener:
            client = Client()
            stream = client.open(port, metadata=(("token", "tok-123"),))
            stream.send([b"a", b"", b"hello" * 20])  # before the connection is up
            await client.wait_answers(3)
            stream.send([b"later"])
            await client.wait_answers(4)
            server = await made
            assert client.answers == [b"re:a", b"re:", b"re:" + b"hello" * 20, b"re:later"]
            assert server.headers[":path"] == PATH
            assert server.headers["content-type"] == "application/grpc"
            assert server.headers["te"] == "trailers"
            assert server.headers["token"] == "tok-123"
            token = next(h for h in server.raw_headers if h[0] == "token")
            assert isinstance(token, hpack.NeverIndexedHeaderTuple)  # kept out of HPACK tables
            assert client.ends == []
            lost = connection_lost_event(stream)
            stream.close()
            await asyncio.wait_for(server.reset.wait(), 5)
            await asyncio.wait_for(lost.wait(), 5)  # the end of the connection was seen
            assert client.ends == [], "close() does not call on_end"

    asyncio.run(scenario())


def test_requests_beyond_the_flow_control_window_wait_for_window_updates() -> None:
    def slow_reader(server: Server, event: Any) -> None:
        if isinstance(event, h2.events.RequestReceived):
            server.respond(event.stream_id)
        elif isinstance(event, h2.events.DataReceived):
            # give the window back only as data is read (HTTP/2's initial window: 64 kB)
            server.conn.acknowledge_received_data(event.flow_controlled_length,
                                                  event.stream_id)

    async def scenario() -> None:
        listener, port, made = await start(slow_reader)
        async with listener:
            client = Client()
            stream = client.open(port)
            requests = [i.to_bytes(4, "big") * 10 for i in range(5000)]  # 225 kB framed
            stream.send(requests)
            server = await made

            async def all_received() -> None:
                while len(server.received) < 45 * len(requests):
                    await asyncio.sleep(0.001)

            await asyncio.wait_for(all_received(), 5)
            assert server.messages() == requests
            assert client.ends == []
            stream.close()

    asyncio.run(scenario())


def test_status_in_trailers_ends_the_call_with_the_server_message() -> None:
    def answer_then_fail(server: Server, event: Any) -> None:
        if isinstance(event, h2.events.DataReceived):
            server.respond(event.stream_id)
            server.conn.send_data(event.stream_id, frame(b"one"))
            server.conn.send_headers(event.stream_id, [
                ("grpc-status", "5"), ("grpc-message", "lease%20not%20found")],
                end_stream=True)

    assert call_until_end(answer_then_fail) == (StreamEnd(5, "lease not found"), [b"one"])


@pytest.mark.parametrize(("headers", "expected"), [
    ([(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "16"),
      ("grpc-message", "etcdserver: invalid auth token")],
     StreamEnd(16, "etcdserver: invalid auth token")),
    ([(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "0")],
     StreamEnd(0, "")),
    ([(":status", "503"), ("content-type", "text/plain")], StreamEnd(14, "HTTP status 503")),
    ([(":status", "200"), ("content-type", "text/html")],
     StreamEnd(2, "not a gRPC answer ('text/html')")),
], ids=["trailers-only-error", "trailers-only-ok", "http-503", "not-grpc"])
def test_an_answer_without_messages_ends_with_its_status(headers: list[tuple[str, str]],
                                                          expected: StreamEnd) -> None:
    def answer(server: Server, event: Any) -> None:
        if isinstance(event, h2.events.RequestReceived):
            server.conn.send_headers(event.stream_id, headers, end_stream=True)

    assert call_until_end(answer, requests=()) == (expected, [])


def test_goaway_reset_and_a_closed_connection_end_the_call_without_a_status() -> None:
    def goaway(server: Server, event: Any) -> None:
        if isinstance(event, h2.events.RequestReceived):
            server.conn.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)

    def reset(server: Server, event: Any) -> None:
        if isinstance(event, h2.events.RequestReceived):
            server.conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)

    def hang_up(server: Server, event: Any) -> None:
        if isinstance(event, h2.events.DataReceived) and server.transport is not None:
            server.transport.close()

    for behaviour, words in ((goaway, ("GOAWAY ENHANCE_YOUR_CALM",)),
                             (reset, ("reset the call (REFUSED_STREAM)",)),
                             (hang_up, ("closed the connection", "connection lost"))):
        end, _ = call_until_end(behaviour)
        assert end.status is None, end
        assert any(word in end.message for word in words), end


def test_connection_refused_ends_the_call_and_sending_after_the_end_is_ignored() -> None:
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario() -> None:
        client = Client()
        stream = client.open(port)
        end = await client.wait_end()
        assert end.status is None
        assert end.message.startswith(f"cannot connect to 127.0.0.1:{port}")
        stream.send([b"x"])  # ignored, no second on_end
        stream.close()
        await asyncio.sleep(0)  # callbacks scheduled by send/close (if any) run now
        assert len(client.ends) == 1

    asyncio.run(scenario())


def test_metadata_never_reaches_a_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "tok-5e1f0c9a77"

    async def scenario() -> None:
        listener, port, _ = await start(echo_in_small_pieces)
        async with listener:
            client = Client()
            stream = client.open(port, metadata=(("token", secret),))
            stream.send([b"ping"])
            await client.wait_answers(1)
            stream.close()

    asyncio.run(scenario())
    # hpack would log the header (as it encodes and decodes it) at DEBUG without the filter
    assert not [r for r in caplog.records if secret in r.getMessage()]


def test_an_answer_the_caller_cannot_handle_ends_the_call() -> None:
    def refuse(answer: bytes) -> None:
        raise ValueError(f"unparsable {answer!r}")

    async def scenario() -> None:
        listener, port, made = await start(echo_in_small_pieces)
        async with listener:
            ends: list[StreamEnd] = []
            stream = GrpcStream.open("127.0.0.1", port, PATH, (), None, refuse, ends.append)
            stream.send([b"x"])
            server = await made
            await asyncio.wait_for(server.reset.wait(), 5)  # the connection was closed
            assert ends == [StreamEnd(13, "could not handle an answer (ValueError)")]

    asyncio.run(scenario())


def test_frames_after_a_goaway_in_the_same_read_do_not_hide_the_answers_before_it() -> None:
    def answer_then_go_away(server: Server, event: Any) -> None:
        if isinstance(event, h2.events.DataReceived):
            # what a graceful server stop writes at once: answers, GOAWAY, then a PING
            server.respond(event.stream_id)
            server.conn.send_data(event.stream_id, frame(b"one") + frame(b"two"))
            server.conn.close_connection(additional_data=b"graceful_stop")
            data = server.conn.data_to_send()
            ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"12345678"
            assert server.transport is not None
            server.transport.write(data + ping)

    end, answers = call_until_end(answer_then_go_away)
    assert answers == [b"one", b"two"]
    assert end == StreamEnd(None, "the server closed the connection (GOAWAY NO_ERROR "
                                  "graceful_stop)")


def test_trailers_then_a_reset_in_one_write_end_with_the_status() -> None:
    def fail_then_reset(server: Server, event: Any) -> None:
        if isinstance(event, h2.events.DataReceived):  # as grpc-go ends a call early
            server.respond(event.stream_id)
            server.conn.send_headers(event.stream_id, [("grpc-status", "14"),
                                                       ("grpc-message", "leader changed")],
                                     end_stream=True)
            data = server.conn.data_to_send()
            rst = b"\x00\x00\x04\x03\x00" + event.stream_id.to_bytes(4, "big") + bytes(4)
            assert server.transport is not None
            server.transport.write(data + rst)

    assert call_until_end(fail_then_reset)[0] == StreamEnd(14, "leader changed")


def test_answers_beyond_the_receive_window_keep_flowing() -> None:
    """20 MiB of answers: more than the 16 MiB window the client opens, so it must give the
    window back as it reads."""
    chunk = bytes(range(256)) * 4096  # 1 MiB

    def flood(server: Server, event: Any) -> None:
        if isinstance(event, h2.events.DataReceived):
            server.respond(event.stream_id)
            server.pending = [frame(chunk)] * 20
        if server.pending and isinstance(
                event, (h2.events.DataReceived, h2.events.WindowUpdated)):
            stream_id = 1
            while server.pending:
                window = min(server.conn.local_flow_control_window(stream_id),
                             server.conn.max_outbound_frame_size)
                if window <= 0:
                    return
                head = server.pending[0]
                server.conn.send_data(stream_id, head[:window])
                if len(head) > window:
                    server.pending[0] = head[window:]
                else:
                    server.pending.pop(0)

    async def scenario() -> None:
        listener, port, _ = await start(flood)
        async with listener:
            client = Client()
            stream = client.open(port)
            stream.send([b"go"])
            await asyncio.wait_for(client.wait_answers(20), 20)
            assert client.answers == [chunk] * 20
            stream.close()

    asyncio.run(scenario())


def test_an_oversized_answer_ends_the_call() -> None:
    def oversized(server: Server, event: Any) -> None:
        if isinstance(event, h2.events.DataReceived):
            server.respond(event.stream_id)
            server.conn.send_data(event.stream_id, struct.pack(">BI", 0, 5 << 20))

    assert call_until_end(oversized)[0] == StreamEnd(
        8, f"an answer of {5 << 20} bytes (at most {4 << 20})")


def test_close_while_connecting_is_quiet() -> None:
    async def scenario() -> None:
        listener, port, made = await start(echo_in_small_pieces)
        async with listener:
            client = Client()
            stream = client.open(port)
            stream.send([b"x"])
            connecting = stream._connecting
            assert connecting is not None
            stream.close()  # before the loop ran the connection attempt
            await asyncio.wait([connecting], timeout=5)  # the attempt has ended (cancelled)
            assert connecting.done()
            await asyncio.sleep(0)  # and what its cancellation scheduled has run
            assert client.ends == [] and client.answers == []
            assert not made.done() or not (await made).received

    asyncio.run(scenario())


def test_an_http1_server_is_reported_as_unimplemented() -> None:
    async def scenario() -> tuple[StreamEnd, list[bytes]]:
        async def http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(100)
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        listener = await asyncio.start_server(http1, "127.0.0.1", 0)
        async with listener:
            client = Client()
            client.open(listener.sockets[0].getsockname()[1]).send([b"x"])
            return await client.wait_end(), client.answers

    end, answers = asyncio.run(scenario())
    assert end == StreamEnd(12, "not an HTTP/2 server (an http1.x server answered)")
    assert answers == []
