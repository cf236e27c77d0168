"""A whole session as a user lives it (issue 15, done-when): `tp up`, two jobs with `tp train` (one watched to the
end, one left running after Ctrl-C on `tp train`), a script of one's own with `tp run`, then Ctrl-C on `tp up`.

Afterwards nothing of the session is left: no process (found by a marker in the environment every process of
the session inherits, so grandchildren such as a training subprocess or its data-loader workers count too) and
nothing in the session's temporary directory (TMPDIR points at a directory of the test's own).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

from test_cli_paths import TP, TRAIN, Up, alive, clean_env, start_up, stop_up


def marked_processes(marker: str) -> dict[int, str]:
    """Live processes whose environment holds TP_SESSION_MARK=<marker>, with their command lines."""
    wanted = f"TP_SESSION_MARK={marker}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if wanted in environ.split(b"\0") and alive(int(entry.name)):
            found[int(entry.name)] = cmdline.strip()
    return found


def session_tp(up: Up, env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TP, *args],
        capture_output=True,
        text=True,
        env=clean_env(up.config, **env),
        cwd=up.config.parent,
        timeout=timeout,
    )


def test_a_whole_session_leaves_no_process_and_no_temporary_directory(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {"TMPDIR": str(temp), "TP_SESSION_MARK": marker}
    home = tmp_path / "session"
    home.mkdir()
    up = start_up(home, dashboard=True, extra_env=env)
    watching: subprocess.Popen[str] | None = None
    try:
        assert up.ready.wait(180), up.text
        assert up.process.poll() is None, up.text

        # 1. A job watched to the end.
        first = session_tp(up, env, *TRAIN, "--epochs", "1", "--name", "session-one")
        assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]

        # 2. A longer job, watched, then Ctrl-C on `tp train`: the job goes on.
        watching = subprocess.Popen(
            [TP, *TRAIN, "--epochs", "50", "--name", "session-two"],
            env=clean_env(up.config, **env),
            cwd=up.config.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert watching.stdout is not None
        seen = []
        for line in watching.stdout:
            seen.append(line)
            if re.search(r"epoch\s+1\b", line, re.I) or "%" in line:
                break
        watching.send_signal(signal.SIGINT)
        out = "".join(seen) + watching.communicate(timeout=60)[0]
        assert watching.returncode == 130, out
        second = re.search(r"^job ([0-9a-f-]{36}) ", out, re.M)
        assert second and "goes on" in out, out
        shown = session_tp(up, env, "show", second.group(1)[:8])
        assert shown.returncode == 0 and "RUNNING" in shown.stdout, shown.stdout + shown.stderr

        # 3. One's own script as a job.
        script = home / "my_train.py"
        script.write_text(
            textwrap.dedent(
                """
                from trainingplatform_sdk import TrainingLogger
                logger = TrainingLogger()
                for step in range(20):
                    logger.log_metric("train/loss", 1.0 / (step + 1), step=step)
                print("my script finished")
                logger.close()
                """
            )
        )
        ran = session_tp(up, env, "run", "--name", "session-script", "--", sys.executable, str(script))
        assert ran.returncode == 0, ran.stdout + ran.stderr

        # 4. Ctrl-C on `tp up`, with the second job still training.
        assert marked_processes(marker), "the marker reaches the session's processes"
        os.killpg(up.process.pid, signal.SIGINT)
        assert up.process.wait(120) == 0, up.text
        deadline = time.monotonic() + 60
        while (left := marked_processes(marker)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"processes left after the session: {left}\n{up.text}"
        leftovers = sorted(str(path.relative_to(temp)) for path in temp.rglob("*"))
        assert leftovers == [], f"temporary files left after the session: {leftovers[:20]}"
    finally:
        if watching is not None and watching.poll() is None:
            watching.kill()
        stop_up(up)
        for pid in marked_processes(marker):
            os.kill(pid, signal.SIGKILL)
