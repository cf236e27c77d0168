"""The timm trainer service (`tp-trainer-timm`): image classification behind the TrainerService API.

Settings and behaviour: docs/trainer_service.md. timm and torch are imported lazily, in a worker thread after the
server is up, so the service answers health checks at once.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from trainingplatform_sdk.trainer_service import FrameworkDescription, JobRequest, serve
from trainingplatform_sdk.trainer_service.framework import ExtraOption

__all__ = ["DESCRIPTION", "EXTRA_OPTIONS", "main"]

#: The `advanced_config.extra` keys the TimmAdapter reads (adapter.py), with their types and ranges.
EXTRA_OPTIONS = {
    "num_threads": ExtraOption(
        "int", low=1, bound="cpus", default="the CPUs the process may use", doc="torch's CPU threads"
    ),
    "label_smoothing": ExtraOption("fraction", default=0.0, doc="label smoothing of the cross-entropy loss"),
    "drop_rate": ExtraOption("fraction", default="the model's (0.0 for most)", doc="dropout before the classifier"),
}


def _models() -> list[str]:
    import timm

    return timm.list_models()


def _devices() -> list[str]:
    import torch

    return ["cpu"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]


def _model_key(name: str) -> str:
    # timm accepts `architecture.pretrained_tag`; the model list names architectures.
    return name.split(".", 1)[0]


def _all_optimizers() -> list[str]:
    import timm.optim

    names = [str(name) for name in timm.optim.list_optimizers()]
    # create_optimizer_v2 also takes `lookahead_<name>`.
    return names + [f"lookahead_{name}" for name in names]


def _second_order(name: str) -> bool:
    import timm.optim

    return bool(timm.optim.get_optimizer_info(name.removeprefix("lookahead_")).second_order)


def _optimizers() -> list[str]:
    # The second-order ones (adahessian) are refused (`_refused_optimizers`): their step needs a backward pass that
    # keeps the gradients' graph, which the TimmAdapter's loop does not make.
    return [name for name in _all_optimizers() if not _second_order(name)]


def _refused_optimizers() -> dict[str, str]:
    from trainingplatform_trainer_timm.adapter import SECOND_ORDER_REFUSAL

    return {name: SECOND_ORDER_REFUSAL for name in _all_optimizers() if _second_order(name)}


def _advanced_defaults() -> dict[str, Any]:
    """What the TimmAdapter uses for each typed advanced_config field left unset (adapter.py, datasets.py)."""
    from trainingplatform_trainer_timm import adapter, datasets

    return {
        "optimizer": adapter.DEFAULT_OPTIMIZER,
        "lr_scheduler": adapter.DEFAULT_LR_SCHEDULER,
        "weight_decay": adapter.DEFAULT_WEIGHT_DECAY,
        "momentum": "the optimizer's own",
        "warmup_epochs": 0.0,
        "mixed_precision": False,
        "seed": adapter.DEFAULT_SEED,
        "augmentation.enabled": (
            f"off (true alone: flip {datasets._DEFAULT_FLIP:g} and scale {datasets._DEFAULT_SCALE:g}; "
            "with a field below set: that field only)"
        ),
        "augmentation.horizontal_flip_probability": "none (no flips)",
        "augmentation.scale": "none (no random crops)",
        "augmentation.color_jitter": "none (no jitter)",
    }


def _check_job(job: JobRequest) -> None:
    # The train/ and val/ subdirectories of an ImageFolder dataset, checked the way the adapter will read them,
    # num_classes against the dataset's classes, a model name's pretrained tag, a checkpoint's format (its tensors
    # mapped, not read), and pretrained weights in the local cache.
    from trainingplatform_trainer_timm import datasets
    from trainingplatform_trainer_timm.adapter import (
        CHECKPOINT_SUFFIXES,
        check_pretrained,
        load_checkpoint,
        resolve_model_name,
    )

    classes = datasets.check_dataset(job.dataset)
    datasets.check_num_classes(job.model, job.dataset, classes)
    if job.model.name.endswith(CHECKPOINT_SUFFIXES):
        load_checkpoint(job.model.name, mmap=True)
    else:
        resolve_model_name(job.model.name)
    check_pretrained(job.model)
    _check_optimizer(job)


def _check_optimizer(job: JobRequest) -> None:
    """Builds the optimizer the adapter will build, on a one-parameter model: a name timm lists but cannot build
    here (APEX or bitsandbytes without CUDA or the package), or a second-order one the training step cannot feed
    (adahessian), is refused now, not in the training process."""
    import torch
    from timm.optim import create_optimizer_v2

    from trainingplatform_trainer_timm.adapter import DEFAULT_OPTIMIZER, DEFAULT_WEIGHT_DECAY, refuse_second_order

    advanced = job.advanced
    name = advanced.optimizer or DEFAULT_OPTIMIZER
    args: dict[str, Any] = {
        "lr": job.training.learning_rate or 1e-3,
        "weight_decay": advanced.weight_decay if advanced.weight_decay is not None else DEFAULT_WEIGHT_DECAY,
    }
    if advanced.momentum is not None:
        args["momentum"] = advanced.momentum
    try:
        optimizer = create_optimizer_v2(torch.nn.Linear(1, 1), opt=name, **args)
    except Exception as error:
        raise ValueError(
            f"advanced_config.optimizer: timm cannot build {name[:100]!r} on this trainer: "
            f"{type(error).__name__}: {str(error)[:300]}"
        ) from None
    refuse_second_order(optimizer, name)


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
    list_optimizers=_optimizers,
    refused_optimizers=_refused_optimizers,
    extra_options=lambda: EXTRA_OPTIONS,
    advanced_defaults=_advanced_defaults,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `tp-trainer-timm`."""
    return serve(DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(main())
