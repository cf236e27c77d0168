"""Typed training configurations: the SDK's mirror of `trainingplatform.common.v1`'s job specification.

Each config is a small dataclass that validates itself on construction (types and ranges), so a bad value fails
with a `ConfigError` naming the key and what was expected, before any training starts. Each converts to and from
its protobuf message (`to_proto` / `from_proto`) and from a plain mapping such as parsed JSON (`from_mapping`).

`AdvancedConfig.from_mapping` is lenient where the others are strict: a key it does not know is kept in `extra`
and listed in `unknown_keys`, so the framework adapter can pass framework options through and warn about the
rest in the job's logs instead of failing the job.

This module imports only the standard library and the generated protobuf code: the SDK must not pull in torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from google.protobuf import json_format
from trainingplatform.common.v1 import common_pb2

from trainingplatform_sdk.errors import ConfigError, quote
from trainingplatform_sdk.spec import limits
from trainingplatform_sdk.spec.validation import check_finite_struct

__all__ = [
    "DEVICE_CHOICES",
    "LR_SCHEDULERS",
    "AdvancedConfig",
    "Augmentation",
    "ConfigError",
    "DatasetConfig",
    "MetricsResult",
    "ModelConfig",
    "TrainingConfig",
]

#: Learning-rate schedules the contract names.
LR_SCHEDULERS = ("cosine", "step", "linear", "constant")
#: Device names `TrainingConfig.device` accepts besides `cuda:N`.
DEVICE_CHOICES = ("auto", "cpu", "cuda")
#: Dataset formats `DatasetConfig.format` accepts; empty means inferred.
DATASET_FORMATS = ("", "builtin", "imagefolder", "yolo")
#: `TrainingConfig.log_every_n_steps` when it is 0.
DEFAULT_LOG_EVERY_N_STEPS = 100


_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}


def _check_type(where: str, value: Any, kind: type, optional: bool) -> Any:
    """Returns `value` as `kind` or raises ConfigError naming `where` and the expected type."""
    if value is None and optional:
        return None
    # bool is a subclass of int in Python, but `"epochs": true` is a mistake, not 1.
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (str, bool) and isinstance(value, kind):
        return value
    expected = _TYPE_NAMES[kind] + (" or null" if optional else "")
    raise ConfigError(f"{where}: expected {expected}, got {type(value).__name__} ({quote(value)})")


def _check_range(where: str, value: float | None, low: float, high: float, *, high_open: bool = False) -> None:
    if value is None:
        return
    too_high = value >= high if high_open else value > high
    if math.isnan(value) or value < low or too_high:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"{where}: must be in [{low}, {high}{bracket}, got {quote(value)}")


def _check_count(where: str, value: int | None, low: int, high: int) -> None:
    """A whole number from `low` to `high` (the contract's bounds, within its protobuf field's range)."""
    if value is None:
        return
    if value < low:
        raise ConfigError(f"{where}: must be at least {low}, got {value}")
    if value > high:
        raise ConfigError(f"{where}: must be at most {high}, got {value}")


class _Config:
    """Shared behaviour of the simple configs: per-field type checks, strict `from_mapping`, `to_dict`."""

    #: Prefix of error messages, the name the entry point and the service use for this config.
    _section: ClassVar[str] = ""

    def _check_field_types(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            # Annotations are strings here (`from __future__ import annotations`): "int", "float | None".
            annotation = str(f.type)
            optional = annotation.endswith("| None")
            kind = {"str": str, "bool": bool, "int": int, "float": float}.get(annotation.split("|")[0].strip())
            if kind is not None:
                value = _check_type(f"{self._section}.{f.name}", getattr(self, f.name), kind, optional)
                object.__setattr__(self, f.name, value)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Self:
        """Builds the config from a plain mapping (parsed JSON). Unknown keys are an error.

        Raises:
            ConfigError: `data` is not a mapping, has a key the config does not know, or a bad value.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls._section}: expected a JSON object, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"{cls._section}: unknown key(s) {quote(unknown)}; valid keys are {names}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as a JSON-serialisable dict that `from_mapping` reads back."""
        result: dict[str, Any] = dataclasses.asdict(self)  # type: ignore[call-overload]
        return result


