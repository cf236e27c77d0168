"""`tp train` and `tp watch` print each epoch once: its summary line (`epoch 1/3 done in ...`) when the summary comes
within a moment of the trainer's own "Epoch 1/3: ..." log line, which is logged right after the summary but can reach
the view first; the trainer's line when the summary is late."""

from __future__ import annotations

import io

import pytest
from trainingplatform_sdk.cli import output
from trainingplatform_sdk.cli.output import Follower
from trainingplatform_sdk.clients import Cursor, EpochSummary, Job, TelemetryEvent
from trainingplatform_sdk.clients.jobs import LogLine, StatusChange


def _job() -> Job:
    return Job(
        job_id="j",
        status="RUNNING",
        framework="timm",
        model="resnet10t",
        dataset="digits",
        epochs=3,
        display_name="",
        error_message="",
        error_detail="",
        created_at=None,
        started_at=None,
        ended_at=None,
        trainer_address="",
        mlflow_run_id="",
        mlflow_tracking_uri="",
        artifacts={},
        last_metric_sequence=0,
        last_log_sequence=0,
    )


def _log(sequence: int, message: str) -> TelemetryEvent:
    line = LogLine("INFO", message, None, None, 0.0, sequence, "", 0)
    return TelemetryEvent(kind="logs", cursor=Cursor(), logs=(line,))


def _summary(epoch: int) -> TelemetryEvent:
    summary = EpochSummary(epoch=epoch, metrics={"val/accuracy": 0.9}, duration_seconds=3.2)
    return TelemetryEvent(kind="epoch_summary", cursor=Cursor(), epoch_summary=summary)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    clock = _Clock()
    monkeypatch.setattr(output.time, "monotonic", clock)
    return clock


def test_a_summary_that_comes_just_after_the_trainers_line_is_the_line_printed(clock: _Clock) -> None:
    out = io.StringIO()
    follower = Follower(_job(), out)
    follower.feed(_log(1, "Epoch 1/3: train/loss=0.79, val/accuracy=0.27"))
    clock.now += 0.5
    follower.feed(_summary(0))
    follower.finish()
    text = out.getvalue()
    assert "epoch 1/3 done in 3.2s: val/accuracy 0.9" in text
    assert "Epoch 1/3:" not in text


def test_the_trainers_line_is_printed_when_the_summary_is_late_and_the_epoch_only_once(clock: _Clock) -> None:
    out = io.StringIO()
    follower = Follower(_job(), out)
    follower.feed(_log(1, "Epoch 1/3: train/loss=0.79"))
    clock.now += output.EPOCH_LINE_WAIT_S + 0.1
    follower.feed(TelemetryEvent(kind="metrics", cursor=Cursor()))
    follower.feed(_summary(0))  # later still: the epoch was already printed
    follower.finish()
    text = out.getvalue()
    assert text.count("Epoch 1/3: train/loss=0.79") == 1 and "done in" not in text


def test_a_held_line_keeps_its_place_before_the_next_log_line_and_is_not_lost_at_the_end(clock: _Clock) -> None:
    out = io.StringIO()
    follower = Follower(_job(), out)
    follower.feed(_log(1, "Epoch 3/3: train/loss=0.05"))
    follower.feed(_log(2, "Training completed: 3 epoch(s)"))
    follower.feed(_log(3, "Epoch 9/9: a line no summary follows"))
    follower.finish()
    lines = [line for line in out.getvalue().splitlines() if line.startswith("[")]
    assert [line.split("] ", 1)[1] for line in lines] == [
        "Epoch 3/3: train/loss=0.05",
        "Training completed: 3 epoch(s)",
        "Epoch 9/9: a line no summary follows",
    ]


def test_the_last_epochs_summary_is_printed_though_the_next_line_came_with_the_trainers_line(clock: _Clock) -> None:
    # `make demo` printed the trainer's "Epoch 3/3: ..." line for the last epoch: "Training completed" came in the
    # same batch of log lines, and any next line ended the wait for the summary.
    out = io.StringIO()
    follower = Follower(_job(), out)
    lines = (
        LogLine("INFO", "Epoch 3/3: train/loss=0.05", None, None, 0.0, 1, "", 0),
        LogLine("INFO", "Training completed: 3 epoch(s)", None, None, 0.0, 2, "", 0),
    )
    follower.feed(TelemetryEvent(kind="logs", cursor=Cursor(), logs=lines))
    clock.now += 0.3
    follower.feed(_summary(2))
    status = StatusChange(3, "RUNNING", "COMPLETED", "", "", None)
    follower.feed(TelemetryEvent(kind="status", cursor=Cursor(), status=status))
    follower.finish()
    printed = [line for line in out.getvalue().splitlines() if not line.startswith("epoch 3/3 [")]
    assert printed == [
        "epoch 3/3 done in 3.2s: val/accuracy 0.9",
        "[info   ] Training completed: 3 epoch(s)",
        "status COMPLETED",
    ]


def test_a_status_ends_the_wait_and_keeps_every_line_in_its_place(clock: _Clock) -> None:
    out = io.StringIO()
    follower = Follower(_job(), out)
    follower.feed(_log(1, "Epoch 3/3: train/loss=0.05"))
    follower.feed(_log(2, "Training completed: 3 epoch(s)"))
    status = StatusChange(3, "RUNNING", "COMPLETED", "", "", None)
    follower.feed(TelemetryEvent(kind="status", cursor=Cursor(), status=status))
    follower.feed(_summary(2))  # after the status: the epoch was printed as the trainer's line
    follower.finish()
    printed = [line for line in out.getvalue().splitlines() if not line.startswith("epoch 3/3 [")]
    assert printed == [
        "[info   ] Epoch 3/3: train/loss=0.05",
        "[info   ] Training completed: 3 epoch(s)",
        "status COMPLETED",
    ]


def test_the_final_status_is_printed_last_after_late_lines_and_the_final_bar(clock: _Clock) -> None:
    # A cancelled job's trainer logs on after the status changed (its last checkpoint stored): those lines and the
    # final progress bar come before the status, which nothing of the progress follows.
    out = io.StringIO()
    follower = Follower(_job(), out)
    status = StatusChange(3, "RUNNING", "CANCELLED", "stop requested", "", None)
    follower.feed(TelemetryEvent(kind="status", cursor=Cursor(), status=status))
    follower.feed(_log(4, "Training cancelled after 1 epoch(s)"))
    follower.finish()
    lines = out.getvalue().splitlines()
    assert lines[-3:] == [
        "[info   ] Training cancelled after 1 epoch(s)",
        lines[-2],
        "status CANCELLED (stop requested)",
    ]
    assert lines[-2].startswith("epoch 1/3 [")
