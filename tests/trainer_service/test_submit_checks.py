"""Spec values the training process used to refuse only after it started are refused by StartTraining (and its
`validate_only`, which the backend's CreateJob asks) with the same message, starting nothing.

Real services: `tp-trainer-timm` and `tp-trainer-ultralytics` with their real adapters; nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from trainingplatform.common.v1 import common_pb2
from trainingplatform.trainer.v1 import trainer_pb2

from .trainer_process import TrainerProcess, refused_start, spec

#: A Hugging Face hub cache holding (a stand-in for) resnet18's default weights, as `hf download` leaves it.
CACHED_REPO, CACHED_REVISION = "timm/resnet18.a1_in1k", "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def timm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerProcess]:
    caches = tmp_path_factory.mktemp("checks-timm-caches")
    repo = caches / "hub" / f"models--{CACHED_REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(CACHED_REVISION)
    (repo / "snapshots" / CACHED_REVISION).mkdir(parents=True)
    (repo / "snapshots" / CACHED_REVISION / "model.safetensors").write_bytes(b"weights")
    env = {"HF_HUB_CACHE": str(caches / "hub"), "TORCH_HOME": str(caches / "torch")}
    process = TrainerProcess(tmp_path_factory.mktemp("checks-timm"), env=env).start()
    yield process
    process.close()


@pytest.fixture(scope="module")
def ultralytics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerProcess]:
    process = TrainerProcess(tmp_path_factory.mktemp("checks-ultra"), executable="tp-trainer-ultralytics").start()
    yield process
    process.close()


def _ultra_spec() -> common_pb2.JobSpec:
    return spec(framework="ultralytics", model="yolo11n.yaml", dataset="shapes", image_size=64)


@pytest.mark.parametrize("validate_only", [True, False], ids=["validate-only", "start"])
def test_ultralytics_pretrained_without_a_checkpoint_is_refused(
    ultralytics: TrainerProcess, validate_only: bool
) -> None:
    job_spec = _ultra_spec()
    job_spec.model.pretrained = True
    details = refused_start(ultralytics, f"pretrained-{validate_only}", job_spec, validate_only=validate_only)
    assert details == (
        "model_config.pretrained: ultralytics pretrained weights come from a local .pt; "
        "give its path as model_config.name"
    )


@pytest.mark.parametrize("validate_only", [True, False], ids=["validate-only", "start"])
def test_timm_num_classes_below_a_builtin_datasets_classes_is_refused(
    timm: TrainerProcess, validate_only: bool
) -> None:
    job_spec = spec()
    job_spec.model.num_classes = 1
    details = refused_start(timm, f"classes-{validate_only}", job_spec, validate_only=validate_only)
    assert details == "model_config.num_classes is 1 but the dataset has 10 classes"


@pytest.mark.parametrize("validate_only", [True, False], ids=["validate-only", "start"])
def test_timm_image_folder_layout_errors_are_refused(
    timm: TrainerProcess, tmp_path_factory: pytest.TempPathFactory, validate_only: bool
) -> None:
    # An empty class folder failed the job after it started, with torchvision's "Found no valid file for the
    # classes b." naming neither the split nor the path.
    from PIL import Image

    root = tmp_path_factory.mktemp("layout")
    for split, classes in (("train", ("a", "b")), ("val", ("a", "b"))):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
    for split in ("train", "val"):
        Image.new("RGB", (8, 8)).save(root / split / "a" / "0.png")
    Image.new("RGB", (8, 8)).save(root / "train" / "b" / "0.png")
    job_spec = spec(dataset="mine", path=str(root))
    details = refused_start(timm, f"empty-class-{validate_only}", job_spec, validate_only=validate_only)
    assert details == (
        f"dataset split '{root / 'val'}': the class folder(s) 'b' hold no image file; put at least one image in "
        "each class folder of train/ and of val/, or remove the class from both"
    )
    (root / "val" / "b").rmdir()
    details = refused_start(timm, f"other-classes-{validate_only}", job_spec, validate_only=validate_only)
    assert details == f"dataset {str(root)!r}: train/ and val/ have different classes (['a', 'b'] vs ['a'])"
    (root / "val" / "b").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "b" / "0.png")
    request = trainer_pb2.StartTrainingRequest(job_id=f"layout-ok-{validate_only}", spec=job_spec, validate_only=True)
    assert timm.stub.StartTraining(request, metadata=timm.metadata, timeout=60).run_id == ""


def test_timm_a_data_set_path_that_is_a_file_or_lacks_a_split_is_refused_naming_the_field(
    timm: TrainerProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A file was NOT_FOUND, "dataset path '...' does not exist or is not a directory" though it exists, and neither
    # message named the field to fix. A missing split stays NOT_FOUND: another trainer's host may have it.
    root = tmp_path_factory.mktemp("not-a-tree")
    (root / "images.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    details = refused_start(timm, "a-file", spec(dataset="mine", path=str(root / "images.zip")), validate_only=True)
    assert details.startswith(f"dataset_config.path: {str(root / 'images.zip')!r} is a file, not a directory"), details
    (root / "train" / "a").mkdir(parents=True)
    request = trainer_pb2.StartTrainingRequest(job_id="no-val", spec=spec(dataset="mine", path=str(root)))
    with pytest.raises(grpc.RpcError) as caught:
        timm.stub.StartTraining(request, metadata=timm.metadata, timeout=60)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details().startswith(f"dataset_config.path: {str(root)!r} has no val/ directory")


def test_timm_num_classes_of_a_builtin_dataset_or_more_is_accepted(timm: TrainerProcess) -> None:
    for num_classes in (10, 12):
        job_spec = spec()
        job_spec.model.num_classes = num_classes
        request = trainer_pb2.StartTrainingRequest(job_id=f"classes-{num_classes}", spec=job_spec, validate_only=True)
        assert timm.stub.StartTraining(request, metadata=timm.metadata, timeout=60).run_id == ""


@pytest.mark.parametrize("validate_only", [True, False], ids=["validate-only", "start"])
def test_timm_pretrained_weights_missing_from_the_cache_are_refused(timm: TrainerProcess, validate_only: bool) -> None:
    # The job was accepted and failed a few seconds into the training process.
    job_spec = spec(model="resnet10t")
    job_spec.model.pretrained = True
    details = refused_start(timm, f"pretrained-{validate_only}", job_spec, validate_only=validate_only)
    assert details.startswith("model_config.pretrained: the pretrained weights of 'resnet10t' are not in the local")
    assert "timm/resnet10t.c3_in1k in " in details and "trainers never download" in details


def test_timm_pretrained_for_a_model_timm_has_no_weights_of_is_refused(timm: TrainerProcess) -> None:
    # timm would train it from random weights, with only a warning in the log.
    job_spec = spec(model="botnet50ts_256")
    job_spec.model.pretrained = True
    details = refused_start(timm, "no-weights", job_spec, validate_only=True)
    assert details == "model_config.pretrained: timm has no pretrained weights of 'botnet50ts_256'; set it to false"


def test_timm_pretrained_weights_in_the_cache_are_accepted(timm: TrainerProcess) -> None:
    for model in ("resnet18", "resnet18.a1_in1k", "resnet10t"):
        job_spec = spec(model=model)
        job_spec.model.pretrained = model.startswith("resnet18")
        request = trainer_pb2.StartTrainingRequest(job_id=f"cached-{model}", spec=job_spec, validate_only=True)
        assert timm.stub.StartTraining(request, metadata=timm.metadata, timeout=60).run_id == ""


@pytest.mark.parametrize(
    ("key", "suggested"),
    [("optimiser", "'optimizer'"), ("weight_decai", "'weight_decay'"), ("augmentation.scal", "'augmentation.scale'")],
)
def test_timm_unknown_advanced_key_suggests_every_valid_key(timm: TrainerProcess, key: str, suggested: str) -> None:
    """`--advanced-config '{"optimiser": "sgd"}'`: the unknown key lands in `extra`; the suggestion and the hint
    cover the typed fields too, not only timm's own extra options."""
    job_spec = spec(extra={key: "sgd"})
    details = refused_start(timm, "unknown-key", job_spec, validate_only=True)
    assert f"unknown timm option {key!r}" in details
    assert f"did you mean {suggested}" in details


