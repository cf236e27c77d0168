"""Small adapters without any framework, for testing the base loop and the entry point (`module:Class` paths).

They train nothing: each "batch" is a loop iteration producing a made-up loss, so the tests run in milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from trainingplatform_sdk.spec.configs import MetricsResult
from trainingplatform_sdk.training.adapter import TrainingAdapter

BATCHES_PER_EPOCH = 4
# Made-up validation accuracy per epoch: epoch 1 is the best, so best and last checkpoints differ.
VAL_ACCURACY = [0.5, 0.9, 0.7, 0.6, 0.6]


class CountingAdapter(TrainingAdapter):
    """Counts batches; epoch e reports val/accuracy VAL_ACCURACY[e]. Checkpoints are small JSON files."""

    framework = "counting"

    def build_data(self) -> None:
        self.built = ["data"]

    def build_model(self) -> None:
        self.built.append("model")

    def on_batch(self, epoch: int, batch: int) -> None:
        """Hook for subclasses: runs before each batch."""

    def train_epoch(self, epoch: int) -> MetricsResult:
        for batch in range(BATCHES_PER_EPOCH):
            self.on_batch(epoch, batch)
            if self.stop_requested:
                return MetricsResult(metrics={}, num_samples=batch, stopped=True)
            self.global_step += 1
            if self.global_step % self.training_config.log_interval == 0:
                self.logger.log_metric("train/batch_loss", 1.0 / self.global_step, step=self.global_step, epoch=epoch)
        return MetricsResult(metrics={"train/loss": 1.0 / (epoch + 1)}, num_samples=BATCHES_PER_EPOCH)

    def validate(self, epoch: int) -> MetricsResult:
        return MetricsResult(metrics={"val/accuracy": VAL_ACCURACY[epoch]})

    def save_checkpoint(self, epoch: int, is_best: bool) -> Path:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        content = json.dumps({"epoch": epoch, "step": self.global_step, "metrics": self.epoch_metrics})
        self.last_checkpoint_path.write_text(content)
        if is_best:
            self.best_checkpoint_path.write_text(content)
        return self.last_checkpoint_path


class FailingAdapter(CountingAdapter):
    """Raises in the second epoch."""

    def train_epoch(self, epoch: int) -> MetricsResult:
        if epoch == 1:
            raise RuntimeError("loss exploded at epoch 1")
        return super().train_epoch(epoch)


class LeakingAdapter(CountingAdapter):
    """Fails with an exception whose message holds a URL with credentials, as a data loader's or a client's would."""

    URL = "https://reader:" + "hunter2" + "@data.example/shards?X-Amz-Signature=" + "s3cret"

    def train_epoch(self, epoch: int) -> MetricsResult:
        raise ConnectionError(f"could not fetch {self.URL}: connection reset")


class SelfTerminatingAdapter(CountingAdapter):
    """Sends itself SIGTERM before the third batch of epoch 1, as a supervisor cancelling the job would."""

    def on_batch(self, epoch: int, batch: int) -> None:
        if (epoch, batch) == (1, 2):
            os.kill(os.getpid(), signal.SIGTERM)


class WaitingAdapter(CountingAdapter):
    """Writes `started` in the output dir, then trains forever until stopped (for a SIGTERM from outside)."""

    def train_epoch(self, epoch: int) -> MetricsResult:
        (self.output_dir / "started").touch()
        while not self.stop_requested:
            time.sleep(0.01)
            self.global_step += 1
        return MetricsResult(stopped=True)


class ColouredErrorAdapter(CountingAdapter):
    """Fails with ultralytics' coloured message for a data set whose labels are all refused (ANSI escapes included)."""

    MESSAGE = (
        "No valid images found in /data/labels/train.cache.\n"
        "\x1b[34m\x1b[1mtrain: \x1b[0m/data/images/train/0.png: ignoring corrupt image/label: "
        "Label class 5 exceeds dataset class count 2."
    )

    def train_epoch(self, epoch: int) -> MetricsResult:
        raise RuntimeError(self.MESSAGE)
