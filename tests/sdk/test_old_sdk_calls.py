"""The old Platform SDK's calls work as written: the old guide's train.py (only its import changed) against a real
backend, the constructor's environment defaults, the disabled cases and the old `log_epoch_summary` keywords."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.backend import BackendProcess
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.clients import JobsClient
from trainingplatform_sdk.clients.jobs import EpochSummary
from trainingplatform_sdk.spec.limits import MAX_SUMMARY_METRICS

OLD_SCRIPT = Path(__file__).with_name("old_style_train.py")
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def clean_env(**values: str) -> dict[str, str]:
    """The test's environment without any platform variable, plus `values`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in {
            "BACKEND_API_URL",
            "JOB_TELEMETRY_TOKEN",
            "INTERNAL_AUTH_TOKEN",
            "TP_JOB_ID",
            "JOB_ID",
            "TP_RUN_JOB_ID",
            "TP_BACKEND_ADDRESS",
            "TP_AUTH_TOKEN",
        }
    }
    return {**env, **values}


def run_old_script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(OLD_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=180
    )


def epoch_summaries(client: JobsClient, job_id: str) -> dict[int, EpochSummary]:
    """The epoch summaries of an ended job, from a subscription's replay."""
    return {
        event.epoch_summary.epoch: event.epoch_summary
        for event in client.subscribe(job_id)
        if event.epoch_summary is not None
    }


@SQLITE_ONLY
def test_the_old_guides_script_reports_to_a_real_backend(backend: BackendProcess, tmp_path: Path) -> None:
    job_id, token = backend.create_job(framework="custom", model="tiny-mlp")
    env = clean_env(
        BACKEND_API_URL=f"grpc://{backend.address}", JOB_TELEMETRY_TOKEN=token, TP_SPOOL_DIR=str(tmp_path / "spool")
    )
    result = run_old_script(env, "--job-id", job_id, "--epochs", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training finished" in result.stdout
    assert "Traceback" not in result.stderr and "disabled" not in result.stderr

    assert backend.status_events(job_id) == ["PENDING", "RUNNING", "COMPLETED"]
    rows = backend.metric_rows(job_id)
    assert [(key, step, epoch) for _, key, _, step, epoch, _ in rows] == [
        ("batch_loss", step, epoch) for epoch in range(2) for step in range(4)
    ]
    assert all(0.0 < value < 5.0 for _, _, value, _, _, _ in rows)
    with JobsClient(backend.address, backend.internal_token) as client:
        logs = list(client.logs(job_id))
        assert logs[0].message == "Starting training: tiny-mlp"
        epochs = [line for line in logs if line.message.startswith("Epoch ")]
        assert [(line.epoch, line.level) for line in epochs] == [(0, "INFO"), (1, "INFO")]
        summaries = epoch_summaries(client, job_id)
    # The old keyword form of log_epoch_summary, stored under the current keys.
    assert sorted(summaries) == [0, 1]
    assert set(summaries[1].metrics) == {"train/loss", "val/loss", "val/accuracy"}
    assert 0.0 <= summaries[1].metrics["val/accuracy"] <= 1.0
    assert list(tmp_path.glob("spool/*")) == []  # the job ended and everything was delivered: the spool is gone


@SQLITE_ONLY
def test_the_old_guides_failure_path_fails_the_job_with_the_error(backend: BackendProcess, tmp_path: Path) -> None:
    job_id, token = backend.create_job(framework="custom", model="tiny-mlp")
    env = clean_env(
        BACKEND_API_URL=f"grpc://{backend.address}", JOB_TELEMETRY_TOKEN=token, TP_SPOOL_DIR=str(tmp_path / "spool")
    )
    result = run_old_script(env, "--job-id", job_id, "--epochs", "3", "--fail-at-epoch", "1")
    assert result.returncode == 1
    assert "RuntimeError: loss diverged at epoch 1" in result.stderr
    assert backend.status_events(job_id) == ["PENDING", "RUNNING", "FAILED"]
    with JobsClient(backend.address, backend.internal_token) as client:
        job = client.get_job(job_id)
        assert job.error_message == "loss diverged at epoch 1"
        messages = [(line.level, line.message) for line in client.logs(job_id)]
    assert ("ERROR", "Training failed: loss diverged at epoch 1") in messages
    assert {epoch for *_, epoch, _ in backend.metric_rows(job_id)} == {0}


def test_the_old_script_without_the_platform_runs_with_one_warning(tmp_path: Path) -> None:
    result = run_old_script(clean_env(TP_SPOOL_DIR=str(tmp_path / "spool")), "--epochs", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training finished" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if "telemetry disabled" in line]
    assert len(warnings) == 1 and "BACKEND_API_URL" in warnings[0]
    assert "Traceback" not in result.stderr


def _disabled_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "disabled" in r.getMessage()]


def _exercise(logger: TrainingLogger) -> None:
    logger.log_message("Starting training: x", level="INFO")
    logger.update_status("running")
    logger.log_metric("batch_loss", 0.5, epoch=0, step=0)
    logger.log_message("Epoch 0: ...", level="INFO", epoch=0)
    logger.log_epoch_summary(0, train_loss=0.5, val_loss=0.6)
    logger.log_epoch_summary(0, {"val/accuracy": 0.5}, duration_seconds=1.0)
    logger.update_status("failed", error="boom")
    assert logger.flush(1)
    logger.close(1)


def test_enabled_false_is_a_no_op_with_one_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, unreachable_address: str, tmp_path: Path
) -> None:
    monkeypatch.setenv("BACKEND_API_URL", unreachable_address)
    monkeypatch.setenv("JOB_TELEMETRY_TOKEN", "t")
    monkeypatch.setenv("TP_SPOOL_DIR", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="trainingplatform_sdk.logger"):
        logger = TrainingLogger(job_id="job-1", enabled=False)
        assert not logger.enabled
        _exercise(logger)
    assert len(_disabled_warnings(caplog)) == 1 and "enabled=False" in _disabled_warnings(caplog)[0]
    assert list(tmp_path.iterdir()) == []  # no spool, no thread, nothing written


