"""Concurrency limits, each configurable and refused with a clear status, each slot usable again once freed: on the
backend, telemetry streams per job (TP_MAX_STREAMS_PER_JOB), subscriptions per caller
(TP_MAX_SUBSCRIPTIONS_PER_CALLER), calls per server (TP_MAX_CONCURRENT_RPCS) and calls per connection
(TP_MAX_CONCURRENT_STREAMS); on a trainer service, calls per server and per connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, text
from support.backend import BackendProcess, auth
from trainer_service.trainer_process import FAKE_ADAPTER, TrainerProcess
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from trainingplatform.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from trainingplatform.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from trainingplatform_backend.auth import derive_job_token

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
T = TypeVar("T")


@pytest.fixture
def make_backend(tmp_path: Path, database_url: str) -> Iterator[Callable[[dict[str, str]], BackendProcess]]:
    started: list[BackendProcess] = []

    def make(env: dict[str, str]) -> BackendProcess:
        process = BackendProcess(database_url, tmp_path / "data", extra_env=env)
        started.append(process)
        process.start()
        return process

    yield make
    for process in started:
        process.close()


async def eventually(attempt: Callable[[], Awaitable[T]], timeout: float = 10) -> T:
    """`attempt()`'s result once it stops raising RESOURCE_EXHAUSTED (a freed slot is released asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await attempt()
        except grpc.aio.AioRpcError as error:
            if error.code() is not EXHAUSTED or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


async def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def point(sequence: int) -> telemetry_pb2.MetricPoint:
    return telemetry_pb2.MetricPoint(key="loss", value=1.0, step=sequence, wall_time=time.time(), sequence=sequence)


def record(sequence: int) -> telemetry_pb2.LogRecord:
    return telemetry_pb2.LogRecord(
        level=common_pb2.LOG_LEVEL_INFO, message="m", wall_time=time.time(), sequence=sequence
    )


def test_telemetry_streams_per_job_are_limited_and_released(make_backend) -> None:
    backend = make_backend({"TP_MAX_STREAMS_PER_JOB": "2"})
    job_id, token = backend.create_job()
    other_job, other_token = backend.create_job()

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(backend.address) as channel:
            telemetry = telemetry_pb2_grpc.TrainingTelemetryServiceStub(channel)
            # Two open streams, one of each kind: both counted once their first message named the job.
            metrics = telemetry.StreamMetrics(metadata=auth(token), timeout=60)
            await metrics.write(telemetry_pb2.StreamMetricsRequest(job_id=job_id, points=[point(1)]))
            logs = telemetry.StreamLogs(metadata=auth(token), timeout=60)
            await logs.write(telemetry_pb2.StreamLogsRequest(job_id=job_id, records=[record(1)]))
            await wait_for(lambda: backend.metric_sequences(job_id) == [1] and backend.log_sequences(job_id) == [1])

            async def third(sequence: int) -> telemetry_pb2.StreamMetricsResponse:
                return await telemetry.StreamMetrics(
                    iter([telemetry_pb2.StreamMetricsRequest(job_id=job_id, points=[point(sequence)])]),
                    metadata=auth(token),
                    timeout=10,
                )

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await third(2)
            assert refused.value.code() is EXHAUSTED
            assert "TP_MAX_STREAMS_PER_JOB" in refused.value.details()
            assert "2 telemetry stream(s)" in refused.value.details() and job_id in refused.value.details()
            assert backend.metric_sequences(job_id) == [1]  # nothing of the refused stream was stored

            # Another job's streams are counted on their own.
            response = await telemetry.StreamMetrics(
                iter([telemetry_pb2.StreamMetricsRequest(job_id=other_job, points=[point(1)])]),
                metadata=auth(other_token),
                timeout=10,
            )
            assert response.points_committed == 1

            # A stream that ends normally frees its slot.
            await metrics.done_writing()
            assert (await metrics).points_committed == 1
            response = await eventually(lambda: third(3))
            assert response.points_committed == 1

            # So does one the client cancels: the next stream gets its slot.
            logs.cancel()
            metrics = telemetry.StreamMetrics(metadata=auth(token), timeout=60)
            await metrics.write(telemetry_pb2.StreamMetricsRequest(job_id=job_id, points=[point(4)]))
            await wait_for(lambda: 4 in backend.metric_sequences(job_id))
            response = await eventually(lambda: third(5))
            assert response.points_committed == 1
            await metrics.done_writing()
            await metrics

    asyncio.run(scenario())
    assert backend.metric_sequences(job_id) == [1, 3, 4, 5]


