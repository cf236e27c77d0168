"""`tp` as a subprocess against a real backend: bad input is a usage error (exit 2) with one clear line, a closed
stdout ends a command quietly (exit 141, as a Unix tool killed by SIGPIPE), what `--plot` wrote is what it says it
wrote, and a cut table cell says it was cut.

- every port flag of `tp up` is checked at parse time (1 to 65535), a port in use before anything is written into
  the data directory, and a data directory it cannot use is named;
- `tp jobs | head -1`, `tp show JOB | head -1`, `tp logs JOB | head -1` print nothing on stderr, exit 141, and so
  does any command started with stdout closed (`tp jobs >&-`); with stderr closed an error still exits 2;
- `tp metrics JOB --plot P`: P without a suffix gets `.png`, an existing directory (or a path ending in /) gets
  `<job id>.png` inside it, and the line printed names the file written;
- `--status` and `--level` list the valid names; `--limit` is at least 1, `--keep` at least 0;
- a malformed TP_CONFIG is named with what is wrong with it; a token that is not printable ASCII is named by its
  source, without gRPC's own log lines.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.backend import BackendProcess, free_port
from support.tp import TP, backend_env, shell_env
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.cli.stack import Stack
from trainingplatform_sdk.clients import JobsClient

LONG_NAME = "a-very-long-display-name-for-truncation"
EXACT_NAME = "twenty-chars-exactly"  # 20 characters: fits the NAME column as it is


class Seeded:
    def __init__(self, backend: BackendProcess, job_id: str, config: Path) -> None:
        self.backend = backend
        self.job_id = job_id
        self.config = config

    def env(self, **extra: str) -> dict[str, str]:
        return backend_env(self.backend, self.config, **extra)

    def tp(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([TP, *args], capture_output=True, text=True, env=env or self.env(), timeout=120, cwd=cwd)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """A backend (SQLite) with a job that has metrics and log lines, and two more whose names test the table."""
    data = tmp_path_factory.mktemp("usage")
    backend = BackendProcess(f"sqlite:///{data / 'backend.db'}", data / "backend-data")
    backend.start()
    try:
        with JobsClient(backend.address, backend.internal_token) as client:
            created = client.create_job(
                framework="timm", model="resnet10t", dataset="digits", epochs=2, dispatch=False, display_name="plotted"
            )
            for name in (LONG_NAME, EXACT_NAME):
                client.create_job(
                    framework="timm", model="resnet10t", dataset="digits", dispatch=False, display_name=name
                )
        logger = TrainingLogger(
            created.job.job_id,
            backend_address=backend.address,
            token=created.telemetry_token,
            spool_dir=data / "spool",
        )
        for step in range(20):
            logger.log_metric("train/loss", 1.0 / (step + 1), step=step)
            logger.log_message(f"line {step}")
        report = logger.close(timeout=30)
        assert report.pending_metrics == 0 and report.pending_logs == 0
        yield Seeded(backend, created.job.job_id, data / "no-config.json")
    finally:
        backend.close()


# --- 1. ports --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--backend-port", "--dashboard-port", "--timm-port", "--ultralytics-port"])
@pytest.mark.parametrize("value", ["99999", "-1", "0", "http"])
def test_up_refuses_a_port_out_of_range_at_parse_time(flag: str, value: str, tmp_path: Path):
    env = shell_env(TP_CONFIG=str(tmp_path / "config.json"))
    result = subprocess.run(
        [TP, "--data-dir", str(tmp_path / "data"), "up", flag, value],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert flag in error and "1-65535" in error, result.stderr
    assert not (tmp_path / "data").exists()  # nothing was started


@pytest.mark.parametrize("value", ["-3", "0", "two"])
def test_run_refuses_epochs_below_one_naming_the_flag(value: str, tmp_path: Path):
    """Before, 0 fell back to the command's own --epochs unsaid and -3 reached the backend, whose refusal named
    training_config.epochs, not the flag."""
    env = shell_env(TP_CONFIG=str(tmp_path / "config.json"))
    result = subprocess.run([TP, "run", "--epochs", value, "--", "true"], capture_output=True, text=True, env=env)
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert "argument --epochs:" in error and value in error, result.stderr


def test_a_stack_refuses_a_port_out_of_range_before_writing_anything(tmp_path: Path):
    with pytest.raises(ValueError, match="timm_port must be 1-65535, got 70000"):
        Stack(tmp_path / "data", timm_port=70000)
    assert not (tmp_path / "data").exists()


def test_up_on_a_port_in_use_writes_nothing_into_a_new_data_directory(tmp_path: Path):
    # The port check came after the tokens were written: a refused start left frontend_auth_token,
    # internal_auth_token and read_auth_token in the new directory, though nothing was started.
    data_dir = tmp_path / "new"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [TP, "--data-dir", str(data_dir), "up", "--backend-port", str(port), "--no-dashboard"],
            capture_output=True,
            text=True,
            env=shell_env(TP_CONFIG=str(tmp_path / "config.json")),
            timeout=60,
        )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {port} (backend" in lines[0] and "already in use" in lines[0], result.stderr
    assert not data_dir.exists(), sorted(p.name for p in data_dir.iterdir())
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize(
    ("kind", "why"), [("a file", "it is a file"), ("under a file", "Not a directory"), ("proc", "")]
)
def test_up_names_a_data_directory_it_cannot_use(kind: str, why: str, tmp_path: Path):
    # It printed the bare OSError: "error: [Errno 17] File exists: '/tmp/.../afile'".
    if kind == "a file":
        data_dir = tmp_path / "afile"
        data_dir.write_text("")
    elif kind == "under a file":
        (tmp_path / "afile").write_text("")
        data_dir = tmp_path / "afile" / "data"
    else:
        data_dir = Path("/proc/self")  # a directory no file can be created in, even by root
    env = shell_env(TP_CONFIG=str(tmp_path / "config.json"))
    result = subprocess.run(
        [TP, "--data-dir", str(data_dir), "up", "--no-dashboard", *_free_port_flags()],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: the data directory {data_dir} cannot be used: {why}"), lines
    assert lines[0].endswith("; give another one with --data-dir or TP_DATA_DIR"), lines


def _free_port_flags() -> list[str]:
    """Port flags of `tp up` naming free ports: the ports are checked first, and another stack may hold the
    defaults."""
    return ["--backend-port", str(free_port()), "--timm-port", str(free_port()), "--ultralytics-port", str(free_port())]


# --- 2. a closed stdout ----------------------------------------------------------------------------------------


def _with_closed_stdout(seeded: Seeded, *args: str) -> tuple[int, str]:
    """Runs `tp` with stdout a pipe whose reader has gone (what `| head -1` leaves once head exited)."""
    read, write = os.pipe()
    os.close(read)
    try:
        process = subprocess.Popen([TP, *args], stdout=write, stderr=subprocess.PIPE, env=seeded.env())
    finally:
        os.close(write)
    _, err = process.communicate(timeout=120)
    return process.returncode, err.decode(errors="replace")


@pytest.mark.parametrize("command", ["jobs", "show", "logs", "metrics"])
def test_a_closed_stdout_ends_the_command_quietly_with_141(seeded: Seeded, command: str):
    args = [command] if command == "jobs" else [command, seeded.job_id]
    returncode, stderr = _with_closed_stdout(seeded, *args)
    assert (returncode, stderr) == (141, "")


@pytest.mark.parametrize("command", ["jobs", "show", "logs", "metrics", "frameworks"])
def test_a_closed_stdout_descriptor_ends_the_command_quietly_with_141(seeded: Seeded, command: str):
    # `tp jobs >&-`: no stdout at all (Python's sys.stdout is None). It ended with rc 1 and
    # "AttributeError: 'NoneType' object has no attribute 'write'".
    args = [command, seeded.job_id] if command in ("show", "logs", "metrics") else [command]
    result = subprocess.run(
        ["bash", "-c", 'exec "$0" "$@" >&-', TP, *args], capture_output=True, text=True, env=seeded.env(), timeout=120
    )
    assert (result.returncode, result.stderr) == (141, "")


def test_a_closed_stderr_keeps_the_exit_status_of_the_error(seeded: Seeded):
    # `tp show ffffffff 2>&-`: the error cannot be said, but the exit status still says it (it was 1, a traceback
    # written nowhere).
    result = subprocess.run(
        ["bash", "-c", 'exec "$0" "$@" 2>&-', TP, "show", "ffffffff"],
        capture_output=True,
        text=True,
        env=seeded.env(),
        timeout=120,
    )
    assert (result.returncode, result.stdout) == (2, "")


def test_head_of_a_pipe_gets_the_first_line_and_no_error(seeded: Seeded):
    result = subprocess.run(
        ["bash", "-c", f'"{TP}" logs {seeded.job_id} | head -1; echo "status ${{PIPESTATUS[0]}}" >&2'],
        capture_output=True,
        text=True,
        env=seeded.env(),
        timeout=120,
    )
    assert result.stdout.strip().endswith("line 0")
    assert result.stderr.strip() in ("status 0", "status 141"), result.stderr


# --- 3. --plot -------------------------------------------------------------------------------------------------


def test_plot_to_an_existing_directory_writes_a_file_named_after_the_job(seeded: Seeded, tmp_path: Path):
    result = seeded.tp("metrics", seeded.job_id, "--plot", f"{tmp_path}/")
    assert result.returncode == 0, result.stderr
    written = tmp_path / f"{seeded.job_id}.png"
    assert written.read_bytes()[:4] == b"\x89PNG"
    assert f"wrote {written}\n" in result.stdout
    assert not Path(f"{tmp_path}.png").exists()


def test_plot_to_a_new_directory_ending_in_a_slash_creates_it(seeded: Seeded, tmp_path: Path):
    result = seeded.tp("metrics", seeded.job_id, "--key", "train/loss", "--plot", f"{tmp_path}/plots/")
    assert result.returncode == 0, result.stderr
    written = tmp_path / "plots" / f"{seeded.job_id}.png"
    assert written.read_bytes()[:4] == b"\x89PNG"
    assert f"wrote {written}\n" in result.stdout


def test_plot_to_a_path_without_a_suffix_gets_png(seeded: Seeded, tmp_path: Path):
    result = seeded.tp("metrics", seeded.job_id, "--plot", str(tmp_path / "curves"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert f"wrote {tmp_path / 'curves.png'}\n" in result.stdout


def test_plot_that_cannot_be_written_names_the_flag_and_the_path(seeded: Seeded, tmp_path: Path):
    (tmp_path / "taken").write_text("a file, not a directory")
    target = tmp_path / "taken" / "curves.png"
    result = seeded.tp("metrics", seeded.job_id, "--plot", str(target))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"error: --plot {target}: cannot write it: "), result.stderr
    assert "Traceback" not in result.stderr


def test_an_empty_plot_path_is_a_usage_error(seeded: Seeded):
    result = seeded.tp("metrics", seeded.job_id, "--plot", "")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--plot: must name a file or a directory" in result.stderr


def test_metrics_of_keys_the_job_lacks_names_them_plainly(seeded: Seeded):
    result = seeded.tp("metrics", seeded.job_id, "--key", "nope", "--key", "nada")
    assert result.returncode == 2
    assert f"job {seeded.job_id} has no metrics with the keys nope, nada" in result.stderr, result.stderr


def test_plot_help_says_where_the_file_goes(seeded: Seeded):
    result = seeded.tp("metrics", "--help")
    text = " ".join(result.stdout.split())
    assert ".png is added" in text and "<job id>.png" in text


# --- 4. status and level names ---------------------------------------------------------------------------------


def test_jobs_status_lists_the_valid_statuses(seeded: Seeded):
    result = seeded.tp("jobs", "--status", "bogus")
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert "--status" in error and "must be one of pending, queued, running, completed, failed, cancelled" in error
    assert "Enum" not in result.stderr and "JOB_STATUS" not in result.stderr
    fine = seeded.tp("jobs", "--status", "Pending", "--status", "QUEUED")
    assert fine.returncode == 0 and LONG_NAME[:10] in fine.stdout


def test_logs_level_lists_the_valid_levels(seeded: Seeded):
    result = seeded.tp("logs", seeded.job_id, "--level", "bogus")
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert "--level" in error and "must be one of debug, info, warning, error, critical" in error
    assert "LOG_LEVEL" not in result.stderr
    fine = seeded.tp("logs", seeded.job_id, "--level", "Info")
    assert fine.returncode == 0 and "line 19" in fine.stdout


# --- 5. --keep and --limit -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "0"])
def test_jobs_limit_below_one_is_refused(seeded: Seeded, value: str):
    result = seeded.tp("jobs", "--limit", value)
    assert result.returncode == 2 and result.stdout == ""
    assert "--limit" in result.stderr and "at least 1" in result.stderr


def test_jobs_cut_by_the_limit_says_so_on_stderr_only(seeded: Seeded):
    # The seeded backend holds 3 jobs: --limit 2 cuts the listing, --limit 3 does not.
    cut = seeded.tp("jobs", "--limit", "2")
    assert cut.returncode == 0, cut.stderr
    assert len(cut.stdout.splitlines()) == 3  # the header and 2 jobs: stdout stays the table
    assert cut.stderr == "tp: showing the 2 newest jobs; more exist (--limit N)\n"
    whole = seeded.tp("jobs", "--limit", "3")
    assert whole.returncode == 0 and whole.stderr == "" and len(whole.stdout.splitlines()) == 4


def test_jobs_search_lists_the_jobs_whose_name_id_or_model_holds_the_text(seeded: Seeded):
    found = seeded.tp("jobs", "--search", "PLOTTED")
    assert found.returncode == 0, found.stderr
    rows = found.stdout.splitlines()[1:]
    assert len(rows) == 1 and rows[0].startswith(seeded.job_id), found.stdout
    by_id = seeded.tp("jobs", "--search", seeded.job_id[:8])
    assert [row.split()[0] for row in by_id.stdout.splitlines()[1:]] == [seeded.job_id], by_id.stdout
    none = seeded.tp("jobs", "--search", "no job is named like this")
    assert none.returncode == 0 and none.stdout.splitlines()[1:] == []


def test_gc_keep_negative_is_refused_and_zero_keeps_none(seeded: Seeded, tmp_path: Path):
    result = seeded.tp("--data-dir", str(tmp_path), "gc", "--keep", "-1", "--dry-run")
    assert result.returncode == 2 and result.stdout == ""
    assert "--keep" in result.stderr and "at least 0" in result.stderr
    zero = seeded.tp("--data-dir", str(tmp_path), "gc", "--keep", "0", "--dry-run")
    assert zero.returncode == 0, zero.stderr


# --- 6. a malformed TP_CONFIG ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "wrong"),
    [
        ("{not json", "is not valid JSON"),
        ('["a", "list"]', "must hold a JSON object"),
        ('{"token_file": 3}', "token_file"),
    ],
)
def test_a_malformed_config_is_named_with_what_is_wrong(seeded: Seeded, tmp_path: Path, content: str, wrong: str):
    config = tmp_path / "config.json"
    config.write_text(content)
    result = seeded.tp("jobs", env=shell_env(TP_CONFIG=str(config)), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(config) in lines[0] and wrong in lines[0], result.stderr
    assert "no token" not in result.stderr


# --- 7. a cut cell ---------------------------------------------------------------------------------------------


def test_jobs_marks_a_cut_name(seeded: Seeded):
    result = seeded.tp("jobs")
    assert result.returncode == 0, result.stderr
    assert f"  {LONG_NAME[:19]}…  " in result.stdout
    assert f"  {EXACT_NAME}  " in result.stdout


# --- 8. a token that is not printable ASCII --------------------------------------------------------------------


def test_a_non_ascii_token_is_one_line_naming_its_source(seeded: Seeded):
    env = seeded.env(TP_AUTH_TOKEN="bad token é")
    result = seeded.tp("jobs", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "TP_AUTH_TOKEN" in lines[0] and "printable ASCII" in lines[0]
    assert "é" not in lines[0] and "bad token" not in lines[0]  # the token is a secret: not echoed


def test_a_token_file_with_a_control_character_names_the_file(seeded: Seeded, tmp_path: Path):
    (tmp_path / "frontend_auth_token").write_text("abc\x01def\n")
    env = seeded.env()
    del env["INTERNAL_AUTH_TOKEN"]
    result = seeded.tp("--data-dir", str(tmp_path), "jobs", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "frontend_auth_token") in lines[0], result.stderr
    assert "printable ASCII" in lines[0]


def test_tls_to_a_plaintext_backend_is_one_line_without_grpc_log_lines(seeded: Seeded):
    # An https:// address for a backend that speaks plaintext: the TLS handshake fails. gRPC's core printed its
    # "Handshake failed" lines on stderr before the CLI's own error.
    result = seeded.tp("--backend", f"https://{seeded.backend.address}", "jobs")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    # It said "no backend answers at https://...", though one did: say that the TLS handshake failed, and why.
    assert len(lines) == 1 and lines[0].startswith(
        f"error: the TLS handshake with https://{seeded.backend.address} "
    ), result.stderr
    assert "may not speak TLS" in lines[0] and "without https://" in lines[0], lines


# --- 9. errors that name the flag, the setting or the file -----------------------------------------------------


def _one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr)
    return lines[0]


def test_an_advanced_config_file_that_cannot_be_read_is_named(seeded: Seeded, tmp_path: Path):
    # It said "[Errno 2] No such file or directory: '/nonexistent.json'": neither the flag nor what to do.
    missing = tmp_path / "nonexistent.json"
    line = _one_line(
        seeded.tp(
            "train", "--framework", "timm", "--model", "m", "--dataset", "digits", "--advanced-config", f"@{missing}"
        )
    )
    assert "--advanced-config" in line and str(missing) in line and "No such file" in line, line
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe{}")
    line = _one_line(
        seeded.tp(
            "train", "--framework", "timm", "--model", "m", "--dataset", "digits", "--advanced-config", f"@{binary}"
        )
    )
    assert "--advanced-config" in line and str(binary) in line and "UTF-8" in line, line


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--epochs", "0"], "--epochs"),
        (["--epochs", "1", "--image-size", "-3"], "--image-size"),
        (["--epochs", "1", "--lr", "1e9"], "--lr"),
        (["--epochs", "1", "--advanced-config", '{"momentum": 2}'], "--advanced-config"),
        # The job's display name: it said "display_name contains control characters", with no flag.
        (["--name", "a\tb"], "--name"),
        (["--name", "n" * 300], "--name"),
    ],
)
def test_a_refused_job_names_the_tp_train_flag_to_change(seeded: Seeded, args: list[str], flag: str):
    # It said "spec.training.epochs must be at least 1; got 0": a field of the protos, not what to type.
    line = _one_line(seeded.tp("train", "--framework", "timm", "--model", "resnet10t", "--dataset", "digits", *args))
    assert line.endswith(f"(tp train: {flag})"), line


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--epochs", "2147483648"),
        ("--batch-size", "99999999999"),
        ("--image-size", "-2147483649"),
        ("--log-every-n-steps", "2147483648"),
    ],
)
def test_a_train_integer_beyond_int32_is_refused_naming_its_flag(seeded: Seeded, flag: str, value: str):
    # It said "error: Value out of range: 2147483648" (protobuf's words as the request was built): which flag?
    result = seeded.tp("train", "--framework", "timm", "--model", "resnet10t", "--dataset", "digits", flag, value)
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert f"argument {flag}:" in error and value in error and "must be at" in error, result.stderr


def test_jobs_search_with_a_control_character_names_the_flag(seeded: Seeded):
    # It said "text contains control characters": the request's field, not the flag.
    line = _one_line(seeded.tp("jobs", "--search", "x\x1by"))
    assert line.startswith("error: --search: ") and "control characters" in line, line


def test_an_empty_backend_flag_is_refused_not_passed_over(seeded: Seeded):
    # `tp --backend "$UNSET" jobs` quietly talked to TP_BACKEND_ADDRESS's backend (" " was refused).
    line = _one_line(seeded.tp("--backend", "", "jobs"))
    assert "--backend" in line and "empty" in line, line


def test_frameworks_write_to_a_file_that_is_not_utf8_names_the_flag_and_file(seeded: Seeded, tmp_path: Path):
    # It said "'utf-8' codec can't decode byte 0xff in position 0": which file?
    target = tmp_path / "frameworks.md"
    target.write_bytes(b"\xff\xfe")
    line = _one_line(seeded.tp("frameworks", "--format", "markdown", "--write", str(target)))
    assert f"--write {target}" in line and "UTF-8" in line, line
    assert target.read_bytes() == b"\xff\xfe"


def test_dataset_and_dataset_path_are_one_or_the_other(seeded: Seeded, tmp_path: Path):
    # Both were taken, and the path silently won, though --help says "this or --dataset-path".
    result = seeded.tp(
        "train", "--framework", "timm", "--model", "m", "--dataset", "digits", "--dataset-path", str(tmp_path)
    )
    assert result.returncode == 2, result.stderr
    assert "--dataset-path: not allowed with argument --dataset" in result.stderr, result.stderr


def test_a_token_file_that_is_not_utf8_names_the_file(seeded: Seeded, tmp_path: Path):
    # It said "'utf-8' codec can't decode byte 0xff in position 0": which file?
    (tmp_path / "frontend_auth_token").write_bytes(b"\xff\xfetoken\n")
    env = seeded.env()
    del env["INTERNAL_AUTH_TOKEN"]
    line = _one_line(seeded.tp("--data-dir", str(tmp_path), "jobs", env=env))
    assert str(tmp_path / "frontend_auth_token") in line and "UTF-8" in line, line


@pytest.mark.parametrize(
    ("address", "said"),
    [
        ("[::1", "Invalid IPv6 URL"),  # urlsplit's own words, and nothing else, were the whole error
        ("nosuchhost.invalid:1", "nosuchhost.invalid"),  # gRPC's "errors resolving ..." with no hint
    ],
)
def test_a_bad_backend_address_names_the_flag(seeded: Seeded, address: str, said: str):
    line = _one_line(seeded.tp("--backend", address, "jobs"))
    assert "--backend" in line and said in line, line


def test_a_password_in_the_backend_address_is_refused_and_never_shown(seeded: Seeded):
    # A user and password in the address are not used (the token is), and the error echoed the password.
    line = _one_line(seeded.tp("--backend", f"https://user:s3cret@{seeded.backend.address}", "jobs"))
    assert "s3cret" not in line and "--backend" in line and "user name or password" in line, line
    env = seeded.env(TP_BACKEND_ADDRESS=f"user:s3cret@{seeded.backend.address}")
    line = _one_line(seeded.tp("jobs", env=env))
    assert "s3cret" not in line and "TP_BACKEND_ADDRESS" in line, line
