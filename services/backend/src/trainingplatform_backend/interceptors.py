"""The server interceptor: authenticates every call (unary and streaming) and maps errors to status codes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from trainingplatform_backend import auth
from trainingplatform_backend.errors import InvalidArgument, ServiceError, status_of

log = logging.getLogger(__name__)


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates the caller from metadata, checks its right to the method, and turns exceptions raised by
    the handlers into gRPC statuses (ServiceError keeps its code and message; anything else is INTERNAL)."""

    def __init__(self, authenticator: auth.Authenticator) -> None:
        self._authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(auth.PUBLIC_METHOD_PREFIXES):
            return handler
        header = None
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode()
                break
        try:
            principal = await self._authenticator.authenticate(header)
            auth.check_method(method, principal)
        except ServiceError as error:
            log.info("refused %s: %s", method, error.message)
            return _wrap(handler, None, error)
        return _wrap(handler, principal, None)


class _Malformed:
    """Stands in for a request whose bytes are not a valid message, so the handler can answer INVALID_ARGUMENT
    (gRPC's own deserialiser failure would be an opaque UNKNOWN)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:
            return _Malformed(error)

    return parse


def _check(request: Any) -> Any:
    if isinstance(request, _Malformed):
        raise InvalidArgument(f"the request is not a valid protobuf message for this method ({request.error})")
    return request


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _check(request)


def _wrap(handler: grpc.RpcMethodHandler, principal: auth.Principal | None, refusal: ServiceError | None) -> Any:
    """A handler of the same shape whose behaviour sets the principal (or aborts with the refusal), and whose
    requests that fail to parse are answered with INVALID_ARGUMENT."""

    async def fail(context: grpc.aio.ServicerContext, error: BaseException) -> None:
        code, message = status_of(error)
        if code is grpc.StatusCode.INTERNAL:
            log.exception("unexpected error in %s", getattr(handler, "method", "handler"), exc_info=error)
        await context.abort(code, message)

    if handler.unary_unary or handler.stream_unary:
        behavior = handler.unary_unary or handler.stream_unary

        async def single(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if refusal is not None:
                await fail(context, refusal)
            token = auth.set_principal(principal)  # type: ignore[arg-type]
            try:
                requests = _checked(request) if handler.stream_unary else _check(request)
                return await behavior(requests, context)
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await fail(context, error)
            finally:
                auth.reset_principal(token)

        wrapped: Any = single
        factory = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
    else:
        behavior = handler.unary_stream or handler.stream_stream

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if refusal is not None:
                await fail(context, refusal)
            token = auth.set_principal(principal)  # type: ignore[arg-type]
            try:
                requests = _checked(request) if handler.stream_stream else _check(request)
                async for response in behavior(requests, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await fail(context, error)
            finally:
                auth.reset_principal(token)

        wrapped = streaming
        factory = (
            grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
        )
    return factory(
        wrapped,
        request_deserializer=_lenient(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )
