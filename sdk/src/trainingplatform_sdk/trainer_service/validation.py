"""StartTraining's checks: turn a request into a JobRequest, or an error that names the field to fix.

Everything here is cheap but may block (file system checks, the framework's model list on first use): the
servicer runs it in a worker thread.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from trainingplatform.trainer.v1 import trainer_pb2

from trainingplatform_sdk.channel import parse_backend_address
from trainingplatform_sdk.errors import QUOTE_CHARS, InvalidArgumentError, NotFoundError, quote
from trainingplatform_sdk.spec import limits as spec_limits
from trainingplatform_sdk.spec.configs import (
    AdvancedConfig,
    Augmentation,
    ConfigError,
    DatasetConfig,
    ModelConfig,
    TrainingConfig,
)
from trainingplatform_sdk.spec.validation import validate_spec
from trainingplatform_sdk.trainer_service.framework import Catalog, ExtraOption, HostLimits
from trainingplatform_sdk.trainer_service.job import JobRequest

__all__ = ["suggest", "validate_job_id", "validate_start"]

#: Extra keys every adapter reads the same way: torch's CPU threads, at most the CPU count.
THREAD_KEYS = ("num_threads",)
#: The typed `advanced_config` keys every framework takes, as written at the top level of `advanced_config`.
TYPED_ADVANCED_KEYS = (
    *(f.name for f in dataclasses.fields(AdvancedConfig) if f.name not in ("augmentation", "extra", "unknown_keys")),
    *(f"augmentation.{f.name}" for f in dataclasses.fields(Augmentation)),
)
_DATA_ROOTS_HINT = (
    "allow a directory with TP_DATA_ROOTS or --data-roots on the trainer service (or `tp up --data-root` for the "
    "local stack)"
)


def suggest(name: str, valid: Iterable[str], n: int = 3, cutoff: float = 0.6) -> str:
    """`; did you mean 'a' or 'b'?` for the valid names closest to `name`, or an empty string."""
    close = difflib.get_close_matches(name[: QUOTE_CHARS * 2], list(valid), n=n, cutoff=cutoff)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


# The job id becomes a directory name: no separators, no `..`, nothing a shell or a file system minds (and no final
# newline, which `^...$` would let through).
_JOB_ID = re.compile(spec_limits.JOB_ID)


def validate_job_id(job_id: str) -> str:
    """Returns `job_id` when it is usable as a directory name.

    Raises:
        InvalidArgumentError: Empty, too long, or with characters other than letters, digits, `.`, `_` and `-`.
    """
    if not job_id:
        raise InvalidArgumentError("job_id: required")
    if not _JOB_ID.fullmatch(job_id):
        raise InvalidArgumentError(
            "job_id: 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit, got " + quote(job_id)
        )
    return job_id


def validate_start(request: trainer_pb2.StartTrainingRequest, catalog: Catalog) -> JobRequest:
    """Checks a StartTraining request against the framework and the host (`catalog.limits`).

    Raises:
        InvalidArgumentError: A missing or bad field, a framework this service does not train, an unknown model
            (with the closest valid names) or built-in dataset, a device this trainer lacks, a dataset path
            outside the data roots, an advanced option or `extra` key the framework does not accept (with the
            closest valid names), a value past a bound of this host.
        NotFoundError: The dataset path or the model checkpoint does not exist.
    """
    description = catalog.description
    job_id = validate_job_id(request.job_id)
    if not request.HasField("spec"):
        raise InvalidArgumentError("spec: required")
    spec = request.spec
    if not spec.framework:
        raise InvalidArgumentError(f"spec.framework: required (this trainer trains {description.framework!r})")
    if spec.framework != description.framework:
        raise InvalidArgumentError(
            f"spec.framework: this trainer trains {description.framework!r}, not {quote(spec.framework)}; "
            "send the job to that framework's trainer"
        )
    try:
        job = JobRequest(
            job_id=job_id,
            model=ModelConfig.from_proto(spec.model),
            dataset=DatasetConfig.from_proto(spec.dataset),
            training=TrainingConfig.from_proto(spec.training),
            advanced=AdvancedConfig.from_proto(spec.advanced),
            telemetry_endpoint=request.telemetry_endpoint.strip(),
            telemetry_token=request.telemetry_token,
        )
    except ConfigError as error:
        raise InvalidArgumentError(str(error)) from None
    validate_spec(spec)  # the contract's rules the configs leave to the backend (sizes, finite numbers)
    if not request.validate_only:
        _check_telemetry(job)
    _check_bounds(job, catalog.limits)
    _check_advanced(job, catalog)
    job = replace(job, model=_check_model(job.model, catalog), dataset=_check_dataset(job.dataset, catalog))
    _check_device(job.training, catalog)
    if description.check_job is not None:
        try:
            description.check_job(job)
        except FileNotFoundError as error:
            raise NotFoundError(_cut(str(error))) from None
        except ValueError as error:
            raise InvalidArgumentError(_cut(str(error))) from None
        # Anything else, a framework's RuntimeError included, is a gap in the check: INTERNAL, with its traceback in
        # the log. Not INVALID_ARGUMENT: it would blame the job for a bug or a host fault (torch raises RuntimeError
        # for both), and its message names no field; an input found to raise one is refused where it is checked.
    return job


def _cut(message: str, limit: int = 1_000) -> str:
    # A framework's own message may quote an input whole: keep the start, which names the field.
    return message if len(message) <= limit else message[:limit] + "..."


def _check_bounds(job: JobRequest, limits: HostLimits) -> None:
    """The host's bounds: CPU count, TP_MAX_EPOCHS, batch and image size."""
    training = job.training
    if training.epochs > limits.max_epochs:
        raise InvalidArgumentError(
            f"training_config.epochs: at most {limits.max_epochs} on this trainer (its TP_MAX_EPOCHS), "
            f"got {training.epochs}"
        )
    if training.num_workers > limits.cpus:
        raise InvalidArgumentError(
            f"training_config.num_workers: at most {limits.cpus} (the CPU count of this trainer), "
            f"got {training.num_workers}"
        )
    # batch_size and image_size are bounded by the contract (validate_spec); extra options below.
    for key in THREAD_KEYS:
        if key in job.advanced.extra:
            value = job.advanced.extra[key]
            if not _is_int(value) or not 1 <= value <= limits.cpus:
                raise InvalidArgumentError(
                    f"advanced_config.extra.{key}: an integer from 1 to {limits.cpus} (the CPU count of this "
                    f"trainer), got {quote(value)}"
                )