def test_timm_unknown_advanced_key_lists_every_valid_key(timm: TrainerProcess) -> None:
    details = refused_start(timm, "unknown-key", spec(extra={"zzz": 1}), validate_only=True)
    assert "valid keys: " in details
    listed = details.split("valid keys: ", 1)[1]
    for key in ("optimizer", "lr_scheduler", "seed", "augmentation.scale", "drop_rate", "num_threads"):
        assert key in listed, details


def test_ultralytics_unknown_advanced_key_still_suggests(ultralytics: TrainerProcess) -> None:
    details = refused_start(
        ultralytics, "unknown-key", _set_extra(_ultra_spec(), {"optimiser": "SGD"}), validate_only=True
    )
    assert "did you mean 'optimizer'" in details


def _set_extra(job_spec: common_pb2.JobSpec, extra: dict[str, object]) -> common_pb2.JobSpec:
    job_spec.advanced.extra.update(extra)
    return job_spec


def test_a_typed_field_put_under_extra_names_the_field(timm: TrainerProcess) -> None:
    details = refused_start(timm, "typed-in-extra", _set_extra(spec(), {"optimizer": "sgd"}), validate_only=True)
    assert details == (
        "advanced_config.extra: 'optimizer' is not a timm option but a field: set advanced_config.optimizer instead"
    )


