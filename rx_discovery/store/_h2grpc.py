"""One bidirectional-streaming gRPC call on its own HTTP/2 connection, on asyncio, with ``h2``.

Why not grpcio: its Python API hands every message of a stream to the C core as one
operation, completed on a poller thread and woken on the event loop; a lease keepalive (one
small request, one small answer) costs ~100 us of CPU that way, and holding 1,000
registrations is 600 keepalives a second. Here a whole batch of requests goes out in one
write and the answers are read as they come, at ~15-20 us per keepalive (``python -m
bench --only registrations``: "steady CPU holding"). The rest of the store uses grpcio.

What it implements of gRPC over HTTP/2: one call per connection; length-prefixed messages,
uncompressed (no ``grpc-accept-encoding`` is offered, so the server does not compress);
request metadata as headers; the status from trailers, from a trailers-only answer, or from
the HTTP status when a proxy answered. ``h2`` does the HTTP/2 part (settings, flow control,
pings). It knows nothing of etcd or protobuf: callers pass serialized messages and get bytes
back. Request metadata is sent never-indexed (RFC 7541 7.1: auth tokens stay out of HPACK
tables), and hpack's DEBUG records, which quote every header encoded (the token too), are
dropped: secrets never reach a log. Answers are limited to 4 MiB (a keepalive answer is a few
bytes). It sends no HTTP/2 pings: a server that stops answering is noticed by the caller's
deadline. An HTTP/1 server answering is reported as such (status UNIMPLEMENTED), as grpcio
does. It always connects directly: proxy environment variables (``grpc_proxy``,
``https_proxy``, ``no_proxy``), which grpcio honours, are not; the store does not use this
connection for an endpoint that grpcio would reach through a proxy (see
``rx_discovery.store.etcd._keepalive``).

Threads: everything runs on the event loop that :meth:`GrpcStream.open` is called on, and the
callbacks are called there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import hpack

__all__ = ["GrpcStream", "StreamEnd"]

# gRPC status codes used here (https://grpc.github.io/grpc/core/md_doc_statuscodes.html)
_UNKNOWN, _INTERNAL, _UNIMPLEMENTED, _UNAVAILABLE = 2, 13, 12, 14
_UNAUTHENTICATED, _PERMISSION_DENIED, _RESOURCE_EXHAUSTED = 16, 7, 8
# gRPC's mapping of an HTTP status without a grpc-status (doc/http-grpc-status-mapping.md)
_HTTP_STATUS = {400: _INTERNAL, 401: _UNAUTHENTICATED, 403: _PERMISSION_DENIED,
                404: _UNIMPLEMENTED, 429: _UNAVAILABLE, 502: _UNAVAILABLE, 503: _UNAVAILABLE,
                504: _UNAVAILABLE}
_PREFIX = struct.Struct(">BI")  # compressed flag, message length
_MAX_MESSAGE = 4 << 20  # gRPC's default limit on a received message
_GOAWAY = 0x7  # HTTP/2 frame type
_WINDOW = 1 << 24  # answers are small; one big window saves WINDOW_UPDATE round trips


class _NoHeaderDumps(logging.Filter):
    """Drops hpack's DEBUG records: they quote the headers it encodes and decodes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


logging.getLogger("hpack.hpack").addFilter(_NoHeaderDumps())
logging.getLogger("hpack.table").addFilter(_NoHeaderDumps())


@dataclass(frozen=True)
class StreamEnd:
    """Why a call ended.

    Attributes:
        status: the gRPC status code the server gave, or None when the connection failed
            (refused, reset, TLS handshake, protocol error, GOAWAY) and no status was given.
        message: the server's ``grpc-message``, or what went wrong; never request metadata.
    """

    status: int | None
    message: str