def _check_advanced(job: JobRequest, catalog: Catalog) -> None:
    """The framework's bounds of typed fields, the optimizer name and every `extra` key against what the framework
    accepts."""
    description = catalog.description
    advanced = job.advanced
    advanced.check_bounds(description.advanced_bounds, description.framework)  # ConfigError: InvalidArgumentError
    optimizers = catalog.optimizers()
    if advanced.optimizer is not None:
        name = advanced.optimizer.lower()
        why = catalog.refused_optimizers().get(name)
        if why is not None:
            raise InvalidArgumentError(f"advanced_config.optimizer: {quote(advanced.optimizer)} {why}")
        if optimizers is not None and name not in optimizers:
            raise InvalidArgumentError(
                f"advanced_config.optimizer: unknown {description.framework} optimizer {quote(advanced.optimizer)}"
                f"{suggest(name, optimizers) or '; valid names: ' + _short_list(sorted(optimizers))}"
            )
    options = catalog.extra_options()
    if options is None:
        return
    for key, value in advanced.extra.items():
        where = f"advanced_config.extra.{key[:QUOTE_CHARS]}"
        option = options.get(key)
        if option is None and key in TYPED_ADVANCED_KEYS:
            raise InvalidArgumentError(
                f"advanced_config.extra: {quote(key)} is not a {description.framework} option but a field: "
                f"set advanced_config.{key} instead"
            )
        if option is None:
            # A misspelt typed field (`optimiser`) lands in `extra` too: the hint covers every key the framework
            # takes, the typed fields first, so that the nearest one is suggested whichever kind it is.
            valid = [*TYPED_ADVANCED_KEYS, *sorted(set(options) - set(TYPED_ADVANCED_KEYS))]
            hint = suggest(key, valid) or f"; valid keys: {_short_list(valid, most=len(TYPED_ADVANCED_KEYS) + 12)}"
            raise InvalidArgumentError(
                f"advanced_config.extra: unknown {description.framework} option {quote(key)}{hint}"
            )
        _check_option(where, value, option, catalog.limits)


