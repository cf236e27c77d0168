"""StartTraining's checks: turn a request into a JobRequest, or an error that names the field to fix.

Everything here is cheap but may block (file system checks, the framework's model list on first use): the
servicer runs it in a worker thread.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import replace
from pathlib import Path

from trainingplatform.trainer.v1 import trainer_pb2

from trainingplatform_sdk.channel import parse_backend_address
from trainingplatform_sdk.errors import InvalidArgumentError, NotFoundError
from trainingplatform_sdk.spec.configs import AdvancedConfig, ConfigError, DatasetConfig, ModelConfig, TrainingConfig
from trainingplatform_sdk.spec.validation import validate_spec
from trainingplatform_sdk.trainer_service.framework import Catalog
from trainingplatform_sdk.trainer_service.job import JobRequest

__all__ = ["validate_job_id", "validate_start"]

# The job id becomes a directory name: no separators, no `..`, nothing a shell or a file system minds.
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_job_id(job_id: str) -> str:
    """Returns `job_id` when it is usable as a directory name.

    Raises:
        InvalidArgumentError: Empty, too long, or with characters other than letters, digits, `.`, `_` and `-`.
    """
    if not job_id:
        raise InvalidArgumentError("job_id: required")
    if not _JOB_ID.match(job_id):
        raise InvalidArgumentError(
            "job_id: 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit, got " + repr(job_id)
        )
    return job_id


def validate_start(request: trainer_pb2.StartTrainingRequest, catalog: Catalog) -> JobRequest:
    """Checks a StartTraining request against the framework.

    Raises:
        InvalidArgumentError: A missing or bad field, a framework this service does not train, an unknown model
            (with the closest valid names) or built-in dataset, a device this trainer lacks.
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
            f"spec.framework: this trainer trains {description.framework!r}, not {spec.framework!r}; "
            f"send the job to the {spec.framework} trainer"
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
    _check_telemetry(job)
    job = replace(job, model=_check_model(job.model, catalog), dataset=_check_dataset(job.dataset, catalog))
    _check_device(job.training, catalog)
    if description.check_job is not None:
        try:
            description.check_job(job)
        except FileNotFoundError as error:
            raise NotFoundError(str(error)) from None
        except ValueError as error:
            raise InvalidArgumentError(str(error)) from None
    return job


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
        path = Path(model.name).expanduser().absolute()
        if not path.is_file():
            raise NotFoundError(
                f"model_config.name: the checkpoint {model.name!r} does not exist on this trainer "
                "(a model name or a local checkpoint path; trainers never download)"
            )
        return replace(model, name=str(path))
    if catalog.has_model(model.name):
        return model
    key = description.model_key(model.name)
    close = difflib.get_close_matches(key, catalog.models(), n=5, cutoff=0.6)
    hint = f"; closest valid names: {', '.join(close)}" if close else "; GetCapabilities lists the valid names"
    raise InvalidArgumentError(f"model_config.name: unknown {description.framework} model {model.name!r}{hint}")


def _check_dataset(dataset: DatasetConfig, catalog: Catalog) -> DatasetConfig:
    description = catalog.description
    fmt = dataset.resolved_format
    if fmt not in description.dataset_formats:
        raise InvalidArgumentError(
            f"dataset_config.format: the {description.framework} trainer reads "
            f"{' or '.join(description.dataset_formats)}, not {fmt!r}"
        )
    if fmt == "builtin":
        if dataset.name not in description.builtin_datasets:
            close = difflib.get_close_matches(dataset.name, description.builtin_datasets, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise InvalidArgumentError(
                f"dataset_config.name: unknown built-in dataset {dataset.name!r}; the {description.framework} "
                f"trainer has {list(description.builtin_datasets)}{hint} (or give a dataset `path`)"
            )
        return dataset
    path = Path(dataset.path).expanduser().absolute()
    if not path.exists():
        raise NotFoundError(f"dataset_config.path: {dataset.path!r} does not exist on this trainer")
    return replace(dataset, path=str(path))


def _check_device(training: TrainingConfig, catalog: Catalog) -> None:
    if not training.device.startswith("cuda"):
        return
    devices = catalog.devices()
    wanted = [d for d in devices if d.startswith("cuda")] if training.device == "cuda" else [training.device]
    if not wanted or wanted[0] not in devices:
        raise InvalidArgumentError(
            f"training_config.device: {training.device!r} is not available on this trainer (it has {list(devices)})"
        )
