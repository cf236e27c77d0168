"""TrainingLogger at its edges against a real backend: close with odd timeouts or interrupted, an exception in
the with-block, calls after close, a refusal for good, a spool directory that cannot be made."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from reliability.polling import wait_until
from support.backend import BackendProcess
from trainingplatform_sdk import JobsClient, LoggerSettings, TrainingLogger
from trainingplatform_sdk.errors import PlatformError
from trainingplatform_sdk.telemetry.spool import Spool


@pytest.mark.parametrize("where", ["argument", "TP_SPOOL_DIR"])
def test_a_spool_directory_that_cannot_be_made_names_the_setting(
    unreachable_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    if where == "argument":
        spool_dir: Path | None = blocker / "spool"
        setting = "spool_dir"
    else:
        monkeypatch.setenv("TP_SPOOL_DIR", str(blocker / "spools"))
        spool_dir, setting = None, "TP_SPOOL_DIR"
    with pytest.raises(PlatformError) as raised:
        TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=spool_dir)
    assert isinstance(raised.value, OSError)  # as documented before: an OSError
    message = str(raised.value)
    assert str(blocker) in message and setting in message
    assert os.listdir(tmp_path) == ["a-file"]


def test_a_spool_whose_state_cannot_be_written_is_refused_at_start(
    unreachable_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The state file unwritable (permission denied, a read-only file): the logger used to start, spool its points
    # under a numbering nobody could check and its calls nowhere, and say at close that they were kept; a later
    # logger then took them for checked and the backend dropped them as duplicates, the status lost.
    spool_dir = tmp_path / "spool"
    real_save = Spool.save_state

    def denied(self: Spool, durable: bool = False) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self.directory / "state.0"))

    monkeypatch.setattr(Spool, "save_state", denied)
    with pytest.raises(PlatformError) as raised:
        TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=spool_dir)
    assert isinstance(raised.value, OSError)
    message = str(raised.value)
    assert str(spool_dir / "state.0") in message and "spool_dir" in message and "Permission denied" in message
    # Nothing holds the directory: once the state can be written, a logger uses it.
    monkeypatch.setattr(Spool, "save_state", real_save)
    TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=spool_dir).close(0.1)


@pytest.mark.parametrize("timeout", [float("inf"), 1e10])
def test_close_with_an_unbounded_timeout_delivers_everything(
    backend: BackendProcess, tmp_path: Path, timeout: float
) -> None:
    job_id, token = backend.create_job()
    logger = TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path / "spool")
    logger.update_status("running")
    logger.log_metric("loss", 1.0, step=0)
    logger.update_status("completed")
    report = logger.close(timeout=timeout)
    assert report.committed_metrics == 1 and report.calls_delivered == 2 and report.calls_pending == 0
    assert logger.close() == report
    assert backend.job_status(job_id) == "COMPLETED"


def test_close_refuses_a_nan_timeout(unreachable_address: str, tmp_path: Path) -> None:
    logger = TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path)
    logger.log_metric("loss", 1.0)
    with pytest.raises(ValueError, match="timeout"):
        logger.close(timeout=float("nan"))
    assert logger.close(0.1).pending_metrics == 1  # the refused close changed nothing


_INTERRUPTED_CLOSE = textwrap.dedent(
    """
    import dataclasses, json, logging, sys
    from trainingplatform_sdk import TrainingLogger
    logging.basicConfig(level=logging.WARNING)
    job, address, token, spool = sys.argv[1:5]
    logger = TrainingLogger(job, backend_address=address, token=token, spool_dir=spool)
    logger.update_status("running")
    logger.log_metric("loss", 1.0, step=0)
    logger.update_status("completed")
    try:
        print("closing", flush=True)
        logger.close(timeout=60)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    print(json.dumps(dataclasses.asdict(logger.close(timeout=1))), flush=True)
    """
)


def test_close_interrupted_by_ctrl_c_then_closed_again_keeps_the_status(
    backend: BackendProcess, tmp_path: Path
) -> None:
    job_id, token = backend.create_job()
    spool = tmp_path / "spool"
    backend.kill()  # unreachable: close waits its whole timeout, and Ctrl-C interrupts it
    child = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED_CLOSE, job_id, backend.address, token, str(spool)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "closing"
    time.sleep(1.0)  # into close's wait (of up to 60 s)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    lines = out.splitlines()
    assert lines[0] == "interrupted", err
    report = json.loads(lines[1])
    # The second close waited for the sender to end: the two statuses are kept in the spool, and said.
    assert report["calls_pending"] == 2 and report["pending_metrics"] == 1, err
    assert "not delivered" in err
    backend.restart()
    with TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=spool) as replay:
        assert replay.flush(60)
    assert backend.job_status(job_id) == "COMPLETED"
    assert backend.metric_sequences(job_id) == [1]


def test_calls_after_close_are_counted_and_warned_about_once(
    backend: BackendProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job_id, token = backend.create_job()
    logger = TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path)
    logger.update_status("running")
    report = logger.close(30)
    assert report.dropped == 0 and report.calls_delivered == 1
    with caplog.at_level(logging.WARNING, logger="trainingplatform_sdk.logger"):
        logger.log_metric("late", 1.0)
        logger.log_metrics({"a": 1.0, "b": 2.0})
        logger.log_message("late line")
        logger.update_status("failed", "too late")
        logger.log_epoch_summary(0, {"a": 1.0})
    after = logger.stats
    assert after.dropped == 4 and after.calls_dropped == 2
    assert logger.close() == after
    warnings = [r.getMessage() for r in caplog.records if "after close" in r.getMessage()]
    assert len(warnings) == 1 and "log_metric" in warnings[0]
    assert backend.job_status(job_id) == "RUNNING"


def test_a_refusal_for_good_turns_enabled_off(backend: BackendProcess, tmp_path: Path) -> None:
    job_id, token = backend.create_job()
    # A logger the backend accepts stays enabled. (Asserting `enabled` on the refused logger right after creating it
    # raced with its sender, which may have been refused already on a loaded machine.)
    accepted = TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path / "accepted")
    accepted.log_metric("loss", 1.0)
    assert accepted.flush(30) and accepted.enabled
    accepted.close(10)
    logger = TrainingLogger(job_id, backend_address=backend.address, token="not-a-token", spool_dir=tmp_path)
    logger.log_metric("loss", 1.0)
    wait_until(lambda: logger.stats.error is not None, 30, "the refusal")
    assert not logger.enabled
    report = logger.close(5)
    assert report.pending_metrics == 1  # kept in the spool for a later replay, as before


def _job_error(backend: BackendProcess, job_id: str) -> str:
    with JobsClient(backend.address, backend.internal_token) as client:
        return client.get_job(job_id).error_message


def test_an_exception_leaving_the_with_block_fails_the_job_with_its_text(
    backend: BackendProcess, tmp_path: Path
) -> None:
    job_id, token = backend.create_job()
    with (
        pytest.raises(RuntimeError),
        TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path) as logger,
    ):
        logger.update_status("running")
        logger.log_metric("loss", 1.0, step=0)
        raise RuntimeError("CUDA out of memory\nTried to allocate 2.00 GiB")
    assert backend.job_status(job_id) == "FAILED"
    assert _job_error(backend, job_id) == "RuntimeError: CUDA out of memory"
    assert backend.metric_sequences(job_id) == [1]


def test_ctrl_c_leaving_the_with_block_cancels_the_job(backend: BackendProcess, tmp_path: Path) -> None:
    job_id, token = backend.create_job()
    with (
        pytest.raises(KeyboardInterrupt),
        TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path) as logger,
    ):
        logger.update_status("running")
        raise KeyboardInterrupt
    assert backend.job_status(job_id) == "CANCELLED"


def test_an_exception_after_a_terminal_status_keeps_that_status(backend: BackendProcess, tmp_path: Path) -> None:
    job_id, token = backend.create_job()
    with (
        pytest.raises(ValueError),
        TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path) as logger,
    ):
        logger.update_status("running")
        logger.update_status("completed")
        raise ValueError("raised while cleaning up")
    assert backend.status_events(job_id)[-1] == "COMPLETED"
    assert backend.job_status(job_id) == "COMPLETED"
    assert _job_error(backend, job_id) == ""


# How Python hands a program a file name that is not UTF-8 (os.listdir, sys.argv): a lone surrogate per bad byte.
UNDECODABLE = os.fsdecode(b"/data/img\xff.jpg")


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text today")


@pytest.mark.parametrize(
    ("error", "stored"),
    [
        (RuntimeError(f"cannot decode image {UNDECODABLE}"), "RuntimeError: cannot decode image /data/img?.jpg"),
        (Unprintable(), "Unprintable: <unprintable Unprintable>"),
    ],
)
def test_an_exception_whose_text_cannot_be_sent_still_fails_the_job(
    backend: BackendProcess, tmp_path: Path, error: Exception, stored: str
) -> None:
    # The UpdateStatusRequest of a lone surrogate could not be built: __exit__ raised UnicodeEncodeError instead of
    # the caller's exception, the job stayed RUNNING and the logger was not closed.
    job_id, token = backend.create_job()
    with (
        pytest.raises(type(error)) as raised,
        TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path) as logger,
    ):
        logger.update_status("running")
        raise error
    assert raised.value is error
    assert not logger.enabled  # closed by __exit__
    assert backend.job_status(job_id) == "FAILED"
    assert _job_error(backend, job_id) == stored


def test_status_and_run_info_texts_that_utf8_cannot_encode_are_replaced(
    backend: BackendProcess, tmp_path: Path
) -> None:
    job_id, token = backend.create_job()
    with TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path) as logger:
        logger.update_status("running", reason=f"started on {UNDECODABLE}")
        logger.report_run_info(
            mlflow_tracking_uri=f"file://{UNDECODABLE}", artifacts={f"best{UNDECODABLE}": f"file://{UNDECODABLE}"}
        )
        logger.update_status("failed", error=f"cannot decode {UNDECODABLE}", error_detail=f"at {UNDECODABLE}\n")
        assert logger.flush(30)
        report = logger.stats
    assert report.calls_delivered == 3 and report.calls_failed == 0
    with JobsClient(backend.address, backend.internal_token) as client:
        job = client.get_job(job_id)
    assert (job.status, job.error_message, job.error_detail) == (
        "FAILED",
        "cannot decode /data/img?.jpg",
        "at /data/img?.jpg\n",
    )
    assert job.mlflow_tracking_uri == "file:///data/img?.jpg"
    assert job.artifacts == {"best/data/img?.jpg": "file:///data/img?.jpg"}


def test_a_failing_exit_report_never_replaces_the_exception_and_closes_the_logger(
    unreachable_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # No text makes the report fail any more; should anything else, the caller's exception is what leaves the block.
    def broken(self: TrainingLogger, *args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the report")

    monkeypatch.setattr(TrainingLogger, "update_status", broken)
    settings = LoggerSettings(close_timeout_s=0.2)
    with (
        caplog.at_level(logging.ERROR, logger="trainingplatform_sdk.logger"),
        pytest.raises(ValueError, match="the training's own error"),
        TrainingLogger(
            "job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path, settings=settings
        ) as logger,
    ):
        raise ValueError("the training's own error")
    assert not logger.enabled  # closed all the same
    assert "the end of the job could not be reported" in caplog.text