def _short_list(names: list[str], most: int = 12) -> str:
    shown = ", ".join(names[:most])
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_option(where: str, value: Any, option: ExtraOption, limits: HostLimits) -> None:
    kind = option.kind
    if kind == "owned":
        raise InvalidArgumentError(f"{where}: set by the platform; use {option.use_instead} instead")
    if kind == "ignored":
        raise InvalidArgumentError(f"{where}: read only when {option.use_instead}, never by training; leave it out")
    if kind == "any":
        return
    if kind == "bool":
        if not isinstance(value, bool):
            raise InvalidArgumentError(f"{where}: expected true or false, got {quote(value)}")
        return
    if kind == "str":
        if not isinstance(value, str):
            raise InvalidArgumentError(f"{where}: expected a string, got {quote(value)}")
        if option.choices and value.lower() not in {c.lower() for c in option.choices}:
            raise InvalidArgumentError(
                f"{where}: must be one of {list(option.choices)}, got {quote(value)}{suggest(value, option.choices)}"
            )
        return
    if kind == "int" and not _is_int(value):
        raise InvalidArgumentError(f"{where}: expected an integer, got {quote(value)}")
    if not _is_number(value):
        raise InvalidArgumentError(f"{where}: expected a number, got {quote(value)}")
    low, high = option.low, option.high
    if kind == "fraction":
        low = 0.0 if low is None else low
        high = 1.0 if high is None else high
    if low is not None and value < low:
        raise InvalidArgumentError(f"{where}: must be at least {low:g}, got {quote(value)}")
    if high is not None and value > high:
        raise InvalidArgumentError(f"{where}: must be at most {high:g}, got {quote(value)}")
    bound = {
        "cpus": (limits.cpus, "the CPU count of this trainer"),
        "batch_size": (spec_limits.MAX_BATCH_SIZE, "the trainer's batch size limit"),
        "image_size": (spec_limits.MAX_IMAGE_SIZE, "the trainer's image size limit"),
        "epochs": (limits.max_epochs, "this trainer's TP_MAX_EPOCHS"),
    }.get(option.bound)
    if bound is not None and value > bound[0]:
        raise InvalidArgumentError(f"{where}: at most {bound[0]} ({bound[1]}), got {quote(value)}")


def _check_telemetry(job: JobRequest) -> None:
    if not job.telemetry_endpoint:
        return
    try:
        parse_backend_address(job.telemetry_endpoint)
    except ValueError as error:
        raise InvalidArgumentError(f"telemetry_endpoint: {error}") from None
    if not job.telemetry_token:
        raise InvalidArgumentError("telemetry_token: required when telemetry_endpoint is set")


def _check_model(model: ModelConfig, catalog: Catalog) -> ModelConfig:
    description = catalog.description
    if model.name.endswith(description.checkpoint_suffixes):
        # A checkpoint is a pickle (loading one runs the code it holds): only from under the data roots, which the
        # operator trusts, and checked before its existence, so that a path elsewhere tells nothing.
        path = _inside_data_roots(model.name, catalog.limits.data_roots, field="model_config.name", what="checkpoint")
        if not path.is_file():
            raise NotFoundError(
                f"model_config.name: the checkpoint {quote(model.name)} does not exist on this trainer "
                "(a model name or a local checkpoint path; trainers never download)"
            )
        return replace(model, name=str(path))
    if catalog.has_model(model.name):
        return model
    key = description.model_key(model.name)
    close = difflib.get_close_matches(key, catalog.models(), n=5, cutoff=0.6)
    hint = f"; closest valid names: {', '.join(close)}" if close else "; GetCapabilities lists the valid names"
    raise InvalidArgumentError(f"model_config.name: unknown {description.framework} model {quote(model.name)}{hint}")


