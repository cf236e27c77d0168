"""Dataset paths are accepted only under the trainer's data roots (TP_DATA_ROOTS): at StartTraining, with
`validate_only`, and at the backend's CreateJob, which asks a trainer. A refused path starts nothing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from PIL import Image
from support.backend import BackendProcess, auth
from trainer_service.trainer_process import FAKE_ADAPTER, TrainerProcess, spec
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.trainer.v1 import trainer_pb2


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one data root: an ImageFolder data set inside it, a symlink from it to a data set outside it."""
    base = tmp_path_factory.mktemp("roots")
    data_root = base / "datasets"
    for where in (data_root / "inside", base / "outside"):
        for split in ("train", "val"):
            (where / split / "cat").mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(where / split / "cat" / "0.png")  # a class folder without images is refused
    (data_root / "escape").symlink_to(base / "outside")
    (data_root / "inner").symlink_to(data_root / "inside")  # a symlink that stays inside is fine
    return data_root


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory, root: Path) -> Iterator[TrainerProcess]:
    process = TrainerProcess(
        tmp_path_factory.mktemp("roots-trainer"), env={"TP_TRAINER_ADAPTER": FAKE_ADAPTER, "TP_DATA_ROOTS": str(root)}
    ).start()
    yield process
    process.close()


def _outside(root: Path) -> dict[str, str]:
    return {
        "/tmp": "/tmp",
        "dot-dot relative": "../../x",
        "dot-dot through the root": f"{root}/inside/../../outside",
        "symlink out of the root": str(root / "escape"),
        "the root's parent": str(root.parent),
        "/etc": "/etc",
    }


def _request(job_id: str, path: str, *, validate_only: bool = False) -> trainer_pb2.StartTrainingRequest:
    return trainer_pb2.StartTrainingRequest(
        job_id=job_id, spec=spec(dataset="mine", path=path, epochs=1), validate_only=validate_only
    )


def _runs_dirs(trainer: TrainerProcess, job_id: str) -> list[Path]:
    return list((trainer.data_dir / "runs").glob(f"{job_id}*"))


@pytest.mark.parametrize("validate_only", [False, True], ids=["start", "validate-only"])
def test_paths_outside_the_roots_are_refused_and_nothing_starts(
    trainer: TrainerProcess, root: Path, validate_only: bool
) -> None:
    for index, (case, path) in enumerate(_outside(root).items()):
        job_id = f"roots-{int(validate_only)}-{index}"
        with pytest.raises(grpc.RpcError) as caught:
            trainer.stub.StartTraining(
                _request(job_id, path, validate_only=validate_only), metadata=trainer.metadata, timeout=60
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, caught.value.details())
        details = caught.value.details()
        assert "dataset_config.path" in details and "outside this trainer's data roots" in details, case
        assert str(root) in details and "TP_DATA_ROOTS" in details, case
        assert not any(run.job_id == job_id for run in trainer.list_all()), case
        assert not _runs_dirs(trainer, job_id), case
    with pytest.raises(grpc.RpcError) as escaped:
        trainer.stub.StartTraining(_request("roots-x", str(root / "escape")), metadata=trainer.metadata, timeout=60)
    assert "symbolic link" in escaped.value.details()


