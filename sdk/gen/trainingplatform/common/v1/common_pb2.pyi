from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATUS_UNSPECIFIED: _ClassVar[JobStatus]
    JOB_STATUS_PENDING: _ClassVar[JobStatus]
    JOB_STATUS_QUEUED: _ClassVar[JobStatus]
    JOB_STATUS_RUNNING: _ClassVar[JobStatus]
    JOB_STATUS_COMPLETED: _ClassVar[JobStatus]
    JOB_STATUS_FAILED: _ClassVar[JobStatus]
    JOB_STATUS_CANCELLED: _ClassVar[JobStatus]

class LogLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_LEVEL_UNSPECIFIED: _ClassVar[LogLevel]
    LOG_LEVEL_DEBUG: _ClassVar[LogLevel]
    LOG_LEVEL_INFO: _ClassVar[LogLevel]
    LOG_LEVEL_WARNING: _ClassVar[LogLevel]
    LOG_LEVEL_ERROR: _ClassVar[LogLevel]
    LOG_LEVEL_CRITICAL: _ClassVar[LogLevel]
JOB_STATUS_UNSPECIFIED: JobStatus
JOB_STATUS_PENDING: JobStatus
JOB_STATUS_QUEUED: JobStatus
JOB_STATUS_RUNNING: JobStatus
JOB_STATUS_COMPLETED: JobStatus
JOB_STATUS_FAILED: JobStatus
JOB_STATUS_CANCELLED: JobStatus
LOG_LEVEL_UNSPECIFIED: LogLevel
LOG_LEVEL_DEBUG: LogLevel
LOG_LEVEL_INFO: LogLevel
LOG_LEVEL_WARNING: LogLevel
LOG_LEVEL_ERROR: LogLevel
LOG_LEVEL_CRITICAL: LogLevel

class ModelConfig(_message.Message):
    __slots__ = ("name", "pretrained", "num_classes", "image_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRETRAINED_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    pretrained: bool
    num_classes: int
    image_size: int
    def __init__(self, name: _Optional[str] = ..., pretrained: _Optional[bool] = ..., num_classes: _Optional[int] = ..., image_size: _Optional[int] = ...) -> None: ...

class DatasetConfig(_message.Message):
    __slots__ = ("name", "path", "format")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    format: str
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., format: _Optional[str] = ...) -> None: ...

class TrainingConfig(_message.Message):
    __slots__ = ("epochs", "batch_size", "learning_rate", "device", "log_every_n_steps", "num_workers")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    LOG_EVERY_N_STEPS_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    batch_size: int
    learning_rate: float
    device: str
    log_every_n_steps: int
    num_workers: int
    def __init__(self, epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., device: _Optional[str] = ..., log_every_n_steps: _Optional[int] = ..., num_workers: _Optional[int] = ...) -> None: ...

class Augmentation(_message.Message):
    __slots__ = ("enabled", "horizontal_flip_probability", "scale", "color_jitter")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    HORIZONTAL_FLIP_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    COLOR_JITTER_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    horizontal_flip_probability: float
    scale: float
    color_jitter: float
    def __init__(self, enabled: _Optional[bool] = ..., horizontal_flip_probability: _Optional[float] = ..., scale: _Optional[float] = ..., color_jitter: _Optional[float] = ...) -> None: ...

class AdvancedConfig(_message.Message):
    __slots__ = ("optimizer", "lr_scheduler", "weight_decay", "momentum", "warmup_epochs", "mixed_precision", "seed", "augmentation", "extra")
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    WARMUP_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MIXED_PRECISION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    AUGMENTATION_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    optimizer: str
    lr_scheduler: str
    weight_decay: float
    momentum: float
    warmup_epochs: float
    mixed_precision: bool
    seed: int
    augmentation: Augmentation
    extra: _struct_pb2.Struct
    def __init__(self, optimizer: _Optional[str] = ..., lr_scheduler: _Optional[str] = ..., weight_decay: _Optional[float] = ..., momentum: _Optional[float] = ..., warmup_epochs: _Optional[float] = ..., mixed_precision: _Optional[bool] = ..., seed: _Optional[int] = ..., augmentation: _Optional[_Union[Augmentation, _Mapping]] = ..., extra: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("framework", "model", "dataset", "training", "advanced")
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    ADVANCED_FIELD_NUMBER: _ClassVar[int]
    framework: str
    model: ModelConfig
    dataset: DatasetConfig
    training: TrainingConfig
    advanced: AdvancedConfig
    def __init__(self, framework: _Optional[str] = ..., model: _Optional[_Union[ModelConfig, _Mapping]] = ..., dataset: _Optional[_Union[DatasetConfig, _Mapping]] = ..., training: _Optional[_Union[TrainingConfig, _Mapping]] = ..., advanced: _Optional[_Union[AdvancedConfig, _Mapping]] = ...) -> None: ...