def _check_dataset(dataset: DatasetConfig, catalog: Catalog) -> DatasetConfig:
    description = catalog.description
    if dataset.path and description.resolve_dataset is not None:
        _inside_data_roots(dataset.path, catalog.limits.data_roots)  # before the hook looks at what exists there
        try:
            dataset = description.resolve_dataset(dataset)
        except ValueError as error:
            raise InvalidArgumentError(_cut(str(error))) from None
    fmt = dataset.resolved_format
    if fmt not in description.dataset_formats:
        raise InvalidArgumentError(
            f"dataset_config.format: the {description.framework} trainer reads "
            f"{' or '.join(description.dataset_formats)}, not {quote(fmt)}"
        )
    if fmt == "builtin":
        if dataset.name not in description.builtin_datasets:
            close = difflib.get_close_matches(dataset.name, description.builtin_datasets, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise InvalidArgumentError(
                f"dataset_config.name: unknown built-in dataset {quote(dataset.name)}; the {description.framework} "
                f"trainer has {list(description.builtin_datasets)}{hint} (or give a dataset `path`)"
            )
        return dataset
    path = _inside_data_roots(dataset.path, catalog.limits.data_roots)
    if not path.exists():
        raise NotFoundError(f"dataset_config.path: {quote(dataset.path)} does not exist on this trainer")
    dataset = replace(dataset, path=str(path))
    if description.dataset_paths is not None:
        try:
            referenced = list(description.dataset_paths(dataset))
        except FileNotFoundError as error:
            raise NotFoundError(_cut(f"dataset_config.path: {error}")) from None
        except (ValueError, OSError) as error:
            raise InvalidArgumentError(_cut(f"dataset_config.path: {error}")) from None
        for other in referenced:
            _inside_data_roots(other, catalog.limits.data_roots, referenced_by=dataset.path)
    return dataset


def _inside_data_roots(
    given: str,
    roots: tuple[Path, ...],
    referenced_by: str = "",
    *,
    field: str = "dataset_config.path",
    what: str = "dataset",
) -> Path:
    """The path (of a dataset, or of a checkpoint: `field`, `what`) resolved (every symlink followed, `..`
    removed), when it lies under a data root.

    The check comes before any existence check, so paths outside the roots tell nothing about what exists there.
    A relative path is relative to the service's working directory, like any path the service is given.
    """
    roots_text = ", ".join(str(root) for root in roots) or "none"
    if "\x00" in given:
        raise InvalidArgumentError(f"{field}: must not contain NUL characters")
    try:
        path = Path(given).expanduser().absolute()
        resolved = Path(os.path.realpath(path))
    except (OSError, RuntimeError, ValueError) as error:
        raise InvalidArgumentError(f"{field}: {quote(given)} cannot be resolved ({error})") from None
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        escapes = ".." in Path(given).parts or resolved != Path(os.path.normpath(path))
        how = " (it leaves them through '..' or a symbolic link)" if escapes else ""
        where = f" (named in {quote(referenced_by)})" if referenced_by else ""
        raise InvalidArgumentError(
            f"{field}: {quote(given)}{where} is outside this trainer's data roots{how}; {what} paths must "
            f"lie under {roots_text}: {_DATA_ROOTS_HINT}"
        )
    return resolved


def _check_device(training: TrainingConfig, catalog: Catalog) -> None:
    if not training.device.startswith("cuda"):
        return
    devices = catalog.devices()
    wanted = [d for d in devices if d.startswith("cuda")] if training.device == "cuda" else [training.device]
    if not wanted or wanted[0] not in devices:
        raise InvalidArgumentError(
            f"training_config.device: {quote(training.device)} is not available on this trainer "
            f"(it has {list(devices)})"
        )
