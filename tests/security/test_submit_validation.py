"""Every value of a job spec is checked at submit, against the real framework and the trainer host: StartTraining
(and its `validate_only`) and the backend's CreateJob refuse a spec that would fail later, starting nothing.

Real services: `tp-trainer-timm` (running the FakeAdapter, so the accepted specs train in a second) and
`tp-trainer-ultralytics`, with the real timm and ultralytics registries; nothing is downloaded.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.backend import BackendProcess, auth, free_port
from trainer_service.trainer_process import FAKE_ADAPTER, TrainerProcess, spec
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.trainer.v1 import trainer_pb2

MAX_EPOCHS = 20
CPUS = os.cpu_count() or 1


@pytest.fixture(scope="module")
def timm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerProcess]:
    process = TrainerProcess(
        tmp_path_factory.mktemp("submit-timm"),
        env={"TP_TRAINER_ADAPTER": FAKE_ADAPTER, "TP_MAX_EPOCHS": str(MAX_EPOCHS), "TP_MAX_CONCURRENT_JOBS": "1"},
    ).start()
    yield process
    process.close()


@pytest.fixture(scope="module")
def ultralytics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerProcess]:
    process = TrainerProcess(tmp_path_factory.mktemp("submit-ultra"), executable="tp-trainer-ultralytics").start()
    yield process
    process.close()


def _ultra_spec() -> common_pb2.JobSpec:
    return spec(framework="ultralytics", model="yolo11n.yaml", dataset="shapes", image_size=64)


def _set(job_spec: common_pb2.JobSpec, changes: dict[str, object]) -> common_pb2.JobSpec:
    for path, value in changes.items():
        if path == "extra":
            job_spec.advanced.extra.update(value)  # type: ignore[arg-type]
            continue
        *parents, name = path.split(".")
        target = job_spec
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, value)
    return job_spec


def _refused(trainer: TrainerProcess, job_id: str, job_spec: common_pb2.JobSpec, *, validate_only: bool) -> str:
    """StartTraining's INVALID_ARGUMENT message; asserts that nothing started."""
    request = trainer_pb2.StartTrainingRequest(job_id=job_id, spec=job_spec, validate_only=validate_only)
    with pytest.raises(grpc.RpcError) as caught:
        trainer.stub.StartTraining(request, metadata=trainer.metadata, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert not any(run.job_id == job_id for run in trainer.list_all())
    assert not (trainer.data_dir / "runs" / job_id).exists()  # no run directory, so no MLflow run or artifacts
    return caught.value.details()


# (case, changes to the default spec, texts the message must contain)
TIMM_INVALID = [
    ("unknown optimizer", {"advanced.optimizer": "sgdd"}, ["advanced_config.optimizer", "'sgdd'", "'sgd'"]),
    (
        "an expression as optimizer",
        {"advanced.optimizer": "__import__('os')"},
        ["advanced_config.optimizer", "unknown timm optimizer"],
    ),
    ("unknown lr_scheduler", {"advanced.lr_scheduler": "cosin"}, ["advanced_config.lr_scheduler", "cosine"]),
    ("unknown extra key", {"extra": {"label_smoothin": 0.1}}, ["label_smoothin", "did you mean 'label_smoothing'"]),
    ("extra of the wrong type", {"extra": {"label_smoothing": "lots"}}, ["extra.label_smoothing", "a number"]),
    ("extra out of range", {"extra": {"drop_rate": 1.5}}, ["extra.drop_rate", "at most 1"]),
    ("momentum out of range", {"advanced.momentum": 1.0}, ["advanced_config.momentum"]),
    ("negative weight decay", {"advanced.weight_decay": -1.0}, ["advanced_config.weight_decay"]),
    ("augmentation out of range", {"advanced.augmentation.scale": 2.0}, ["augmentation.scale"]),
    ("num_workers past the CPUs", {"training.num_workers": CPUS + 1}, ["num_workers", f"at most {CPUS}", "CPU"]),
    ("num_threads of 1e9", {"extra": {"num_threads": 10**9}}, ["extra.num_threads", str(CPUS), "CPU"]),
    ("num_threads not an int", {"extra": {"num_threads": 1.5}}, ["extra.num_threads"]),
    ("epochs past TP_MAX_EPOCHS", {"training.epochs": MAX_EPOCHS + 1}, ["epochs", str(MAX_EPOCHS)]),
    ("epochs of 1e6", {"training.epochs": 10**6}, ["epochs"]),
    ("batch_size of 2^31-1", {"training.batch_size": 2**31 - 1}, ["batch_size", "65536"]),
    ("image_size of 2^31-1", {"model.image_size": 2**31 - 1}, ["image_size", "8192"]),
    ("num_workers of 2^31-1", {"training.num_workers": 2**31 - 1}, ["num_workers"]),
]


@pytest.mark.parametrize("validate_only", [False, True], ids=["start", "validate-only"])
@pytest.mark.parametrize(("case", "changes", "texts"), TIMM_INVALID, ids=[c[0] for c in TIMM_INVALID])
def test_timm_refuses_at_once(
    timm: TrainerProcess, case: str, changes: dict[str, object], texts: list[str], validate_only: bool
) -> None:
    job_id = f"bad-{abs(hash(case)) % 10**8}-{int(validate_only)}"
    details = _refused(timm, job_id, _set(spec(), changes), validate_only=validate_only)
    for text in texts:
        assert text in details, (case, details)
    assert len(details) < 400, details


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="APEX optimizers are buildable only without CUDA refusing them"
)
def test_an_optimizer_timm_lists_but_cannot_build_here_is_refused(timm: TrainerProcess) -> None:
    details = _refused(timm, "apex", _set(spec(), {"advanced.optimizer": "fusedadam"}), validate_only=False)
    assert "cannot build 'fusedadam'" in details and "CUDA" in details


