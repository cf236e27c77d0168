"""Malformed and forged requests to every RPC of a trainer service: a clear status, no token in its log, and the
service stays healthy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.backend import auth
from trainer_service.trainer_process import FAKE_ADAPTER, TrainerProcess
from trainingplatform.trainer.v1 import trainer_pb2

from .test_fuzz import ALLOWED, MALFORMED, raw_call

SERVICE = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"]


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerProcess]:
    process = TrainerProcess(tmp_path_factory.mktemp("fuzz-trainer"), env={"TP_TRAINER_ADAPTER": FAKE_ADAPTER})
    process.start()
    yield process
    process.close()


@pytest.mark.parametrize("method", list(SERVICE.methods), ids=lambda m: m.name)
def test_malformed_bytes_and_foreign_tokens_get_a_clear_status(trainer: TrainerProcess, method) -> None:
    for payload in MALFORMED:
        code = raw_call(trainer.channel, SERVICE, method, payload, trainer.metadata)
        # Some byte strings happen to parse (as unknown fields); those get an ordinary answer, never an error of
        # the server's own (UNKNOWN, INTERNAL) or a hang.
        assert code in ALLOWED, (method.name, payload, code)
    assert raw_call(trainer.channel, SERVICE, method, b"\xff\xff\xff\xff", trainer.metadata) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    # The trainer takes the internal token only: a job's telemetry token or a made-up one is refused.
    for token in ("00000000-0000-0000-0000-000000000000.secret", "junk"):
        code = raw_call(trainer.channel, SERVICE, method, b"", auth(token))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    assert raw_call(trainer.channel, SERVICE, method, b"", ()) == grpc.StatusCode.UNAUTHENTICATED
    status = health_pb2_grpc.HealthStub(trainer.channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert trainer.token not in trainer.log_text()
    assert "Traceback" not in trainer.log_text()


def test_the_token_never_reaches_a_run_log(trainer: TrainerProcess, tmp_path: Path) -> None:
    run_id = trainer.start_training("job-secret-check", _spec(), "127.0.0.1:1", "telemetry-token-value-123")
    run = trainer.wait_state(run_id, trainer_pb2.RUN_STATE_SUCCEEDED, trainer_pb2.RUN_STATE_FAILED, timeout=120)
    logs = trainer.log_text() + TrainerProcess.train_log(run)
    assert "telemetry-token-value-123" not in logs
    assert trainer.token not in logs


def _spec():
    from trainer_service.trainer_process import spec

    return spec(epochs=1, extra={"fake_batches": 2, "fake_batch_s": 0.01})