def test_a_refused_token_takes_no_stream_slot_whatever_its_first_message_carries(make_backend) -> None:
    """A superseded dispatch attempt's token, and a job token past TP_JOB_TOKEN_GRACE_S, are refused at a stream's
    first message even when it carries nothing (only the job id): neither holds one of the job's stream slots
    open against the current attempt's trainer."""
    backend = make_backend({"TP_MAX_STREAMS_PER_JOB": "1", "TP_JOB_TOKEN_GRACE_S": "1"})
    job_id, job_token = backend.create_job()
    with create_engine(backend.database_url).begin() as connection:  # the job went to another trainer
        connection.execute(
            text("UPDATE jobs SET dispatch_attempt = 2, dispatch_attempt_address = 'x:1' WHERE job_id = :job"),
            {"job": job_id},
        )
    superseded = derive_job_token(backend.internal_token, job_id, 1)[0]
    current = derive_job_token(backend.internal_token, job_id, 2)[0]

    async def empty_stream(token: str, rpc: str) -> grpc.aio.AioRpcError:
        """The error that ends a stream whose only message (kept open after it) names the job."""
        async with grpc.aio.insecure_channel(backend.address) as channel:
            telemetry = telemetry_pb2_grpc.TrainingTelemetryServiceStub(channel)
            call: grpc.aio.StreamUnaryCall
            if rpc == "StreamMetrics":
                call = telemetry.StreamMetrics(metadata=auth(token), timeout=10)
                await call.write(telemetry_pb2.StreamMetricsRequest(job_id=job_id))
            else:
                call = telemetry.StreamLogs(metadata=auth(token), timeout=10)
                await call.write(telemetry_pb2.StreamLogsRequest(job_id=job_id))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            return refused.value

    async def current_attempt_writes(sequence: int) -> int:
        async with grpc.aio.insecure_channel(backend.address) as channel:
            telemetry = telemetry_pb2_grpc.TrainingTelemetryServiceStub(channel)
            response = await telemetry.StreamMetrics(
                iter([telemetry_pb2.StreamMetricsRequest(job_id=job_id, points=[point(sequence)])]),
                metadata=auth(current),
                timeout=10,
            )
            return response.points_committed

    async def scenario() -> None:
        for rpc in ("StreamMetrics", "StreamLogs"):
            refused = await empty_stream(superseded, rpc)
            assert refused.code() is grpc.StatusCode.ABORTED, (rpc, refused.code(), refused.details())
            assert "superseded by attempt 2" in (refused.details() or "")
            assert await current_attempt_writes(1 if rpc == "StreamMetrics" else 2) == 1
        async with grpc.aio.insecure_channel(backend.address) as channel:
            telemetry = telemetry_pb2_grpc.TrainingTelemetryServiceStub(channel)
            await telemetry.UpdateStatus(
                telemetry_pb2.UpdateStatusRequest(job_id=job_id, status=common_pb2.JOB_STATUS_FAILED),
                metadata=auth(current),
                timeout=10,
            )
        await asyncio.sleep(2.5)  # past the end + 1 s of grace, and past the 1 s between reads of a job's end
        for rpc in ("StreamMetrics", "StreamLogs"):
            refused = await empty_stream(job_token, rpc)
            assert refused.code() is grpc.StatusCode.PERMISSION_DENIED, (rpc, refused.code(), refused.details())
            assert "its token stopped writing" in (refused.details() or "")

    asyncio.run(scenario())
    assert backend.metric_sequences(job_id) == [1, 2]


