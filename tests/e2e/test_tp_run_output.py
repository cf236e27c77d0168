"""`tp run` on the terminal: the command's output echoed byte for byte, and relayed lines never merged into a
partial line of the command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.backend import BackendProcess
from test_tp_run import TP, job_of, read_job, script, tp_env

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def test_stdout_is_echoed_byte_for_byte(backend: BackendProcess, tmp_path: Path) -> None:
    # A line longer than tp run's line limit (stored in pieces), a progress bar, and a last line without newline.
    body = 'import sys; sys.stdout.write("x" * 2_000_000 + "\\nstep 1\\rstep 2\\nno newline at the end")'
    expected = b"x" * 2_000_000 + b"\nstep 1\rstep 2\nno newline at the end"
    result = subprocess.run(
        [TP, "run", "--", sys.executable, "-c", body],
        capture_output=True,
        env=tp_env(backend, tmp_path),
        timeout=180,
        cwd=tmp_path,
    )
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr
    assert len(result.stdout) == len(expected) and result.stdout == expected
    job, logs = read_job(backend, job_of(stderr))
    assert job.status == "COMPLETED"
    messages = [line.message for line in logs]
    assert messages[0].startswith("x" * 1000) and "truncated" in messages[0]  # stored at most 16 KiB a record
    assert messages[-2:] == ["step 2", "no newline at the end"]


def test_a_relayed_line_is_not_merged_into_a_partial_line(backend: BackendProcess, tmp_path: Path) -> None:
    path = script(
        tmp_path,
        "partial.py",
        """
        import sys, time
        from trainingplatform_sdk import TrainingLogger
        logger = TrainingLogger()
        for epoch in range(3):
            sys.stdout.write(f"epoch {epoch} done")  # print() writes its newline apart, as here
            sys.stdout.flush()
            logger.log_message(f"relayed {epoch}")
            time.sleep(0.1)
            sys.stdout.write("\\n")
            sys.stdout.flush()
        """,
    )
    result = subprocess.run(
        [TP, "run", "--", sys.executable, path],
        capture_output=True,
        text=True,
        env=tp_env(backend, tmp_path),
        timeout=180,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sorted(lines) == sorted([f"epoch {i} done" for i in range(3)] + [f"[info] relayed {i}" for i in range(3)])