def _accepted(trainer: TrainerProcess, job_id: str, job_spec: common_pb2.JobSpec) -> None:
    request = trainer_pb2.StartTrainingRequest(job_id=job_id, spec=job_spec, validate_only=True)
    trainer.stub.StartTraining(request, metadata=trainer.metadata, timeout=60)


def test_ultralytics_imgsz_in_extra_is_refused_naming_the_image_size_field(ultralytics: TrainerProcess) -> None:
    """`{"imgsz": 640}` used to override `--image-size` silently."""
    details = refused_start(ultralytics, "imgsz", _set_extra(_ultra_spec(), {"imgsz": 640}), validate_only=True)
    assert details == "advanced_config.extra.imgsz: set by the platform; use model_config.image_size instead"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("box", 1e308, "advanced_config.extra.box: must be at most 1000, got 1"),  # OverflowError in training
        ("cls", -1.0, "advanced_config.extra.cls: must be at least 0, got -1"),
        ("shear", 720.0, "advanced_config.extra.shear: must be at most 90, got 720"),
        ("time", 1e300, "advanced_config.extra.time: must be at most 1e+06, got 1"),
        ("close_mosaic", 10**12, "advanced_config.extra.close_mosaic: must be at most 1e+06, got 1000000000000"),
    ],
)
def test_ultralytics_numbers_outside_sane_bounds_are_refused(
    ultralytics: TrainerProcess, key: str, value: object, message: str
) -> None:
    details = refused_start(ultralytics, f"bound-{key}", _set_extra(_ultra_spec(), {key: value}), validate_only=True)
    assert details.startswith(message)


@pytest.mark.parametrize("value", ["abc", [0, "a"], -1, 1.5, True])
def test_ultralytics_classes_must_be_class_ids(ultralytics: TrainerProcess, value: object) -> None:
    """`{"classes": "abc"}` used to be accepted and then ignored by ultralytics."""
    details = refused_start(ultralytics, "classes", _set_extra(_ultra_spec(), {"classes": value}), validate_only=True)
    assert details.startswith("advanced_config.extra.classes: a class id or a list of class ids (integers ≥ 0), got")


