"""Malformed and forged requests to every RPC of a trainer service: a clear status, no token in its log, and the
service stays healthy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.backend import auth
from trainer_service.trainer_process import FAKE_ADAPTER, TERMINAL_STATES, TrainerProcess
from trainingplatform.trainer.v1 import trainer_pb2

from .test_fuzz import ALLOWED, MALFORMED, boundary_cases, call_for_status, raw_call

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


# --- boundary values on every field of every request (see test_fuzz.py) -----------------------------------------

BOUNDARY_ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}


@pytest.fixture(scope="module")
def finished_run(trainer: TrainerProcess) -> trainer_pb2.TrainingRun:
    """A run that has ended, for GetTraining and CancelTraining to find."""
    run_id = trainer.start_training("fuzz-finished", _spec(), "", "")
    return trainer.wait_state(run_id, *TERMINAL_STATES, timeout=120)


def _trainer_bases(run: trainer_pb2.TrainingRun) -> dict[str, Message]:
    start = trainer_pb2.StartTrainingRequest(
        job_id="fuzz-job", spec=_spec(), telemetry_endpoint="127.0.0.1:1", telemetry_token="t", validate_only=True
    )
    return {
        "StartTraining": start,
        "GetTraining": trainer_pb2.GetTrainingRequest(run_id=run.run_id, job_id=run.job_id),
        "ListTrainings": trainer_pb2.ListTrainingsRequest(page_size=5),
        "CancelTraining": trainer_pb2.CancelTrainingRequest(run_id=run.run_id, job_id=run.job_id),
        "GetCapabilities": trainer_pb2.GetCapabilitiesRequest(),
    }


def _run_count(trainer: TrainerProcess) -> int:
    return len(trainer.list_all())


@pytest.mark.parametrize("method", list(SERVICE.methods), ids=lambda m: m.name)
def test_boundary_values_of_every_field_get_a_documented_status(
    trainer: TrainerProcess, finished_run: trainer_pb2.TrainingRun, method
) -> None:
    base = _trainer_bases(finished_run)[method.name]
    code, details = call_for_status(trainer.channel, SERVICE, method, base.SerializeToString(), trainer.metadata)
    assert code in BOUNDARY_ALLOWED, (code, details)
    failures = []
    for label, request in boundary_cases(base):
        if label.startswith("validate_only="):
            continue  # a real start: its checks are the same (validate_only runs every one of them)
        before = _run_count(trainer)
        code, details = call_for_status(trainer.channel, SERVICE, method, request.SerializeToString(), trainer.metadata)
        if code not in BOUNDARY_ALLOWED:
            failures.append((label, code, details[:200]))
        elif len(details) > 2100:  # at most the status message cap (errors.MAX_STATUS_MESSAGE_BYTES), a marker
            failures.append((label, code, f"a {len(details)}-character message"))
        if _run_count(trainer) != before:
            failures.append((label, code, "a run was started"))
    assert not failures, failures
    status = health_pb2_grpc.HealthStub(trainer.channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert "Traceback" not in trainer.log_text()


@pytest.mark.parametrize("field", ["job_id", "run_id"])
@pytest.mark.parametrize("method", ["StartTraining", "GetTraining", "CancelTraining"])
def test_a_20000_character_id_gets_a_short_readable_error(trainer: TrainerProcess, method: str, field: str) -> None:
    if method == "StartTraining" and field == "run_id":
        return
    request_type = getattr(trainer_pb2, f"{method}Request")
    request = request_type(**{field: "j" * 20_000})
    if method == "StartTraining":
        request = trainer_pb2.StartTrainingRequest(job_id="j" * 20_000, spec=_spec(), validate_only=True)
    with pytest.raises(grpc.RpcError) as caught:
        getattr(trainer.stub, method)(request, metadata=trainer.metadata, timeout=10)
    assert caught.value.code() in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}, caught.value
    assert len(caught.value.details() or "") < 2100
