"""A TCP proxy on loopback that breaks connections on demand or at random, for reliability tests.

    with ChaosProxy("127.0.0.1:50051", seed=7) as proxy:
        logger = TrainingLogger(job_id, backend_address=proxy.address, ...)
        proxy.start_chaos(0.2, 1.5)   # every 0.2-1.5 s (seeded), every open connection is reset
        proxy.pause()                 # new connections are reset as soon as they are accepted
        proxy.resume()
        proxy.cut_all()               # reset every open connection now
        proxy.stall()                 # accept and hold every connection, forward nothing (a network stall)
        proxy.unstall()               # forward again, held bytes first

A cut aborts both sockets of each connection (RST, no FIN), as a crashed peer or a dropped NAT entry would:
the client sees its calls fail with UNAVAILABLE, the server sees its streams end mid-message. The proxy runs an
asyncio loop in its own thread; every public method may be called from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from types import TracebackType

_CHUNK = 64 * 1024


class ChaosProxy:
    """Forwards loopback TCP connections to `target` and cuts them when told, or at seeded random moments.

    Args:
        target: `host:port` of the real server.
        seed: Seed of the random chaos intervals (print it in the test to replay a run).

    Attributes:
        accepted: Connections forwarded so far.
        refused: Connections reset on accept because the proxy was paused.
        cuts: Times `cut_all` ran (by hand or by the chaos), whether or not a connection was open.
        connections_cut: Connections reset by those cuts.
    """

    def __init__(self, target: str, *, seed: int) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._connections: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._chaos: asyncio.Task[None] | None = None
        self._paused = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.port = 0
        self.accepted = 0
        self.refused = 0
        self.cuts = 0
        self.connections_cut = 0

    @property
    def address(self) -> str:
        """`127.0.0.1:<port>`: where clients connect."""
        return f"127.0.0.1:{self.port}"

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> ChaosProxy:
        """Starts listening on a free loopback port."""
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def close(self) -> None:
        """Stops the chaos, cuts every connection, stops listening and ends the thread."""
        if not self._thread.is_alive():
            return
        self.stop_chaos()
        self.unstall()
        self.cut_all()
        if self._server is not None:
            self._server.close()
            self._call(self._server.wait_closed())
        # Connections still being set up or pumped end here, not when their tasks are garbage-collected later (an
        # asyncio ERROR, "Task was destroyed but it is pending!", in whatever test the process runs then).
        self._call(self._cancel_tasks())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> ChaosProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # --- faults ------------------------------------------------------------------------------------------------

    def cut_all(self) -> int:
        """Resets every open connection now; returns how many there were."""
        return self._call(self._cut_all())

    def pause(self) -> None:
        """Resets each new connection as soon as it is accepted, until `resume()` (open ones are left alone)."""
        self._paused = True

    def resume(self) -> None:
        """Forwards new connections again."""
        self._paused = False

    def stall(self) -> None:
        """Stops forwarding: open and new connections stay open but no byte goes through, until `unstall()`."""
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def unstall(self) -> None:
        """Forwards again; what was held during the stall goes through first."""
        self._loop.call_soon_threadsafe(self._flowing.set)

    def start_chaos(self, min_interval_s: float = 0.2, max_interval_s: float = 1.5) -> None:
        """Cuts every open connection at random intervals drawn uniformly (from the seeded RNG) between the bounds."""

        async def start() -> None:
            self._chaos = asyncio.ensure_future(self._run_chaos(min_interval_s, max_interval_s))

        self.stop_chaos()
        self._call(start())

    def stop_chaos(self) -> None:
        """Stops the random cuts (an interval in progress is abandoned)."""

        async def stop() -> None:
            if self._chaos is not None:
                self._chaos.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._chaos
                self._chaos = None

        self._call(stop())

    # --- the loop's side ---------------------------------------------------------------------------------------

    def _call(self, coroutine):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    async def _run_chaos(self, min_interval_s: float, max_interval_s: float) -> None:
        while True:
            # The chaos itself: a random pause between faults, not a synchronisation.
            await asyncio.sleep(self._rng.uniform(min_interval_s, max_interval_s))
            await self._cut_all()

    @staticmethod
    async def _cancel_tasks() -> None:
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _cut_all(self) -> int:
        connections = list(self._connections)
        self._connections.clear()
        for client, upstream in connections:
            client.transport.abort()
            upstream.transport.abort()
        self.cuts += 1
        self.connections_cut += len(connections)
        return len(connections)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._paused:
            self.refused += 1
            client_writer.transport.abort()
            return
        await self._flowing.wait()
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.transport.abort()  # the server is down: the client sees a reset, as it would directly
            return
        pair = (client_writer, upstream_writer)
        self._connections.add(pair)
        self.accepted += 1
        try:
            await asyncio.gather(self._pump(client_reader, upstream_writer), self._pump(upstream_reader, client_writer))
        finally:
            self._connections.discard(pair)
            client_writer.transport.abort()
            upstream_writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(_CHUNK):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            writer.transport.abort()
