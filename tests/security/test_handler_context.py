"""A streaming handler closed from another context (a client cancelled the call while the server waited in a write,
and asyncio's async-generator finalizer closes the abandoned generator in a task of its own) must not raise: before,
`leave` reset the caller's context variable with a token of the handler's context and raised "ValueError: <Token
var=<ContextVar name='principal'> ...> was created in a different Context", logged as "Task exception was never
retrieved" with its traceback (about 15 ERROR lines per cancelled SubscribeTelemetry)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from trainingplatform_sdk.server.handlers import wrap_handler

PRINCIPAL: contextvars.ContextVar[str | None] = contextvars.ContextVar("principal", default=None)


def test_a_streaming_handler_closed_in_another_context_does_not_raise() -> None:
    seen: list[str | None] = []

    async def subscribe(request: Any, context: Any) -> AsyncIterator[int]:
        try:
            for index in range(1_000_000):
                seen.append(PRINCIPAL.get())
                yield index
        finally:
            seen.append(PRINCIPAL.get())

    handler = grpc.unary_stream_rpc_method_handler(subscribe)
    wrapped = wrap_handler(
        handler,
        status_of=lambda error: (grpc.StatusCode.INTERNAL, "x"),
        log=logging.getLogger("t"),
        caller=(PRINCIPAL, "reader"),
    )

    async def scenario() -> None:
        stream = wrapped.unary_stream(object(), object())

        async def serve() -> None:  # the call's task: it takes one response, then waits in a "write"
            await anext(stream)
            await asyncio.sleep(3600)

        task = asyncio.create_task(serve(), context=contextvars.copy_context())
        await asyncio.sleep(0.01)
        task.cancel()  # the client cancelled: the generator is left suspended at its yield
        await asyncio.gather(task, return_exceptions=True)
        # The finalizer closes it from another task and context.
        closer = asyncio.create_task(stream.aclose(), context=contextvars.Context())
        await closer  # raised ValueError before

    asyncio.run(scenario())
    assert seen[0] == "reader" and PRINCIPAL.get() is None
