"""`tp up`, `tp train` and friends without surprises (issue 15, part 3): the CLI as a subprocess against real
services started by `tp up` itself.

- whatever kills `tp up` (a closed pipe, SIGINT, SIGTERM, SIGHUP, SIGKILL), no service is left running;
- one listener per port: a busy port fails `tp up` in one line naming it, and a service that cannot start is
  named with its reason and what was started is stopped;
- every command finds the backend and its token through the per-user config `tp up` writes, from any directory;
  a backend that does not answer and a refused token are one line each, with a hint or the token's source;
- job ids resolve by unique prefix; display names show; Ctrl-C on `tp train` leaves the job running and says how
  to watch or cancel it; the live view ends at 100% with each epoch once; a cancelled job's summary comes after
  its last logs; finished jobs show their epoch summaries; `--plot` draws one panel per family;
- checkpoints are stored once (hard links), `tp gc` prunes ended jobs' files; `--help` shows defaults.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.backend import free_port
from support.certs import make_pki
from support.tp import TP, shell_env
from trainingplatform_sdk.clients import JobsClient


def clean_env(config: Path, **extra: str) -> dict[str, str]:
    """What a fresh shell has, with the test's own per-user config."""
    return shell_env(TP_CONFIG=str(config), **extra)


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def listening_processes(ports: list[int]) -> list[int]:
    """Pids whose command line holds `--listen 127.0.0.1:<port>` for one of `ports`."""
    wanted = {f"127.0.0.1:{port}" for port in ports}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.decode(errors="replace") in wanted for arg in args) and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@dataclass
class Up:
    """A `tp up` subprocess and what it printed."""

    process: subprocess.Popen[str]
    ports: list[int]
    data_dir: Path
    config: Path
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"


