"""The training platform's SDK.

The top level holds what a training script and a client service need most; each concern has its own package:

- `telemetry`: `TrainingLogger` and its sender, spool and settings (trainer side).
- `clients`: typed clients of the backend's JobsService and of a trainer's TrainerService.
- `spec`: a job's configs, the input limits and the checks every component shares.
- `training`: the adapter base, `tp-train`, MLflow tracking and artifacts (needs torch only in adapters).
- `server` and `trainer_service` (extra `server`): what every gRPC server of the platform shares, and the
  framework-neutral trainer service.
- `cli` (extra `cli`): `tp`, the demo and the local stack.

docs/architecture.md has the package map and what each package may import.
"""

# First, before any module of this package imports grpc: turns gRPC's fork handlers off (grpc_env says why).
from trainingplatform_sdk import grpc_env  # noqa: F401
from trainingplatform_sdk.clients import JobsClient, TrainerClient
from trainingplatform_sdk.errors import (
    ConfigError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    PlatformError,
    ResourceExhaustedError,
    SpoolLockedError,
    StorageError,
    TrackingError,
    UnauthenticatedError,
    UnavailableError,
)
from trainingplatform_sdk.telemetry import DeliveryReport, LoggerSettings, TrainingLogger

__all__ = [
    "ConfigError",
    "DeliveryReport",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "JobsClient",
    "LoggerSettings",
    "NotFoundError",
    "PermissionDeniedError",
    "PlatformError",
    "ResourceExhaustedError",
    "SpoolLockedError",
    "StorageError",
    "TrackingError",
    "TrainerClient",
    "TrainingLogger",
    "UnauthenticatedError",
    "UnavailableError",
]

__version__ = "0.1.0"
