"""A metrics port (TP_METRICS_PORT) or a dashboard listen port that something else holds stops the service at start in
one line naming the address and the setting, exit code 1 (as a gRPC listen port in use does): before the backend
applies migrations, and without a dashboard login URL for a server that never starts."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.backend import VENV_BIN, free_port, postgres_database


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def _run(program: str, args: list[str], env: dict[str, str]) -> tuple[int, str]:
    result = subprocess.run(
        [str(VENV_BIN / program), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def _one_error_line(output: str) -> str:
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if "ERROR" in line or "error:" in line]
    assert len(errors) == 1, output
    return errors[0]


@pytest.mark.timeout(150)
@pytest.mark.parametrize("workers", [1, 2])
def test_the_backend_names_a_metrics_port_in_use_before_migrating(
    tmp_path: Path, taken_port: int, workers: int
) -> None:
    with postgres_database() as url:
        code, output = _run(
            "tp-backend",
            ["--listen", f"127.0.0.1:{free_port()}", "--metrics-port", str(taken_port), "--workers", str(workers)],
            {"DATABASE_URL": url, "TP_DATA_DIR": str(tmp_path)},
        )
    assert code == 1, output
    line = _one_error_line(output)
    assert f"127.0.0.1:{taken_port}" in line and "TP_METRICS_PORT" in line and "in use" in line, line
    assert "applying database migrations" not in output, "checked before the migrations"


def test_the_backend_refuses_a_metrics_port_equal_to_the_listen_port(tmp_path: Path) -> None:
    port = free_port()
    code, output = _run(
        "tp-backend",
        ["--listen", f"127.0.0.1:{port}", "--metrics-port", str(port)],
        {"DATABASE_URL": f"sqlite:///{tmp_path / 'backend.db'}", "TP_DATA_DIR": str(tmp_path)},
    )
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tp-backend: error: "), output
    assert "TP_METRICS_PORT" in lines[0] and "TP_BACKEND_LISTEN" in lines[0] and str(port) in lines[0], output
    assert not (tmp_path / "backend.db").exists()


@pytest.mark.timeout(150)
def test_a_trainer_names_a_metrics_port_in_use(tmp_path: Path, taken_port: int) -> None:
    code, output = _run(
        "tp-trainer-timm",
        ["--listen", f"127.0.0.1:{free_port()}"],
        {"INTERNAL_AUTH_TOKEN": "t", "TP_DATA_DIR": str(tmp_path), "TP_METRICS_PORT": str(taken_port)},
    )
    assert code == 1, output
    line = _one_error_line(output)
    assert f"127.0.0.1:{taken_port}" in line and "TP_METRICS_PORT" in line and "in use" in line, line


@pytest.mark.timeout(150)
@pytest.mark.parametrize("which", ["metrics", "listen"])
def test_the_dashboard_names_a_port_in_use_and_prints_no_login_url(tmp_path: Path, taken_port: int, which: str) -> None:
    if which == "metrics":
        args, setting = ["--listen", f"127.0.0.1:{free_port()}", "--metrics-port", str(taken_port)], "TP_METRICS_PORT"
    else:
        args, setting = ["--listen", f"127.0.0.1:{taken_port}"], "TP_DASHBOARD_LISTEN"
    code, output = _run("tp-dashboard", args, {"TP_DATA_DIR": str(tmp_path)})
    assert code == 1, output
    assert "login?token=" not in output, output
    assert not any(line.startswith("dashboard: ") for line in output.splitlines()), output
    line = _one_error_line(output)
    assert f"127.0.0.1:{taken_port}" in line and setting in line and "in use" in line, line