@pytest.mark.parametrize("field", ["advanced.optimizer", "advanced.lr_scheduler", "model.name", "dataset.name"])
def test_huge_values_are_not_echoed(timm: TrainerProcess, field: str) -> None:
    details = _refused(timm, "huge", _set(spec(), {field: "x" * 20_000}), validate_only=False)
    assert len(details) < 300, details
    huge_key = _refused(timm, "huge", _set(spec(), {"extra": {"k" * 20_000: 1}}), validate_only=False)
    # The key is quoted cut to about 100 characters; the rest of the message lists the framework's valid keys.
    assert "k" * 120 not in huge_key and "[20000 characters]" in huge_key, huge_key
    assert len(huge_key) < 2048, huge_key


def test_valid_specs_pass_and_validate_only_starts_nothing(timm: TrainerProcess) -> None:
    good = _set(
        spec(epochs=MAX_EPOCHS),
        {
            "advanced.optimizer": "lookahead_AdamW",
            "advanced.lr_scheduler": "step",
            "advanced.momentum": 0.9,
            "training.num_workers": CPUS,
            "extra": {"num_threads": CPUS, "label_smoothing": 0.1, "drop_rate": 0.2, "fake_batches": 1},
        },
    )
    request = trainer_pb2.StartTrainingRequest(job_id="valid-only", spec=good, validate_only=True)
    # No telemetry token needed, and it does not count against TP_MAX_CONCURRENT_JOBS (1): a live run is there.
    live = timm.start_training("occupies-the-slot", spec(epochs=MAX_EPOCHS, extra={"fake_batches": 10_000}))
    try:
        with pytest.raises(grpc.RpcError) as full:
            timm.start_training("second", spec())
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert timm.stub.StartTraining(request, metadata=timm.metadata, timeout=60).run_id == ""
    finally:
        timm.cancel(live, grace=1)
    assert not any(run.job_id == "valid-only" for run in timm.list_all())
    assert not (timm.data_dir / "runs" / "valid-only").exists()


ULTRA_INVALID = [
    ("misspelt extra key", {"extra": {"optimiser": "SGD"}}, ["'optimiser'", "did you mean 'optimizer'"]),
    ("unknown optimizer", {"advanced.optimizer": "sgdd"}, ["advanced_config.optimizer", "'sgd'"]),
    ("extra optimizer unknown", {"extra": {"optimizer": "SGDD"}}, ["extra.optimizer", "'SGD'"]),
    ("fraction out of range", {"extra": {"mosaic": 2}}, ["extra.mosaic", "at most 1"]),
    ("int of the wrong type", {"extra": {"close_mosaic": 1.5}}, ["extra.close_mosaic", "integer"]),
    ("bool of the wrong type", {"extra": {"cos_lr": "yes"}}, ["extra.cos_lr", "true or false"]),
    ("below ultralytics' minimum", {"extra": {"nbs": 0}}, ["extra.nbs", "at least 1"]),
    ("workers past the CPUs", {"extra": {"workers": 10**6}}, ["extra.workers", "CPU"]),
    ("imgsz, which --image-size sets", {"extra": {"imgsz": 2**31 - 1}}, ["extra.imgsz", "model_config.image_size"]),
    ("batch of 2^31-1", {"extra": {"batch": 2**31 - 1}}, ["extra.batch", "65536"]),
    ("owned key", {"extra": {"device": "cpu"}}, ["extra.device", "training_config.device"]),
    ("a config file", {"extra": {"cfg": "/etc/passwd"}}, ["extra.cfg"]),
    ("weights from a path", {"extra": {"pretrained": "/tmp/w.pt"}}, ["extra.pretrained"]),
    ("bad amp", {"extra": {"amp": "fp8"}}, ["extra.amp"]),
    ("seed numpy cannot take", {"advanced.seed": -1}, ["seed"]),
    ("a timm-only key", {"extra": {"label_smoothing": 0.1}}, ["unknown ultralytics option 'label_smoothing'"]),
]


