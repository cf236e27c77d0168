"""What a job's MLflow run holds (a real MLflow server; JobRecorder runs in this process, no training needed): each
epoch summary's metrics, a metric MLflow cannot take left out, as the backend leaves it out, not the epoch with it;
the job's configs as params and config.json, without the credentials a URL in them holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from trainingplatform_sdk.training.recorder import JobRecorder, RecorderSettings

from tracking.test_final_upload_retry import Lines


def start_recorder(
    tracking_uri: str, tmp_path: Path, experiment: str, configs: dict[str, dict[str, Any]] | None = None
) -> tuple[JobRecorder, Lines]:
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_EXPERIMENT_NAME": experiment, "TP_DATA_DIR": str(tmp_path)}
    output_dir = tmp_path / "runs" / "job-1"
    lines = Lines()
    recorder = JobRecorder.start(
        RecorderSettings.from_env(env, output_dir=output_dir),
        job_id="job-1",
        framework="counting",
        configs=configs or {"model": {"name": "counter"}},
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


def test_credentials_in_a_config_url_are_not_in_the_runs_params_or_config_json(mlflow_server, tmp_path: Path) -> None:
    weights = "https://reader:" + "hunter22" + "@models.example/w.pt?X-Amz-Signature=" + "s1gn4ture"
    configs = {"model": {"name": "counter"}, "advanced": {"extra": {"weights_url": weights, "urls": [weights]}}}
    recorder, _ = start_recorder(mlflow_server.uri, tmp_path, "config-credentials", configs)
    assert recorder.run is not None

    client = MlflowClient(mlflow_server.uri)
    params = client.get_run(recorder.run.run_id).data.params
    shown = "https://models.example/w.pt"  # the signature goes with its parameter
    assert params["advanced.extra.weights_url"] == shown
    assert params["advanced.extra.urls"] == f'["{shown}"]'
    stored = Path(client.download_artifacts(recorder.run.run_id, "config.json", str(tmp_path))).read_text()
    assert "hunter22" not in stored and "s1gn4ture" not in stored
    assert shown in stored
    local = (recorder.output_dir / "config.json").read_text()
    assert "hunter22" not in local and "s1gn4ture" not in local
