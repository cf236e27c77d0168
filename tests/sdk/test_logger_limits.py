"""A logger that meets one of the backend's limits of open calls (RESOURCE_EXHAUSTED, not a message size) waits and
delivers everything once a slot frees: it neither shrinks its messages nor gives up."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
from support.backend import BackendProcess, auth
from trainingplatform.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from trainingplatform_sdk import LoggerSettings, TrainingLogger

SETTINGS = LoggerSettings(reconnect_initial_backoff_s=0.05, reconnect_max_backoff_s=0.5, rpc_timeout_s=5.0)


def test_a_job_at_its_stream_limit_delays_delivery_and_loses_nothing(tmp_path: Path) -> None:
    backend = BackendProcess(
        f"sqlite:///{tmp_path / 'limit.db'}", tmp_path / "data", extra_env={"TP_MAX_STREAMS_PER_JOB": "1"}
    )
    backend.start()
    try:
        job_id, token = backend.create_job()
        with grpc.insecure_channel(backend.address) as channel:
            telemetry = telemetry_pb2_grpc.TrainingTelemetryServiceStub(channel)
            held_open = _HeldStream(job_id)
            # Another process of the same job holds the only stream slot (the first message names the job).
            future = telemetry.StreamLogs.future(held_open, metadata=auth(token), timeout=120)
            deadline = time.monotonic() + 30
            while backend.log_sequences(job_id) != [1]:
                assert time.monotonic() < deadline, "the held stream never committed its record"
                time.sleep(0.02)

            logger = TrainingLogger(
                job_id, backend_address=backend.address, token=token, spool_dir=tmp_path / "spool", settings=SETTINGS
            )
            for step in range(150):
                logger.log_metric("train/loss", float(step), step=step)
            time.sleep(3)  # the logger's streams are refused with RESOURCE_EXHAUSTED meanwhile
            assert backend.metric_sequences(job_id) == []

            held_open.finish()
            future.result(timeout=30)
            assert logger.flush(timeout=30)
            report = logger.close(timeout=30)
        assert report.error is None
        assert report.committed_metrics == 150
        assert len(backend.metric_sequences(job_id)) == 150
    finally:
        backend.close()


class _HeldStream:
    """A StreamLogs request iterator: one record, then open until `finish`."""

    def __init__(self, job_id: str) -> None:
        self._job_id = job_id
        self._sent = False
        self._done = False

    def finish(self) -> None:
        self._done = True

    def __iter__(self) -> _HeldStream:
        return self

    def __next__(self) -> telemetry_pb2.StreamLogsRequest:
        if not self._sent:
            self._sent = True
            record = telemetry_pb2.LogRecord(message="held", wall_time=time.time(), sequence=1, level=2)
            return telemetry_pb2.StreamLogsRequest(job_id=self._job_id, records=[record])
        while not self._done:
            time.sleep(0.02)
        raise StopIteration
