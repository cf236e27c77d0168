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

import os

# gRPC's fork handlers off, before any module of this package imports grpc (gRPC reads the variable when it is
# imported). A training process forks DataLoader workers while its TrainingLogger's streams are open, and with the
# handlers on, a fork that lands while gRPC starts a thread crashed the parent or the child with a segmentation
# fault (tests/sdk/test_fork_safety.py). A forked child never uses the parent's channels (the logger turns itself
# off there), so nothing needs the handlers. A process that imported grpc first, or set the variable, keeps its
# choice.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

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
