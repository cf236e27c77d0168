"""The contract's rules for a job specification and for the fields of every request, checked the same way by
every component.

The backend checks every CreateJob and every field of its requests, the trainer services every StartTraining,
and `JobsClient.create_job` before it sends; each failure is an `InvalidArgumentError` whose message names the
field to fix and quotes at most a short cut of the value (`errors.quote`). The limits are in `spec.limits`; a
framework's own checks (a model name it knows, a dataset path on its disk) stay in its service.
"""

from __future__ import annotations

import math
import re

from google.protobuf import struct_pb2, timestamp_pb2
from trainingplatform.common.v1 import common_pb2

from trainingplatform_sdk.errors import ConfigError, InvalidArgumentError, quote
from trainingplatform_sdk.spec import limits

__all__ = [
    "FRAMEWORK_NAME",
    "check_finite_struct",
    "check_int",
    "check_job_id",
    "check_number",
    "check_text",
    "check_timestamp",
    "validate_spec",
]

FRAMEWORK_NAME = re.compile(r"\A[a-z][a-z0-9_-]{0,63}\Z")  # \Z: `$` would let a final newline through
"""A framework's name: lower case, as in `timm` or `ultralytics`."""

_JOB_ID = re.compile(limits.JOB_ID)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_job_id(job_id: str, field: str = "job_id") -> str:
    """Returns `job_id` when it has the form of a job id (`limits.JOB_ID`, at most `limits.MAX_JOB_ID_CHARS`).

    Raises:
        InvalidArgumentError: empty, too long, or with characters other than letters, digits, `.`, `_`, `-`.
    """
    if not job_id:
        raise InvalidArgumentError(f"{field} is required")
    if len(job_id) > limits.MAX_JOB_ID_CHARS or not _JOB_ID.fullmatch(job_id):
        raise InvalidArgumentError(
            f"{field} must be 1 to {limits.MAX_JOB_ID_CHARS} letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit; got {quote(job_id)}"
        )
    return job_id


def check_text(value: str, field: str, max_chars: int, *, required: bool = False, lines: bool = False) -> str:
    """Returns `value` when it has at most `max_chars` characters and no control characters (with `lines`, only
    NUL is refused: tabs and line breaks are text).

    Raises:
        InvalidArgumentError: naming `field`.
    """
    if not value:
        if required:
            raise InvalidArgumentError(f"{field} is required")
        return value
    if len(value) > max_chars:
        raise InvalidArgumentError(f"{field} is {len(value)} characters; the limit is {max_chars}")
    if ("\x00" in value) if lines else _CONTROL.search(value):
        raise InvalidArgumentError(f"{field} contains control characters: {quote(value)}")
    return value


def check_int(value: int, field: str, low: int, high: int) -> int:
    """Returns `value` when `low <= value <= high`.

    Raises:
        InvalidArgumentError: naming `field` and the bounds.
    """
    if not low <= value <= high:
        raise InvalidArgumentError(f"{field} must be between {low} and {high}; got {quote(value)}")
    return value


def check_number(value: float, field: str, low: float, high: float) -> float:
    """Returns `value` when it is finite and `low <= value <= high`.

    Raises:
        InvalidArgumentError: naming `field` and the bounds.
    """
    if not (math.isfinite(value) and low <= value <= high):
        raise InvalidArgumentError(f"{field} must be a finite number between {low:g} and {high:g}; got {value!r}")
    return value


def check_timestamp(stamp: timestamp_pb2.Timestamp, field: str) -> timestamp_pb2.Timestamp:
    """Returns `stamp` when it is a valid google.protobuf.Timestamp: seconds within 0001-01-01..9999-12-31 (UTC),
    0 <= nanos < 1e9.

    Raises:
        InvalidArgumentError: naming `field`.
    """
    if not limits.MIN_TIMESTAMP_SECONDS <= stamp.seconds <= limits.MAX_TIMESTAMP_SECONDS:
        raise InvalidArgumentError(
            f"{field}.seconds must be between {limits.MIN_TIMESTAMP_SECONDS} (0001-01-01) and "
            f"{limits.MAX_TIMESTAMP_SECONDS} (9999-12-31); got {stamp.seconds}"
        )
    if not 0 <= stamp.nanos <= 999_999_999:
        raise InvalidArgumentError(f"{field}.nanos must be between 0 and 999999999; got {stamp.nanos}")
    return stamp


def check_finite_struct(value: struct_pb2.Value | struct_pb2.Struct, path: str) -> None:
    """Refuses NaN and infinities anywhere in a Struct (stored and passed on as JSON, which has neither), and NUL
    characters in its keys and strings (which no JSON column stores).

    Raises:
        ConfigError: naming the path of the first such value.
    """
    if isinstance(value, struct_pb2.Struct):
        for key, item in value.fields.items():
            if "\x00" in key:
                raise ConfigError(f"{path}: key {quote(key)} contains a NUL character")
            check_finite_struct(item, f"{path}.{key[:100]}")
        return
    kind = value.WhichOneof("kind")
    if kind == "number_value" and not math.isfinite(value.number_value):
        raise ConfigError(f"{path} must be a finite number")
    if kind == "string_value" and "\x00" in value.string_value:
        raise ConfigError(f"{path} contains a NUL character")
    if kind == "struct_value":
        check_finite_struct(value.struct_value, path)
    if kind == "list_value":
        for index, item in enumerate(value.list_value.values):
            check_finite_struct(item, f"{path}[{index}]")