@pytest.mark.parametrize("validate_only", [True, False], ids=["validate-only", "start"])
def test_ultralytics_cache_on_disk_is_refused(ultralytics: TrainerProcess, validate_only: bool) -> None:
    # `cache: disk` made ultralytics save a .npy beside each image, inside the data set (read-only in Kubernetes).
    job_spec = _set_extra(_ultra_spec(), {"cache": "disk"})
    details = refused_start(ultralytics, f"cache-disk-{validate_only}", job_spec, validate_only=validate_only)
    assert details == (
        "advanced_config.extra.cache: 'disk' would save a .npy beside each image, inside the data set, and "
        "trainers never write into a data set: use 'ram' (or true) or false"
    )
    for i, value in enumerate(("ram", True, False)):
        _accepted(ultralytics, f"cache-ok-{validate_only}-{i}", _set_extra(_ultra_spec(), {"cache": value}))


def test_ultralytics_class_ids_and_in_range_gains_are_accepted(ultralytics: TrainerProcess) -> None:
    accepted = (
        {"classes": 1},
        {"classes": [0, 1]},
        {"box": 1000.0, "shear": -90.0, "time": 0.5},
        {"freeze": 3},
        {"freeze": [0, 1, 2]},  # a Struct's list items arrive as floats: they were refused
    )
    for i, extra in enumerate(accepted):
        _accepted(ultralytics, f"ok-{i}", _set_extra(_ultra_spec(), extra))


def test_ultralytics_freeze_takes_module_names_as_ultralytics_does(ultralytics: TrainerProcess) -> None:
    # ultralytics documents `freeze` as a number of layers or a list of "layer indices or module names like
    # '23.cv2'"; a name was refused ("a number of layers or a list of layer indices").
    for i, value in enumerate((["23.cv2"], [0, "23.cv2.0"], ["22", "23"])):
        _accepted(ultralytics, f"freeze-ok-{i}", _set_extra(_ultra_spec(), {"freeze": value}))
    # What ultralytics would match against no parameter (it prefixes `model.`), or cannot take at all.
    for i, value in enumerate((["model.23"], ["cv2"], ["23 .cv2"], [-1], [1.5], "23.cv2")):
        details = refused_start(
            ultralytics, f"freeze-bad-{i}", _set_extra(_ultra_spec(), {"freeze": value}), validate_only=True
        )
        assert details.startswith(
            "advanced_config.extra.freeze: a number of layers, or a list of layer indices and module names such as "
            "'23.cv2' (a layer index, then attribute names), got"
        ), details


def test_ultralytics_fraction_takes_per_split_lists_and_never_selects_no_image(ultralytics: TrainerProcess) -> None:
    # ultralytics documents `fraction` as a ratio, a count, or [train, val] / [train, val, test] "split values"; a
    # list was refused. A ratio that rounds to no image of a small set keeps one (ultralytics' max(1, ...)), so only
    # 0 selects nothing, for train and val: refused (ultralytics' own check failed the training at its start).
    for i, value in enumerate((0.01, 3, [0.5, 1], [2, 0.5, 0], [1, 1, 1])):
        _accepted(ultralytics, f"fraction-ok-{i}", _set_extra(_ultra_spec(), {"fraction": value}))
    for i, value in enumerate((0, [0, 1], [1, 0], [0.5], [1, 1, 1, 1], [1.5, 1], [-1, 1], ["a", 1])):
        details = refused_start(
            ultralytics, f"fraction-bad-{i}", _set_extra(_ultra_spec(), {"fraction": value}), validate_only=True
        )
        assert details.startswith(
            "advanced_config.extra.fraction: a ratio in (0, 1] or a count of images above 1, or a [train, val] or "
            "[train, val, test] list of ratios and counts (train and val not 0), got"
        ), details


@pytest.mark.parametrize(
    ("key", "value"),
    [("show", True), ("format", "onnx"), ("source", "x.jpg"), ("line_width", 2), ("tracker", "x.yaml"), ("dnn", True)],
)
def test_ultralytics_prediction_and_export_arguments_are_refused_naming_the_key(
    ultralytics: TrainerProcess, key: str, value: object
) -> None:
    # They were accepted (default.yaml lists every mode's arguments) and training never read them: a job asking for
    # `format: onnx` or `show: true` trained as if they were not there.
    details = refused_start(ultralytics, f"ignored-{key}", _set_extra(_ultra_spec(), {key: value}), validate_only=True)
    assert details == (
        f"advanced_config.extra.{key}: read only when predicting, exporting or tracking, never by training; "
        "leave it out"
    )


