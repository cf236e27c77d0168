"""What every gRPC server of the platform (the backend, the trainer services) is built from (extra `server`).

- `options`: the channel arguments: keepalive agreed with the SDK's clients, message sizes, connection age;
- `tls`: server credentials from PEM files;
- `metadata`: the `authorization: Bearer <token>` header and the public (token-free) methods;
- `status`: the one mapping of errors to gRPC status codes;
- `handlers`: the handler wrapper that refuses calls, maps errors and answers malformed requests;
- `interceptor`: the interceptor that authenticates each call, built on the above;
- `lifecycle`: health and reflection, binding, SERVING/NOT_SERVING around start and stop, the signal loop.
"""

from trainingplatform_sdk.server.handlers import MalformedRequest, wrap_handler
from trainingplatform_sdk.server.interceptor import AuthInterceptor
from trainingplatform_sdk.server.lifecycle import (
    LOG_FORMAT,
    GrpcServer,
    Stoppable,
    configure_logging,
    run_until_signal,
)
from trainingplatform_sdk.server.metadata import PUBLIC_METHOD_PREFIXES, bearer_token, is_public
from trainingplatform_sdk.server.options import server_options
from trainingplatform_sdk.server.status import Status, StatusOf, status_mapping
from trainingplatform_sdk.server.tls import TlsFiles

__all__ = [
    "LOG_FORMAT",
    "PUBLIC_METHOD_PREFIXES",
    "AuthInterceptor",
    "GrpcServer",
    "MalformedRequest",
    "Status",
    "StatusOf",
    "Stoppable",
    "TlsFiles",
    "bearer_token",
    "configure_logging",
    "is_public",
    "run_until_signal",
    "server_options",
    "status_mapping",
    "wrap_handler",
]
