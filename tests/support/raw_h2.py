"""A hand-made HTTP/2 gRPC call with header values of any bytes: what a client not built on gRPC, or a proxy, can
send, and gRPC's own clients refuse to (a value that is not valid UTF-8, for instance)."""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Iterator, Sequence

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, WINDOW_UPDATE = 0, 1, 4, 6, 8
END_STREAM, END_HEADERS, ACK = 1, 4, 1


def _integer(value: int, prefix_bits: int) -> bytes:
    """An HPACK integer with a `prefix_bits`-bit prefix (RFC 7541, 5.1)."""
    largest = (1 << prefix_bits) - 1
    if value < largest:
        return bytes([value])
    out = [largest]
    value -= largest
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header field literal without indexing, with a literal name (RFC 7541, 6.2.2), no Huffman coding."""
    return b"\x00" + _integer(len(name), 7) + name + _integer(len(value), 7) + value


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _open(sock: socket.socket, address: str, method: str, headers: Sequence[tuple[bytes, bytes]]) -> None:
    """Sends the connection preface and the HEADERS that open the call (stream 1) of `method`."""
    sock.sendall(PREFACE + _frame(SETTINGS, 0, 0, b""))
    block = (
        b"\x83\x86"  # :method POST, :scheme http (HPACK static table)
        + _literal(b":path", method.encode())
        + _literal(b":authority", address.encode())
        + _literal(b"content-type", b"application/grpc")
        + _literal(b"te", b"trailers")
    )
    for name, value in headers:
        block += _literal(name, value)
    sock.sendall(_frame(HEADERS, END_HEADERS, 1, block))


def _message(message: bytes, flags: int = 0) -> bytes:
    """One gRPC message (uncompressed, length-prefixed) as a DATA frame of stream 1."""
    return _frame(DATA, flags, 1, b"\x00" + struct.pack(">I", len(message)) + message)


def _read_until_ended(sock: socket.socket, received: bytes, wait: float) -> bytes:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not _stream_ended(received):
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        received += chunk
    return received


def call(address: str, method: str, headers: Sequence[tuple[bytes, bytes]], message: bytes, wait: float = 1.0) -> bytes:
    """One unary call of `method` (`/package.Service/Method`) on a new plaintext connection to `address`, with
    `headers` added as they are; returns the bytes the server sent until it ended the call, closed the connection
    or `wait` seconds passed."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=min(5.0, wait)) as sock:
        _open(sock, address, method, headers)
        sock.sendall(_message(message, END_STREAM))
        return _read_until_ended(sock, b"", wait)


class ClientStream:
    """One client-streaming call of `method` on a plaintext connection of its own, written by the caller's thread
    with no gRPC library: each `send` is one DATA frame and one `send` system call. It answers the server's
    SETTINGS and PINGs and honours the connection's and the stream's send windows (65,535 bytes until the server
    widens them), reading what the server sent without blocking at each `send`; `finish` ends the call and
    returns what the server sent. What a transport below gRPC's Python layer would cost (`bench_grpc_floor.py`).
    """

    def __init__(self, address: str, method: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        host, port = address.rsplit(":", 1)
        self._sock = socket.create_connection((host, int(port)), timeout=10)
        _open(self._sock, address, method, headers)
        self._sock.setblocking(False)
        self._received = b""
        self._parsed = 0  # bytes of _received whose frames were handled
        self._window = {0: 65535, 1: 65535}  # the connection's and stream 1's send windows

    def _read(self) -> None:
        """Handles every whole frame the server has sent so far."""
        while True:
            try:
                chunk = self._sock.recv(65536)
            except BlockingIOError:
                break
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self._received += chunk
        while self._parsed + 9 <= len(self._received):
            head = self._received[self._parsed : self._parsed + 9]
            length = int.from_bytes(head[:3], "big")
            if self._parsed + 9 + length > len(self._received):
                break
            kind, flags, stream = head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
            payload = self._received[self._parsed + 9 : self._parsed + 9 + length]
            if kind == SETTINGS and not flags & ACK:
                self._send_all(_frame(SETTINGS, ACK, 0, b""))
                for offset in range(0, len(payload), 6):
                    if int.from_bytes(payload[offset : offset + 2], "big") == 4:  # SETTINGS_INITIAL_WINDOW_SIZE
                        self._window[1] = int.from_bytes(payload[offset + 2 : offset + 6], "big")
            elif kind == PING and not flags & ACK:
                self._send_all(_frame(PING, ACK, 0, payload))
            elif kind == WINDOW_UPDATE and stream in self._window:
                self._window[stream] += int.from_bytes(payload, "big") & 0x7FFFFFFF
            self._parsed += 9 + length

    def send(self, message: bytes) -> None:
        """Writes `message` as the call's next request."""
        frame = _message(message)
        self._read()
        while min(self._window.values()) < len(frame) - 9:  # the server has not made room yet
            if not select.select([self._sock], [], [], 10)[0]:
                raise TimeoutError("the server gave no send window for 10 s")
            self._read()
        self._window[0] -= len(frame) - 9
        self._window[1] -= len(frame) - 9
        self._send_all(frame)

    def _send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self._sock.send(view) :]
            except BlockingIOError:
                if not select.select([], [self._sock], [], 10)[1]:
                    raise TimeoutError("the server read nothing for 10 s") from None

    def finish(self, wait: float = 10.0) -> bytes:
        """Ends the call (an empty DATA frame with END_STREAM); returns every byte the server sent."""
        self._sock.setblocking(True)
        self._sock.settimeout(wait)
        try:
            self._sock.sendall(_frame(DATA, END_STREAM, 1, b""))
            return _read_until_ended(self._sock, self._received, wait)
        finally:
            self._sock.close()


def _frames(received: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """The (kind, flags, stream, payload) of each whole frame in `received`."""
    offset = 0
    while offset + 9 <= len(received):
        length = int.from_bytes(received[offset : offset + 3], "big")
        kind, flags = received[offset + 3], received[offset + 4]
        stream = int.from_bytes(received[offset + 5 : offset + 9], "big") & 0x7FFFFFFF
        yield kind, flags, stream, received[offset + 9 : offset + 9 + length]
        offset += 9 + length


def _stream_ended(received: bytes) -> bool:
    """Whether `received` holds the frame that ends stream 1 (the call's trailers)."""
    return any(
        stream == 1 and flags & END_STREAM and kind in (DATA, HEADERS) for kind, flags, stream, _ in _frames(received)
    )


def response_data(received: bytes) -> bytes:
    """The DATA the server sent on the call (stream 1): empty when it refused the call (trailers only)."""
    return b"".join(payload for kind, _, stream, payload in _frames(received) if kind == DATA and stream == 1)
