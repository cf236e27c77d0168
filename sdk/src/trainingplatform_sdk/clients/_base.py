"""What every typed client shares: the channel (retries of idempotent calls, TLS), the auth metadata, deadlines,
and statuses turned into `PlatformError`s."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self

import grpc

from trainingplatform_sdk.channel import auth_metadata, open_channel
from trainingplatform_sdk.errors import PlatformError, UnauthenticatedError

# Pages of history reach 10,000 points: more than gRPC's 4 MiB default when keys are long.
CLIENT_MAX_RECEIVE_BYTES = 16 * 1024 * 1024


def raise_platform_error(error: grpc.RpcError) -> NoReturn:
    """Raises the `PlatformError` subclass of a failed call's status."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    raise PlatformError.from_status(code, details) from None


# --- connections --------------------------------------------------------------------------------------------

_IDEMPOTENT = {
    "trainingplatform.jobs.v1.JobsService": (
        "GetJob",
        "ListJobs",
        "CancelJob",
        "ListMetrics",
        "GetMetricSeries",
        "ListLogs",
    ),
    "trainingplatform.trainer.v1.TrainerService": ("GetTraining", "ListTrainings", "CancelTraining", "GetCapabilities"),
}


def _service_config() -> str:
    names = [{"service": service, "method": method} for service, methods in _IDEMPOTENT.items() for method in methods]
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": names,
                    "retryPolicy": {
                        "maxAttempts": 5,
                        "initialBackoff": "0.2s",
                        "maxBackoff": "3s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def client_channel(
    address: str,
    *,
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
) -> grpc.Channel:
    """A channel to a platform service that retries idempotent calls on UNAVAILABLE. `address` is `host:port`,
    `grpc://host:port` or `https://host:port` (TLS; system roots unless `root_certificates` is given; a client key
    and chain for mutual TLS)."""
    options = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", _service_config()),
        ("grpc.max_receive_message_length", CLIENT_MAX_RECEIVE_BYTES),
    ]
    return open_channel(
        address,
        options=options,
        root_certificates=root_certificates,
        private_key=private_key,
        certificate_chain=certificate_chain,
    )


TOKEN_ENV = "TP_AUTH_TOKEN"
"""The environment variable holding a front end's token (the backend's FRONTEND_AUTH_TOKEN, or its read token)."""
FRONTEND_TOKEN_FILE = "frontend_auth_token"
INTERNAL_TOKEN_FILE = "internal_auth_token"


def default_token(data_dir: str | os.PathLike[str] = ".data") -> str:
    """The token of a front end (the `tp` CLI, `JobsClient.from_env`), the first of:

    1. TP_AUTH_TOKEN (the backend's FRONTEND_AUTH_TOKEN, or its READ_AUTH_TOKEN for read-only use);
    2. INTERNAL_AUTH_TOKEN (kept for compatibility: it may do everything, trainers' RPCs included);
    3. `<data_dir>/frontend_auth_token`, the front-end token a local backend generated (TP_DATA_DIR, when set,
       is the data directory);
    4. `<data_dir>/internal_auth_token`, the local backend's service token (compatibility).

    A variable set beats a file, so a token chosen for this call is never overridden by a local backend's.

    Raises:
        UnauthenticatedError: none exists.
    """
    for name in (TOKEN_ENV, "INTERNAL_AUTH_TOKEN"):
        token = os.environ.get(name, "").strip()
        if token:
            return token
    directory = Path(os.environ.get("TP_DATA_DIR", data_dir))
    for file_name in (FRONTEND_TOKEN_FILE, INTERNAL_TOKEN_FILE):
        path = directory / file_name
        if path.exists():
            token = path.read_text().strip()
            if token:
                return token
    raise UnauthenticatedError(
        f"no token: set {TOKEN_ENV} (the backend's FRONTEND_AUTH_TOKEN) or start the backend so it writes "
        f"{directory / FRONTEND_TOKEN_FILE}"
    )


class Client:
    """A channel to one service with the caller's token; closes with `close()` or a `with` block."""

    def __init__(
        self,
        address: str,
        token: str,
        *,
        timeout: float = 30.0,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
    ) -> None:
        self._channel = client_channel(
            address, root_certificates=root_certificates, private_key=private_key, certificate_chain=certificate_chain
        )
        self._metadata = auth_metadata(token)
        self.timeout = timeout
        self.address = address

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, metadata=self._metadata, timeout=timeout or self.timeout)
        except grpc.RpcError as error:
            raise_platform_error(error)
