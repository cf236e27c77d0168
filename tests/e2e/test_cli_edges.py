"""`tp` as a subprocess against a real backend (SQLite, no trainer service): edges of its input and output.

- `tp metrics --plot` on CJK, emoji and very long keys and names writes the PNG without matplotlib's warnings, and
  one of keys and a name holding `$...$` (drawn as text, not math);
- `tp train` for a framework with no trainer says what a `tp` user can do (`tp up`, `tp run`);
- a stdout that cannot encode non-ASCII (PYTHONIOENCODING=ascii) gets backslash escapes, never an error;
- an explicit `--data-dir` that does not exist or holds no token is an error naming the flag (no silent fall back
  to TP_AUTH_TOKEN); `--data-dir` and `--backend` go before or after the command, with one meaning, and each
  command's --help lists them; a `--data-dir` in the command of `tp run` is the command's; one a command has no use
  for (`tp --backend X up`, `tp --data-dir D frameworks`) is a usage error naming it.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.backend import BackendProcess
from support.tp import TP, backend_env
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.clients import JobsClient

CJK_NAME = "データセット学習"
LONG_KEY = "train/" + "k" * 244  # 250 characters
KEYS = ("train/損失", "val/精度🎯", LONG_KEY, "train/loss")


@dataclass
class Seeded:
    backend: BackendProcess
    job_id: str
    config: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = backend_env(self.backend, self.config, token_variable="TP_AUTH_TOKEN")
        # The tests set these themselves: an encoding or a warnings filter from outside would change what they see.
        for name in ("PYTHONIOENCODING", "PYTHONWARNINGS"):
            env.pop(name, None)
        return {**env, **extra}

    def tp(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([TP, *args], capture_output=True, text=True, env=env or self.env(), timeout=120)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """A backend with one job named in CJK, 250 characters long, whose metrics have CJK, emoji and long keys."""
    data = tmp_path_factory.mktemp("edges")
    backend = BackendProcess(f"sqlite:///{data / 'backend.db'}", data / "backend-data")
    backend.start()
    try:
        with JobsClient(backend.address, backend.internal_token) as client:
            created = client.create_job(
                framework="timm",
                model="resnet10t",
                dataset="digits",
                epochs=1,
                dispatch=False,
                display_name=(CJK_NAME * 40)[:250],
            )
        logger = TrainingLogger(
            created.job.job_id,
            backend_address=backend.address,
            token=created.telemetry_token,
            spool_dir=data / "spool",
        )
        for step in range(5):
            for key in KEYS:
                logger.log_metric(key, 1.0 / (step + 1), step=step)
        report = logger.close(timeout=30)
        assert report.pending_metrics == 0
        yield Seeded(backend, created.job.job_id, data / "no-config.json")
    finally:
        backend.close()


# --- plots ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("by_key", [False, True], ids=["families", "keys"])
def test_a_plot_of_cjk_emoji_and_long_keys_is_written_without_matplotlib_warnings(
    seeded: Seeded, tmp_path: Path, by_key: bool
) -> None:
    # It printed ~14 UserWarning lines: "Glyph ... missing from font(s)", "Tight layout not applied".
    path = tmp_path / "plot.png"
    keys = [arg for key in KEYS for arg in ("--key", key)] if by_key else []
    result = seeded.tp("metrics", seeded.job_id[:8], *keys, "--plot", str(path))
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and "Glyph" not in result.stderr, result.stderr
    assert result.stderr == ""
    assert path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {path}" in result.stdout


@pytest.mark.parametrize("by_key", [False, True], ids=["families", "keys"])
def test_a_plot_of_keys_and_a_name_with_dollars_is_written(seeded: Seeded, tmp_path: Path, by_key: bool) -> None:
    # It failed with an empty "error: ": matplotlib read `$...$` as math, and its error starts with a line break.
    keys = ("$\\foo$/acc", "_hidden/loss", "train/loss")
    with JobsClient(seeded.backend.address, seeded.backend.internal_token) as client:
        created = client.create_job(
            framework="timm", model="resnet10t", dataset="digits", epochs=1, dispatch=False, display_name="$x$ run"
        )
    logger = TrainingLogger(
        created.job.job_id,
        backend_address=seeded.backend.address,
        token=created.telemetry_token,
        spool_dir=tmp_path / "spool",
    )
    for step in range(3):
        for key in keys:
            logger.log_metric(key, 1.0 / (step + 1), step=step)
    assert logger.close(timeout=30).pending_metrics == 0
    path = tmp_path / "plot.png"
    chosen = [arg for key in keys for arg in ("--key", key)] if by_key else []
    result = seeded.tp("metrics", created.job.job_id[:8], *chosen, "--plot", str(path))
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- no trainer -----------------------------------------------------------------------------------------------


def test_train_without_a_trainer_says_what_a_tp_user_can_do(seeded: Seeded) -> None:
    # It said "create the job with dispatch=false", which no `tp` flag does.
    result = seeded.tp("train", "--framework", "timm", "--model", "resnet10t", "--dataset", "digits", "--epochs", "1")
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip().splitlines()
    assert len(error) == 1, result.stderr
    assert "no trainer service is configured for framework 'timm'" in error[0]
    assert "`tp up`" in error[0] and "`tp run" in error[0], error[0]
    assert "TP_TRAINERS" in error[0]  # for whoever runs the backend


# --- encodings ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
@pytest.mark.parametrize("command", ["jobs", "show", "metrics"])
def test_a_stdout_that_cannot_encode_the_names_gets_escapes(seeded: Seeded, encoding: str, command: str) -> None:
    # `tp jobs` failed with exit 2 ("'ascii' codec can't encode"), `tp metrics` after printing part of its output.
    args = [command] if command == "jobs" else [command, seeded.job_id[:8]]
    result = seeded.tp(*args, env=seeded.env(PYTHONIOENCODING=encoding))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    if command == "metrics":
        assert "train/\\u640d\\u5931" in result.stdout, result.stdout
        assert "\\U0001f3af" in result.stdout, result.stdout
    else:
        assert "\\u30c7" in result.stdout, result.stdout


def test_an_error_on_a_stderr_that_cannot_encode_it_is_escaped(seeded: Seeded) -> None:
    result = seeded.tp("logs", "データ", env=seeded.env(PYTHONIOENCODING="ascii"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: no job id starts with"), result.stderr
    assert "Traceback" not in result.stderr and "UnicodeEncodeError" not in result.stderr


# --- --data-dir -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "empty", "a file"])
def test_an_explicit_data_dir_without_a_token_is_an_error_naming_the_flag(
    seeded: Seeded, tmp_path: Path, kind: str
) -> None:
    # It fell back to TP_AUTH_TOKEN in silence, and listed the jobs of whatever backend that token opened.
    data_dir = tmp_path / "nonexistent"
    if kind == "empty":
        data_dir.mkdir()
    elif kind == "a file":
        data_dir.write_text("")
    result = seeded.tp("--data-dir", str(data_dir), "jobs")
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    error = result.stderr.strip().splitlines()
    assert len(error) == 1, result.stderr
    assert "--data-dir" in error[0] and str(data_dir) in error[0], error[0]


def test_gc_on_an_explicit_data_dir_that_does_not_exist_is_an_error(seeded: Seeded, tmp_path: Path) -> None:
    # `tp gc` reads --data-dir for the files to delete (its token may come from the environment): it must exist.
    result = seeded.tp("--data-dir", str(tmp_path / "nonexistent"), "gc", "--keep", "0", "--dry-run")
    assert result.returncode == 2, result.stdout
    assert "--data-dir" in result.stderr and "does not exist" in result.stderr, result.stderr
    assert seeded.tp("--data-dir", str(tmp_path), "gc", "--keep", "0", "--dry-run").returncode == 0


def test_an_explicit_data_dir_with_a_token_is_used_before_tp_auth_token(seeded: Seeded, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "frontend_auth_token").write_text("not-the-backends-token\n")
    result = seeded.tp("--data-dir", str(data_dir), "jobs")
    assert result.returncode == 2
    assert f"{data_dir / 'frontend_auth_token'} (--data-dir)" in result.stderr, result.stderr
    # TP_DATA_DIR (not the flag) that holds no token still falls back, as documented.
    env = seeded.env(TP_DATA_DIR=str(tmp_path / "nowhere"))
    assert seeded.tp("jobs", env=env).returncode == 0


def test_the_global_flags_go_before_or_after_the_command(seeded: Seeded, tmp_path: Path) -> None:
    # `tp jobs --data-dir D`, `tp gc --data-dir D`, `tp up --data-dir D` were refused ("unrecognized arguments"):
    # only `tp --data-dir D jobs` worked.
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    token_file = data_dir / "frontend_auth_token"
    token_file.write_text("not-the-backends-token\n")
    for args in (("--data-dir", str(data_dir), "jobs"), ("jobs", "--data-dir", str(data_dir))):
        result = seeded.tp(*args)
        assert result.returncode == 2, (args, result.stdout)
        assert f"refused the token from {token_file} (--data-dir)" in result.stderr, (args, result.stderr)
    token_file.write_text(seeded.backend.internal_token)
    listed = seeded.tp("jobs", "--data-dir", str(data_dir), env=seeded.env(TP_AUTH_TOKEN="wrong"))
    assert listed.returncode == 0, listed.stderr
    assert seeded.job_id[:8] in listed.stdout
    # Given on both sides, the one after the command is used (as any repeated flag: the last one).
    elsewhere = tmp_path / "nonexistent"
    result = seeded.tp("--data-dir", str(data_dir), "show", seeded.job_id[:8], "--data-dir", str(elsewhere))
    assert result.returncode == 2 and f"--data-dir {elsewhere} does not exist" in result.stderr, result.stderr
    gc = seeded.tp("gc", "--data-dir", str(data_dir), "--keep", "0", "--dry-run")
    assert gc.returncode == 0, gc.stderr
    assert f"in {data_dir}" in gc.stdout, gc.stdout
    # --backend after the command beats TP_BACKEND_ADDRESS, as before it.
    env = seeded.env(TP_BACKEND_ADDRESS="127.0.0.1:1")
    for args in (("--backend", seeded.backend.address, "jobs"), ("jobs", "--backend", seeded.backend.address)):
        result = seeded.tp(*args, env=env)
        assert result.returncode == 0, (args, result.stderr)


def test_a_data_dir_in_the_command_of_tp_run_is_the_commands(seeded: Seeded, tmp_path: Path) -> None:
    # Any --data-dir in argv counted as tp's own, so the command's made `tp run` demand that ./.data hold a token.
    result = subprocess.run(
        [TP, "run", "--name", "own-data-dir", "--", sys.executable, "-c", "pass", "--data-dir", "x"],
        capture_output=True,
        text=True,
        env=seeded.env(),
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "frontend_auth_token").write_text(seeded.backend.internal_token)
    result = seeded.tp(
        "run", "--data-dir", str(data_dir), "--name", "flag-after-run", "--", sys.executable, "-c", "pass"
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("up", ("--data-dir",)),
        ("demo", ("--data-dir",)),
        ("train", ("--backend", "--data-dir")),
        ("jobs", ("--backend", "--data-dir")),
        ("show", ("--backend", "--data-dir")),
        ("watch", ("--backend", "--data-dir")),
        ("cancel", ("--backend", "--data-dir")),
        ("logs", ("--backend", "--data-dir")),
        ("metrics", ("--backend", "--data-dir")),
        ("gc", ("--backend", "--data-dir")),
        ("run", ("--backend", "--data-dir")),
    ],
)
def test_a_commands_help_lists_the_global_flags_it_uses(command: str, flags: tuple[str, ...]) -> None:
    result = subprocess.run([TP, command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for flag in flags:
        assert re.search(rf"^\s+{flag} ", result.stdout, re.MULTILINE), (flag, result.stdout)


def test_a_global_flag_a_command_cannot_use_is_refused(tmp_path: Path) -> None:
    # `tp --backend X up` started a stack of its own and ignored X; `tp --backend X frameworks` and
    # `tp --data-dir D frameworks` ignored theirs too. Each is now a usage error naming the flag. The ports given to
    # `up` are taken, so that the old code, which went on, stopped at its port check instead of starting a stack.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        ports = ["--backend-port", port, "--dashboard-port", port, "--timm-port", port, "--ultralytics-port", port]
        cases = {
            ("--backend", "127.0.0.1:1", "up", "--data-dir", str(tmp_path / "up"), *ports): "--backend does not "
            "apply to tp up: it starts its own backend, on 127.0.0.1 at --backend-port",
            ("--backend", "127.0.0.1:1", "demo", "--data-dir", str(tmp_path / "up")): "--backend does not apply to "
            "tp demo",
            # After the command, argparse took it for --backend-port ("'127.0.0.1:1' is not a port").
            ("up", "--data-dir", str(tmp_path / "up"), *ports, "--backend", "127.0.0.1:1"): "--backend does not "
            "apply to tp up",
            ("--backend", "127.0.0.1:1", "frameworks"): "--backend does not apply to tp frameworks",
            ("--data-dir", str(tmp_path), "frameworks"): "--data-dir does not apply to tp frameworks",
        }
        for args, expected in cases.items():
            result = subprocess.run([TP, *args], capture_output=True, text=True, timeout=60)
            assert result.returncode == 2, (args, result.stdout, result.stderr)
            assert expected in result.stderr, (args, result.stderr)
    assert not (tmp_path / "up").exists()
