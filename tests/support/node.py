"""Node.js scripts as subprocesses of a test (the Node client's tests, tests/node): finding `node` and sdk/node's
packages, and running a script against a backend with its settings in the environment."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NODE_SDK = ROOT / "sdk" / "node"


def node_executable() -> str:
    """The node executable, once the client's packages are installed; else the test fails (never skipped: CI must
    run the Node tests)."""
    executable = shutil.which("node")
    if executable is None:
        pytest.fail("Node.js is not installed: the Node client tests need Node.js 20 or newer and npm")
    missing = [
        name
        for name in ("@connectrpc/connect-node", "@bufbuild/protobuf", ".bin/protoc-gen-es")
        if not (NODE_SDK / "node_modules" / name).exists()
    ]
    if missing:
        pytest.fail(
            f"sdk/node/node_modules lacks {', '.join(missing)}: run `make setup` "
            "(it runs `npm ci --prefix sdk/node` from sdk/node/package-lock.json)"
        )
    return executable


def run_node(script: Path, env: Mapping[str, str], timeout: float) -> str:
    """What `script` printed on its standard output, run by node in the repository root with this process's
    environment plus `env`; the test fails if it does not exit 0 within `timeout` seconds."""
    result = subprocess.run(
        [node_executable(), str(script)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def start_node(script: Path, env: Mapping[str, str]) -> subprocess.Popen[str]:
    """`script` started by node in the repository root with this process's environment plus `env`, its standard
    output and error piped."""
    return subprocess.Popen(
        [node_executable(), str(script)],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
