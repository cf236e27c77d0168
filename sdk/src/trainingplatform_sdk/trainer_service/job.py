"""A StartTraining request once validated: what the supervisor runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from trainingplatform_sdk.spec.configs import AdvancedConfig, DatasetConfig, ModelConfig, TrainingConfig

__all__ = ["JobRequest"]


@dataclass(frozen=True)
class JobRequest:
    """A validated StartTraining request. Paths in `model` and `dataset` are absolute."""

    job_id: str
    model: ModelConfig
    dataset: DatasetConfig
    training: TrainingConfig
    advanced: AdvancedConfig
    telemetry_endpoint: str = ""
    """The backend's telemetry address; empty disables telemetry."""
    telemetry_token: str = field(default="", repr=False)
    """The job's telemetry token. Never logged (hence repr=False)."""