def test_subscriptions_per_caller_are_limited_per_token_and_job_and_released(make_backend) -> None:
    backend = make_backend({"TP_MAX_SUBSCRIPTIONS_PER_CALLER": "2"})
    job_id, token = backend.create_job()
    other_job, other_token = backend.create_job()

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(backend.address) as channel:
            jobs = jobs_pb2_grpc.JobsServiceStub(channel)

            async def subscribe(job: str, secret: str) -> grpc.aio.UnaryStreamCall:
                """An open subscription, once its first response (the job's status events) arrived."""
                call = jobs.SubscribeTelemetry(
                    jobs_pb2.SubscribeTelemetryRequest(job_id=job, keep_following=True),
                    metadata=auth(secret),
                    timeout=60,
                )
                await call.read()
                return call

            async def refused(job: str, secret: str) -> str:
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await subscribe(job, secret)
                assert error.value.code() is EXHAUSTED
                assert "TP_MAX_SUBSCRIPTIONS_PER_CALLER" in error.value.details()
                return error.value.details()

            read = [await subscribe(job_id, backend.read_token) for _ in range(2)]
            assert "the read token already has 2" in await refused(other_job, backend.read_token)
            # Each token kind counts on its own; each job's telemetry token too.
            internal = [await subscribe(job_id, backend.internal_token) for _ in range(2)]
            await refused(job_id, backend.internal_token)
            own = [await subscribe(job_id, token) for _ in range(2)]
            assert f"the telemetry token of job {job_id}" in await refused(job_id, token)
            other = [await subscribe(other_job, other_token) for _ in range(2)]
            # A subscription that ends frees its caller's slot.
            read[0].cancel()
            read[0] = await eventually(lambda: subscribe(job_id, backend.read_token))
            await refused(job_id, backend.read_token)
            own[1].cancel()
            own[1] = await eventually(lambda: subscribe(job_id, token))
            for call in (*read, *internal, *own, *other):
                call.cancel()

    asyncio.run(scenario())


def test_concurrent_calls_per_server_are_limited_and_released(make_backend) -> None:
    backend = make_backend({"TP_MAX_CONCURRENT_RPCS": "3"})
    job_id, _ = backend.create_job()

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(backend.address) as channel:
            jobs = jobs_pb2_grpc.JobsServiceStub(channel)
            metadata = auth(backend.internal_token)

            async def subscribe() -> grpc.aio.UnaryStreamCall:
                call = jobs.SubscribeTelemetry(
                    jobs_pb2.SubscribeTelemetryRequest(job_id=job_id, keep_following=True),
                    metadata=metadata,
                    timeout=60,
                )
                await call.read()
                return call

            async def get_job() -> jobs_pb2.GetJobResponse:
                return await jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=metadata, timeout=10)

            open_calls = [await subscribe() for _ in range(3)]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await get_job()
            assert refused.value.code() is EXHAUSTED
            open_calls[0].cancel()
            assert (await eventually(get_job)).job.job_id == job_id
            for call in open_calls[1:]:
                call.cancel()

    asyncio.run(scenario())