@pytest.mark.parametrize(("case", "changes", "texts"), ULTRA_INVALID, ids=[c[0] for c in ULTRA_INVALID])
def test_ultralytics_refuses_at_once(
    ultralytics: TrainerProcess, case: str, changes: dict[str, object], texts: list[str]
) -> None:
    details = _refused(ultralytics, f"bad-{abs(hash(case)) % 10**8}", _set(_ultra_spec(), changes), validate_only=True)
    for text in texts:
        assert text in details, (case, details)
    assert len(details) < 400, details


def test_ultralytics_accepts_its_own_arguments(ultralytics: TrainerProcess) -> None:
    good = _set(
        _ultra_spec(),
        {
            "advanced.optimizer": "MuSGD",
            "extra": {"mosaic": 0.5, "close_mosaic": 0, "cos_lr": True, "workers": CPUS, "amp": "bf16", "batch": -1},
        },
    )
    request = trainer_pb2.StartTrainingRequest(job_id="ultra-ok", spec=good, validate_only=True)
    assert ultralytics.stub.StartTraining(request, metadata=ultralytics.metadata, timeout=60).run_id == ""
    assert not ultralytics.list_all()


def test_create_job_asks_a_trainer(timm: TrainerProcess, tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    backend = BackendProcess(
        f"sqlite:///{tmp_path / 'backend.db'}",
        tmp_path / "data",
        extra_env={
            "TP_TRAINERS": f"timm={timm.address},ultralytics={dead}",
            "INTERNAL_AUTH_TOKEN": timm.token,
            "TP_DISPATCH_TIMEOUT_S": "2",
        },
    )
    backend.internal_token = timm.token
    backend.start()
    try:
        jobs, metadata = backend.jobs(), auth(timm.token)
        runs_before = len(timm.list_all())
        for changes, text in (
            ({"advanced.optimizer": "sgdd"}, "'sgd'"),
            ({"extra": {"label_smoothin": 0.1}}, "did you mean 'label_smoothing'"),
            ({"training.num_workers": CPUS + 1}, "num_workers"),
            ({"training.epochs": MAX_EPOCHS + 1}, "TP_MAX_EPOCHS"),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=_set(spec(), changes)), metadata=metadata, timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
            assert text in caught.value.details()
        assert list(jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=metadata, timeout=10).jobs) == []
        assert len(timm.list_all()) == runs_before  # the trainer started nothing
        # A valid spec is created and dispatched; the trainer's check did not count as a run.
        created = jobs.CreateJob(
            jobs_pb2.CreateJobRequest(spec=spec(extra={"fake_batches": 1})), metadata=metadata, timeout=30
        )
        assert created.job.job_id
        # A trainer that is down does not block CreateJob: the job is accepted, the dispatch decides.
        accepted = jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=_ultra_spec()), metadata=metadata, timeout=30)
        assert accepted.job.status == common_pb2.JOB_STATUS_QUEUED
    finally:
        backend.close()


def test_a_checkpoint_outside_the_data_roots_is_refused_whether_or_not_it_exists(
    ultralytics: TrainerProcess, tmp_path: Path
) -> None:
    # A .pt checkpoint is a pickle: loading one runs whatever code it holds, in the training process. Any file on
    # the host was loaded (a security review ran code this way); an absent one answered NOT_FOUND, which told a
    # caller which files exist. The fixture's data roots are the tests' temporary directory (tmp_path lies in it).
    with tempfile.TemporaryDirectory(prefix="tp-outside-roots-", dir="/tmp") as elsewhere:
        outside = Path(elsewhere) / "elsewhere.pt"
        outside.write_bytes(b"not a checkpoint")
        escape = f"{tmp_path}/{'../' * len(tmp_path.parts)}{outside.relative_to('/')}"
        for name in (str(outside), str(Path(elsewhere) / "absent.pt"), escape):
            job_spec = _set(_ultra_spec(), {"model.name": name, "model.pretrained": True})
            details = _refused(ultralytics, f"ckpt-{abs(hash(name)) % 10**8}", job_spec, validate_only=False)
            assert "model_config.name" in details and "outside this trainer's data roots" in details, details
    inside = tmp_path / "mine.pt"
    inside.write_bytes(b"not a checkpoint either")
    good = _set(_ultra_spec(), {"model.name": str(inside), "model.pretrained": True})
    request = trainer_pb2.StartTrainingRequest(job_id="ckpt-inside", spec=good, validate_only=True)
    assert ultralytics.stub.StartTraining(request, metadata=ultralytics.metadata, timeout=60).run_id == ""