def validate_spec(
    spec: common_pb2.JobSpec,
    *,
    max_epochs: int = limits.MAX_EPOCHS,
    max_spec_bytes: int = limits.DEFAULT_MAX_SPEC_BYTES,
) -> None:
    """Checks a job specification against the contract's rules.

    Args:
        spec: The specification.
        max_epochs: The most epochs allowed: a server passes its TP_MAX_EPOCHS; the default, the absolute ceiling
            `limits.MAX_EPOCHS`, is what a client checks (it does not know the server's setting).
        max_spec_bytes: The largest serialized spec allowed: the backend passes its TP_MAX_SPEC_BYTES.

    Raises:
        InvalidArgumentError: naming the field to fix.
    """
    extra_size = spec.advanced.extra.ByteSize()
    if extra_size > limits.MAX_EXTRA_BYTES:
        raise InvalidArgumentError(
            f"spec.advanced.extra is {extra_size} bytes serialized; the limit is {limits.MAX_EXTRA_BYTES}"
        )
    size = spec.ByteSize()
    if size > max_spec_bytes:
        raise InvalidArgumentError(f"spec is {size} bytes serialized; the limit is {max_spec_bytes}")
    if not FRAMEWORK_NAME.fullmatch(spec.framework):
        what = "is required:" if not spec.framework else "must be"
        raise InvalidArgumentError(
            f"spec.framework {what} a lower-case name such as `timm` or `ultralytics`, at most "
            f"{limits.MAX_SHORT_NAME_CHARS} characters; got {quote(spec.framework)}"
        )
    model = spec.model
    check_text(model.name, "spec.model.name", limits.MAX_NAME_CHARS, required=True)
    check_int(model.num_classes, "spec.model.num_classes", 0, limits.MAX_NUM_CLASSES)
    check_int(model.image_size, "spec.model.image_size", 0, limits.MAX_IMAGE_SIZE)
    dataset = spec.dataset
    check_text(dataset.name, "spec.dataset.name", limits.MAX_NAME_CHARS)
    check_text(dataset.path, "spec.dataset.path", limits.MAX_PATH_CHARS)
    check_text(dataset.format, "spec.dataset.format", limits.MAX_SHORT_NAME_CHARS)
    if not dataset.name and not dataset.path:
        raise InvalidArgumentError("spec.dataset needs a built-in name (e.g. `digits`) or a path")
    training = spec.training
    if training.epochs < 1:  # the bound above is the server's: a client's default ceiling is not worth stating here
        raise InvalidArgumentError(f"spec.training.epochs must be at least 1; got {training.epochs}")
    check_int(training.epochs, "spec.training.epochs", 1, max_epochs)
    check_int(training.batch_size, "spec.training.batch_size", 0, limits.MAX_BATCH_SIZE)
    check_int(training.log_every_n_steps, "spec.training.log_every_n_steps", 0, limits.MAX_LOG_EVERY_N_STEPS)
    check_int(training.num_workers, "spec.training.num_workers", 0, limits.MAX_NUM_WORKERS)
    check_number(training.learning_rate, "spec.training.learning_rate", 0.0, limits.MAX_LEARNING_RATE)
    check_text(training.device, "spec.training.device", limits.MAX_SHORT_NAME_CHARS)
    advanced = spec.advanced
    for name in ("optimizer", "lr_scheduler"):
        check_text(getattr(advanced, name), f"spec.advanced.{name}", limits.MAX_SHORT_NAME_CHARS)
    if advanced.HasField("weight_decay"):
        check_number(advanced.weight_decay, "spec.advanced.weight_decay", 0.0, limits.MAX_WEIGHT_DECAY)
    if advanced.HasField("warmup_epochs"):
        check_number(advanced.warmup_epochs, "spec.advanced.warmup_epochs", 0.0, limits.MAX_WARMUP_EPOCHS)
    if advanced.HasField("momentum") and not 0 <= advanced.momentum < 1:
        raise InvalidArgumentError(f"spec.advanced.momentum must be in [0, 1); got {advanced.momentum!r}")
    if advanced.HasField("seed"):
        check_int(advanced.seed, "spec.advanced.seed", 0, limits.MAX_SEED)
    augmentation = advanced.augmentation
    for name in ("horizontal_flip_probability", "scale", "color_jitter"):
        if augmentation.HasField(name):
            check_number(getattr(augmentation, name), f"spec.advanced.augmentation.{name}", 0.0, 1.0)
    check_finite_struct(advanced.extra, "spec.advanced.extra")