class GrpcStream(asyncio.Protocol):
    """A bidirectional-streaming call: :meth:`send` requests, ``on_message`` gets answers.

    Requests sent before the connection is up are buffered and go out with the call's headers.
    ``on_end`` is called once when the call ends for any reason but :meth:`close`; nothing is
    called after it, or after :meth:`close`.
    """

    def __init__(self, authority: str, path: str, metadata: Sequence[tuple[str, str]],
                 secure: bool, on_message: Callable[[bytes], None],
                 on_end: Callable[[StreamEnd], None]) -> None:
        self._headers: list[tuple[str, str] | hpack.NeverIndexedHeaderTuple] = [
            (":method", "POST"), (":scheme", "https" if secure else "http"), (":path", path),
            (":authority", authority), ("content-type", "application/grpc"),
            ("te", "trailers"),
            *(hpack.NeverIndexedHeaderTuple(name, value) for name, value in metadata)]
        self._on_message = on_message
        self._on_end = on_end
        self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8"))
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._stream_id = 0
        self._frames = bytearray()  # received bytes not yet handed to h2 (a partial frame)
        self._answered = False  # the first bytes received were checked (not HTTP/1)
        self._outbox = bytearray()  # framed requests not yet handed to h2
        self._inbox = bytearray()  # answer bytes not yet split into messages
        self._status: int | None = None  # from the headers or trailers
        self._message = ""
        self._ended = False

    @classmethod
    def open(cls, host: str, port: int, path: str, metadata: Sequence[tuple[str, str]],
             ssl_context: ssl.SSLContext | None, on_message: Callable[[bytes], None],
             on_end: Callable[[StreamEnd], None]) -> GrpcStream:
        """Start a call to ``path`` (``/package.Service/Method``) on ``host:port``.

        Returns at once; the connection is made in the background, and a failure to make it
        ends the call (``on_end`` with ``status`` None). Must be called on a running loop.

        Args:
            metadata: request metadata (lowercase names), e.g. an auth token.
            ssl_context: TLS (its ALPN protocols must include ``h2``), or None for plain text.
        """
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        stream = cls(authority, path, metadata, ssl_context is not None, on_message, on_end)
        stream._connecting = asyncio.get_running_loop().create_task(
            stream._connect(host, port, ssl_context))
        return stream

    # -- caller side --------------------------------------------------------------------------

    def send(self, messages: Iterable[bytes]) -> None:
        """Queue serialized request messages and send as many as flow control allows."""
        if self._ended:
            return
        outbox = self._outbox
        for message in messages:
            outbox += _PREFIX.pack(0, len(message))
            outbox += message
        if self._transport is not None:
            self._flush()

    def close(self) -> None:
        """Cancel the call and drop the connection at once; ``on_end`` is not called."""
        if not self._ended:
            self._ended = True
            with contextlib.suppress(Exception):  # not connected yet, or already closed
                self._h2.reset_stream(self._stream_id, h2.errors.ErrorCodes.CANCEL)
                self._write()
        self._drop()

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self._ended:  # closed while connecting
            transport.abort()
            return
        self._transport = transport
        h2conn = self._h2
        h2conn.initiate_connection()
        h2conn.increment_flow_control_window(_WINDOW)
        self._stream_id = h2conn.get_next_available_stream_id()
        h2conn.send_headers(self._stream_id, self._headers)
        h2conn.increment_flow_control_window(_WINDOW, stream_id=self._stream_id)
        self._flush()

    def data_received(self, data: bytes) -> None:
        if not self._answered:
            start = bytes(self._frames[:8]) + data[:8]
            if start.startswith(b"HTTP/1."):
                self._end(_UNIMPLEMENTED, "not an HTTP/2 server (an http1.x server answered)")
                return
            self._answered = len(start) >= 7
        try:
            events = self._h2.receive_data(self._whole_frames(data))
        except h2.exceptions.ProtocolError as error:
            self._end(None, f"HTTP/2 protocol error: {type(error).__name__}")
            return
        for event in events:
            if self._ended:
                return
            if isinstance(event, h2.events.DataReceived):
                self._h2.acknowledge_received_data(event.flow_controlled_length,
                                                   event.stream_id)
                self._messages(event.data)
            elif isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                self._on_headers(dict(event.headers))  # type: ignore[arg-type]
            elif isinstance(event, h2.events.StreamEnded):
                if self._status is None:
                    self._end(None, "the server ended the call without a status")
                else:
                    self._end(self._status, self._message)
            elif isinstance(event, h2.events.StreamReset):
                self._end(None, f"the server reset the call ({_name(event.error_code)})")
            elif isinstance(event, h2.events.ConnectionTerminated):
                said = (event.additional_data or b"")[:100].decode("ascii", "replace")
                self._end(None, f"the server closed the connection (GOAWAY "
                                f"{_name(event.error_code)}{' ' + said if said else ''})")
            elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                self._flush()
        if not self._ended:
            self._write()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        reason = f": {exc}" if exc is not None else ""
        self._end(None, f"connection lost{reason}")

    def eof_received(self) -> bool | None:
        self._end(None, "the server closed the connection")
        return None

    # -- internals ----------------------------------------------------------------------------

    def _whole_frames(self, data: bytes) -> bytes:
        """The complete frames received so far, up to a GOAWAY included (the rest is kept, or
        dropped after a GOAWAY). h2 refuses any frame after a GOAWAY, and then loses the events
        of the whole input (python-hyper/h2#1181): a graceful server stop sends a GOAWAY and a
        PING together, so answers read with them would be lost."""
        frames = self._frames
        frames += data
        end, size, goaway = 0, len(frames), False
        while size - end >= 9 and not goaway:
            frame_end = end + 9 + int.from_bytes(frames[end:end + 3], "big")
            if frame_end > size:
                break
            goaway = frames[end + 3] == _GOAWAY
            end = frame_end
        whole = bytes(frames[:end])
        del frames[:size if goaway else end]
        return whole

    async def _connect(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: self, host, port, ssl=ssl_context,
                                         server_hostname=host if ssl_context else None)
            return
        except ssl.SSLError as error:
            failure = f"TLS handshake failed: {error.reason or error}"
        except OSError as error:
            failure = f"cannot connect to {host}:{port}: {error.strerror or error}"
        finally:
            self._connecting = None
        self._end(None, failure)

    def _on_headers(self, headers: dict[str, str]) -> None:
        """The response headers, or trailers: remember the status, or end on a bad answer."""
        status = headers.get("grpc-status")
        if status is not None:
            self._status = int(status) if status.isdecimal() else _UNKNOWN
            self._message = urllib.parse.unquote(headers.get("grpc-message", ""))
            return
        http = headers.get(":status")
        if http is not None and http != "200":
            code = _HTTP_STATUS.get(int(http) if http.isdecimal() else 0, _UNKNOWN)
            self._end(code, f"HTTP status {http}")
        elif http is not None and not headers.get("content-type", "").startswith(
                "application/grpc"):
            self._end(_UNKNOWN, f"not a gRPC answer ({headers.get('content-type', '')!r})")

    def _messages(self, data: bytes) -> None:
        """Split answer bytes into messages, each handed to ``on_message``."""
        inbox = self._inbox
        inbox += data
        start, size = 0, len(inbox)
        while size - start >= 5 and not self._ended:
            compressed, length = _PREFIX.unpack_from(inbox, start)
            if length > _MAX_MESSAGE:
                self._end(_RESOURCE_EXHAUSTED, f"an answer of {length} bytes (at most "
                                               f"{_MAX_MESSAGE})")
                return
            end = start + 5 + length
            if end > size:
                break
            if compressed:
                self._end(_INTERNAL, "compressed message (no compression was offered)")
                return
            try:
                self._on_message(bytes(inbox[start + 5:end]))
            except Exception as error:  # e.g. an answer that does not parse
                self._end(_INTERNAL, f"could not handle an answer ({type(error).__name__})")
                return
            start = end
        del inbox[:start]

    def _flush(self) -> None:
        """Hand buffered requests to h2 as far as the peer's windows allow, then write."""
        h2conn, outbox, stream_id = self._h2, self._outbox, self._stream_id
        try:
            while outbox:
                size = min(len(outbox), h2conn.local_flow_control_window(stream_id),
                           h2conn.max_outbound_frame_size)
                if size <= 0:
                    break
                h2conn.send_data(stream_id, bytes(outbox[:size]))
                del outbox[:size]
        except h2.exceptions.ProtocolError as error:  # the stream was closed meanwhile
            self._end(None, f"HTTP/2 protocol error: {type(error).__name__}")
            return
        self._write()

    def _write(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None:
            self._transport.write(data)

    def _end(self, status: int | None, message: str) -> None:
        if self._ended:
            return
        self._ended = True
        self._drop()
        self._on_end(StreamEnd(status, message))

    def _drop(self) -> None:
        """Abort the connection (or the attempt to make it): no TLS goodbye, no waiting for
        buffered bytes to reach a server that may be frozen."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()


def _name(code: int | None) -> str:
    """An HTTP/2 error code's name."""
    if code is not None:
        with contextlib.suppress(ValueError):
            return h2.errors.ErrorCodes(code).name
    return str(code)
