"""`tp run`: your own script as a tracked job, the CLI as a subprocess against a real backend process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support.backend import BackendProcess
from support.tp import TP, backend_env
from trainingplatform_sdk.cli.run import masked_command
from trainingplatform_sdk.clients import Job, JobsClient, LogLine

OLD_SCRIPT = Path(__file__).parents[1] / "sdk" / "old_style_train.py"

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def tp_env(backend: BackendProcess, tmp_path: Path) -> dict[str, str]:
    return backend_env(backend, tmp_path / "no-config.json", TP_SPOOL_DIR=str(tmp_path / "spool"))


def tp_run(backend: BackendProcess, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TP, "run", *args],
        capture_output=True,
        text=True,
        env=tp_env(backend, tmp_path),
        timeout=180,
        cwd=tmp_path,
    )


def start_tp(env: dict[str, str], cwd: Path, *args: str) -> subprocess.Popen[str]:
    """`tp ARGS` started with its stdout and stderr piped as text, for a test that reads them while it runs."""
    return subprocess.Popen([TP, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def job_of(output: str) -> str:
    found = re.search(r"tp run: job ([0-9a-f-]{36})", output)
    assert found, output
    return found.group(1)


def read_job(backend: BackendProcess, job_id: str) -> tuple[Job, list[LogLine]]:
    with JobsClient(backend.address, backend.internal_token) as client:
        return client.get_job(job_id), list(client.logs(job_id))


def assert_nothing_left(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    assert not spool.exists() or list(spool.iterdir()) == []  # both spools removed: the job ended, all delivered


def test_success_stores_the_output_and_completes(backend: BackendProcess, tmp_path: Path) -> None:
    path = script(
        tmp_path,
        "train.py",
        """
        import os, sys
        print("hello from stdout")
        print("careful: lr is high", file=sys.stderr)
        print("ERROR: not really, just a level word", file=sys.stderr)
        for i in range(3):
            print(f"progress {i}/3", end="\\r", flush=True)
        print()
        assert os.environ["TP_JOB_ID"] == os.environ["JOB_ID"] and os.environ["JOB_TELEMETRY_TOKEN"]
        assert "INTERNAL_AUTH_TOKEN" not in os.environ and os.environ["BACKEND_API_URL"]
        print("job", os.environ["TP_JOB_ID"])
        """,
    )
    result = tp_run(backend, tmp_path, "--name", "my run", "--", sys.executable, path)
    assert result.returncode == 0, result.stderr
    job_id = job_of(result.stderr)
    assert "hello from stdout" in result.stdout and f"job {job_id}" in result.stdout  # echoed
    assert "careful: lr is high" in result.stderr
    assert f"job {job_id}: COMPLETED (exit code 0)" in result.stderr
    job, logs = read_job(backend, job_id)
    assert job.status == "COMPLETED" and job.display_name == "my run"
    assert (job.framework, job.model, job.dataset) == ("custom", "train.py", "custom")
    assert backend.status_events(job_id) == ["PENDING", "RUNNING", "COMPLETED"]
    lines = [(line.level, line.message) for line in logs]
    assert ("INFO", "hello from stdout") in lines
    assert ("WARNING", "careful: lr is high") in lines
    assert ("ERROR", "ERROR: not really, just a level word") in lines
    assert ("INFO", "progress 2/3") in lines and ("INFO", "progress 0/3") not in lines  # a redrawn line, once
    assert_nothing_left(tmp_path)


def test_failure_passes_the_exit_code_and_fails_with_the_last_stderr_lines(
    backend: BackendProcess, tmp_path: Path
) -> None:
    path = script(
        tmp_path,
        "crash.py",
        """
        import sys
        print("loading data")
        def load():
            raise RuntimeError("dataset not found: /nope")
        try:
            load()
        except RuntimeError as error:
            print("fatal:", error, file=sys.stderr)
            sys.exit(3)
        """,
    )
    result = tp_run(backend, tmp_path, "--", sys.executable, path)
    assert result.returncode == 3
    job_id = job_of(result.stderr)
    job, logs = read_job(backend, job_id)
    assert job.status == "FAILED"
    assert "fatal: dataset not found: /nope" in job.error_message and "exit code 3" in job.error_message
    assert backend.status_events(job_id) == ["PENDING", "RUNNING", "FAILED"]

    traceback = script(tmp_path, "raises.py", 'raise ValueError("bad value in config")\n')
    result = tp_run(backend, tmp_path, "--", sys.executable, traceback)
    assert result.returncode == 1
    job, logs = read_job(backend, job_of(result.stderr))
    assert job.status == "FAILED" and "ValueError: bad value in config" in job.error_message
    assert job.error_detail.startswith("Traceback (most recent call last)")
    assert [line.level for line in logs] == ["ERROR"] * len(logs) and len(logs) >= 3

    missing = tp_run(backend, tmp_path, "--", str(tmp_path / "no-such-program"))
    assert missing.returncode == 127
    job, _ = read_job(backend, job_of(missing.stderr))
    assert job.status == "FAILED" and job.error_message.startswith("cannot run")
    assert_nothing_left(tmp_path)


def test_a_traceback_fails_the_job_with_its_whole_exception_not_its_last_line(
    backend: BackendProcess, tmp_path: Path
) -> None:
    """The exception of the last traceback (chained ones come first), its message's lines joined on one line."""
    path = script(
        tmp_path,
        "raises.py",
        """
        def load():
            raise KeyError("config")
        try:
            load()
        except KeyError:
            raise ValueError("boom here\\nsecond line")
        """,
    )
    result = tp_run(backend, tmp_path, "--", sys.executable, path)
    assert result.returncode == 1
    job, _ = read_job(backend, job_of(result.stderr))
    assert job.status == "FAILED"
    assert job.error_message == "ValueError: boom here second line (exit code 1)"
    assert job.error_detail.startswith("Traceback (most recent call last)")  # the whole tail, as before
    assert "KeyError: 'config'" in job.error_detail and job.error_detail.endswith("ValueError: boom here\nsecond line")

    # A traceback longer than the detail's 20 lines (a deep stack, as torch's are) keeps its whole exception too.
    deep = script(
        tmp_path,
        "deep.py",
        """
        nl = chr(10)
        chain = nl.join(f"def f{i}(): f{i + 1}()" for i in range(30))
        chain += nl + "def f30(): raise RuntimeError('shape mismatch' + chr(10) + 'expected 3, got 4')" + nl + "f0()"
        exec(compile(chain, "chain.py", "exec"))  # 31 frames of one line each: no source to show
        """,
    )
    result = tp_run(backend, tmp_path, "--", sys.executable, deep)
    job, _ = read_job(backend, job_of(result.stderr))
    assert job.error_message == "RuntimeError: shape mismatch expected 3, got 4 (exit code 1)"
    assert len(job.error_detail.splitlines()) == 20  # the detail stays the last 20 lines


