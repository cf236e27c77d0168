"""A database host that accepts the connection but never answers (a stalled proxy, a firewall that blackholes after
the handshake) stops the backend at start after a bounded connect timeout (10 s by default, `connect_timeout` in
DATABASE_URL otherwise), in the same one line as a refused port and exit code 1: never a silent hang."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.backend import VENV_BIN, free_port


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port whose connections the kernel completes (the backlog) and nobody ever answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        yield sock.getsockname()[1]


def _run(tmp_path: Path, url: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url, "TP_DATA_DIR": str(tmp_path), "TP_SHUTDOWN_GRACE_S": "1"}
    try:
        return subprocess.run(
            [str(VENV_BIN / "tp-backend"), *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )
    except subprocess.TimeoutExpired as expired:
        output = (expired.stdout or b"").decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        raise AssertionError(f"tp-backend {' '.join(args)} still waits on the database after 60 s:\n{output}") from None


def _assert_one_error_line(result: subprocess.CompletedProcess[str], port: int) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1, output
    assert "cannot start:" in errors[0] and f"127.0.0.1:{port}" in errors[0] and "connect_timeout" in errors[0], output


@pytest.mark.timeout(120)
def test_serve_stops_after_the_default_connect_timeout(tmp_path: Path, silent_port: int) -> None:
    result = _run(
        tmp_path, f"postgresql://postgres:pw@127.0.0.1:{silent_port}/x", ["--listen", f"127.0.0.1:{free_port()}"]
    )
    _assert_one_error_line(result, silent_port)
    assert "10 s" in result.stderr, "the default timeout is named"


@pytest.mark.timeout(120)
def test_migrate_stops_after_the_urls_connect_timeout(tmp_path: Path, silent_port: int) -> None:
    result = _run(tmp_path, f"postgresql://postgres:pw@127.0.0.1:{silent_port}/x?connect_timeout=2", ["migrate"])
    _assert_one_error_line(result, silent_port)
    assert "2 s" in result.stderr


@pytest.mark.timeout(120)
def test_workers_without_migrations_stop_after_the_connect_timeout(tmp_path: Path, silent_port: int) -> None:
    result = _run(
        tmp_path,
        f"postgresql://postgres:pw@127.0.0.1:{silent_port}/x?connect_timeout=2",
        ["--listen", f"127.0.0.1:{free_port()}", "--workers", "2", "--no-migrate"],
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    assert f"127.0.0.1:{silent_port}" in output and "connect_timeout" in output, output
