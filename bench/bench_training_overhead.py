"""What telemetry costs training: timm epoch time with the TrainingLogger streaming to a real backend (batch loss
every step) against the same training with telemetry off (a sink that discards), median of several epochs.

Runs alternate off/on so that drift of a noisy machine hits both; the first epoch of each run (warm-up) is left
out. resnet10t on the built-in digits data at 32x32.

    .venv/bin/python bench/bench_training_overhead.py [--runs 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.backend import BackendProcess
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.adapter import NullSink
from trainingplatform_sdk.configs import AdvancedConfig, DatasetConfig, ModelConfig, TrainingConfig


class EpochTimes:
    """Forwards every call to a sink and keeps the epochs' `epoch_time_s`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.times: list[float] = []

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, epoch: int | None = None) -> None:
        if "epoch_time_s" in metrics:
            self.times.append(metrics["epoch_time_s"])
        self.inner.log_metrics(metrics, step=step, epoch=epoch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _train(sink: Any, output_dir: Path, epochs: int) -> list[float]:
    from trainingplatform_trainer_timm.adapter import TimmAdapter

    recorder = EpochTimes(sink)
    adapter = TimmAdapter(
        model_config=ModelConfig(name="resnet10t", image_size=32),
        dataset_config=DatasetConfig(name="digits"),
        training_config=TrainingConfig(epochs=epochs, log_every_n_steps=1),
        output_dir=output_dir,
        job_id="bench",
        logger=recorder,
        advanced_config=AdvancedConfig.from_mapping({"seed": 0}),
    )
    adapter.train()
    return recorder.times[1:]  # the first epoch warms up caches and allocators


def run(runs: int = 2, epochs: int = 3) -> dict[str, float]:
    """Median epoch time with telemetry off and on, and the overhead in percent."""
    off: list[float] = []
    on: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        backend = BackendProcess(f"sqlite:///{root / 'bench.db'}", root / "data")
        backend.start()
        try:
            for index in range(runs):
                off += _train(NullSink(), root / f"off{index}", epochs)
                job_id, token = backend.create_job()
                logger = TrainingLogger(
                    job_id, backend_address=backend.address, token=token, spool_dir=root / f"spool{index}"
                )
                on += _train(logger, root / f"on{index}", epochs)
                report = logger.close(60)
                if report.pending_metrics or report.dropped:
                    raise RuntimeError(f"telemetry was not all delivered: {report}")
        finally:
            backend.close()
    median_off, median_on = statistics.median(off), statistics.median(on)
    return {
        "training_epoch_s_telemetry_off": median_off,
        "training_epoch_s_telemetry_on": median_on,
        "training_overhead_pct": (median_on - median_off) / median_off * 100,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(run(args.runs, args.epochs), indent=2))


if __name__ == "__main__":
    main()
