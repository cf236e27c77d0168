"""The live view of `tp train`/`tp watch` prints a job's log records, status reasons and error message through
`output.printable`: control characters escaped, a multi-line record's continuation lines indented under it, in a
terminal and in a file alike (the e2e side: tests/e2e/test_cli_control_chars.py)."""

from __future__ import annotations

import io
import re

import pytest
from trainingplatform_sdk.cli.output import Follower, printable
from trainingplatform_sdk.clients import Cursor, Job, TelemetryEvent
from trainingplatform_sdk.clients.jobs import LogLine, StatusChange

RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


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


def test_printable_escapes_controls_and_keeps_text() -> None:
    assert printable("\x1b]0;TITLE\x07 a\rb\x9b\x7f \u202eX\u2066") == r"\x1b]0;TITLE\x07 a\rb\x9b\x7f \u202eX\u2066"
    assert printable("one\ntwo\tthree") == r"one\ntwo" + "\tthree"
    assert printable("one\r\ntwo\n\n", "    ") == "one\n    two"
    assert printable("naïve 日本 ✓") == "naïve 日本 ✓"


@pytest.mark.parametrize("out", [io.StringIO(), _Terminal()], ids=["file", "terminal"])
def test_the_live_view_prints_records_and_errors_harmlessly(out: io.StringIO) -> None:
    follower = Follower(_job(), out)
    record = LogLine("INFO", "\x1b[2J\x1b[Hcleared\nstatus COMPLETED\r", None, None, 0.0, 1, "", 0)
    follower.feed(TelemetryEvent(kind="logs", cursor=Cursor(), logs=(record,)))
    change = StatusChange(2, "RUNNING", "FAILED", "why\x1b[1m", "boom\x1b]0;T\x07\nstatus COMPLETED", None)
    follower.feed(TelemetryEvent(kind="status", cursor=Cursor(), status=change))
    follower.finish()
    # The view's own "\r\x1b[K" (back to the line's start, clear it) starts a line, as "\n" does.
    lines = re.split("\r\x1b\\[K|\n", out.getvalue())
    assert not RAW.search("\n".join(lines)), lines
    assert "status COMPLETED" not in lines, lines
    assert r"[info   ] \x1b[2J\x1b[Hcleared" in lines
    assert r"          status COMPLETED\r" in lines
    assert r"status FAILED (why\x1b[1m)" in lines
    assert r"error: boom\x1b]0;T\x07" in lines
