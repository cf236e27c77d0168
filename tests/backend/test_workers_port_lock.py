"""The port lock of `tp-backend --workers N` is the listen address's (host and port): a supervisor on 127.0.0.2:P
runs beside one on 127.0.0.1:P, a second one on the same address is still refused, and a clean shutdown removes the
lock file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support.backend import VENV_BIN, BackendProcess, free_port, postgres_database


@pytest.mark.timeout(240)
def test_two_supervisors_on_one_port_of_two_addresses_and_the_lock_files_go(tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    port = free_port()
    with postgres_database() as url:
        env = {"XDG_RUNTIME_DIR": str(runtime)}
        first = BackendProcess(url, tmp_path / "one", port=port, extra_args=["--workers", "2"], extra_env=env)
        second = BackendProcess(url, tmp_path / "two", port=port, extra_args=["--workers", "2"], extra_env=env)
        second.address = f"127.0.0.2:{port}"
        try:
            first.start()
            same = subprocess.run(
                [str(VENV_BIN / "tp-backend"), "--listen", first.address, "--workers", "2"],
                env={**os.environ, "DATABASE_URL": url, "TP_DATA_DIR": str(tmp_path / "three"), **env},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert same.returncode == 1 and "another tp-backend --workers" in same.stderr, same.stderr
            second.start()
            assert first.stop() == 0 and second.stop() == 0
        finally:
            first.close()
            second.close()
        assert list(runtime.iterdir()) == [], "the lock files are removed on a clean shutdown"


@pytest.mark.parametrize(("held", "started"), [("127.0.0.1", "0.0.0.0"), ("0.0.0.0", "127.0.0.1")])
def test_a_wildcard_address_and_a_specific_one_of_the_same_port_exclude_each_other(
    tmp_path: Path, held: str, started: str
) -> None:
    """0.0.0.0:P covers 127.0.0.1:P: two supervisors starting at once on them would both find the port free (neither
    listens yet) and their workers would share the port at random. The lock excludes them before any listens."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    port = free_port()
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "DATABASE_URL": "postgresql://unused/none"}
    holder = subprocess.Popen(
        [
            str(VENV_BIN / "python"),
            "-c",
            "import sys\nfrom trainingplatform_backend.workers import claim_port\n"
            f"with claim_port('{held}:{port}'):\n    print('held', flush=True)\n    sys.stdin.read()\n",
        ],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        second = subprocess.run(
            [str(VENV_BIN / "tp-backend"), "--listen", f"{started}:{port}", "--workers", "2"],
            env={**env, "TP_DATA_DIR": str(tmp_path / "data")},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 1 and "another tp-backend --workers" in second.stderr, second.stderr
    finally:
        holder.communicate(input="", timeout=30)
    assert holder.returncode == 0
    assert list(runtime.iterdir()) == [], "the lock files are removed"