def test_calls_per_connection_are_limited_and_wait_for_a_free_stream(make_backend) -> None:
    backend = make_backend({"TP_MAX_CONCURRENT_STREAMS": "2"})
    job_id, _ = backend.create_job()
    metadata = auth(backend.internal_token)

    async def scenario() -> None:
        async with (
            grpc.aio.insecure_channel(backend.address) as channel,
            grpc.aio.insecure_channel(backend.address, options=[("grpc.use_local_subchannel_pool", 1)]) as second,
        ):
            jobs = jobs_pb2_grpc.JobsServiceStub(channel)
            await jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=metadata, timeout=10)  # connected
            open_calls = []
            for _ in range(2):
                call = jobs.SubscribeTelemetry(
                    jobs_pb2.SubscribeTelemetryRequest(job_id=job_id, keep_following=True),
                    metadata=metadata,
                    timeout=60,
                )
                await call.read()
                open_calls.append(call)
            # A third call on the same connection waits for a free stream ...
            waiting = asyncio.ensure_future(
                jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=metadata, timeout=20)
            )
            await asyncio.sleep(1.0)
            assert not waiting.done()
            # ... while another connection is served at once ...
            other = jobs_pb2_grpc.JobsServiceStub(second)
            await other.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=metadata, timeout=5)
            # ... and it is served once a stream of its connection ends.
            open_calls[0].cancel()
            assert (await asyncio.wait_for(waiting, 10)).job.job_id == job_id
            open_calls[1].cancel()

    asyncio.run(scenario())


def test_the_trainer_service_limits_calls_per_server_and_per_connection(tmp_path: Path) -> None:
    trainer = TrainerProcess(
        tmp_path / "trainer",
        env={"TP_TRAINER_ADAPTER": FAKE_ADAPTER, "TP_MAX_CONCURRENT_RPCS": "2", "TP_MAX_CONCURRENT_STREAMS": "1"},
    )
    try:
        trainer.start()

        async def scenario() -> None:
            async with (
                grpc.aio.insecure_channel(trainer.address) as first,
                grpc.aio.insecure_channel(trainer.address, options=[("grpc.use_local_subchannel_pool", 1)]) as second,
                grpc.aio.insecure_channel(trainer.address, options=[("grpc.use_local_subchannel_pool", 1)]) as third,
            ):

                async def watch(channel: grpc.aio.Channel) -> grpc.aio.UnaryStreamCall:
                    """A health Watch: a call that stays open (its first answer tells it is open)."""
                    call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
                    await call.read()
                    return call

                async def list_trainings(channel: grpc.aio.Channel, timeout: float) -> object:
                    return await trainer_pb2_grpc.TrainerServiceStub(channel).ListTrainings(
                        trainer_pb2.ListTrainingsRequest(), metadata=trainer.metadata, timeout=timeout
                    )

                watching = [await watch(first)]
                # One call per connection: a second one on the same connection waits for a free stream.
                with pytest.raises(grpc.aio.AioRpcError) as waited:
                    await list_trainings(first, 1)
                assert waited.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
                watching.append(await watch(second))
                # Two calls per server: a third is refused at once.
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await list_trainings(third, 5)
                assert refused.value.code() is EXHAUSTED
                watching[1].cancel()
                await eventually(lambda: list_trainings(third, 5))
                watching[0].cancel()
                await eventually(lambda: list_trainings(first, 5))

        asyncio.run(scenario())
    finally:
        trainer.close()


def test_the_trainer_service_refuses_a_call_without_a_token_before_reading_its_request(tmp_path: Path) -> None:
    trainer = TrainerProcess(tmp_path / "trainer", env={"TP_TRAINER_ADAPTER": FAKE_ADAPTER}).start()
    try:
        # Bytes that are no message, and more than the server accepts (gRPC's 4 MiB): read, they would be refused
        # with RESOURCE_EXHAUSTED; unread, the call without a token gets UNAUTHENTICATED.
        payload = b"\xff" * (5 * 1024 * 1024)
        call = trainer.channel.unary_unary("/trainingplatform.trainer.v1.TrainerService/StartTraining")
        for _ in range(10):
            with pytest.raises(grpc.RpcError) as refused:
                call(payload, timeout=10)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as read:
            call(payload, metadata=trainer.metadata, timeout=10)
        assert read.value.code() is EXHAUSTED
    finally:
        trainer.close()