@pytest.mark.parametrize("validate_only", [True, False], ids=["validate-only", "start"])
def test_ultralytics_weight_decay_above_1_is_refused(ultralytics: TrainerProcess, validate_only: bool) -> None:
    # The contract allows [0, 100]; ultralytics failed at training start: "'weight_decay=5.0' is an invalid value".
    job_spec = _ultra_spec()
    job_spec.advanced.weight_decay = 5.0
    details = refused_start(ultralytics, f"decay-{validate_only}", job_spec, validate_only=validate_only)
    assert details == "advanced_config.weight_decay: must be in [0, 1] for ultralytics, got 5"


def test_ultralytics_learning_rate_above_1_is_refused(ultralytics: TrainerProcess) -> None:
    # ultralytics' lr0 is a fraction too: 5 failed at training start like the weight decay.
    job_spec = _ultra_spec()
    job_spec.training.learning_rate = 5.0
    details = refused_start(ultralytics, "lr", job_spec, validate_only=True)
    assert details == "training_config.learning_rate: must be in [0, 1] for ultralytics (its lr0), got 5"


def test_ultralytics_weight_decay_and_learning_rate_of_1_are_accepted(ultralytics: TrainerProcess) -> None:
    job_spec = _ultra_spec()
    job_spec.advanced.weight_decay = 1.0
    job_spec.training.learning_rate = 1.0
    _accepted(ultralytics, "decay-1", job_spec)