def test_ctrl_c_reaches_the_script_cancels_the_job_and_leaves_no_process(
    backend: BackendProcess, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    path = script(
        tmp_path,
        "long.py",
        f"""
        import os, subprocess, sys, time
        helper = subprocess.Popen(["sleep", "600"])
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{helper.pid}}")
        try:  # "ready" inside: a SIGINT that lands as print() returns is still caught here
            print("ready", flush=True)
            while True:
                time.sleep(0.1)
        except KeyboardInterrupt:
            print("got SIGINT, stopping", flush=True)
            raise
        """,
    )
    process = start_tp(tp_env(backend, tmp_path), tmp_path, "run", "--", sys.executable, path)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        child, helper = (int(pid) for pid in pids.read_text().split())
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "got SIGINT, stopping" in stdout, stderr
    job_id = job_of(stderr)
    job, logs = read_job(backend, job_id)
    assert job.status == "CANCELLED"
    assert "got SIGINT, stopping" in [line.message for line in logs]
    assert any("KeyboardInterrupt" in line.message for line in logs)
    for pid in (child, helper):  # the script and what it started are gone
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), pid
    assert_nothing_left(tmp_path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_the_old_guides_script_under_tp_run(backend: BackendProcess, tmp_path: Path) -> None:
    result = tp_run(backend, tmp_path, "--name", "old", "--", sys.executable, str(OLD_SCRIPT), "--epochs", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    job_id = job_of(result.stderr)
    assert "[info] Starting training: tiny-mlp" in result.stdout  # relayed records are echoed
    job, logs = read_job(backend, job_id)
    assert job.status == "COMPLETED" and job.epochs == 2  # the command's --epochs
    assert backend.status_events(job_id) == ["PENDING", "RUNNING", "COMPLETED"]
    assert [line.message for line in logs if line.epoch is not None] == [
        line.message for line in logs if line.message.startswith("Epoch ")
    ]
    assert [line.epoch for line in logs if line.message.startswith("Epoch ")] == [0, 1]
    messages = [line.message for line in logs]
    assert messages[0] == "Starting training: tiny-mlp" and messages[-1] == "training finished"
    assert len(backend.log_sequences(job_id)) == len(logs) == len(set(backend.log_sequences(job_id)))
    assert len(backend.metric_rows(job_id)) == 8  # metrics go straight from the script
    # Two writers by design (the script's metrics, tp run's logs), neither taken for a second logger of the job.
    assert "another logger is writing" not in result.stdout + result.stderr + "".join(messages)
    assert_nothing_left(tmp_path)


def test_a_final_status_set_by_the_script_is_kept(backend: BackendProcess, tmp_path: Path) -> None:
    # The old script fails the job itself with its error, then raises: the script's error is kept.
    result = tp_run(backend, tmp_path, "--", sys.executable, str(OLD_SCRIPT), "--fail-at-epoch", "1")
    assert result.returncode == 1
    job_id = job_of(result.stderr)
    job, logs = read_job(backend, job_id)
    assert job.status == "FAILED" and job.error_message == "loss diverged at epoch 1"
    assert backend.status_events(job_id) == ["PENDING", "RUNNING", "FAILED"]
    assert any(line.message == "RuntimeError: loss diverged at epoch 1" for line in logs)  # stored before FAILED

    # A script that exits 0 but reports FAILED keeps FAILED.
    path = script(
        tmp_path,
        "judge.py",
        """
        from trainingplatform_sdk import TrainingLogger
        logger = TrainingLogger()
        logger.log_metric("val/accuracy", 0.1, epoch=0)
        logger.update_status("failed", error="accuracy 0.1 is below the bar")
        print("done")
        """,
    )
    result = tp_run(backend, tmp_path, "--", sys.executable, path)
    assert result.returncode == 0, result.stderr
    job_id = job_of(result.stderr)
    job, _ = read_job(backend, job_id)
    assert job.status == "FAILED" and job.error_message == "accuracy 0.1 is below the bar"
    assert f"job {job_id}: FAILED (exit code 0)" in result.stderr
    assert_nothing_left(tmp_path)


def run_and_cancel(backend: BackendProcess, tmp_path: Path, path: str) -> tuple[subprocess.Popen[str], str, str, str]:
    """`tp run` of the script at `path`, which prints "ready" when it runs; cancels the job then, with the internal
    token (as `tp cancel` would); returns the ended process, the job id, and what tp run wrote to stdout and stderr."""
    process = start_tp(tp_env(backend, tmp_path), tmp_path, "run", "--", sys.executable, path)
    try:
        assert process.stdout is not None and process.stderr is not None
        first = ""
        while "tp run: job" not in first:  # tp run's first line names the job
            first = process.stderr.readline()
            assert first, "tp run ended before naming its job"
        job_id = job_of(first)
        assert process.stdout.readline().strip() == "ready"
        with JobsClient(backend.address, backend.internal_token) as client:
            assert client.cancel_job(job_id, reason="enough").status == "CANCELLED"
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return process, job_id, stdout, stderr


def test_tp_cancel_stops_the_script(backend: BackendProcess, tmp_path: Path) -> None:
    path = script(
        tmp_path,
        "forever.py",
        """
        import time
        try:  # "ready" inside: a SIGINT that lands as print() returns is still caught here
            print("ready", flush=True)
            while True:
                time.sleep(0.1)
        except KeyboardInterrupt:
            print("stopping on request", flush=True)
            raise SystemExit(4)
        """,
    )
    process, job_id, stdout, stderr = run_and_cancel(backend, tmp_path, path)
    assert process.returncode == 4, stderr
    assert "stopping on request" in stdout and f"job {job_id}: CANCELLED" in stderr
    job, logs = read_job(backend, job_id)
    assert job.status == "CANCELLED" and "stopping on request" in [line.message for line in logs]
    assert_nothing_left(tmp_path)


def test_a_job_cancelled_while_a_script_that_exits_0_ran_stays_cancelled_after_a_refused_call(
    backend: BackendProcess, tmp_path: Path
) -> None:
    """A script that catches the forwarded Ctrl-C and exits 0 (saves its checkpoint, say) after the job was
    cancelled: `tp run` asks the backend and reports CANCELLED, also when one of the script's calls was refused for
    good during the run (then `flush()` says False, which is no sign that the backend does not answer)."""
    path = script(
        tmp_path,
        "polite.py",
        """
        import time
        from trainingplatform_sdk import TrainingLogger
        logger = TrainingLogger()
        logger.update_status("queued")  # the job is RUNNING: refused for good
        logger.flush(30)
        try:
            print("ready", flush=True)
            while True:
                time.sleep(0.1)
        except KeyboardInterrupt:
            print("checkpoint saved", flush=True)
        """,
    )
    process, job_id, stdout, stderr = run_and_cancel(backend, tmp_path, path)
    assert process.returncode == 0, stderr
    assert "checkpoint saved" in stdout
    assert f"job {job_id}: CANCELLED" in stderr, stderr
    job, _ = read_job(backend, job_id)
    assert job.status == "CANCELLED"


def test_no_token_but_the_jobs_own_reaches_the_script(backend: BackendProcess, tmp_path: Path) -> None:
    """The backend's front-end and read tokens and the dashboard's login token, set where `tp run` starts, could
    create, cancel and read every job: the script (arbitrary model code) gets none of them, only its job's token."""
    path = script(
        tmp_path,
        "train.py",
        """
        import os
        print("tokens:", sorted(name for name in os.environ if "TOKEN" in name))
        """,
    )
    env = {
        **tp_env(backend, tmp_path),
        "FRONTEND_AUTH_TOKEN": "front-end-secret",
        "READ_AUTH_TOKEN": "read-secret",
        "TP_DASHBOARD_TOKEN": "dashboard-secret",
    }
    result = subprocess.run(
        [TP, "run", "--", sys.executable, path], capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "tokens: ['JOB_TELEMETRY_TOKEN']" in result.stdout, result.stdout


def test_a_multi_line_command_gets_a_default_name_and_a_name_with_a_line_break_is_named(
    backend: BackendProcess, tmp_path: Path
) -> None:
    # The default name is the command: a line break in it failed the run with "display_name contains control
    # characters" (exit 2) though the user gave no name. It is a space in the name now.
    result = tp_run(backend, tmp_path, "--", "sh", "-c", "echo a\necho b")
    assert result.returncode == 0, result.stderr
    job, _ = read_job(backend, job_of(result.stderr))
    assert job.display_name == "sh -c 'echo a echo b'", job.display_name
    assert job.status == "COMPLETED"

    named = tp_run(backend, tmp_path, "--name", "two\nlines", "--", "true")
    assert named.returncode == 2, named.stderr
    lines = named.stderr.strip().splitlines()
    assert len(lines) == 1 and "--name" in lines[0] and "control character" in lines[0], named.stderr


def test_secret_arguments_are_masked_in_the_default_name_and_the_status_reason(
    backend: BackendProcess, tmp_path: Path
) -> None:
    # The default name and the RUNNING reason were the whole command line: a `--api-key SECRET` given to the script
    # was stored in the backend and shown by `tp jobs`, `tp show` and the dashboard to everyone who reads jobs.
    path = script(tmp_path, "train.py", "import sys; print('args:', sys.argv[1:])")
    command = ["env", "HF_TOKEN=env-secret", sys.executable, path, "--api-key", "flag-secret", "--lr", "0.1"]
    result = tp_run(backend, tmp_path, "--", *command, "--db=postgres://me:url-secret@db/x")
    assert result.returncode == 0, result.stderr
    # The script gets the real arguments.
    assert "'--api-key', 'flag-secret', '--lr', '0.1', '--db=postgres://me:url-secret@db/x'" in result.stdout
    job_id = job_of(result.stderr)
    job, _ = read_job(backend, job_id)
    expected = f"env HF_TOKEN=*** {sys.executable} {path} --api-key *** --lr 0.1 --db=postgres://me:***@db/x"
    assert job.display_name == expected[:200], job.display_name
    reasons = [event.reason for event in job.status_events]
    assert f"tp run: {expected}" in reasons, reasons
    stored = " ".join([job.display_name, *reasons, result.stderr])
    assert "secret" not in stored.replace(f"{tmp_path}", ""), stored


@pytest.mark.parametrize(
    ("command", "masked"),
    [
        (["python", "t.py", "--api-key", "X", "--epochs", "3"], "python t.py --api-key *** --epochs 3"),
        (["python", "t.py", "--API_KEY=X", "--token", "Y"], "python t.py --API_KEY=*** --token ***"),
        (["t", "--password=X", "--passwd", "Y", "--secret", "Z"], "t --password=*** --passwd *** --secret ***"),
        (["t", "--auth-header", "X", "--Authorization=Y"], "t --auth-header *** --Authorization=***"),
        (["t", "--credentials", "X", "--credential=Y"], "t --credentials *** --credential=***"),
        (
            ["t", "--access-key", "X", "--private-key=Y", "--apiKey", "Z"],
            "t --access-key *** --private-key=*** --apiKey ***",
        ),
        (["t", "--hf-token", "--epochs", "2"], "t --hf-token --epochs 2"),  # no value: the next flag stays
        (["env", "AWS_SECRET_ACCESS_KEY=X", "python", "t.py"], "env AWS_SECRET_ACCESS_KEY=*** python t.py"),
        (["t", "model.api_key=X", "lr=0.1"], "t model.api_key=*** lr=0.1"),
        (["t", "--db", "postgresql://u:X@host:5432/db"], "t --db postgresql://u:***@host:5432/db"),
        (["t", "--monkey", "X", "--keyboard", "Y", "--tokenizer", "Z"], "t --monkey X --keyboard Y --tokenizer Z"),
        (["t", "--author", "Ada", "--authors=A,B", "AUTHOR=Ada"], "t --author Ada --authors=A,B AUTHOR=Ada"),
        (["t", "--auth", "X", "--authtoken=Y"], "t --auth *** --authtoken=***"),
        (["sh", "-c", "python t.py --token X\necho done"], "sh -c 'python t.py --token ***\necho done'"),
        (["t", "--name", "a b", "--api-key="], "t --name 'a b' --api-key="),
    ],
)
def test_masked_command_hides_the_values_of_secret_looking_arguments(
    database_url: str, command: list[str], masked: str
) -> None:
    assert masked_command(command) == masked


def test_help_says_that_the_command_reads_an_empty_stdin_on_a_terminal(database_url: str) -> None:
    # From a terminal the command gets an empty stdin (input(), breakpoint() and pdb end with EOFError): in a
    # process group of its own, which keeps Ctrl-C going through tp run, reading the terminal would stop it.
    result = subprocess.run([TP, "run", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "empty stdin" in text and "EOFError" in text and "< input.txt" in text, text
    assert "secret-looking arguments" in text and "--api-key X" in text and "as ***" in text, text
