"""The timm trainer service (`tp-trainer-timm`): image classification behind the TrainerService API.

Settings and behaviour: docs/trainer_service.md. timm and torch are imported lazily, in a worker thread after the
server is up, so the service answers health checks at once.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from trainingplatform_sdk.trainer_service import FrameworkDescription, JobRequest, serve

__all__ = ["DESCRIPTION", "main"]


def _models() -> list[str]:
    import timm

    return timm.list_models()


def _devices() -> list[str]:
    import torch

    return ["cpu"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]


def _model_key(name: str) -> str:
    # timm accepts `architecture.pretrained_tag`; the model list names architectures.
    return name.split(".", 1)[0]


def _check_job(job: JobRequest) -> None:
    # The train/ and val/ subdirectories of an ImageFolder dataset, checked the way the adapter will read them.
    from trainingplatform_trainer_timm import datasets

    datasets.check_dataset(job.dataset)


DESCRIPTION = FrameworkDescription(
    framework="timm",
    tasks=("image_classification",),
    builtin_datasets=("digits",),
    dataset_formats=("builtin", "imagefolder"),
    default_listen="127.0.0.1:50061",
    list_models=_models,
    list_devices=_devices,
    model_key=_model_key,
    check_job=_check_job,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `tp-trainer-timm`."""
    return serve(DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(main())
