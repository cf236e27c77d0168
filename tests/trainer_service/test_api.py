"""The TrainerService API without training: health, reflection, auth, capabilities and StartTraining's checks."""

from __future__ import annotations

import base64
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from trainingplatform.common.v1 import common_pb2
from trainingplatform.trainer.v1 import trainer_pb2, trainer_pb2_grpc

from .trainer_process import TrainerProcess, spec

SERVICE = "trainingplatform.trainer.v1.TrainerService"


def test_health_serving_and_reflection(timm_trainer: TrainerProcess) -> None:
    health = health_pb2_grpc.HealthStub(timm_trainer.channel)
    for name in ("", SERVICE):
        response = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    services = ProtoReflectionDescriptorDatabase(timm_trainer.channel).get_services()
    assert SERVICE in services
    assert "grpc.health.v1.Health" in services


CALLS = {
    "StartTraining": trainer_pb2.StartTrainingRequest(job_id="j", spec=spec()),
    "GetTraining": trainer_pb2.GetTrainingRequest(job_id="j"),
    "ListTrainings": trainer_pb2.ListTrainingsRequest(),
    "CancelTraining": trainer_pb2.CancelTrainingRequest(job_id="j"),
    "GetCapabilities": trainer_pb2.GetCapabilitiesRequest(),
}


@pytest.mark.parametrize("method", sorted(CALLS))
@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer wrong-token"),), (("authorization", "Basic dXNlcjpwYXNz"),)],
    ids=["no-token", "wrong-token", "not-bearer"],
)
def test_every_rpc_needs_the_internal_token(
    timm_trainer: TrainerProcess, method: str, metadata: tuple[tuple[str, str], ...]
) -> None:
    stub = trainer_pb2_grpc.TrainerServiceStub(timm_trainer.channel)
    with pytest.raises(grpc.RpcError) as caught:
        getattr(stub, method)(CALLS[method], metadata=metadata, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_capabilities(timm_trainer: TrainerProcess) -> None:
    response = timm_trainer.stub.GetCapabilities(
        trainer_pb2.GetCapabilitiesRequest(), metadata=timm_trainer.metadata, timeout=60
    )
    assert response.framework == "timm"
    assert list(response.tasks) == ["image_classification"]
    assert {"resnet10t", "resnet50", "vit_tiny_patch16_224"} <= set(response.models)
    assert response.devices[0] == "cpu"
    assert all(device.startswith("cuda:") for device in response.devices[1:])
    assert list(response.builtin_datasets) == ["digits"]
    assert response.max_concurrent_jobs == 1


def _with(changes: dict[str, object]) -> common_pb2.JobSpec:
    job_spec = spec()
    for path, value in changes.items():
        *parents, name = path.split(".")
        target = job_spec
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, value)
    return job_spec


def _with_extra(extra: dict[str, object]) -> common_pb2.JobSpec:
    job_spec = spec()
    job_spec.advanced.extra.update(extra)
    return job_spec


def _image_folder_without_val(tmp_path: Path) -> str:
    (tmp_path / "train" / "cat").mkdir(parents=True)
    return str(tmp_path)


