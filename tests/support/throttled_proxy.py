"""A TCP proxy on loopback that forwards client-to-server bytes at a fixed rate (all connections together): a slow
but never silent link, such as an MLflow server pushing a large artifact to a remote S3."""

from __future__ import annotations

import asyncio
import threading


class ThrottledProxy:
    """Forwards `127.0.0.1:<port>` to `127.0.0.1:<target_port>`, client-to-server at `rate` bytes/s.

    Args:
        target_port: The server's port.
        rate: Bytes per second sent to the server, all connections together.
    """

    def __init__(self, target_port: int, *, rate: float) -> None:
        self.target_port = target_port
        self.rate = rate
        self.port = 0
        self.sent = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._lock: asyncio.Lock | None = None

    def start(self) -> ThrottledProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        self._lock = asyncio.Lock()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            self._pump(client_reader, server_writer, throttled=True),
            self._pump(server_reader, client_writer, throttled=False),
            return_exceptions=True,
        )

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, throttled: bool) -> None:
        assert self._lock is not None
        try:
            while data := await reader.read(16384):
                if throttled:
                    async with self._lock:
                        await asyncio.sleep(len(data) / self.rate)
                    self.sent += len(data)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
