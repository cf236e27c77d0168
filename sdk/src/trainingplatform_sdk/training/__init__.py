"""The training runtime: the adapter base a framework implements, `tp-train`, MLflow tracking and artifacts.

    from trainingplatform_sdk.training import TrainingAdapter, TrainingResult

A framework's adapter is found through the `trainingplatform.adapters` entry-point group (`registry`), so a
package installed beside the SDK adds a framework. `tp-train` (`training.train`) runs one job in this process.
"""

from trainingplatform_sdk.training.adapter import (
    NullSink,
    Status,
    TelemetrySink,
    TrainingAdapter,
    TrainingResult,
    loader_worker_init,
)

__all__ = ["NullSink", "Status", "TelemetrySink", "TrainingAdapter", "TrainingResult", "loader_worker_init"]
