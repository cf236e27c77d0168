"""`tp-backend --workers N` is bounded (each worker is a full backend: ~90 MB and up to 17 database connections), and
SIGTERM stops a supervisor at once, even while it is still starting its workers: it starts no more and drains the
ones it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.backend import VENV_BIN, free_port, postgres_database


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


@pytest.mark.parametrize("how", ["flag", "env"])
def test_more_workers_than_the_bound_are_refused_in_one_line(tmp_path: Path, how: str) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/tp_never_opened",
        "TP_DATA_DIR": str(tmp_path),
    }
    args = [str(VENV_BIN / "tp-backend"), "--listen", f"127.0.0.1:{free_port()}"]
    if how == "flag":
        args += ["--workers", "1000"]
    else:
        env["TP_BACKEND_WORKERS"] = "1000"
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("tp-backend: error: "), result.stderr
    assert "TP_BACKEND_WORKERS" in lines[0] and "at most" in lines[0] and "1000" in lines[0], lines[0]
    assert ("--workers" in lines[0]) == (how == "flag"), lines[0]
    assert not result.stdout, "nothing was started"


@pytest.mark.timeout(180)
def test_sigterm_while_the_workers_start_starts_no_more_and_drains_the_started(tmp_path: Path) -> None:
    workers = min(64, 4 * _cpus())
    with postgres_database() as url:
        env = {**os.environ, "DATABASE_URL": url, "TP_DATA_DIR": str(tmp_path), "TP_SHUTDOWN_GRACE_S": "1"}
        log_path = tmp_path / "backend.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [str(VENV_BIN / "tp-backend"), "--listen", f"127.0.0.1:{free_port()}", "--workers", str(workers)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 90
            while not _children(process.pid):
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, f"no worker started:\n{log_path.read_text()}"
                time.sleep(0.002)
            # Frozen while it starts its workers: the SIGTERM is pending when it runs again.
            os.kill(process.pid, signal.SIGSTOP)
            started = len(_children(process.pid))
            os.kill(process.pid, signal.SIGTERM)
            os.kill(process.pid, signal.SIGCONT)
            code = process.wait(90)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        output = log_path.read_text()
        assert code == 0, output
        stopping = re.search(r"stopping (\d+) workers", output)
        assert stopping is not None, output
        assert started < workers, f"all {workers} workers had started before the SIGTERM: cannot tell"
        assert int(stopping.group(1)) <= started + 1, f"{started} started at the SIGTERM:\n{output}"
        assert not _children(process.pid)
