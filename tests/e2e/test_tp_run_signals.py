"""`tp run` and Ctrl-C: a second one sends SIGTERM, a third SIGKILL, to a script that ignores SIGINT."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import threading
from pathlib import Path

import pytest
from support.backend import BackendProcess
from test_tp_run import assert_nothing_left, job_of, read_job, script, start_tp, tp_env

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def test_ctrl_c_again_sends_sigterm_then_sigkill(backend: BackendProcess, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    path = script(
        tmp_path,
        "stubborn.py",
        f"""
        import os, signal, sys, time
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda *_: print("got SIGTERM, going on", flush=True))
        print("ready", flush=True)
        while True:
            time.sleep(0.05)
        """,
    )
    process = start_tp(tp_env(backend, tmp_path), tmp_path, "run", "--", sys.executable, path)
    said: list[str] = []
    lines: queue.Queue[str] = queue.Queue()
    assert process.stderr is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True)
    reader.start()

    def next_line_with(word: str) -> str:
        while True:
            try:
                line = lines.get(timeout=20)
            except queue.Empty:
                raise AssertionError(f"tp run said no line with {word!r} in 20 s: {said}") from None
            said.append(line)
            if word in line:
                return line

    try:
        assert process.stdout is not None
        job_id = job_of(next_line_with("tp run: job"))
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGINT)
        assert "SIGINT" in next_line_with("forwarded")
        process.send_signal(signal.SIGINT)
        assert "SIGTERM" in next_line_with("SIGTERM")
        assert process.stdout.readline().strip() == "got SIGTERM, going on"
        process.send_signal(signal.SIGINT)
        assert "SIGKILL" in next_line_with("SIGKILL")
        process.wait(timeout=60)
    finally:
        if process.returncode is None:  # the test failed early: tp run and the script it may leave go
            process.kill()
            process.wait()
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
    reader.join(10)
    while not lines.empty():
        said.append(lines.get())
    stderr = "".join(said)
    assert process.returncode == 128 + signal.SIGKILL, stderr
    assert f"job {job_id}: CANCELLED" in stderr
    job, _ = read_job(backend, job_id)
    assert job.status == "CANCELLED"
    assert_nothing_left(tmp_path)