# (case, request builder, expected code, text the message must contain)
INVALID = [
    ("no job id", lambda p: ("", spec(), "", ""), grpc.StatusCode.INVALID_ARGUMENT, "job_id"),
    ("job id with a path", lambda p: ("../etc", spec(), "", ""), grpc.StatusCode.INVALID_ARGUMENT, "job_id"),
    ("no spec", lambda p: ("j1", None, "", ""), grpc.StatusCode.INVALID_ARGUMENT, "spec"),
    (
        "wrong framework",
        lambda p: ("j1", spec(framework="ultralytics"), "", ""),
        grpc.StatusCode.INVALID_ARGUMENT,
        "trains 'timm', not 'ultralytics'",
    ),
    (
        "unknown model",
        lambda p: ("j1", spec(model="resnet10tt"), "", ""),
        grpc.StatusCode.INVALID_ARGUMENT,
        "closest valid names: resnet10t",
    ),
    (
        "missing checkpoint",
        lambda p: ("j1", spec(model=str(p / "missing.pt")), "", ""),
        grpc.StatusCode.NOT_FOUND,
        "missing.pt",
    ),
    (
        "missing dataset path",
        lambda p: ("j1", spec(dataset="mine", path=str(p / "no-such-dataset")), "", ""),
        grpc.StatusCode.NOT_FOUND,
        "no-such-dataset",
    ),
    (
        "image folder without val/",
        lambda p: ("j1", spec(dataset="mine", path=_image_folder_without_val(p)), "", ""),
        grpc.StatusCode.NOT_FOUND,
        "val/",
    ),
    (
        "unknown built-in dataset",
        lambda p: ("j1", spec(dataset="digitz"), "", ""),
        grpc.StatusCode.INVALID_ARGUMENT,
        "did you mean digits",
    ),
    (
        "a format timm does not read",
        lambda p: ("j1", _with({"dataset.path": str(p), "dataset.format": "yolo"}), "", ""),
        grpc.StatusCode.INVALID_ARGUMENT,
        "dataset_config.format",
    ),
    (
        "zero epochs",
        lambda p: ("j1", spec(epochs=0), "", ""),
        grpc.StatusCode.INVALID_ARGUMENT,
        "training_config.epochs",
    ),
    (
        "negative batch size",
        lambda p: ("j1", _with({"training.batch_size": -1}), "", ""),
        grpc.StatusCode.INVALID_ARGUMENT,
        "training_config.batch_size",
    ),
    (
        "momentum out of range",
        lambda p: ("j1", _with({"advanced.momentum": 1.5}), "", ""),
        grpc.StatusCode.INVALID_ARGUMENT,
        "advanced_config.momentum",
    ),
    (
        # A rule of the shared spec checks (spec.validation) that the configs themselves do not make.
        "non-finite number in advanced.extra",
        lambda p: ("j1", _with_extra({"ratio": float("nan")}), "", ""),
        grpc.StatusCode.INVALID_ARGUMENT,
        "advanced_config.extra.ratio must be a finite number",
    ),
    (
        "absent device",
        lambda p: ("j1", _with({"training.device": "cuda:99"}), "", ""),
        grpc.StatusCode.INVALID_ARGUMENT,
        "training_config.device",
    ),
    (
        "telemetry endpoint without token",
        lambda p: ("j1", spec(), "127.0.0.1:1", ""),
        grpc.StatusCode.INVALID_ARGUMENT,
        "telemetry_token",
    ),
    (
        "bad telemetry endpoint",
        lambda p: ("j1", spec(), "ftp://backend:1", "token"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "telemetry_endpoint",
    ),
]


@pytest.mark.parametrize(("case", "build", "code", "text"), INVALID, ids=[case[0] for case in INVALID])
def test_start_training_refuses_bad_requests(
    timm_trainer: TrainerProcess, tmp_path: Path, case: str, build, code: grpc.StatusCode, text: str
) -> None:
    job_id, job_spec, endpoint, token = build(tmp_path)
    request = trainer_pb2.StartTrainingRequest(
        job_id=job_id, spec=job_spec, telemetry_endpoint=endpoint, telemetry_token=token
    )
    with pytest.raises(grpc.RpcError) as caught:
        timm_trainer.stub.StartTraining(request, metadata=timm_trainer.metadata, timeout=60)
    assert caught.value.code() == code, caught.value.details()
    assert text in caught.value.details()
    assert not any(run.job_id == job_id for run in timm_trainer.list_all())


def test_reads_name_what_is_missing(timm_trainer: TrainerProcess) -> None:
    stub, metadata = timm_trainer.stub, timm_trainer.metadata
    cases = [
        (stub.GetTraining, trainer_pb2.GetTrainingRequest(run_id="nope"), grpc.StatusCode.NOT_FOUND),
        (stub.GetTraining, trainer_pb2.GetTrainingRequest(job_id="nope"), grpc.StatusCode.NOT_FOUND),
        (stub.GetTraining, trainer_pb2.GetTrainingRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (stub.CancelTraining, trainer_pb2.CancelTrainingRequest(run_id="nope"), grpc.StatusCode.NOT_FOUND),
        (stub.CancelTraining, trainer_pb2.CancelTrainingRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (
            stub.CancelTraining,
            trainer_pb2.CancelTrainingRequest(job_id="j", grace_period_seconds=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (stub.ListTrainings, trainer_pb2.ListTrainingsRequest(page_token="garbage"), grpc.StatusCode.INVALID_ARGUMENT),
        # Tokens the service never issues (it writes `before:<sequence>` in base64): forged ones answered an empty or
        # a wrong page as if they were valid.
        *(
            (stub.ListTrainings, trainer_pb2.ListTrainingsRequest(page_token=token), grpc.StatusCode.INVALID_ARGUMENT)
            for token in (
                base64.urlsafe_b64encode(b"before:-5").decode(),
                base64.urlsafe_b64encode(b"before: 5").decode(),
                base64.urlsafe_b64encode(b"before:05").decode(),
                base64.urlsafe_b64encode(b"before:1_0").decode(),
                base64.urlsafe_b64encode(b"before:" + b"9" * 5000).decode(),
            )
        ),
        (stub.ListTrainings, trainer_pb2.ListTrainingsRequest(page_size=-1), grpc.StatusCode.INVALID_ARGUMENT),
        # "at most 1000", as ListJobs, which refuses more (ListTrainings took 1001 as 1000).
        (stub.ListTrainings, trainer_pb2.ListTrainingsRequest(page_size=1001), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for call, request, code in cases:
        with pytest.raises(grpc.RpcError) as caught:
            call(request, metadata=metadata, timeout=10)
        assert caught.value.code() == code, (request, caught.value.details())
