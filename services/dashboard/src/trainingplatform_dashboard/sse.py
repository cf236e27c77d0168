"""The Server-Sent Events response: a client's queued chunks as they come, `: ping` when idle.

A browser that stops reading is never waited for: while a chunk is being sent, the stream also watches its
client, and when the client overflows (its queue passed its bound because the socket accepts nothing) the stream
leaves the fan-out at once, drops what was queued and ends its response. The browser's EventSource then reconnects
with the id of the last event it received and resumes from there, so nothing is lost; meanwhile no other browser
and no backend subscription waited for it.

When the server begins to stop, every stream ends its response at once (`Sessions.stop_streams`; the browser
reconnects, to the next server, and resumes from its last event id). One still open after uvicorn's graceful-shutdown
wait (its socket accepts nothing) is cancelled and ends without a traceback in the log.

A stream lives no longer than its session: when the session expires (or is dropped) the stream sends
`event: session_ended` and completes, within a chunk or at the expiry time, however busy or quiet the job is (the
browser's reconnect then gets a 401).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from trainingplatform_dashboard.fanout import Client

__all__ = ["EventStream"]

_HEADERS = {"cache-control": "no-store", "x-accel-buffering": "no"}
SESSION_ENDED = (
    b'event: session_ended\ndata: {"error":{"code":"UNAUTHENTICATED","message":'
    b'"your session has ended: open the login URL again","field":null}}\n\n'
)


class EventStream(Response):
    """text/event-stream of one `Client` until it is closed (end of the job), overflows (too slow: the stream ends
    at once, what was queued is dropped), the session ends (`expires()`: the session's end, time.time() seconds; 0
    once it was dropped), the browser goes away or the server stops. `on_close` runs once, whatever the end, and the
    response completes (unless the browser went away)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        client: Client,
        ping_s: float,
        on_close: Callable[[], None],
        expires: Callable[[], float] | None = None,
    ) -> None:
        self.client = client
        self.expires = expires
        self.ping_s = ping_s
        self.on_close = on_close
        self.status_code = 200
        self.background = None
        self.init_headers(_HEADERS)
        self._gone = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        listener = asyncio.get_running_loop().create_task(self._listen(receive))
        started = False
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            started = True
            await self._pump(send)
        except asyncio.CancelledError:
            # The server stops: uvicorn cancels the responses still open after its graceful-shutdown wait. The
            # response completes below (the browser reconnects), quietly: raised, it would log a traceback per tab.
            pass
        except OSError:
            pass  # the browser went away mid-send
        finally:
            listener.cancel()
            with contextlib.suppress(BaseException):
                await listener
            self.on_close()
            if self.client.overflowed:
                self.client.queue.clear()
        if started and not self._gone:
            # The end of the response, also for a client dropped as too slow: its EventSource reconnects with the
            # id of the last event it received. Past a full socket buffer this waits until the browser reads or
            # goes away (the client already left the fan-out above); cancelled then, the server closes it.
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _listen(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._gone = True
                self.client.wake.set()
                if self.client.interrupt is not None:
                    self.client.interrupt()
                return

    async def _pump(self, send: Send) -> None:
        """Sends until the end: the client closed, overflowed or left, or the session ended."""
        client = self.client
        if not await self._send(send, b"retry: 1000\n\n"):
            return
        while True:
            client.wake.clear()
            if self._gone or client.stopped:
                return
            left = self._session_left()
            if left <= 0:
                await self._send(send, SESSION_ENDED)
                return
            if client.queue:
                if not await self._send(send, client.take()):
                    return
                continue
            if client.closed or client.overflowed:
                return
            try:
                await asyncio.wait_for(client.wake.wait(), timeout=min(self.ping_s, left))
            except TimeoutError:
                if self._session_left() > 0 and not await self._send(send, b": ping\n\n"):
                    return

    def _session_left(self) -> float:
        """Seconds until the session ends (infinite without a session to watch)."""
        if self.expires is None:
            return float("inf")
        return self.expires() - time.time()

    async def _send(self, send: Send, chunk: bytes) -> bool:
        """Sends one chunk; gives up (False) when the client overflows or leaves while the socket is full."""
        if self.client.overflowed or self._gone:
            return False
        task = asyncio.ensure_future(send({"type": "http.response.body", "body": chunk, "more_body": True}))
        self.client.interrupt = task.cancel
        try:
            await task
        except asyncio.CancelledError:
            if task.cancelled() and (self.client.overflowed or self._gone):
                return False  # interrupted: dropped, not cancelled ourselves
            raise
        finally:
            self.client.interrupt = None
        return True
