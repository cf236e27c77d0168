"""The contract's rules for a job specification, checked the same way by every component.

The backend checks every CreateJob, the trainer services every StartTraining, and `JobsClient.create_job` before
it sends; each failure is an `InvalidArgumentError` whose message names the field to fix. The limits are in
`spec.limits`; a framework's own checks (a model name it knows, a dataset path on its disk) stay in its service.
"""

from __future__ import annotations

import math
import re

from google.protobuf import struct_pb2
from trainingplatform.common.v1 import common_pb2

from trainingplatform_sdk.errors import ConfigError, InvalidArgumentError
from trainingplatform_sdk.spec import limits

__all__ = ["FRAMEWORK_NAME", "check_finite_struct", "validate_spec"]

FRAMEWORK_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
"""A framework's name: lower case, as in `timm` or `ultralytics`."""


def check_finite_struct(value: struct_pb2.Value | struct_pb2.Struct, path: str) -> None:
    """Refuses NaN and infinities anywhere in a Struct (stored and passed on as JSON, which has neither).

    Raises:
        ConfigError: naming the path of the first such number.
    """
    if isinstance(value, struct_pb2.Struct):
        for key, item in value.fields.items():
            check_finite_struct(item, f"{path}.{key}")
        return
    kind = value.WhichOneof("kind")
    if kind == "number_value" and not math.isfinite(value.number_value):
        raise ConfigError(f"{path} must be a finite number")
    if kind == "struct_value":
        check_finite_struct(value.struct_value, path)
    if kind == "list_value":
        for index, item in enumerate(value.list_value.values):
            check_finite_struct(item, f"{path}[{index}]")


def validate_spec(spec: common_pb2.JobSpec) -> None:
    """Checks a job specification against the contract's rules.

    Raises:
        InvalidArgumentError: naming the field to fix.
    """
    if not FRAMEWORK_NAME.match(spec.framework):
        raise InvalidArgumentError("spec.framework is required: a lower-case name such as `timm` or `ultralytics`")
    if not spec.model.name or len(spec.model.name) > limits.MAX_NAME_CHARS:
        raise InvalidArgumentError(f"spec.model.name is required, at most {limits.MAX_NAME_CHARS} characters")
    if spec.model.num_classes < 0 or spec.model.image_size < 0:
        raise InvalidArgumentError("spec.model.num_classes and image_size must be >= 0 (0 means the default)")
    if len(spec.dataset.name) > limits.MAX_NAME_CHARS or len(spec.dataset.path) > limits.MAX_URI_CHARS:
        raise InvalidArgumentError("spec.dataset.name or path is too long")
    if not spec.dataset.name and not spec.dataset.path:
        raise InvalidArgumentError("spec.dataset needs a built-in name (e.g. `digits`) or a path")
    training = spec.training
    if not 1 <= training.epochs <= limits.MAX_EPOCHS:
        raise InvalidArgumentError(
            f"spec.training.epochs must be between 1 and {limits.MAX_EPOCHS}; got {training.epochs}"
        )
    if training.batch_size < 0 or training.log_every_n_steps < 0 or training.num_workers < 0:
        raise InvalidArgumentError("spec.training batch_size, log_every_n_steps and num_workers must be >= 0")
    if not math.isfinite(training.learning_rate) or training.learning_rate < 0:
        raise InvalidArgumentError("spec.training.learning_rate must be a finite number >= 0")
    advanced = spec.advanced
    for name in ("weight_decay", "warmup_epochs"):
        if advanced.HasField(name) and not (math.isfinite(getattr(advanced, name)) and getattr(advanced, name) >= 0):
            raise InvalidArgumentError(f"spec.advanced.{name} must be a finite number >= 0")
    if advanced.HasField("momentum") and not 0 <= advanced.momentum < 1:
        raise InvalidArgumentError("spec.advanced.momentum must be in [0, 1)")
    augmentation = advanced.augmentation
    for name in ("horizontal_flip_probability", "scale", "color_jitter"):
        if augmentation.HasField(name) and not 0 <= getattr(augmentation, name) <= 1:
            raise InvalidArgumentError(f"spec.advanced.augmentation.{name} must be in [0, 1]")
    check_finite_struct(advanced.extra, "spec.advanced.extra")
