"""The ultralytics trainer service (`tp-trainer-ultralytics`): YOLO object detection behind the TrainerService API.

Settings and behaviour: docs/trainer_service.md. Models are built from ultralytics' model yamls
(`yolo11n.yaml`, ...) or loaded from a local `.pt` checkpoint; trainers never download weights. The model list is
read from the yaml files shipped with ultralytics, without importing it (or torch).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from trainingplatform_sdk.spec.configs import DatasetConfig
from trainingplatform_sdk.trainer_service import FrameworkDescription, JobRequest, serve

from trainingplatform_trainer_ultralytics.options import (
    ADVANCED_BOUNDS,
    MAX_SEED,
    advanced_defaults,
    check_extra_values,
    extra_options,
)

__all__ = ["DESCRIPTION", "detection_model_yamls", "main"]

# Detection configs are the plain family files (`yolo11.yaml`, `yolov8.yaml`, `yolov10n.yaml`); variants for other
# tasks carry a suffix (`yolo11-seg.yaml`, `yolov8-cls.yaml`).
_DETECTION_YAML = re.compile(r"yolov?\d+[a-z]?\.yaml")
_SCALES_BLOCK = re.compile(r"^scales:.*?\n((?:[ \t]+.*\n|#.*\n|\s*\n)+)", re.MULTILINE)
_SCALE_KEY = re.compile(r"^[ \t]+([a-z]):", re.MULTILINE)


def detection_model_yamls() -> list[str]:
    """Model yaml names ultralytics can build for detection: each family file with each of its scales
    (`yolo11.yaml` with scales n, s, m, l, x gives `yolo11n.yaml` ... `yolo11x.yaml`)."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return []
    models_dir = Path(next(iter(spec.submodule_search_locations))) / "cfg" / "models"
    names: list[str] = []
    for path in models_dir.glob("*/*.yaml"):
        if not _DETECTION_YAML.fullmatch(path.name):
            continue
        block = _SCALES_BLOCK.search(path.read_text(encoding="utf-8"))
        scales = _SCALE_KEY.findall(block.group(1)) if block else []
        # A stem ending in a letter names one scale already (`yolov10n.yaml`).
        if scales and path.stem[-1].isdigit():
            names.extend(f"{path.stem}{scale}.yaml" for scale in scales)
        else:
            names.append(path.name)
    return sorted(names)


def _devices() -> list[str]:
    import torch

    return ["cpu"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]


def _optimizers() -> list[str]:
    from trainingplatform_trainer_ultralytics.adapter import OPTIMIZERS

    return list(OPTIMIZERS)


def _dataset_paths(dataset: DatasetConfig) -> list[str]:
    from trainingplatform_trainer_ultralytics import datasets

    return datasets.referenced_paths(dataset)


def _resolve_dataset(dataset: DatasetConfig) -> DatasetConfig:
    from trainingplatform_trainer_ultralytics import datasets

    return datasets.resolve_dataset(dataset)


def _check_job(job: JobRequest) -> None:
    # The model and dataset rules of the adapter's own check(), and the values ultralytics accepts several
    # types for. The adapter module imports no ultralytics.
    from trainingplatform_trainer_ultralytics import datasets
    from trainingplatform_trainer_ultralytics.adapter import (
        check_checkpoint,
        check_class_ids,
        check_fractions,
        check_num_classes,
        check_pretrained,
    )

    check_pretrained(job.model)
    check_checkpoint(job.model)
    check_fractions(job.training, job.advanced)
    datasets.check_dataset(job.dataset)
    classes = datasets.class_count(job.dataset)
    check_num_classes(job.model, job.dataset, classes)
    check_class_ids(job.advanced.extra, classes)
    seed = job.advanced.seed
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ValueError(f"advanced_config.seed: from 0 to {MAX_SEED} for ultralytics (a numpy seed), got {seed}")
    check_extra_values(job.advanced.extra)


DESCRIPTION = FrameworkDescription(
    framework="ultralytics",
    tasks=("object_detection",),
    builtin_datasets=("shapes",),
    dataset_formats=("builtin", "yolo"),
    default_listen="127.0.0.1:50062",
    list_models=detection_model_yamls,
    list_devices=_devices,
    check_job=_check_job,
    resolve_dataset=_resolve_dataset,
    dataset_paths=_dataset_paths,
    list_optimizers=_optimizers,
    extra_options=extra_options,
    advanced_defaults=advanced_defaults,
    advanced_bounds=ADVANCED_BOUNDS,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `tp-trainer-ultralytics`."""
    return serve(DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(main())
