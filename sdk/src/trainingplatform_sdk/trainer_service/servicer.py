"""The TrainerService RPCs: request checks and message conversion around the Supervisor."""

from __future__ import annotations

import asyncio
import base64
import binascii

import grpc
from trainingplatform.trainer.v1 import trainer_pb2, trainer_pb2_grpc

from trainingplatform_sdk.errors import InvalidArgumentError
from trainingplatform_sdk.trainer_service.framework import Catalog
from trainingplatform_sdk.trainer_service.supervisor import Supervisor

__all__ = ["TrainerServicer"]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_TOKEN_PREFIX = "before:"


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """Serves trainingplatform.trainer.v1.TrainerService. Errors are raised as PlatformError and turned into
    statuses by the interceptor.

    Args:
        supervisor: Runs the training processes.
        catalog: The framework's description, models and devices.
        max_concurrent_jobs: Reported by GetCapabilities.
    """

    def __init__(self, supervisor: Supervisor, catalog: Catalog, max_concurrent_jobs: int) -> None:
        self._supervisor = supervisor
        self._catalog = catalog
        self._max_concurrent_jobs = max_concurrent_jobs

    async def StartTraining(
        self, request: trainer_pb2.StartTrainingRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.StartTrainingResponse:
        if request.validate_only:
            # Every check a start runs, and nothing else: no run, no process, no slot of the concurrency limit.
            await self._supervisor.validate(request)
            return trainer_pb2.StartTrainingResponse()
        run = await self._supervisor.start(request)
        return trainer_pb2.StartTrainingResponse(run_id=run.run_id)

    async def GetTraining(
        self, request: trainer_pb2.GetTrainingRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.GetTrainingResponse:
        run = self._supervisor.find(request.run_id, request.job_id)
        return trainer_pb2.GetTrainingResponse(run=run.to_proto())

    async def ListTrainings(
        self, request: trainer_pb2.ListTrainingsRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.ListTrainingsResponse:
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            raise InvalidArgumentError(f"page_size must be between 0 and {MAX_PAGE_SIZE}; got {request.page_size}")
        limit = request.page_size or DEFAULT_PAGE_SIZE
        runs, next_sequence = self._supervisor.newest_first(_decode_page_token(request.page_token), limit)
        return trainer_pb2.ListTrainingsResponse(
            runs=[run.to_proto() for run in runs],
            next_page_token=_encode_page_token(next_sequence) if next_sequence is not None else "",
        )

    async def CancelTraining(
        self, request: trainer_pb2.CancelTrainingRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.CancelTrainingResponse:
        if request.grace_period_seconds < 0:
            raise InvalidArgumentError(f"grace_period_seconds: must be 0 or more, got {request.grace_period_seconds}")
        run = self._supervisor.find(request.run_id, request.job_id)
        self._supervisor.cancel(run, request.grace_period_seconds or None)
        return trainer_pb2.CancelTrainingResponse(run=run.to_proto())

    async def GetCapabilities(
        self, request: trainer_pb2.GetCapabilitiesRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.GetCapabilitiesResponse:
        description = self._catalog.description
        # The first call may import the framework (seconds); the event loop keeps serving meanwhile.
        models, devices = await asyncio.to_thread(lambda: (self._catalog.models(), self._catalog.devices()))
        return trainer_pb2.GetCapabilitiesResponse(
            framework=description.framework,
            tasks=description.tasks,
            models=models,
            devices=devices,
            builtin_datasets=description.builtin_datasets,
            max_concurrent_jobs=self._max_concurrent_jobs,
        )


def _encode_page_token(sequence: int) -> str:
    return base64.urlsafe_b64encode(f"{_TOKEN_PREFIX}{sequence}".encode()).decode()


def _decode_page_token(token: str) -> int | None:
    """The sequence a page token continues before; None without a token.

    Raises:
        InvalidArgumentError: Anything but a token `_encode_page_token` writes (a forged `before:-5` would answer an
            empty page as if it were the last).
    """
    if not token:
        return None
    try:
        digits = base64.urlsafe_b64decode(token.encode()).decode().removeprefix(_TOKEN_PREFIX)
        if digits.isascii() and digits.isdigit() and _encode_page_token(int(digits)) == token:
            return int(digits)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise InvalidArgumentError("page_token: not a next_page_token of ListTrainings")
