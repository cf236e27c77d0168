"""A job's specification, shared by every component: the configs, the input limits and their checks.

`configs` turns the contract's JobSpec into typed, validated configs (a `ConfigError` names the field to fix);
`limits` holds every size and range limit once, so the backend, the trainer services, the SDK and the docs agree.
"""

from trainingplatform_sdk.errors import ConfigError
from trainingplatform_sdk.spec import limits
from trainingplatform_sdk.spec.configs import (
    DEVICE_CHOICES,
    LR_SCHEDULERS,
    AdvancedConfig,
    Augmentation,
    DatasetConfig,
    MetricsResult,
    ModelConfig,
    TrainingConfig,
)
from trainingplatform_sdk.spec.validation import validate_spec

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
    "limits",
    "validate_spec",
]