@dataclass
class ModelConfig(_Config):
    """Which model to train (mirrors `common.v1.ModelConfig`)."""

    _section: ClassVar[str] = "model_config"

    name: str
    """Framework model name (`resnet10t`, `yolo11n.yaml`) or the path of a local checkpoint. Required."""
    pretrained: bool = False
    """Start from pretrained weights, which must already be in the local cache: trainers never download."""
    num_classes: int = 0
    """Number of output classes; 0 takes it from the dataset."""
    image_size: int = 0
    """Square input size in pixels; 0 means the framework's default for the model and dataset."""

    def __post_init__(self) -> None:
        self._check_field_types()
        if not self.name.strip():
            raise ConfigError("model_config.name: required")
        if len(self.name) > 250:
            raise ConfigError("model_config.name: at most 250 characters")
        _check_count("model_config.num_classes", self.num_classes, 0, limits.MAX_NUM_CLASSES)
        _check_count("model_config.image_size", self.image_size, 0, limits.MAX_IMAGE_SIZE)

    @classmethod
    def from_proto(cls, message: common_pb2.ModelConfig) -> Self:
        """Builds the config from its protobuf message."""
        return cls(
            name=message.name,
            pretrained=message.pretrained,
            num_classes=message.num_classes,
            image_size=message.image_size,
        )

    def to_proto(self) -> common_pb2.ModelConfig:
        """Returns the protobuf message."""
        return common_pb2.ModelConfig(**self.to_dict())


@dataclass
class DatasetConfig(_Config):
    """Which data to train on (mirrors `common.v1.DatasetConfig`). Give a built-in `name` or a `path`."""

    _section: ClassVar[str] = "dataset_config"

    name: str = ""
    """A built-in dataset (`digits` for timm, `shapes` for ultralytics), or a free label when `path` is set."""
    path: str = ""
    """An ImageFolder directory with train/ and val/ (timm) or a YOLO data.yaml (ultralytics); empty for built-ins."""
    format: str = ""
    """`builtin`, `imagefolder` or `yolo`; empty means inferred from `name` and `path`."""

    def __post_init__(self) -> None:
        self._check_field_types()
        if not self.name and not self.path:
            raise ConfigError("dataset_config: give a built-in dataset `name` or a `path`")
        if self.format not in DATASET_FORMATS:
            raise ConfigError(
                f"dataset_config.format: must be one of {list(DATASET_FORMATS)}, got {quote(self.format)}"
            )

    @property
    def resolved_format(self) -> str:
        """The format, inferred when empty: `builtin` without a path; else `yolo` for a .yaml, else `imagefolder`."""
        if self.format:
            return self.format
        if not self.path:
            return "builtin"
        return "yolo" if self.path.endswith((".yaml", ".yml")) else "imagefolder"

    @classmethod
    def from_proto(cls, message: common_pb2.DatasetConfig) -> Self:
        """Builds the config from its protobuf message."""
        return cls(name=message.name, path=message.path, format=message.format)

    def to_proto(self) -> common_pb2.DatasetConfig:
        """Returns the protobuf message."""
        return common_pb2.DatasetConfig(**self.to_dict())