def test_ultralytics_takes_a_yolo_data_set_directory_for_its_data_yaml(
    ultralytics: TrainerProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The directory was refused: "the ultralytics trainer reads builtin or yolo, not 'imagefolder'".
    from trainingplatform_trainer_ultralytics.datasets import write_shapes_dataset

    root = tmp_path_factory.mktemp("yolo-dir")
    write_shapes_dataset(root / "shapes", train_images=2, val_images=1, image_size=32)
    job_spec = spec(framework="ultralytics", model="yolo11n.yaml", dataset="mine", path=str(root / "shapes"))
    request = trainer_pb2.StartTrainingRequest(job_id="yolo-dir", spec=job_spec, validate_only=True)
    assert ultralytics.stub.StartTraining(request, metadata=ultralytics.metadata, timeout=60).run_id == ""
    job_spec.dataset.path = str(root / "shapes" / "images")
    details = refused_start(ultralytics, "yolo-dir-no-yaml", job_spec, validate_only=True)
    assert details.startswith(
        f"dataset_config.path: {str(root / 'shapes' / 'images')!r} is a directory without a YOLO data.yaml"
    )


@pytest.fixture(scope="module")
def yolo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 2-class YOLO data set (the shapes generator's), under the trainer's data roots."""
    from trainingplatform_trainer_ultralytics.datasets import write_shapes_dataset

    root = tmp_path_factory.mktemp("yolo-classes")
    write_shapes_dataset(root / "shapes", train_images=2, val_images=1, image_size=32)
    return root / "shapes"


def _yolo_spec(data_yaml: Path) -> common_pb2.JobSpec:
    return spec(framework="ultralytics", model="yolo11n.yaml", dataset="mine", path=str(data_yaml), image_size=64)


def _with_yaml(yolo_root: Path, name: str, names_block: str) -> Path:
    """A data.yaml beside the shapes data set's, with `names_block` in place of its `names`."""
    text = (yolo_root / "data.yaml").read_text().split("names:", 1)[0]
    path = yolo_root / name
    path.write_text(text + names_block)
    return path


@pytest.mark.parametrize("validate_only", [True, False], ids=["validate-only", "start"])
def test_ultralytics_data_yaml_without_names_or_nc_is_refused_naming_it(
    ultralytics: TrainerProcess, yolo_root: Path, validate_only: bool
) -> None:
    # It was accepted; the job failed when training started, naming the trainer's copy runs/<job>/data/data.yaml.
    data_yaml = _with_yaml(yolo_root, "nonames.yaml", "")
    details = refused_start(ultralytics, f"nonames-{validate_only}", _yolo_spec(data_yaml), validate_only=validate_only)
    assert details == (
        f"dataset_config.path: {str(data_yaml)!r} has neither `names` (the class names: a list, or a mapping from "
        "class id) nor `nc` (the number of classes); ultralytics needs one of them"
    )


def test_ultralytics_data_yaml_whose_nc_and_names_disagree_is_refused(
    ultralytics: TrainerProcess, yolo_root: Path
) -> None:
    data_yaml = _with_yaml(yolo_root, "nc3.yaml", "nc: 3\nnames: [a, b]\n")
    details = refused_start(ultralytics, "nc-names", _yolo_spec(data_yaml), validate_only=True)
    assert details == (
        f"dataset_config.path: {str(data_yaml)!r}: `nc` is 3 but `names` has 2 classes; make them match (or leave "
        "`nc` out)"
    )
    data_yaml = _with_yaml(yolo_root, "ids.yaml", "names:\n  0: a\n  2: b\n")
    details = refused_start(ultralytics, "names-ids", _yolo_spec(data_yaml), validate_only=True)
    assert details == f"dataset_config.path: {str(data_yaml)!r}: the class ids of `names` must be 0 to 1, got 0, 2"
    # `nc` alone is enough for ultralytics (it names the classes class_0, ...), and so are matching ones.
    for i, block in enumerate(("nc: 2\n", "nc: 2\nnames: [a, b]\n", "names:\n  0: a\n  1: b\n")):
        _accepted(ultralytics, f"classes-ok-{i}", _yolo_spec(_with_yaml(yolo_root, f"ok{i}.yaml", block)))


@pytest.mark.parametrize("num_classes", [1, 7])
def test_ultralytics_num_classes_other_than_the_data_sets_is_refused(
    ultralytics: TrainerProcess, yolo_root: Path, num_classes: int
) -> None:
    # The ultralytics trainer ignored model_config.num_classes and trained with the data set's 2 classes.
    job_spec = _yolo_spec(yolo_root / "data.yaml")
    job_spec.model.num_classes = num_classes
    details = refused_start(ultralytics, f"num-classes-{num_classes}", job_spec, validate_only=True)
    assert details == (
        f"model_config.num_classes is {num_classes} but the data set ({str(yolo_root / 'data.yaml')!r}) has 2 "
        "classes; ultralytics trains with the data set's classes: leave num_classes at 0 or set it to 2"
    )
    job_spec = _ultra_spec()
    job_spec.model.num_classes = num_classes
    details = refused_start(ultralytics, f"num-classes-shapes-{num_classes}", job_spec, validate_only=True)
    assert "but the data set (the built-in data set 'shapes') has 2 classes" in details


def test_ultralytics_num_classes_of_the_data_set_or_0_is_accepted(ultralytics: TrainerProcess, yolo_root: Path) -> None:
    for num_classes in (0, 2):
        job_spec = _yolo_spec(yolo_root / "data.yaml")
        job_spec.model.num_classes = num_classes
        _accepted(ultralytics, f"num-classes-ok-{num_classes}", job_spec)


@pytest.mark.parametrize(("value", "outside"), [([7], "7"), (2, "2"), ([0, 1, 2, 5], "2, 5")])
def test_ultralytics_class_ids_the_data_set_lacks_are_refused(
    ultralytics: TrainerProcess, yolo_root: Path, value: object, outside: str
) -> None:
    # `classes: [7]` on a 2-class data set trained on no labels at all, and the job COMPLETED.
    job_spec = _set_extra(_yolo_spec(yolo_root / "data.yaml"), {"classes": value})
    details = refused_start(ultralytics, "class-ids", job_spec, validate_only=True)
    assert details == (
        f"advanced_config.extra.classes: class id(s) {outside} not in the data set, which has 2 classes (ids 0 to 1)"
    )


@pytest.mark.parametrize("validate_only", [True, False], ids=["validate-only", "start"])
def test_ultralytics_checkpoint_of_another_framework_is_refused(
    ultralytics: TrainerProcess, yolo_root: Path, validate_only: bool
) -> None:
    # A timm checkpoint failed the job when training started: "TypeError: ERROR ... references types outside the
    # supported Ultralytics checkpoint format".
    import torch

    checkpoint = yolo_root.parent / "timm.pt"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(2, 2)}, "epoch": 1}, checkpoint)
    job_spec = _yolo_spec(yolo_root / "data.yaml")
    job_spec.model.name = str(checkpoint)
    details = refused_start(ultralytics, f"timm-pt-{validate_only}", job_spec, validate_only=validate_only)
    assert details == (
        f"model_config.name: {str(checkpoint)!r} is not an ultralytics checkpoint (saved by another framework?); "
        "give a .pt saved by ultralytics (a job's best.pt or last.pt) or a model yaml such as yolo11n.yaml"
    )


