"""Each epoch summary's metrics reach the job's MLflow run (a real MLflow server; JobRecorder runs in this process,
no training needed): a metric MLflow cannot take is left out, as the backend leaves it out, not the epoch with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from trainingplatform_sdk.training.recorder import JobRecorder, RecorderSettings

from tracking.test_final_upload_retry import Lines


def start_recorder(tracking_uri: str, tmp_path: Path, experiment: str) -> tuple[JobRecorder, Lines]:
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_EXPERIMENT_NAME": experiment, "TP_DATA_DIR": str(tmp_path)}
    output_dir = tmp_path / "runs" / "job-1"
    lines = Lines()
    recorder = JobRecorder.start(
        RecorderSettings.from_env(env, output_dir=output_dir),
        job_id="job-1",
        framework="counting",
        configs={"model": {"name": "counter"}},
        output_dir=output_dir,
        logger=lines,
    )
    return recorder, lines


def history(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(metric.step, metric.value) for metric in MlflowClient(tracking_uri).get_metric_history(run_id, key)]


@pytest.mark.parametrize(
    "odd",
    [{"val/accuracy": None}, {"val/accuracy": "n/a"}, {"k" * 300: 1.0}, {7: 1.0}],
    ids=["none", "text", "key-too-long", "key-not-text"],
)
def test_a_metric_mlflow_cannot_take_is_left_out_and_logging_goes_on(
    mlflow_server, tmp_path: Path, odd: dict[object, object]
) -> None:
    recorder, lines = start_recorder(mlflow_server.uri, tmp_path, "odd-metrics")
    assert recorder.run is not None
    sink = recorder.wrap(lines)

    sink.log_epoch_summary(0, {"train/loss": 1.0, **odd})  # type: ignore[dict-item]
    sink.log_epoch_summary(1, {"train/loss": 0.5})

    assert history(mlflow_server.uri, recorder.run.run_id, "train/loss") == [(0, 1.0), (1, 0.5)]
    assert not [line for line in lines.lines if "MLflow" in line[1]], lines.lines
