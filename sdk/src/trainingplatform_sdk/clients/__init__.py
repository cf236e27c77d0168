"""Typed Python clients of the platform's services, for other services and the CLI.

    from trainingplatform_sdk.clients import JobsClient

    with JobsClient("127.0.0.1:50051", token) as jobs:
        created = jobs.create_job(framework="timm", model="resnet10t", dataset="digits", epochs=3)
        for event in jobs.subscribe(created.job.job_id):
            ...

Callers never touch protobufs: results are frozen dataclasses and errors are `PlatformError` subclasses that
carry the gRPC status. Idempotent calls are retried by gRPC itself on UNAVAILABLE (a service config with a
retry policy); CreateJob and StartTraining are not (they are not idempotent). Every call has a deadline.
"""

from trainingplatform_sdk.clients._base import (
    Connection,
    client_channel,
    config_path,
    default_token,
    read_config,
    resolve_connection,
    write_config,
)
from trainingplatform_sdk.clients.jobs import (
    TERMINAL_STATUSES,
    CreatedJob,
    Cursor,
    EpochSummary,
    FrameworkAvailability,
    Job,
    JobsClient,
    LogLine,
    MetricBucket,
    MetricPoint,
    MetricSeries,
    MetricSeriesResult,
    StatusChange,
    TelemetryEvent,
)
from trainingplatform_sdk.clients.trainer import Capabilities, TrainerClient, TrainingRun
from trainingplatform_sdk.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    PlatformError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)

__all__ = [
    "TERMINAL_STATUSES",
    "Capabilities",
    "Connection",
    "CreatedJob",
    "Cursor",
    "EpochSummary",
    "FailedPreconditionError",
    "FrameworkAvailability",
    "InvalidArgumentError",
    "Job",
    "JobsClient",
    "LogLine",
    "MetricBucket",
    "MetricPoint",
    "MetricSeries",
    "MetricSeriesResult",
    "NotFoundError",
    "PermissionDeniedError",
    "PlatformError",
    "ResourceExhaustedError",
    "StatusChange",
    "TelemetryEvent",
    "TrainerClient",
    "TrainingRun",
    "UnauthenticatedError",
    "UnavailableError",
    "client_channel",
    "config_path",
    "default_token",
    "read_config",
    "resolve_connection",
    "write_config",
]
