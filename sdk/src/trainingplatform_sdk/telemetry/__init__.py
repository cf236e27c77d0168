"""The trainer side of telemetry: `TrainingLogger` streams a job's metrics, logs and status to the backend.

Modules: `logger` (the public API, on the training thread), `settings`, `report` (delivery counters), `spool`
(the on-disk outbox), `sender` (the background thread that numbers, batches, streams and resumes), `system` (CPU,
memory and GPU use sampled into `system/` metrics).
"""

from trainingplatform_sdk.telemetry.logger import TrainingLogger, default_spool_dir
from trainingplatform_sdk.telemetry.report import DeliveryReport
from trainingplatform_sdk.telemetry.settings import LoggerSettings
from trainingplatform_sdk.telemetry.system import SystemMetricsSampler

__all__ = ["DeliveryReport", "LoggerSettings", "SystemMetricsSampler", "TrainingLogger", "default_spool_dir"]