def test_ultralytics_encrypted_checkpoint_is_refused_not_an_internal_error(
    ultralytics: TrainerProcess, yolo_root: Path
) -> None:
    # zipfile's RuntimeError ("File 'archive/data.pkl' is encrypted, password required for extraction") escaped the
    # check: INTERNAL, "internal error in the trainer", naming no field.
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", b"not read")
    data = bytearray(buffer.getvalue())
    for header, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # the entry's "encrypted" flag bit
        data[data.index(header) + flags_at] |= 1
    checkpoint = yolo_root.parent / "encrypted.pt"
    checkpoint.write_bytes(bytes(data))
    job_spec = _yolo_spec(yolo_root / "data.yaml")
    job_spec.model.name = str(checkpoint)
    details = refused_start(ultralytics, "encrypted-pt", job_spec, validate_only=True)
    assert details.startswith(f"model_config.name: {str(checkpoint)!r} is not an ultralytics checkpoint"), details


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (8, "8 (INT8 quantization-aware training) needs the nvidia-modelopt package, which is not installed"),
        ("int8", "'int8' (INT8 quantization-aware training) needs the nvidia-modelopt package"),
        ("abc", "8 (or 'int8', 'w8a8': quantization-aware training, with nvidia-modelopt installed), 32 (or 'fp32', "),
        (16, "8 (or 'int8', 'w8a8'"),
    ],
)
def test_ultralytics_quantize_that_training_cannot_use_is_refused(
    ultralytics: TrainerProcess, value: object, message: str
) -> None:
    # `quantize: 8` was accepted and the job failed at training start: "No module named 'modelopt'".
    from importlib.util import find_spec

    if find_spec("modelopt") is not None:
        pytest.skip("nvidia-modelopt is installed here")
    details = refused_start(ultralytics, "quantize", _set_extra(_ultra_spec(), {"quantize": value}), validate_only=True)
    assert details.startswith(f"advanced_config.extra.quantize: {message}"), details


def test_ultralytics_compile_must_be_a_torch_compile_mode(ultralytics: TrainerProcess) -> None:
    # Any string was accepted; torch.compile refused it and ultralytics trained uncompiled, saying so in train.log.
    details = refused_start(ultralytics, "compile", _set_extra(_ultra_spec(), {"compile": "fast"}), validate_only=True)
    assert details == (
        "advanced_config.extra.compile: true, false or a torch.compile mode ('default', 'reduce-overhead', "
        "'max-autotune', 'max-autotune-no-cudagraphs'), got 'fast'"
    )
    for i, extra in enumerate(
        ({"compile": "max-autotune"}, {"compile": False}, {"quantize": 32}, {"quantize": "fp32"})
    ):
        _accepted(ultralytics, f"compile-ok-{i}", _set_extra(_ultra_spec(), extra))