def test_no_backend_url_is_a_no_op_with_one_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("BACKEND_API_URL", "JOB_TELEMETRY_TOKEN", "INTERNAL_AUTH_TOKEN", "TP_JOB_ID", "JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    with caplog.at_level(logging.WARNING, logger="trainingplatform_sdk.logger"):
        logger = TrainingLogger(job_id="job-1")
        assert not logger.enabled
        _exercise(logger)
        # No job id either (an old script run outside the platform): still no error.
        TrainingLogger(job_id=None, enabled=True).close()
    warnings = _disabled_warnings(caplog)
    assert len(warnings) == 2 and all("BACKEND_API_URL" in w for w in warnings)


def test_the_constructor_reads_the_environment_and_explicit_values_win(
    monkeypatch: pytest.MonkeyPatch, unreachable_address: str, tmp_path: Path
) -> None:
    monkeypatch.setenv("BACKEND_API_URL", unreachable_address)
    monkeypatch.delenv("JOB_TELEMETRY_TOKEN", raising=False)
    monkeypatch.setenv("INTERNAL_AUTH_TOKEN", "internal")
    monkeypatch.setenv("TP_JOB_ID", "job-from-env")
    monkeypatch.delenv("JOB_ID", raising=False)
    monkeypatch.delenv("TP_RUN_JOB_ID", raising=False)
    logger = TrainingLogger(spool_dir=tmp_path / "a")
    assert logger.enabled and logger.job_id == "job-from-env"
    logger.close(0)
    # An explicit None still disables, as before; explicit values beat the environment.
    assert not TrainingLogger("job-1", backend_address=None, token="t").enabled
    assert not TrainingLogger("job-1", token=None).enabled
    explicit = TrainingLogger("job-2", backend_address=unreachable_address, token="t", spool_dir=tmp_path / "b")
    assert explicit.enabled and explicit.job_id == "job-2"
    explicit.close(0)
    monkeypatch.delenv("TP_JOB_ID")
    with pytest.raises(ValueError, match="job_id is required"):
        TrainingLogger()


@SQLITE_ONLY
def test_both_forms_of_log_epoch_summary_are_stored(backend: BackendProcess, tmp_path: Path) -> None:
    job_id, token = backend.create_job()
    with TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path) as logger:
        logger.update_status("running")
        logger.log_epoch_summary(0, {"val/accuracy": 0.5, "custom": 2.0}, duration_seconds=3.0)
        logger.log_epoch_summary(
            1, train_loss=0.4, train_accuracy=0.8, val_loss=0.5, val_accuracy=0.7, learning_rate=0.01, epoch_time=2.5
        )
        logger.log_epoch_summary(2, metrics={"custom": 1.0}, val_accuracy=0.9)
        logger.update_status("completed")
    with JobsClient(backend.address, backend.internal_token) as client:
        summaries = epoch_summaries(client, job_id)
    assert summaries[0].metrics == {"val/accuracy": 0.5, "custom": 2.0} and summaries[0].duration_seconds == 3.0
    assert summaries[1].metrics == {
        "train/loss": 0.4,
        "train/accuracy": 0.8,
        "val/loss": 0.5,
        "val/accuracy": 0.7,
        "train/learning_rate": 0.01,
    }
    assert summaries[1].duration_seconds == 2.5
    assert summaries[2].metrics == {"custom": 1.0, "val/accuracy": 0.9}


