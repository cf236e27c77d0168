"""progress.json: what a training process writes and the service reads."""

from __future__ import annotations

import math
from pathlib import Path

from trainingplatform_sdk.trainer_service import ProgressSink, read_progress, write_progress
from trainingplatform_sdk.training.adapter import NullSink


def test_write_then_read(tmp_path: Path) -> None:
    assert read_progress(tmp_path) is None
    write_progress(tmp_path, epoch=2, total_epochs=5, metrics={"val/accuracy": 0.9, "bad": math.nan})
    progress = read_progress(tmp_path)
    assert progress is not None
    assert (progress.epoch, progress.total_epochs, progress.metrics) == (2, 5, {"val/accuracy": 0.9})
    assert [path.name for path in tmp_path.iterdir()] == ["progress.json"]  # no temporary file left


def test_unreadable_file_reads_as_none(tmp_path: Path) -> None:
    (tmp_path / "progress.json").write_text("{not json")
    assert read_progress(tmp_path) is None


def test_sink_forwards_and_records(tmp_path: Path) -> None:
    calls: list[str] = []

    class Recording(NullSink):
        def log_metric(self, key: str, value: float, step: int | None = None, epoch: int | None = None) -> None:
            calls.append(key)

    sink = ProgressSink(Recording(), tmp_path, total_epochs=3, min_interval_s=3600)
    sink.update_status("running")
    assert read_progress(tmp_path) is not None
    sink.log_metric("train/batch_loss", 0.5, step=1, epoch=0)
    sink.log_metrics({"val/accuracy": 0.7}, step=10, epoch=1)  # a new epoch is written at once
    progress = read_progress(tmp_path)
    assert progress is not None
    assert progress.epoch == 1
    assert progress.metrics == {"train/batch_loss": 0.5, "val/accuracy": 0.7}
    assert calls == ["train/batch_loss"]
    sink.log_metric("train/batch_loss", 0.25, step=11, epoch=1)  # throttled
    assert read_progress(tmp_path).metrics["train/batch_loss"] == 0.5  # type: ignore[union-attr]
    sink.close()
    assert read_progress(tmp_path).metrics["train/batch_loss"] == 0.25  # type: ignore[union-attr]