@dataclass
class TrainingConfig(_Config):
    """The basic training loop settings (mirrors `common.v1.TrainingConfig`)."""

    _section: ClassVar[str] = "training_config"

    epochs: int = 1
    """Number of epochs to train; at least 1."""
    batch_size: int = 0
    """Images per batch; 0 means the adapter's default."""
    learning_rate: float = 0.0
    """Initial learning rate; 0 means the adapter's default."""
    device: str = "auto"
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`."""
    log_every_n_steps: int = 0
    """Report the batch loss every this many optimizer steps; 0 means 100."""
    num_workers: int = 0
    """Data loader worker processes; 0 loads in the training process."""

    def __post_init__(self) -> None:
        self._check_field_types()
        _check_count("training_config.epochs", self.epochs, 1, limits.MAX_EPOCHS)
        _check_count("training_config.batch_size", self.batch_size, 0, limits.MAX_BATCH_SIZE)
        _check_count("training_config.log_every_n_steps", self.log_every_n_steps, 0, limits.MAX_LOG_EVERY_N_STEPS)
        _check_count("training_config.num_workers", self.num_workers, 0, limits.MAX_NUM_WORKERS)
        _check_range("training_config.learning_rate", self.learning_rate, 0.0, limits.MAX_LEARNING_RATE)
        self.device = self.device or "auto"
        index = self.device.removeprefix("cuda:")
        if self.device not in DEVICE_CHOICES and not (self.device.startswith("cuda:") and index.isdigit()):
            raise ConfigError(f"training_config.device: must be auto, cpu, cuda or cuda:N, got {quote(self.device)}")

    @property
    def log_interval(self) -> int:
        """`log_every_n_steps` with 0 resolved to the default of 100."""
        return self.log_every_n_steps or DEFAULT_LOG_EVERY_N_STEPS

    @classmethod
    def from_proto(cls, message: common_pb2.TrainingConfig) -> Self:
        """Builds the config from its protobuf message."""
        return cls(
            epochs=message.epochs,
            batch_size=message.batch_size,
            learning_rate=message.learning_rate,
            device=message.device,
            log_every_n_steps=message.log_every_n_steps,
            num_workers=message.num_workers,
        )

    def to_proto(self) -> common_pb2.TrainingConfig:
        """Returns the protobuf message."""
        return common_pb2.TrainingConfig(**self.to_dict())


@dataclass
class Augmentation(_Config):
    """Data augmentation (mirrors `common.v1.Augmentation`). A field left at None keeps the adapter's default."""

    _section: ClassVar[str] = "advanced_config.augmentation"

    enabled: bool | None = None
    """Turn augmentation on or off as a whole."""
    horizontal_flip_probability: float | None = None
    """Probability of a horizontal flip per image, in [0, 1]."""
    scale: float | None = None
    """Random resized crops (timm) or scale jitter (ultralytics), as a fraction of the image, in [0, 1]."""
    color_jitter: float | None = None
    """Colour jitter strength (brightness, contrast, saturation), in [0, 1]."""

    def __post_init__(self) -> None:
        self._check_field_types()
        for name in ("horizontal_flip_probability", "scale", "color_jitter"):
            _check_range(f"advanced_config.augmentation.{name}", getattr(self, name), 0.0, 1.0)

    @classmethod
    def from_proto(cls, message: common_pb2.Augmentation) -> Self:
        """Builds the config from its protobuf message; unset fields stay None."""
        return cls(**{f.name: getattr(message, f.name) for f in dataclasses.fields(cls) if message.HasField(f.name)})

    def to_proto(self) -> common_pb2.Augmentation:
        """Returns the protobuf message; None fields stay unset."""
        return common_pb2.Augmentation(**{k: v for k, v in self.to_dict().items() if v is not None})


@dataclass
class AdvancedConfig(_Config):
    """Settings beyond the basic loop (mirrors `common.v1.AdvancedConfig`). None keeps the adapter's default."""

    _section: ClassVar[str] = "advanced_config"
    _SCALARS: ClassVar[tuple[str, ...]] = (
        "optimizer",
        "lr_scheduler",
        "weight_decay",
        "momentum",
        "warmup_epochs",
        "mixed_precision",
        "seed",
    )

    optimizer: str | None = None
    """Optimizer name: `sgd`, `adam`, `adamw`, ... (timm: any `create_optimizer_v2` name)."""
    lr_scheduler: str | None = None
    """Learning-rate schedule: `cosine`, `step`, `linear` or `constant`."""
    weight_decay: float | None = None
    """L2 weight decay, at least 0."""
    momentum: float | None = None
    """SGD momentum, in [0, 1)."""
    warmup_epochs: float | None = None
    """Epochs of linear learning-rate warm-up, at least 0."""
    mixed_precision: bool | None = None
    """Train with automatic mixed precision; effective on CUDA only."""
    seed: int | None = None
    """Random seed for reproducible runs."""
    augmentation: Augmentation = field(default_factory=Augmentation)
    """Data augmentation."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Framework options passed through to the framework; the adapter warns about each key it does not use."""
    unknown_keys: tuple[str, ...] = field(default=(), compare=False, repr=False)
    """Keys of the mapping given to `from_mapping` that are not fields: they were moved into `extra`."""

    def __post_init__(self) -> None:
        self._check_field_types()
        if self.lr_scheduler is not None and self.lr_scheduler not in LR_SCHEDULERS:
            raise ConfigError(
                f"advanced_config.lr_scheduler: must be one of {list(LR_SCHEDULERS)}, got {quote(self.lr_scheduler)}"
            )
        _check_range("advanced_config.weight_decay", self.weight_decay, 0.0, limits.MAX_WEIGHT_DECAY)
        _check_range("advanced_config.momentum", self.momentum, 0.0, 1.0, high_open=True)
        _check_range("advanced_config.warmup_epochs", self.warmup_epochs, 0.0, limits.MAX_WARMUP_EPOCHS)
        _check_count("advanced_config.seed", self.seed, 0, limits.MAX_SEED)
        if not isinstance(self.augmentation, Augmentation):
            raise ConfigError("advanced_config.augmentation: expected an Augmentation")
        if not isinstance(self.extra, dict) or not all(isinstance(k, str) for k in self.extra):
            raise ConfigError("advanced_config.extra: expected a JSON object with string keys")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> Self:
        """Builds the config from a plain mapping, checking every known key's type.

        Keys that are not fields are moved into `extra` (an unknown augmentation key as `augmentation.<key>`)
        and listed in `unknown_keys`; keys under `extra` are kept as they are. The adapter decides which extra
        keys it uses and warns about the others.

        Raises:
            ConfigError: A known key has a value of the wrong type or out of range; the message names the key
                and the expected type.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(f"advanced_config: expected a JSON object, got {type(data).__name__}")
        extra = data.get("extra") or {}
        if not isinstance(extra, Mapping):
            raise ConfigError(f"advanced_config.extra: expected a JSON object, got {type(extra).__name__}")
        extra = dict(extra)
        unknown: list[str] = []
        for key, value in data.items():
            if key not in cls._SCALARS and key not in ("augmentation", "extra"):
                unknown.append(key)
                extra[key] = value
        augmentation_data = data.get("augmentation") or {}
        if not isinstance(augmentation_data, Mapping):
            raise ConfigError(
                f"advanced_config.augmentation: expected a JSON object, got {type(augmentation_data).__name__}"
            )
        known_augmentation = {f.name for f in dataclasses.fields(Augmentation)}
        for key, value in augmentation_data.items():
            if key not in known_augmentation:
                unknown.append(f"augmentation.{key}")
                extra[f"augmentation.{key}"] = value
        return cls(
            **{key: data[key] for key in cls._SCALARS if key in data},
            augmentation=Augmentation(**{k: v for k, v in augmentation_data.items() if k in known_augmentation}),
            extra=extra,
            unknown_keys=tuple(unknown),
        )

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as a JSON-serialisable dict (without `unknown_keys`, whose values are in `extra`)."""
        result = {key: getattr(self, key) for key in self._SCALARS}
        result["augmentation"] = self.augmentation.to_dict()
        result["extra"] = dict(self.extra)
        return result

    @classmethod
    def from_proto(cls, message: common_pb2.AdvancedConfig) -> Self:
        """Builds the config from its protobuf message; unset fields stay None.

        `extra` is a `google.protobuf.Struct`, whose numbers are all doubles: integral values come back as ints, in
        lists and nested objects too, so that integer framework options (ultralytics' `close_mosaic`, the layer
        indices of `freeze`) keep their type.
        """
        if message.HasField("extra"):
            check_finite_struct(message.extra, "advanced_config.extra")  # JSON has no NaN: refuse it by name
        extra = json_format.MessageToDict(message.extra) if message.HasField("extra") else {}
        extra = {key: _whole_floats_as_ints(value) for key, value in extra.items()}
        return cls(
            **{key: getattr(message, key) for key in cls._SCALARS if message.HasField(key)},
            augmentation=Augmentation.from_proto(message.augmentation),
            extra=extra,
        )

    def to_proto(self) -> common_pb2.AdvancedConfig:
        """Returns the protobuf message; None fields stay unset."""
        message = common_pb2.AdvancedConfig(
            **{key: getattr(self, key) for key in self._SCALARS if getattr(self, key) is not None}
        )
        if self.augmentation != Augmentation():
            message.augmentation.CopyFrom(self.augmentation.to_proto())
        if self.extra:
            message.extra.update(self.extra)
        return message

    def check_bounds(self, bounds: Mapping[str, tuple[float, float, bool]], framework: str) -> None:
        """Checks typed fields against a framework's narrower bounds (`FrameworkDescription.advanced_bounds`):
        {field, or `augmentation.<field>`: (lowest, highest, whether the highest itself is refused)}. The trainer
        service runs this at submit; an adapter may run it again for a run without the service (tp-train).

        Raises:
            ConfigError: A field outside its bounds; the message names the field, the bounds and the framework.
        """
        for key, (low, high, high_open) in bounds.items():
            *parents, name = key.split(".")
            value = getattr(self.augmentation if parents else self, name)
            if value is not None and not (low <= value and (value < high if high_open else value <= high)):
                bracket = ")" if high_open else "]"
                raise ConfigError(
                    f"advanced_config.{key}: must be in [{low:g}, {high:g}{bracket} for {framework}, got {value:g}"
                )


@dataclass
class MetricsResult:
    """What one training or validation pass measured."""

    metrics: dict[str, float] = field(default_factory=dict)
    """Values by metric key as reported (`train/loss`, `val/accuracy`, ...)."""
    num_samples: int = 0
    """Samples processed."""
    duration_seconds: float = 0.0
    """Wall-clock time of the pass."""
    stopped: bool = False
    """The pass ended early because a stop was requested; its metrics cover only part of the data."""


def _whole_floats_as_ints(value: Any) -> Any:
    """`value` (read from a Struct) with every integral float, in lists and objects too, an int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole_floats_as_ints(item) for item in value]
    if isinstance(value, dict):
        return {key: _whole_floats_as_ints(item) for key, item in value.items()}
    return value