def test_paths_inside_the_roots_pass(trainer: TrainerProcess, root: Path) -> None:
    for path in (str(root / "inside"), str(root / "inner"), f"{root}/inside/../inside"):
        response = trainer.stub.StartTraining(
            _request("roots-ok", path, validate_only=True), metadata=trainer.metadata, timeout=60
        )
        assert response.run_id == ""  # validate_only: checked, nothing started
    assert not any(run.job_id == "roots-ok" for run in trainer.list_all())
    assert not _runs_dirs(trainer, "roots-ok")
    # Inside the roots, a path that does not exist is NOT_FOUND; outside, the same request says nothing about it.
    with pytest.raises(grpc.RpcError) as caught:
        trainer.stub.StartTraining(
            _request("roots-missing", str(root / "nope"), validate_only=True), metadata=trainer.metadata, timeout=60
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_real_start_inside_the_roots_trains(trainer: TrainerProcess, root: Path) -> None:
    job_spec = spec(dataset="mine", path=str(root / "inside"), epochs=1, extra={"fake_batches": 1})
    run_id = trainer.start_training("roots-real", job_spec)
    run = trainer.wait_state(run_id, trainer_pb2.RUN_STATE_SUCCEEDED, timeout=120)
    assert run.job_id == "roots-real"


def test_create_job_refuses_paths_outside_the_trainers_roots(
    trainer: TrainerProcess, root: Path, tmp_path: Path
) -> None:
    backend = BackendProcess(
        f"sqlite:///{tmp_path / 'backend.db'}",
        tmp_path / "data",
        extra_env={"TP_TRAINERS": f"timm={trainer.address}", "INTERNAL_AUTH_TOKEN": trainer.token},
    )
    backend.internal_token = trainer.token  # one service token, as in a deployment
    backend.start()
    try:
        jobs = backend.jobs()
        before = {run.run_id for run in trainer.list_all()}
        for case, path in _outside(root).items():
            request = jobs_pb2.CreateJobRequest(spec=spec(dataset="mine", path=path, epochs=1))
            with pytest.raises(grpc.RpcError) as caught:
                jobs.CreateJob(request, metadata=auth(backend.internal_token), timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, caught.value.details())
            assert "outside this trainer's data roots" in caught.value.details(), case
        missing = jobs_pb2.CreateJobRequest(spec=spec(dataset="mine", path=str(root / "nope"), epochs=1))
        with pytest.raises(grpc.RpcError) as caught:
            jobs.CreateJob(missing, metadata=auth(backend.internal_token), timeout=30)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        # No job was created, and the trainer started nothing.
        listed = jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=auth(backend.internal_token), timeout=10)
        assert list(listed.jobs) == []
        assert {run.run_id for run in trainer.list_all()} == before
        # A path inside the roots is accepted.
        good = jobs_pb2.CreateJobRequest(
            spec=spec(dataset="mine", path=str(root / "inside"), epochs=1, extra={"fake_batches": 1}), dispatch=False
        )
        assert jobs.CreateJob(good, metadata=auth(backend.internal_token), timeout=30).job.job_id
    finally:
        backend.close()


def test_the_default_root_is_the_data_dirs_datasets(tmp_path: Path) -> None:
    from trainingplatform_sdk.trainer_service.settings import load

    settings = load("127.0.0.1:1", env={"INTERNAL_AUTH_TOKEN": "t", "TP_DATA_DIR": str(tmp_path)})
    assert settings.effective_data_roots == ((tmp_path / "datasets").resolve(),)
    both = load("127.0.0.1:1", env={"INTERNAL_AUTH_TOKEN": "t", "TP_DATA_ROOTS": os.pathsep.join(["/a", "/b"])})
    assert both.effective_data_roots == (Path("/a"), Path("/b"))


def test_a_yolo_data_yaml_may_not_point_outside_the_roots(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.mktemp("yolo-roots")
    data_root = base / "datasets"
    for where in (data_root / "set", base / "outside"):
        for split in ("train", "val"):
            (where / "images" / split).mkdir(parents=True)
    yamls = {
        "good": f"path: {data_root / 'set'}\ntrain: images/train\nval: images/val\nnames: {{0: a}}\n",
        "no path key": "train: set/images/train\nval: set/images/val\nnames: {0: a}\n",
        "path elsewhere": f"path: {base / 'outside'}\ntrain: images/train\nval: images/val\nnames: {{0: a}}\n",
        "path root": "path: /\ntrain: etc\nval: etc\nnames: {0: a}\n",
        "train climbs out": f"path: {data_root / 'set'}\ntrain: ../../outside/images/train\nval: images/val\n",
        "relative path": "path: ../outside\ntrain: images/train\nval: images/val\n",
        "missing val": f"path: {data_root / 'set'}\ntrain: images/train\nval: images/nope\n",
        "not yaml data": "- just a list\n",
    }
    for name, text in yamls.items():
        (data_root / f"{name.replace(' ', '_')}.yaml").write_text(text)
    process = TrainerProcess(
        base / "trainer", env={"TP_DATA_ROOTS": str(data_root)}, executable="tp-trainer-ultralytics"
    ).start()
    try:

        def check(name: str) -> grpc.StatusCode:
            job_spec = spec(framework="ultralytics", model="yolo11n.yaml", dataset="mine")
            job_spec.dataset.path = str(data_root / f"{name.replace(' ', '_')}.yaml")
            request = trainer_pb2.StartTrainingRequest(job_id="yolo", spec=job_spec, validate_only=True)
            try:
                process.stub.StartTraining(request, metadata=process.metadata, timeout=60)
            except grpc.RpcError as error:
                return error.code()
            return grpc.StatusCode.OK

        assert check("good") == grpc.StatusCode.OK
        assert check("no path key") == grpc.StatusCode.OK
        for name in ("path elsewhere", "path root", "train climbs out", "relative path", "not yaml data"):
            assert check(name) == grpc.StatusCode.INVALID_ARGUMENT, name
        assert check("missing val") == grpc.StatusCode.NOT_FOUND
        assert not process.list_all()
    finally:
        process.close()
