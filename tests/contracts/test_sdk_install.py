"""The SDK installs alone, with the generated contracts, and pulls neither torch nor SQLAlchemy."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sdk_installs_alone_without_torch_or_sqlalchemy(tmp_path: Path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(ROOT / "sdk")], capture_output=True, text=True, timeout=600
    )
    assert install.returncode == 0, install.stdout + install.stderr
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    ).stdout.lower()
    names = {line.split("==")[0] for line in listed.splitlines()}
    assert "trainingplatform-sdk" in names
    assert not names & {"torch", "sqlalchemy", "timm", "ultralytics", "mlflow"}, names
    probe = (
        "from trainingplatform.jobs.v1 import jobs_pb2_grpc; from trainingplatform.telemetry.v1 import "
        "telemetry_pb2; import trainingplatform_sdk; print(telemetry_pb2.MetricPoint(key='k').key)"
    )
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "k", result.stderr
    assert sys.prefix not in result.stdout