@SQLITE_ONLY
def test_an_epoch_summary_keeps_its_good_metrics_and_names_the_rest_once(
    backend: BackendProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A value that is not a number used to vanish without a word, and one key the backend refuses (a control
    # character, over 250 characters) lost the whole summary while flush() said True.
    job_id, token = backend.create_job()
    long_key = "k" * 251
    with (
        caplog.at_level(logging.WARNING, logger="trainingplatform_sdk.logger"),
        TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path) as logger,
    ):
        logger.update_status("running")
        logger.log_epoch_summary(
            0,
            {"val/acc": "0.93", "val/loss": None, "train/loss": 0.4, "val/acc\t": 0.9, long_key: 1.0, "": 1.0, 3: 1.0},  # type: ignore[dict-item]
            val_accuracy="0.9",  # type: ignore[arg-type]
            learning_rate=0.01,
        )
        logger.log_epoch_summary(1, {"val/acc\t": 0.8, "train/loss": 0.3})  # a key already named: not again
        assert logger.flush(30)
        logger.update_status("completed")
        report = logger.close(30)
    assert report.calls_delivered == 4 and report.calls_failed == 0
    with JobsClient(backend.address, backend.internal_token) as client:
        summaries = epoch_summaries(client, job_id)
    assert summaries[0].metrics == {"train/loss": 0.4, "train/learning_rate": 0.01}
    assert summaries[1].metrics == {"train/loss": 0.3}
    warnings = [r.getMessage() for r in caplog.records if "left out of the epoch summary" in r.getMessage()]
    assert len(warnings) == 1, warnings
    for name in ("'val/acc': not a number", "'val/loss': not a number", "'val/accuracy': not a number"):
        assert name in warnings[0]
    for name in ("'val/acc\\t'", "'kkk", "'': a key", "3 (int): a key"):
        assert name in warnings[0]


def test_an_epoch_summary_past_the_metrics_limit_keeps_the_first_ones(
    backend: BackendProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The backend refused a summary of more than MAX_SUMMARY_METRICS metrics whole (INVALID_ARGUMENT, not retried).
    job_id, token = backend.create_job()
    metrics = {f"class_{index}/acc": 0.5 for index in range(MAX_SUMMARY_METRICS + 30)}
    with (
        caplog.at_level(logging.WARNING, logger="trainingplatform_sdk.logger"),
        TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path) as logger,
    ):
        logger.update_status("running")
        logger.log_epoch_summary(0, metrics)
        assert logger.flush(30)
        logger.update_status("completed")
        report = logger.close(30)
    assert report.calls_delivered == 3 and report.calls_failed == 0
    with JobsClient(backend.address, backend.internal_token) as client:
        [summary] = epoch_summaries(client, job_id).values()
    assert set(summary.metrics) == set(list(metrics)[:MAX_SUMMARY_METRICS])
    [warning] = [r.getMessage() for r in caplog.records if "left out of the epoch summary" in r.getMessage()]
    assert f"'class_{MAX_SUMMARY_METRICS}/acc': past the 10,000 metrics a summary holds" in warning
    assert "; and 10 more" in warning and len(warning) < 3000, warning
