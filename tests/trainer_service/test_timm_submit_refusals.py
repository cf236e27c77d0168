"""Jobs the timm trainer accepted at StartTraining (and its `validate_only`, which the backend's CreateJob asks) and
that then hung the check, failed in the training process, or trained on wrong data, are refused at submit with
INVALID_ARGUMENT naming the field, starting nothing.

A real `tp-trainer-timm` service with its real adapter; nothing is downloaded or trained.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from trainingplatform.common.v1 import common_pb2
from trainingplatform.trainer.v1 import trainer_pb2

from .trainer_process import TrainerProcess, refused_start, spec


@pytest.fixture(scope="module")
def timm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerProcess]:
    env = {"HF_HUB_CACHE": str(tmp_path_factory.mktemp("empty-hub")), "TORCH_HOME": str(tmp_path_factory.mktemp("th"))}
    process = TrainerProcess(tmp_path_factory.mktemp("refusals-timm"), env=env).start()
    yield process
    process.close()


def _refused(trainer: TrainerProcess, job_id: str, job_spec: common_pb2.JobSpec, *, validate_only: bool = True) -> str:
    return refused_start(trainer, job_id, job_spec, validate_only=validate_only)


def _accepted(trainer: TrainerProcess, job_id: str, job_spec: common_pb2.JobSpec) -> None:
    request = trainer_pb2.StartTrainingRequest(job_id=job_id, spec=job_spec, validate_only=True)
    assert trainer.stub.StartTraining(request, metadata=trainer.metadata, timeout=60).run_id == ""


def _image_folder(root: Path, classes: tuple[str, ...] = ("bright", "dark")) -> Path:
    for split in ("train", "val"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(root / split / cls / "0.png")
    return root


@pytest.mark.parametrize("validate_only", [True, False], ids=["validate-only", "start"])
def test_a_symlink_loop_in_a_class_folder_is_refused_naming_it(
    timm: TrainerProcess, tmp_path_factory: pytest.TempPathFactory, validate_only: bool
) -> None:
    # torchvision's ImageFolder follows links: `again -> .` made it count each image of the class ~41 times, and
    # the job trained on that and was reported COMPLETED.
    root = _image_folder(tmp_path_factory.mktemp("loop"))
    link = root / "train" / "bright" / "again"
    os.symlink(".", link)
    details = _refused(timm, f"loop-{validate_only}", spec(dataset="", path=str(root)), validate_only=validate_only)
    assert details.startswith(f"dataset class folder '{root / 'train' / 'bright'}': symlink loop at '{link}'")


def test_two_symlinks_to_an_image_less_class_folder_are_refused_at_once(
    timm: TrainerProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # `a -> .` and `b -> .` in a class folder without images: the check walked ~2^40 paths, StartTraining ran past
    # its deadline and the service, still walking, no longer ended on SIGTERM.
    root = _image_folder(tmp_path_factory.mktemp("loop2"))
    empty = root / "train" / "dark"
    (empty / "0.png").unlink()
    os.symlink(".", empty / "a")
    os.symlink(".", empty / "b")
    started = time.monotonic()
    details = _refused(timm, "loop2", spec(dataset="", path=str(root)))
    assert time.monotonic() - started < 10
    assert details.startswith(f"dataset class folder '{empty}': symlink loop at '{empty}/")
    _accepted(timm, "after-loop2", spec())  # the service is still free to answer


def test_two_links_to_another_class_are_not_a_loop(
    timm: TrainerProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = _image_folder(tmp_path_factory.mktemp("cross"))
    os.symlink("../dark", root / "train" / "bright" / "dark-too")
    _accepted(timm, "cross-links", spec(dataset="", path=str(root)))


@pytest.mark.parametrize("pretrained", [True, False], ids=["pretrained", "random"])
def test_an_unknown_pretrained_tag_is_refused_listing_the_models_tags(timm: TrainerProcess, pretrained: bool) -> None:
    # With pretrained: INTERNAL ("could not validate" to the backend), then "internal error" at dispatch; without:
    # accepted, then FAILED with timm's "Invalid pretrained tag" in the training process.
    job_spec = spec(model="resnet10t.bogus_tag")
    job_spec.model.pretrained = pretrained
    details = _refused(timm, f"bogus-tag-{pretrained}", job_spec)
    assert details == (
        "model_config.name: 'bogus_tag' is not a pretrained tag of the timm model 'resnet10t' "
        "(its tags are c3_in1k; or give 'resnet10t' alone)"
    )


@pytest.mark.parametrize("pretrained", [True, False], ids=["pretrained", "random"])
def test_an_empty_pretrained_tag_is_refused_naming_the_field(timm: TrainerProcess, pretrained: bool) -> None:
    # `resnet10t.` with pretrained: timm's RuntimeError "Invalid pretrained tag () for resnet10t." escaped the check
    # as INTERNAL ("internal error in the trainer"); without: accepted, then the same error failed the training.
    job_spec = spec(model="resnet10t.")
    job_spec.model.pretrained = pretrained
    details = _refused(timm, f"empty-tag-{pretrained}", job_spec)
    assert details == (
        "model_config.name: 'resnet10t.' has no pretrained tag after its '.' (the tags of the timm model "
        "'resnet10t' are c3_in1k; or give 'resnet10t' alone)"
    )


def test_a_known_pretrained_tag_is_accepted(timm: TrainerProcess) -> None:
    _accepted(timm, "known-tag", spec(model="resnet10t.c3_in1k"))


@pytest.mark.parametrize("optimizer", ["adahessian", "lookahead_adahessian"])
def test_a_second_order_optimizer_is_refused(timm: TrainerProcess, optimizer: str) -> None:
    # Built fine at submit, then failed at the first step: "element 0 of tensors does not require grad".
    job_spec = spec()
    job_spec.advanced.optimizer = optimizer
    details = _refused(timm, f"opt-{optimizer}", job_spec)
    assert details.startswith(f"advanced_config.optimizer: {optimizer!r} is a second-order optimizer, which the timm")


def test_another_frameworks_checkpoint_is_refused_without_torchs_unsafe_advice(
    timm: TrainerProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The job failed with torch's "Weights only load failed. This file can still be loaded ... if you trust the
    # source", which named no field and invited loading a pickle from anywhere.
    where = tmp_path_factory.mktemp("checkpoints")
    foreign = where / "other.pt"
    torch.save({"model": argparse.Namespace(layers=3), "state_dict": {}}, foreign)
    details = _refused(timm, "foreign-checkpoint", spec(model=str(foreign)))
    assert details == (
        f"model_config.name: '{foreign}' is not a checkpoint of the timm trainer (saved by another framework?)"
    )
    ours = where / "ours.pt"
    torch.save({"model_name": "resnet10t", "classes": [str(i) for i in range(10)], "state_dict": {}}, ours)
    _accepted(timm, "own-checkpoint", spec(model=str(ours)))


def test_num_classes_below_an_image_folders_class_count_is_refused(
    timm: TrainerProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = _image_folder(tmp_path_factory.mktemp("classes"), ("a", "b", "c"))
    job_spec = spec(dataset="", path=str(root))
    job_spec.model.num_classes = 2
    assert _refused(timm, "folder-classes", job_spec) == "model_config.num_classes is 2 but the dataset has 3 classes"
    job_spec.model.num_classes = 3
    _accepted(timm, "folder-classes-ok", job_spec)
