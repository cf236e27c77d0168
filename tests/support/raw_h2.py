"""A hand-made HTTP/2 gRPC call with header values of any bytes: what a client not built on gRPC, or a proxy, can
send, and gRPC's own clients refuse to (a value that is not valid UTF-8, for instance)."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator, Sequence

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS = 0, 1, 4
END_STREAM, END_HEADERS = 1, 4


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


def call(address: str, method: str, headers: Sequence[tuple[bytes, bytes]], message: bytes, wait: float = 1.0) -> bytes:
    """One unary call of `method` (`/package.Service/Method`) on a new plaintext connection to `address`, with
    `headers` added as they are; returns the bytes the server sent until it ended the call, closed the connection
    or `wait` seconds passed."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=min(5.0, wait)) as sock:
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
        sock.sendall(_frame(DATA, END_STREAM, 1, b"\x00" + struct.pack(">I", len(message)) + message))
        received = b""
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
