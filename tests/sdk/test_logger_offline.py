"""TrainingLogger behaviour that needs no backend: disabled mode, spooling while unreachable, restart, fork."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from reliability.polling import wait_until
from support.streams import request_points
from trainingplatform.common.v1 import common_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk import DeliveryReport, LoggerSettings, TrainingLogger
from trainingplatform_sdk.spec.limits import truncate_utf8 as _truncate
from trainingplatform_sdk.telemetry.logger import default_spool_dir
from trainingplatform_sdk.telemetry.sender.state import SEQUENCE_BLOCK
from trainingplatform_sdk.telemetry.spool import Spool, SpoolLockedError, read_state
from trainingplatform_sdk.telemetry.values import job_status as _job_status
from trainingplatform_sdk.telemetry.values import log_level as _log_level
from trainingplatform_sdk.telemetry.values import torchrun_rank

TRAINER = Path(__file__).with_name("trainer_script.py")


def spooled_sequences(directory: Path, kind: str = "metrics") -> list[int]:
    """Every sequence stored in a (closed) spool directory, in order."""
    spool = Spool(directory, "job-1", 1 << 30, 1 << 20)
    request_type = telemetry_pb2.StreamMetricsRequest if kind == "metrics" else telemetry_pb2.StreamLogsRequest
    sequences = []
    for record in spool.records(kind):
        request = request_type.FromString(spool.read(record))
        items = request_points(request) if kind == "metrics" else request.records
        sequences.extend(item.sequence for item in items)
    spool.close()
    return sequences


def test_disabled_without_address(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("BACKEND_API_URL", raising=False)
    monkeypatch.setenv("JOB_TELEMETRY_TOKEN", "token")
    with caplog.at_level(logging.WARNING, logger="trainingplatform_sdk.logger"):
        logger = TrainingLogger.from_env("job-1")
    assert not logger.enabled
    warnings = [r for r in caplog.records if r.name == "trainingplatform_sdk.logger"]
    assert len(warnings) == 1 and "BACKEND_API_URL" in warnings[0].getMessage()

    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="trainingplatform_sdk.logger"):
        for step in range(1000):
            logger.log_metric("loss", 1.0, step=step)
        logger.log_metrics({"a": 1.0}, step=1)
        logger.log_message("hello")
        logger.update_status("running")
        logger.log_epoch_summary(0, {"val/accuracy": 0.5})
        logger.report_run_info(mlflow_run_id="abc")
        assert logger.flush(1)
        report = logger.close()
    assert caplog.records == []
    assert report == DeliveryReport()
    assert threading.active_count() == 1 or not any(
        t.name.startswith("trainingplatform-telemetry") for t in threading.enumerate()
    )


def test_disabled_without_token(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("BACKEND_API_URL", "127.0.0.1:1")
    monkeypatch.delenv("JOB_TELEMETRY_TOKEN", raising=False)
    monkeypatch.delenv("INTERNAL_AUTH_TOKEN", raising=False)
    with caplog.at_level(logging.WARNING, logger="trainingplatform_sdk.logger"):
        logger = TrainingLogger.from_env("job-1")
    assert not logger.enabled
    assert "token" in caplog.text


def test_from_env_reads_address_and_token(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, unreachable_address: str
) -> None:
    monkeypatch.setenv("BACKEND_API_URL", f"grpc://{unreachable_address}")
    monkeypatch.delenv("JOB_TELEMETRY_TOKEN", raising=False)
    monkeypatch.setenv("INTERNAL_AUTH_TOKEN", "internal-secret-token")
    monkeypatch.setenv("TP_SPOOL_DIR", str(tmp_path))
    with TrainingLogger.from_env("job/1") as logger:
        assert logger.enabled
        assert default_spool_dir("job/1") == tmp_path / "job_1"
    assert not logger.enabled
    assert read_state(tmp_path / "job_1")["job_id"] == "job/1"


def test_malformed_address_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        TrainingLogger("job-1", backend_address="grpc://no-port", token="t", spool_dir=tmp_path)


def test_unreachable_backend_spools_and_never_logs_the_token(
    tmp_path: Path, unreachable_address: str, fast_settings: LoggerSettings, caplog: pytest.LogCaptureFixture
) -> None:
    token = "very-secret-token-value"
    with caplog.at_level(logging.DEBUG, logger="trainingplatform_sdk.logger"):
        logger = TrainingLogger(
            "job-1", backend_address=unreachable_address, token=token, spool_dir=tmp_path, settings=fast_settings
        )
        for step in range(2500):
            logger.log_metric("train/loss", 1.0 / (step + 1), step=step, epoch=0)
        logger.log_metrics({"val/loss": 0.5, "val/accuracy": 0.9}, step=2500, epoch=0)
        logger.log_message("epoch 0 done", level="warning", epoch=0)
        logger.update_status("running")
        wait_until(lambda: logger.stats.spooled == 2503, 30, "2503 points spooled")
        assert not logger.flush(0.2)
        report = logger.close(0.5)
    assert report.logged_metrics == 2502 and report.logged_logs == 1
    assert report.committed_metrics == 0 and report.pending_metrics == 2502 and report.pending_logs == 1
    assert report.spooled == 2503 and report.dropped == 0 and report.calls_pending == 1
    assert token not in caplog.text
    assert "unreachable" in caplog.text
    assert spooled_sequences(tmp_path) == list(range(1, 2503))
    assert spooled_sequences(tmp_path, "logs") == [1]


def test_restart_replays_the_spool_and_continues_the_numbering(
    tmp_path: Path, unreachable_address: str, fast_settings: LoggerSettings
) -> None:
    first = TrainingLogger(
        "job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path, settings=fast_settings
    )
    for step in range(1000):
        first.log_metric("loss", float(step), step=step)
    first.log_message("first run")
    first.update_status("running")
    first.close(0.2)

    second = TrainingLogger(
        "job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path, settings=fast_settings
    )
    assert second.stats.replayed == 1001
    assert second.stats.calls_pending == 1
    for step in range(1000, 1500):
        second.log_metric("loss", float(step), step=step)
    second.log_message("second run")
    second.update_status("completed")
    report = second.close(0.2)
    assert report.pending_metrics == 1500 and report.pending_logs == 2 and report.calls_pending == 2

    assert spooled_sequences(tmp_path) == list(range(1, 1501))
    assert spooled_sequences(tmp_path, "logs") == [1, 2]
    state = read_state(tmp_path)
    assert state["metrics"]["assigned"] == 1500
    calls = [
        telemetry_pb2.UpdateStatusRequest.FromString(__import__("base64").b64decode(c["request"])).status
        for c in state["calls"]
    ]
    assert calls == [common_pb2.JOB_STATUS_RUNNING, common_pb2.JOB_STATUS_COMPLETED]


def test_a_killed_process_leaves_a_spool_the_next_one_replays(tmp_path: Path, unreachable_address: str) -> None:
    spool_dir = tmp_path / "spool"
    env = {**os.environ, "BACKEND_API_URL": unreachable_address, "JOB_TELEMETRY_TOKEN": "t"}
    process = subprocess.Popen(
        [sys.executable, str(TRAINER), "job-1", str(spool_dir), "0", "3000", "hang-when-spooled"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        events = [json.loads(process.stdout.readline()) for _ in range(2)]
        assert events[-1]["event"] == "ready"
    finally:
        process.kill()
        process.wait()
    logger = TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=spool_dir)
    assert logger.stats.replayed == 3000
    logger.log_metric("train/index", 3000.0, step=3000)
    logger.close(0.2)
    # The killed process never released its block of reserved sequences: the next one numbers after it (a gap,
    # never a reuse).
    sequences = spooled_sequences(spool_dir)
    assert sequences[:3000] == list(range(1, 3001))
    assert len(sequences) == 3001 and 3000 < sequences[3000] <= 3001 + SEQUENCE_BLOCK


def test_spool_cap_drops_counts_and_logs_once(
    tmp_path: Path, unreachable_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = LoggerSettings(spool_max_bytes=20_000, reconnect_initial_backoff_s=0.05, reconnect_max_backoff_s=0.1)
    with caplog.at_level(logging.ERROR, logger="trainingplatform_sdk.logger"):
        logger = TrainingLogger(
            "job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path, settings=settings
        )
        for step in range(5000):
            logger.log_metric("train/loss", 1.0, step=step)
            if step % 500 == 0:
                time.sleep(0.06)  # several spills, so the cap is hit more than once
        report = logger.close(0.2)
    assert report.dropped > 0
    assert report.spooled + report.dropped == 5000
    assert report.pending_metrics == report.spooled
    assert len([r for r in caplog.records if "cap" in r.getMessage()]) == 1
    assert sum(p.stat().st_size for p in tmp_path.glob("*.seg")) <= 20_000


def test_invalid_points_are_counted_not_sent(tmp_path: Path, unreachable_address: str) -> None:
    logger = TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path)
    logger.log_metric("", 1.0)
    logger.log_metric("k" * 251, 1.0)
    logger.log_metric("bad\nkey", 1.0)
    logger.log_metric("loss", "not a number")  # type: ignore[arg-type]
    logger.log_metric("loss", 1.0, step=-1)
    logger.log_metric(["not", "a", "key"], 1.0)  # type: ignore[arg-type]
    logger.log_metric("bad\ud800key", 1.0)
    logger.log_metric("loss", 1.0, epoch=2**63)
    logger.log_metric("loss", 1.0, step=2**53)  # past the backend's MAX_STEP: it would refuse the whole stream
    logger.log_metric("loss", 1.0, epoch=10**9)  # past the backend's MAX_EPOCH
    logger.log_metric("loss", float("nan"), step=1)  # legal: kept
    logger.log_message("x", step=-2)
    logger.log_message("x", epoch=10**9)
    logger.log_message("lone surrogate \ud800 replaced")  # kept, made encodable
    report = logger.close(0.2)
    assert report.invalid == 12
    assert report.logged_metrics == 1 and report.logged_logs == 1
    assert spooled_sequences(tmp_path) == [1]
    assert spooled_sequences(tmp_path, "logs") == [1]


def test_a_second_logger_on_the_same_spool_is_refused(tmp_path: Path, unreachable_address: str) -> None:
    with TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path) as logger:
        with pytest.raises(SpoolLockedError):
            TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path)
        assert logger.enabled


def test_close_is_idempotent_and_stops_the_thread(tmp_path: Path, unreachable_address: str) -> None:
    logger = TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path)
    logger.log_metric("loss", 1.0)
    first = logger.close(0.2)
    assert logger.close(0.2) is first
    assert not any(t.name.startswith("trainingplatform-telemetry") and t.is_alive() for t in threading.enumerate())
    logger.log_metric("loss", 2.0)  # a no-op after close
    assert logger.stats.logged_metrics == 1


def test_logging_from_many_threads_numbers_every_point_once(tmp_path: Path, unreachable_address: str) -> None:
    logger = TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path)

    def work(thread: int) -> None:
        for step in range(2000):
            logger.log_metric(f"thread{thread}/loss", float(step), step=step)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = logger.close(0.5)
    assert report.logged_metrics == 8000
    assert spooled_sequences(tmp_path) == list(range(1, 8001))


def test_forked_child_is_disabled(tmp_path: Path, unreachable_address: str) -> None:
    logger = TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path)
    logger.log_metric("loss", 1.0)
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code, never raise
        ok = not logger.enabled
        logger.log_metric("loss", 2.0)
        ok = ok and len(logger._buffer) <= 1 and logger.flush(1) and logger.close(1) is not None
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert logger.enabled
    logger.log_metric("loss", 3.0)
    report = logger.close(0.2)
    assert report.logged_metrics == 2


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("running", common_pb2.JOB_STATUS_RUNNING),
        ("COMPLETED", common_pb2.JOB_STATUS_COMPLETED),
        ("Failed", common_pb2.JOB_STATUS_FAILED),
        ("cancelled", common_pb2.JOB_STATUS_CANCELLED),
        ("queued", common_pb2.JOB_STATUS_QUEUED),
        (common_pb2.JOB_STATUS_RUNNING, common_pb2.JOB_STATUS_RUNNING),
    ],
)
def test_job_status_names(status: str | int, expected: int) -> None:
    assert _job_status(status) == expected


@pytest.mark.parametrize("status", ["done", "", 0, 99])
def test_unknown_status_is_refused(status: str | int) -> None:
    with pytest.raises(ValueError):
        _job_status(status)


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("info", common_pb2.LOG_LEVEL_INFO),
        ("WARNING", common_pb2.LOG_LEVEL_WARNING),
        ("warn", common_pb2.LOG_LEVEL_WARNING),
        ("Error", common_pb2.LOG_LEVEL_ERROR),
        ("critical", common_pb2.LOG_LEVEL_CRITICAL),
        ("debug", common_pb2.LOG_LEVEL_DEBUG),
        ("chatty", common_pb2.LOG_LEVEL_INFO),
        (logging.ERROR, common_pb2.LOG_LEVEL_ERROR),
        (logging.DEBUG, common_pb2.LOG_LEVEL_DEBUG),
        (common_pb2.LOG_LEVEL_WARNING, common_pb2.LOG_LEVEL_WARNING),
    ],
)
def test_log_levels(level: str | int, expected: int) -> None:
    assert _log_level(level) == expected


def test_truncate_keeps_the_limit_and_marks_the_cut() -> None:
    assert _truncate("short", 16) == "short"
    text = "é" * 20_000  # 40,000 bytes of UTF-8
    cut = _truncate(text, 16 * 1024)
    assert len(cut.encode()) <= 16 * 1024
    assert cut.endswith("bytes]") and "...[truncated " in cut
    assert cut.startswith("é" * 1000)


def test_a_token_that_is_not_printable_ascii_is_refused_at_construction_naming_its_source(
    tmp_path: Path, unreachable_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the logger retried "Invalid metadata" for ever, gRPC printed an error line each try, and flush()
    # and close() reported nothing final.
    with pytest.raises(ValueError, match="the token argument must be printable ASCII") as refused:
        TrainingLogger("job-1", backend_address=unreachable_address, token="tökén", spool_dir=tmp_path)
    assert "tökén" not in str(refused.value)
    monkeypatch.setenv("JOB_TELEMETRY_TOKEN", "job.1.\x07bell")
    with pytest.raises(ValueError, match="JOB_TELEMETRY_TOKEN must be printable ASCII"):
        TrainingLogger("job-1", backend_address=unreachable_address, spool_dir=tmp_path / "env")


def test_a_token_read_from_a_file_keeps_no_newline(tmp_path: Path, unreachable_address: str) -> None:
    with TrainingLogger("job-1", backend_address=unreachable_address, token="job.1.secret\n", spool_dir=tmp_path) as lg:
        assert lg.enabled


def test_update_status_takes_the_exception_itself_as_the_error(tmp_path: Path, unreachable_address: str) -> None:
    # `except Exception as error: logger.update_status("failed", error=error)` raised TypeError (no len()) inside
    # the except block, hiding the training's own exception.
    logger = TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path)
    try:
        raise ValueError("the loss went NaN")
    except ValueError as error:
        logger.update_status("failed", error=error)  # type: ignore[arg-type]
    logger.close(0.2)
    (call,) = read_state(tmp_path)["calls"]
    request = telemetry_pb2.UpdateStatusRequest.FromString(__import__("base64").b64decode(call["request"]))
    assert request.status == common_pb2.JOB_STATUS_FAILED
    assert request.error_message == "ValueError: the loss went NaN"


def test_update_status_refuses_pending_at_once(tmp_path: Path, unreachable_address: str) -> None:
    # A job is created PENDING and no transition leads back to it: the backend refused the call only later, once
    # the logger delivered it. `queued` stays allowed (a batch queue around the script says it waits).
    logger = TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path)
    with pytest.raises(ValueError, match="report queued"):
        logger.update_status("pending")
    logger.update_status("queued", reason="waiting in the batch queue")
    logger.close(0.2)
    (call,) = read_state(tmp_path)["calls"]
    request = telemetry_pb2.UpdateStatusRequest.FromString(__import__("base64").b64decode(call["request"]))
    assert request.status == common_pb2.JOB_STATUS_QUEUED


@pytest.mark.parametrize("rank", ["-1", "99999999999", "two"])
def test_a_rank_variable_out_of_range_is_read_as_0_and_the_records_still_go(
    tmp_path: Path, unreachable_address: str, monkeypatch: pytest.MonkeyPatch, rank: str
) -> None:
    # RANK=-1 made the backend refuse the log stream for good; RANK past int32 crashed the sender thread.
    monkeypatch.setenv("RANK", rank)
    assert torchrun_rank() == 0  # what every log record carries
    logger = TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path)
    logger.log_message("hello")
    report = logger.close(0.5)
    assert report.pending_logs == 1 and report.dropped == 0 and report.error is None
    assert spooled_sequences(tmp_path, "logs") == [1]


@pytest.mark.parametrize(
    ("args", "kwargs", "problem"),
    [
        ((1.5, {"val/accuracy": 0.9}), {}, "epoch must be a whole number"),
        ((2**64, {"val/accuracy": 0.9}), {}, "epoch must be between 0 and 999999999"),
        ((-1, {"val/accuracy": 0.9}), {}, "epoch must be between 0 and 999999999"),
        # (A key that is not text leaves out that metric only: test_old_sdk_calls.py.)
        ((0, [1, 2]), {}, "metrics must map names to values, got list"),
        ((0, {"val/accuracy": 0.9}), {"duration_seconds": "12"}, "duration_seconds must be a number"),
        ((0, {"val/accuracy": 0.9}), {"duration_seconds": -1.0}, "duration_seconds must be"),
    ],
)
def test_a_malformed_epoch_summary_is_warned_about_and_not_sent_never_raised(
    tmp_path: Path, unreachable_address: str, caplog: pytest.LogCaptureFixture, args: tuple, kwargs: dict, problem: str
) -> None:
    # It raised TypeError or protobuf's "Value out of range" into the training loop.
    logger = TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="trainingplatform_sdk.logger"):
        logger.log_epoch_summary(*args, **kwargs)
    logger.log_epoch_summary(1, {"val/accuracy": 0.95}, duration_seconds=2.0)  # a good one still goes
    logger.close(0.2)
    assert any(problem in record.getMessage() for record in caplog.records), [r.getMessage() for r in caplog.records]
    assert [call["method"] for call in read_state(tmp_path)["calls"]] == ["RecordEpochSummary"]


@pytest.mark.parametrize("metrics", [None, 0.5, "loss", [("loss", 0.5)]])
def test_log_metrics_of_something_not_a_mapping_is_counted_invalid_never_raised(
    tmp_path: Path, unreachable_address: str, caplog: pytest.LogCaptureFixture, metrics: object
) -> None:
    # It raised AttributeError ('NoneType' object has no attribute 'items') into the training loop.
    logger = TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="trainingplatform_sdk.logger"):
        logger.log_metrics(metrics, step=1)  # type: ignore[arg-type]
        logger.log_metrics(metrics, step=2)  # type: ignore[arg-type]
    logger.log_metrics({"loss": 0.5}, step=3)  # a good one still goes
    report = logger.close(0.2)
    warnings = [r.getMessage() for r in caplog.records if "log_metrics takes a mapping" in r.getMessage()]
    assert len(warnings) == 1 and type(metrics).__name__ in warnings[0], [r.getMessage() for r in caplog.records]
    assert report.invalid == 2 and report.logged_metrics == 1
    assert spooled_sequences(tmp_path) == [1]


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"mlflow_run_id": 5}, "mlflow_run_id must be text, got int"),
        ({"mlflow_tracking_uri": b"file:///x"}, "mlflow_tracking_uri must be text, got bytes"),
        ({"artifacts": {"best": 5}}, "artifacts must map names to URIs, both text"),
        ({"artifacts": {7: "s3://b/k"}}, "artifacts must map names to URIs, both text"),
        ({"artifacts": ["s3://b/k"]}, "artifacts must map names to URIs, both text"),
    ],
)
def test_malformed_run_info_is_warned_about_and_not_sent_never_raised(
    tmp_path: Path, unreachable_address: str, caplog: pytest.LogCaptureFixture, kwargs: dict, problem: str
) -> None:
    # protobuf's TypeError reached the caller.
    logger = TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="trainingplatform_sdk.logger"):
        logger.report_run_info(**kwargs)
    logger.report_run_info(mlflow_run_id="abc", artifacts={"best": "s3://b/k"})  # a good one still goes
    logger.close(0.2)
    assert any(problem in record.getMessage() for record in caplog.records), [r.getMessage() for r in caplog.records]
    assert [call["method"] for call in read_state(tmp_path)["calls"]] == ["ReportRunInfo"]


def test_closing_with_undelivered_telemetry_says_what_is_kept_and_where(
    tmp_path: Path, unreachable_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The with-block form drops the DeliveryReport: after a silent wait, nothing said that the job's data and its
    # final status were still undelivered.
    with caplog.at_level(logging.WARNING, logger="trainingplatform_sdk.logger"):
        logger = TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path)
        logger.update_status("running")
        for step in range(1000):
            logger.log_metric("loss", 1.0, step=step)
        logger.log_message("done")
        logger.update_status("completed")
        logger.close(0.2)
    said = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert said == [
        f"job job-1: closed with 1000 metric points, 1 log records and 2 calls not delivered; they are kept in "
        f"{tmp_path} for the next logger of this job"
    ], [r.getMessage() for r in caplog.records]


def test_closing_with_everything_delivered_says_nothing_more(
    tmp_path: Path, unreachable_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="trainingplatform_sdk.logger"):
        TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path).close(0.2)
    assert not [r for r in caplog.records if "not delivered" in r.getMessage()]