def start_up(
    tmp: Path, *, dashboard: bool = False, extra_env: dict[str, str] | None = None, ports: list[int] | None = None
) -> Up:
    ports = ports or [free_port() for _ in range(4)]
    config = tmp / "config" / "config.json"
    command = [
        TP,
        "--data-dir",
        str(tmp / "data"),
        "up",
        "--backend-port",
        str(ports[0]),
        "--timm-port",
        str(ports[1]),
        "--ultralytics-port",
        str(ports[2]),
    ]
    command += ["--dashboard-port", str(ports[3])] if dashboard else ["--no-dashboard"]
    process = subprocess.Popen(
        command,
        env=clean_env(config, **(extra_env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        cwd=tmp,
    )
    up = Up(process, ports, tmp / "data", config)

    def read() -> None:
        assert process.stdout is not None
        try:
            for line in process.stdout:
                up.lines.append(line)
                match = re.match(r"\s+(\S+)\s+127\.0\.0\.1:\d+\s+\(pid (\d+),", line)
                if match:
                    up.pids[match.group(1)] = int(match.group(2))
                if "Ctrl-C stops everything" in line:
                    up.ready.set()
                    return  # the test closes the pipe now
        except (OSError, ValueError):
            pass
        up.ready.set()

    threading.Thread(target=read, daemon=True).start()
    return up


def stop_up(up: Up) -> None:
    if up.process.poll() is None:
        os.killpg(up.process.pid, signal.SIGINT)
        try:
            up.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.process.pid, signal.SIGKILL)
            up.process.wait()
    for pid in up.pids.values():
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def wait_gone(pids: list[int], timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in pids if alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


# --- 1. no orphans --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["pipe", "SIGINT", "SIGTERM", "SIGHUP", "SIGKILL"])
def test_whatever_ends_tp_up_its_services_stop(how: str, tmp_path: Path) -> None:
    """`tp up | tee up.log`, then tee ends (the pipe closes) and `tp up` gets a signal, or none (`pipe`): every
    service it started is gone; the dashboard too (started in the SIGKILL case)."""
    up = start_up(tmp_path, dashboard=how == "SIGKILL")
    try:
        assert up.ready.wait(180), up.text
        assert up.process.poll() is None, up.text
        expected = {"backend", "trainer-timm", "trainer-ultralytics"} | ({"dashboard"} if how == "SIGKILL" else set())
        assert set(up.pids) == expected, up.text
        assert all(alive(pid) for pid in up.pids.values())
        assert up.process.stdout is not None
        up.process.stdout.close()  # the reader went away (tee ended on Ctrl-C)
        if how != "pipe":
            os.kill(up.process.pid, getattr(signal, how))
        code = up.process.wait(90)
        left = wait_gone(list(up.pids.values()))
        assert not left, f"{how}: services still running after tp up ended: {left}\n{up.text}"
        if how == "SIGKILL":
            assert code == -signal.SIGKILL
        else:
            assert code == 0, (how, code, up.text)
        assert not listening_processes(up.ports)
    finally:
        stop_up(up)


# --- 2. one listener per port ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """One `tp up` (no dashboard) for the tests below, with its own per-user config."""
    up = start_up(tmp_path_factory.mktemp("up"))
    assert up.ready.wait(180), up.text
    assert up.process.poll() is None, up.text
    yield up
    stop_up(up)


def tp(
    stack: Up, *args: str, cwd: Path | None = None, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    """`tp` as a user in another directory would run it: only the per-user config says where the backend is."""
    return subprocess.run(
        [TP, *args],
        capture_output=True,
        text=True,
        env=clean_env(stack.config, **env),
        cwd=cwd or stack.config.parent,
        timeout=timeout,
    )


def test_a_second_tp_up_on_the_same_ports_fails_naming_the_busy_port(stack: Up, tmp_path: Path) -> None:
    second = subprocess.run(
        [
            TP,
            "--data-dir",
            str(tmp_path / "data"),
            "up",
            "--no-dashboard",
            "--backend-port",
            str(stack.ports[0]),
            "--timm-port",
            str(free_port()),
            "--ultralytics-port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        env=clean_env(tmp_path / "config.json"),
        timeout=120,
    )
    assert second.returncode == 2, second.stdout + second.stderr
    errors = second.stderr.strip().splitlines()
    assert len(errors) == 1 and f"port {stack.ports[0]}" in errors[0] and "in use" in errors[0], second.stderr
    assert "Traceback" not in second.stderr
    assert not (tmp_path / "config.json").exists()
    # The first stack still answers alone, with its own token.
    assert tp(stack, "jobs").returncode == 0


def test_a_port_held_by_another_program_is_named_and_nothing_is_left_running(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ports = [free_port(), port, free_port(), free_port()]
        up = start_up(tmp_path, ports=ports)
        code = up.process.wait(120)
    assert code == 2, up.text
    assert f"port {port} (trainer-timm" in up.text and "in use" in up.text
    assert not listening_processes(ports)


def test_a_service_that_cannot_start_is_named_with_its_reason_and_the_others_are_stopped(tmp_path: Path) -> None:
    # The backend's database cannot be reached: it exits at start; the trainers were already launched.
    up = start_up(tmp_path, extra_env={"DATABASE_URL": f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"})
    code = up.process.wait(180)
    assert code == 2, up.text
    error = [line for line in up.lines if line.startswith("error:")]
    assert len(error) == 1 and "backend exited with code 1" in error[0], up.text
    assert "cannot start" in error[0], "the reason from the backend's log, not only the exit code"
    assert wait_gone(listening_processes(up.ports), 60) == []


@pytest.mark.parametrize(
    ("same", "flags"),
    [((0, 1), "--backend-port and --timm-port"), ((1, 2), "--timm-port and --ultralytics-port")],
)
def test_two_services_on_one_port_are_refused_before_anything_starts(
    tmp_path: Path, same: tuple[int, int], flags: str
) -> None:
    # It started everything and wrote the per-user config, then said "error: backend exited; stopping the stack"
    # (the backend could not listen: the timm trainer had the port and answered its health check).
    ports = [free_port() for _ in range(4)]
    ports[same[1]] = ports[same[0]]
    up = start_up(tmp_path, ports=ports)
    code = up.process.wait(60)
    assert up.ready.wait(10)
    assert code == 2, up.text
    assert up.text.startswith("error: "), up.text
    assert len(up.lines) == 1 and flags in up.text and str(ports[same[0]]) in up.text, up.text
    assert not (tmp_path / "data").exists() and not up.config.exists()
    assert not listening_processes(ports)


def test_a_service_that_dies_after_the_start_is_named_with_its_log_and_the_config_is_taken_back(
    tmp_path: Path,
) -> None:
    # It said "error: backend exited; stopping the stack" (the why only in logs/backend.log), and left the per-user
    # config pointing at the stopped stack.
    up = start_up(tmp_path)
    try:
        assert up.ready.wait(180), up.text
        assert up.config.exists()
        (tmp_path / "data" / "logs" / "backend.log").open("a").write("ERROR the last words of the backend\n")
        os.kill(up.pids["backend"], signal.SIGKILL)
        code = up.process.wait(90)
        assert up.process.stdout is not None
        rest = up.process.stdout.read()
    finally:
        stop_up(up)
    assert code == 2, up.text + rest
    error = [line for line in rest.splitlines() if line.startswith("error:")]
    assert len(error) == 1, rest
    assert "backend exited" in error[0] and "SIGKILL" in error[0], error[0]
    assert "ERROR the last words of the backend" in error[0], error[0]
    assert str(tmp_path / "data" / "logs" / "backend.log") in error[0]
    assert not up.config.exists(), "the config names a stack that is gone"
    assert wait_gone(list(up.pids.values())) == []


def test_one_process_settings_of_the_callers_environment_are_not_given_to_the_services(tmp_path: Path) -> None:
    """An exported TP_METRICS_PORT (README shows one for tp-backend), or a server certificate and key, reached all
    four services `tp up` starts: they all tried the same metrics port (the second failed, so `tp up` never started)
    and all served TLS, which its own health checks do not speak. They are withheld, and `tp up` says so."""
    pki = make_pki(tmp_path / "pki")
    metrics_port = free_port()
    withheld = {
        "TP_METRICS_PORT": str(metrics_port),
        "TP_TLS_CERT_FILE": str(pki.server_cert),
        "TP_TLS_KEY_FILE": str(pki.server_key),
        "TP_BACKEND_LISTEN": f"127.0.0.1:{free_port()}",
    }
    up = start_up(tmp_path, dashboard=True, extra_env=withheld)
    try:
        assert up.ready.wait(240), up.text
        assert up.process.poll() is None, up.text
        notes = [line for line in up.lines if "not given to the services" in line]
        assert len(notes) == 1 and all(name in notes[0] for name in withheld), up.text
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", metrics_port)) != 0, "no service serves metrics"
        assert tp(up, "jobs").returncode == 0, "the backend serves plaintext on its port"
    finally:
        stop_up(up)


def test_grpc_servers_refuse_a_port_already_served(stack: Up, tmp_path: Path) -> None:
    """grpc.so_reuseport is off: a second backend or trainer on a port already served exits at start, in one
    line saying why (no traceback)."""
    env = clean_env(tmp_path / "config.json", INTERNAL_AUTH_TOKEN="x" * 32, TP_DATA_DIR=str(tmp_path))
    for program, address in (("tp-backend", stack.address), ("tp-trainer-timm", f"127.0.0.1:{stack.ports[1]}")):
        second = subprocess.run(
            [str(Path(TP).parent / program), "--listen", address], capture_output=True, text=True, env=env, timeout=60
        )
        output = second.stdout + second.stderr
        assert second.returncode == 1, output
        assert f"cannot start: cannot listen on {address}" in output, output
        assert "Traceback" not in output
    assert tp(stack, "jobs").returncode == 0


# --- 3. finding the backend -----------------------------------------------------------------------------------


def test_tp_up_writes_the_user_config_and_prints_what_to_export(stack: Up, tmp_path: Path) -> None:
    config = json.loads(stack.config.read_text())
    token_file = stack.data_dir.resolve() / "frontend_auth_token"
    assert config["backend_address"] == stack.address
    assert config["token_file"] == str(token_file)
    assert stat.S_IMODE(stack.config.stat().st_mode) == 0o600
    assert token_file.read_text().strip() not in stack.config.read_text(), "the config names the file, not the token"
    assert f"export TP_BACKEND_ADDRESS={stack.address}" in stack.text
    assert f'export TP_AUTH_TOKEN="$(cat {token_file})"' in stack.text
    assert str(stack.config) in stack.text
    # Any directory, no variables: the config finds the backend and its token.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    listed = tp(stack, "jobs", cwd=elsewhere)
    assert listed.returncode == 0, listed.stderr
    # Flags beat the environment, which beats the config.
    flagged = tp(stack, "--backend", stack.address, "jobs", cwd=elsewhere, TP_BACKEND_ADDRESS="127.0.0.1:1")
    assert flagged.returncode == 0, flagged.stderr


def test_a_backend_that_does_not_answer_is_one_line_with_a_hint(stack: Up) -> None:
    down = f"127.0.0.1:{free_port()}"
    for args in (("jobs",), ("show", "abc")):
        result = tp(stack, "--backend", down, *args)
        assert result.returncode == 2 and result.stdout == "", result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert down in lines[0] and "tp up" in lines[0] and "--backend" in lines[0], lines[0]


def test_a_refused_token_names_its_source(stack: Up, tmp_path: Path) -> None:
    result = tp(stack, "jobs", TP_AUTH_TOKEN="not-the-token")
    assert result.returncode == 2
    assert "refused the token from TP_AUTH_TOKEN" in result.stderr, result.stderr
    (tmp_path / "frontend_auth_token").write_text("wrong-token-in-a-file\n")
    result = tp(stack, "--data-dir", str(tmp_path), "jobs")
    assert result.returncode == 2
    assert f"refused the token from {tmp_path / 'frontend_auth_token'} (--data-dir)" in result.stderr, result.stderr
    # The address came from the per-user config (another stack's, as like as not): the line said only where the
    # token came from, though "no backend answers" says where the address came from.
    assert f"the backend at {stack.address} (from the config {stack.config}) refused" in result.stderr, result.stderr
    result = tp(stack, "--backend", stack.address, "jobs", TP_AUTH_TOKEN="not-the-token")
    assert f"the backend at {stack.address} (from --backend) refused the token from TP_AUTH_TOKEN" in result.stderr


# --- 4-7. jobs, Ctrl-C, the live view, plots ------------------------------------------------------------------

TRAIN = ("train", "--framework", "timm", "--model", "resnet10t", "--dataset", "digits", "--image-size", "32")


@pytest.fixture(scope="module")
def trained(stack: Up) -> tuple[str, str]:
    """A job trained to the end by `tp train --name`: its id and what `tp train` printed."""
    result = tp(stack, *TRAIN, "--epochs", "2", "--log-every-n-steps", "5", "--name", "first-digits")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job_id = re.search(r"^job ([0-9a-f-]{36}) ", result.stdout, re.M)
    assert job_id, result.stdout
    return job_id.group(1), result.stdout


def test_the_live_view_reaches_100_percent_and_prints_each_epoch_once(trained: tuple[str, str]) -> None:
    job_id, out = trained
    assert "'first-digits'" in out.splitlines()[0]
    for epoch in (1, 2):
        # Once: as the summary's line, or as the trainer's own "Epoch N/2: ..." log line when that reached the live
        # view first (the line is logged after the summary, but the summary is a call made once the epoch's points
        # are committed, and on a loaded machine the line can overtake it); never both.
        summary_lines = re.findall(rf"^epoch {epoch}/2 done in", out, re.M)
        log_lines = re.findall(rf"^\[info +\] Epoch {epoch}/2:", out, re.M)
        assert len(summary_lines) + len(log_lines) == 1, out
    bars = re.findall(r"^epoch \d+/2 \[[#.]+\]\s+(\d+)%", out, re.M)
    assert bars and bars[-1] == "100", out
    assert "epoch 2/2 [" + "#" * 24 + "] 100%" in out
    assert f"job {job_id} (first-digits): COMPLETED" in out


def test_jobs_resolve_by_unique_prefix_and_show_their_names(stack: Up, trained: tuple[str, str]) -> None:
    job_id, _ = trained
    listed = tp(stack, "jobs")
    row = next(line for line in listed.stdout.splitlines() if line.startswith(job_id))
    assert "first-digits" in row and "COMPLETED" in row
    shown = tp(stack, "show", job_id[:8])
    assert shown.returncode == 0, shown.stderr
    assert f"job {job_id}  COMPLETED  'first-digits'" in shown.stdout
    # The epoch summaries of a finished job: in show, metrics and watch.
    for result in (shown, tp(stack, "metrics", job_id[:6]), tp(stack, "watch", job_id[:10])):
        assert result.returncode == 0, result.stderr
        assert "epoch 1/2 done in" in result.stdout and "epoch 2/2 done in" in result.stdout, result.stdout
    assert tp(stack, "logs", job_id[:7]).returncode == 0
    missing = tp(stack, "show", "ffffffffff")
    assert missing.returncode == 2 and "no job id starts with 'ffffffffff'" in missing.stderr
    # An ambiguous prefix lists the candidates: 17 jobs share at least one first hex digit.
    with JobsClient(stack.address, (stack.data_dir / "frontend_auth_token").read_text().strip()) as client:
        ids = [
            client.create_job(framework="timm", model="resnet10t", dataset="digits", dispatch=False).job.job_id
            for _ in range(17)
        ]
        first = next(c for c in "0123456789abcdef" if sum(i.startswith(c) for i in [*ids, job_id]) > 1)
        ambiguous = tp(stack, "show", first)
        for job in ids:
            client.cancel_job(job)
    assert ambiguous.returncode == 2
    assert f"job prefix '{first}' is ambiguous" in ambiguous.stderr
    assert sum(i in ambiguous.stderr for i in [*ids, job_id] if i.startswith(first)) >= 2
    assert len(ambiguous.stderr.strip().splitlines()) == 1


def test_metrics_plot_has_one_panel_per_family_and_a_titled_figure(stack: Up, trained: tuple[str, str]) -> None:
    job_id, _ = trained
    png = stack.config.parent / "curves.png"
    result = tp(stack, "metrics", job_id[:8], "--plot", str(png))
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    panels = result.stdout.split("panels: ", 1)[1].splitlines()[0].split(", ")
    assert "loss" in panels and "accuracy / mAP" in panels, panels
    assert any(p.startswith("throughput") for p in panels) or any(p.startswith("system") for p in panels), panels


def test_ctrl_c_on_train_leaves_the_job_running_and_the_summary_of_a_cancel_comes_last(stack: Up) -> None:
    train = subprocess.Popen(
        [TP, *TRAIN, "--epochs", "50", "--log-every-n-steps", "1"],
        env=clean_env(stack.config),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert train.stdout is not None
    first = train.stdout.readline()
    job_id = re.match(r"job ([0-9a-f-]{36}) ", first)
    assert job_id, first
    job = job_id.group(1)
    for line in train.stdout:  # until it trains
        if "step " in line and "epoch" in line:
            break
    os.kill(train.pid, signal.SIGINT)
    out, err = train.communicate(timeout=60)
    assert train.returncode == 130, err
    assert f"job {job} goes on" in err and f"tp watch {job[:8]}" in err and f"tp cancel {job[:8]}" in err, err
    assert "Traceback" not in err
    assert "RUNNING" in tp(stack, "show", job[:8]).stdout
    watch = subprocess.Popen(
        [TP, "watch", job[:8]], env=clean_env(stack.config), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert watch.stdout is not None
    seen: list[str] = []
    for line in watch.stdout:  # cancel once an epoch ended, so there is a checkpoint to keep
        seen.append(line)
        if re.match(r"epoch \d+/50 done in", line):
            break
    cancelled = tp(stack, "cancel", job[:8])
    assert cancelled.returncode == 0 and "CANCELLED" in cancelled.stdout
    rest, err = watch.communicate(timeout=120)
    out = "".join(seen) + rest
    assert watch.returncode == 3, out + err
    summary = out.index(f"\njob {job}: CANCELLED")
    assert "artifact results" in out[summary:], out[summary:]
    assert "artifact last_checkpoint" in out[summary:], out[summary:]
    assert not re.search(r"^\[\w+\s*\]", out[summary:], re.M), "log lines after the summary"


# --- 8. disk -----------------------------------------------------------------------------------------------


def test_checkpoints_are_stored_once_and_gc_prunes_ended_jobs(stack: Up, trained: tuple[str, str]) -> None:
    job_id, _ = trained
    artifacts = stack.data_dir / "artifacts" / job_id
    checkpoints = list(artifacts.rglob("*.pt"))
    assert checkpoints, list(artifacts.rglob("*"))
    for checkpoint in checkpoints:
        assert checkpoint.stat().st_nlink >= 2, f"{checkpoint} is a copy, not a link to the run directory's file"
    second = tp(stack, *TRAIN, "--epochs", "1")
    assert second.returncode == 0, second.stderr
    newest = re.search(r"^job ([0-9a-f-]{36}) ", second.stdout, re.M)
    assert newest
    runs = stack.data_dir / "runs"
    dry = tp(stack, "gc", "--keep", "1", "--dry-run")  # the data directory `tp up` wrote to the config
    assert dry.returncode == 0, dry.stderr
    assert f"would delete {job_id}" in dry.stdout and newest.group(1) not in dry.stdout
    assert (runs / job_id).exists() and artifacts.exists()
    young = tp(stack, "--data-dir", str(stack.data_dir), "gc", "--older-than", "1d")
    assert young.returncode == 0 and "freed 0.0 MB from 0" in young.stdout, young.stdout
    done = tp(stack, "--data-dir", str(stack.data_dir), "gc", "--keep", "1")
    assert done.returncode == 0, done.stderr
    assert f"deleting {job_id}" in done.stdout
    assert not (runs / job_id).exists() and not artifacts.exists()
    assert (runs / newest.group(1)).exists() and (stack.data_dir / "artifacts" / newest.group(1)).exists()
    assert tp(stack, "show", job_id[:8]).returncode == 0, "the job's record stays"
    refused = tp(stack, "gc")
    assert refused.returncode == 2 and "--older-than" in refused.stderr


# --- 9. help ---------------------------------------------------------------------------------------------


def test_help_shows_defaults_and_every_up_flag_has_help() -> None:
    up = subprocess.run([TP, "up", "--help"], capture_output=True, text=True, timeout=60)
    assert up.returncode == 0
    text = " ".join(up.stdout.split())
    for flag, default in (
        ("--backend-port", "50051"),
        ("--dashboard-port", "8080"),
        ("--timm-port", "50061"),
        ("--ultralytics-port", "50062"),
    ):
        assert re.search(rf"{flag} \S+ [^-]*\(default: {default}\)", text), (flag, text)
    for flag in ("--no-dashboard", "--data-root"):
        assert re.search(rf"{flag}( \S+)? [a-z]", text), (flag, text)
    train = " ".join(subprocess.run([TP, "train", "--help"], capture_output=True, text=True).stdout.split())
    assert "(default: 3)" in train and "--epochs" in train
    gc = " ".join(subprocess.run([TP, "gc", "--help"], capture_output=True, text=True).stdout.split())
    assert "--older-than" in gc and "--keep" in gc and "--dry-run" in gc
