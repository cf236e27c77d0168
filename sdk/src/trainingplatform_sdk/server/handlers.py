"""Wrapping a grpc.aio method handler: refusing a call, running it with the caller in a context variable, turning
its exceptions into statuses, and answering requests that do not parse with INVALID_ARGUMENT.

A refused call is answered before its request is read: grpc.aio reads and parses a unary request before it calls
the handler, so the refusal is a handler with a streaming request whose messages it never reads (they are read only
when iterated); its client, unary or streaming, just sees the status. A flood of large requests without a valid
token therefore costs the server no memory for their messages.

Used by the interceptor every server of the platform builds on (`interceptor.py`), so every server treats bad
input the same way. The mapping of exceptions to status codes is the service's `status_of` (`status.py`).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc._cython import cygrpc

from trainingplatform_sdk.errors import UnavailableError, cap_status_message
from trainingplatform_sdk.server.status import StatusOf

# What reading a client stream raises once the server has stopped (grpc.aio has no public name for it).
_SERVER_STOPPED: tuple[type[BaseException], ...] = tuple(
    error for error in (getattr(cygrpc, "_ServerStoppedError", None),) if isinstance(error, type)
)

__all__ = ["MalformedRequest", "wrap_handler"]


class MalformedRequest(Exception):
    """The request's bytes are not a valid message of the method's request type."""


class _Unparsed:
    """Stands in for a request that failed to parse, so the handler answers INVALID_ARGUMENT (gRPC's own
    deserialiser failure would be an opaque UNKNOWN)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:
            return _Unparsed(error)

    return parse


def _check(request: Any) -> Any:
    if isinstance(request, _Unparsed):
        raise MalformedRequest(f"the request is not a valid protobuf message for this method ({request.error})")
    return request


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    try:
        async for request in requests:
            yield _check(request)
    except _SERVER_STOPPED as error:
        # The grace period ended while the stream was open: not a fault of the handler, and the client resumes.
        raise UnavailableError("the server is shutting down; resume from GetStreamCursor") from error


def wrap_handler(
    handler: grpc.RpcMethodHandler,
    *,
    status_of: StatusOf,
    log: logging.Logger,
    refusal: BaseException | None = None,
    caller: tuple[contextvars.ContextVar[Any], Any] | None = None,
) -> Any:
    """A handler of the same shape as `handler`.

    Args:
        handler: The service's handler.
        status_of: Maps an exception to the status to send (the service's one mapping).
        log: Where unexpected errors (INTERNAL) are logged with their traceback.
        refusal: When set, every call is refused with it (authentication failed), before its request is read.
        caller: A context variable and the value it holds while the handler runs (the authenticated caller).
    """

    async def fail(context: grpc.aio.ServicerContext, error: BaseException) -> None:
        # Every message is capped: one longer than a client's metadata limit would reach it as RESOURCE_EXHAUSTED
        # "Stream removed" instead of the error.
        if isinstance(error, MalformedRequest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, cap_status_message(str(error)))
        code, message = status_of(error)
        if code is grpc.StatusCode.INTERNAL:
            log.error("unexpected error in a handler", exc_info=error)
        await context.abort(code, cap_status_message(message))

    if refusal is not None:
        return _refusing(handler, refusal, fail)

    def enter() -> contextvars.Token[Any] | None:
        return caller[0].set(caller[1]) if caller is not None else None

    def leave(token: contextvars.Token[Any] | None) -> None:
        if caller is not None and token is not None:
            # Closed from another context (a client cancelled a streaming call while the server waited in a write,
            # and asyncio's finalizer closes the abandoned generator in a task of its own): that context is the
            # closer's, discarded after, so there is nothing to restore. Raising there logged "Task exception was
            # never retrieved" with a traceback at ERROR for every such call.
            with contextlib.suppress(ValueError):
                caller[0].reset(token)

    streaming_request = bool(handler.stream_unary or handler.stream_stream)
    if handler.unary_unary or handler.stream_unary:
        behavior = handler.unary_unary or handler.stream_unary

        async def single(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = enter()
            try:
                return await behavior(_checked(request) if streaming_request else _check(request), context)
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await fail(context, error)
            finally:
                leave(token)

        wrapped: Any = single
        factory = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
    else:
        behavior = handler.unary_stream or handler.stream_stream

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            token = enter()
            try:
                async for response in behavior(_checked(request) if streaming_request else _check(request), context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await fail(context, error)
            finally:
                leave(token)

        wrapped = streaming
        factory = (
            grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
        )
    return factory(
        wrapped,
        request_deserializer=_lenient(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


def _refusing(
    handler: grpc.RpcMethodHandler,
    refusal: BaseException,
    fail: Callable[[grpc.aio.ServicerContext, BaseException], Awaitable[None]],
) -> Any:
    """A handler that answers every call with `refusal`'s status without reading its request.

    Its request is a stream whatever the method's (so grpc.aio does not read a unary request before calling it)
    and is never iterated; nor is it parsed (no deserialiser). The response keeps the method's cardinality.
    """
    if handler.unary_unary or handler.stream_unary:

        async def refuse(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            await fail(context, refusal)

        return grpc.stream_unary_rpc_method_handler(refuse, response_serializer=handler.response_serializer)

    async def refuse_streaming(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await fail(context, refusal)
        yield  # never reached: makes this an async generator, as grpc.aio expects of a streaming response

    return grpc.stream_stream_rpc_method_handler(refuse_streaming, response_serializer=handler.response_serializer)
