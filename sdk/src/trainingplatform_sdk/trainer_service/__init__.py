"""A framework-neutral trainer service: the gRPC TrainerService around `tp-train` processes.

A framework's service is a description and one call:

    from trainingplatform_sdk.trainer_service import FrameworkDescription, serve

    DESCRIPTION = FrameworkDescription(framework="timm", ...)

    def main() -> int:
        return serve(DESCRIPTION)

`serve` needs the SDK's `server` extra (grpcio-health-checking, grpcio-reflection); it is imported on first use,
so a training process can use `write_progress` and `ProgressSink` without it. docs/trainer_service.md describes
the settings and the behaviour.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainingplatform_sdk.trainer_service.framework import FrameworkDescription
from trainingplatform_sdk.trainer_service.job import JobRequest
from trainingplatform_sdk.trainer_service.settings import TrainerSettings
from trainingplatform_sdk.training.progress import Progress, ProgressSink, read_progress, write_progress

if TYPE_CHECKING:
    from trainingplatform_sdk.trainer_service.server import serve

__all__ = [
    "FrameworkDescription",
    "JobRequest",
    "Progress",
    "ProgressSink",
    "TrainerSettings",
    "read_progress",
    "serve",
    "write_progress",
]


def __getattr__(name: str) -> Any:
    if name == "serve":
        from trainingplatform_sdk.trainer_service.server import serve

        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
