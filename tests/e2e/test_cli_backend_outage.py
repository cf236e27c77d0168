"""`tp watch` and `tp logs -f` say when the backend goes away under them: one line on stderr that it is
unreachable and that they keep retrying, one when it is back; stdout stays the job's. They go on where they were
once it is back, and end with the job. On a terminal a notice has a line of its own: it clears the progress bar
drawn in place (it was glued onto the bar), which is drawn again after it.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support.backend import BackendProcess
from support.tp import TP, backend_env
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.clients import JobsClient


class _Lines:
    """The lines a stream gives, read as they come."""

    def __init__(self, stream) -> None:  # type: ignore[no-untyped-def]
        self.lines: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines if text in line]
            if found:
                return found
            time.sleep(0.1)
        raise AssertionError(f"no line with {text!r} within {timeout}s: {self.lines}")


@pytest.mark.parametrize("command", [["watch"], ["logs", "--follow"]], ids=["watch", "logs-f"])
def test_a_follow_command_says_once_that_the_backend_is_gone_and_when_it_is_back(
    tmp_path: Path, command: list[str]
) -> None:
    backend = BackendProcess(f"sqlite:///{tmp_path / 'backend.db'}", tmp_path / "backend-data")
    backend.start()
    try:
        with JobsClient(backend.address, backend.internal_token) as client:
            created = client.create_job(framework="timm", model="resnet10t", dataset="digits", dispatch=False)
        job_id = created.job.job_id
        logger = TrainingLogger(
            job_id, backend_address=backend.address, token=created.telemetry_token, spool_dir=tmp_path / "spool"
        )
        logger.update_status("running")
        logger.log_message("before")
        logger.flush(30)
        env = backend_env(backend, tmp_path / "none.json")
        process = subprocess.Popen(
            [TP, *command, job_id], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        out, err = _Lines(process.stdout), _Lines(process.stderr)
        try:
            if command[0] == "logs":
                out.wait_for("before", 30)
            else:
                time.sleep(3)  # subscribed: a running job's view prints nothing until something happens
            backend.kill()
            gone = err.wait_for("unreachable", 15)
            assert "retrying" in gone[0], gone
            time.sleep(8)  # several failed retries: still one line
            assert len([line for line in err.lines if "unreachable" in line]) == 1, err.lines
            backend.start()
            err.wait_for("back", 30)
            logger.log_message("after")
            logger.update_status("completed")
            logger.close(timeout=30)
            assert process.wait(timeout=60) == 0, err.lines
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        if command[0] == "logs":
            out.wait_for("after", 5)
        assert not any("unreachable" in line or "back" in line for line in out.lines), out.lines
    finally:
        backend.close()


class _Terminal:
    """A pseudo-terminal for a command's stdout and stderr, and what the command writes to it, read as it comes."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.data = b""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # the command and this test closed their ends
                return
            if not chunk:
                return
            self.data += chunk

    def wait_for(self, pattern: bytes, timeout: float) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.data)
            if found:
                return found
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} within {timeout}s: {self.data!r}")


def test_on_a_terminal_a_notice_clears_the_progress_bar_which_is_drawn_again_after_it(tmp_path: Path) -> None:
    backend = BackendProcess(f"sqlite:///{tmp_path / 'backend.db'}", tmp_path / "backend-data")
    backend.start()
    terminal = _Terminal()
    try:
        with JobsClient(backend.address, backend.internal_token) as client:
            created = client.create_job(framework="timm", model="resnet10t", dataset="digits", dispatch=False)
        job_id = created.job.job_id
        logger = TrainingLogger(
            job_id, backend_address=backend.address, token=created.telemetry_token, spool_dir=tmp_path / "spool"
        )
        logger.update_status("running")
        logger.log_metric("train/loss", 0.5, step=3)
        logger.flush(30)
        env = backend_env(backend, tmp_path / "none.json")
        process = subprocess.Popen(
            [TP, "watch", job_id], stdin=subprocess.DEVNULL, stdout=terminal.slave, stderr=terminal.slave, env=env
        )
        os.close(terminal.slave)
        try:
            terminal.wait_for(rb"step 3 train/loss 0\.5", 30)  # the bar, drawn in place
            backend.kill()
            # Each notice clears the bar's line (a pty writes "\n" as "\r\n"), and the bar is drawn again under it.
            cleared = rb"0\.5\r\x1b\[K"
            bar = rb"\r?\n\r\x1b\[Kepoch 1/1 \[\.+\]   0% step 3 train/loss 0\.5"
            terminal.wait_for(cleared + rb"tp: the backend at \S+ is unreachable; retrying[^\r\n]*" + bar, 15)
            backend.start()
            terminal.wait_for(cleared + rb"tp: the backend at \S+ is back; following again" + bar, 30)
            logger.update_status("completed")
            logger.close(timeout=30)
            assert process.wait(timeout=60) == 0, terminal.data
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    finally:
        os.close(terminal.master)
        backend.close()
