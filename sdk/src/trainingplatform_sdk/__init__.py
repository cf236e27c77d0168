"""The training platform's trainer-side SDK."""

from trainingplatform_sdk._report import DeliveryReport
from trainingplatform_sdk.logger import TrainingLogger
from trainingplatform_sdk.settings import LoggerSettings

__all__ = ["DeliveryReport", "LoggerSettings", "TrainingLogger"]

__version__ = "0.1.0"
