"""A framework added from outside the repository: a package that declares a `trainingplatform.adapters` entry
point is installed into the environment, and `tp-train --framework <its name>` trains through it end to end
against a real backend."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability.polling import StatusWatch
from support.backend import BackendProcess
from trainingplatform_sdk.clients import JobsClient

ADAPTER = '''
"""A framework without a framework: each epoch's loss is 1/(epoch+1)."""

from pathlib import Path

from trainingplatform_sdk.spec import MetricsResult
from trainingplatform_sdk.training import TrainingAdapter


class TinyAdapter(TrainingAdapter):
    framework = "{name}"

    def build_data(self) -> None:
        self.batches = 3

    def build_model(self) -> None:
        self.weight = 1.0

    def train_epoch(self, epoch: int) -> MetricsResult:
        for batch in range(self.batches):
            self.global_step += 1
            self.logger.log_metric("train/batch_loss", self.weight / self.global_step, step=self.global_step,
                                   epoch=epoch)
        return MetricsResult(metrics={{"train/loss": 1.0 / (epoch + 1)}}, num_samples=self.batches)

    def validate(self, epoch: int) -> MetricsResult:
        return MetricsResult(metrics={{"val/accuracy": epoch / 10}})

    def save_checkpoint(self, epoch: int, is_best: bool) -> Path:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.last_checkpoint_path.write_text(str(epoch))
        if is_best:
            self.best_checkpoint_path.write_text(str(epoch))
        return self.last_checkpoint_path
'''

PYPROJECT = """
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "{distribution}"
version = "0.0.1"

[project.entry-points."trainingplatform.adapters"]
{name} = "{module}:TinyAdapter"
"""


@pytest.fixture
def installed_framework(tmp_path: Path) -> Iterator[str]:
    """A tiny adapter package written here, pip-installed into this venv, uninstalled afterwards; its name."""
    suffix = uuid.uuid4().hex[:8]
    name, module, distribution = f"tiny{suffix}", f"tp_tiny_adapter_{suffix}", f"tp-tiny-adapter-{suffix}"
    source = tmp_path / "tiny-adapter"
    (source / module).mkdir(parents=True)
    (source / module / "__init__.py").write_text(textwrap.dedent(ADAPTER.format(name=name)))
    (source / "pyproject.toml").write_text(PYPROJECT.format(distribution=distribution, name=name, module=module))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(source)], check=True, timeout=300)
    try:
        yield name
    finally:
        subprocess.run([*pip, "uninstall", "--yes", distribution], check=True, timeout=120)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_installed_adapter_package_trains_end_to_end(
    backend: BackendProcess, tmp_path: Path, installed_framework: str
) -> None:
    job_id, token = backend.create_job(epochs=2)
    env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "TP_ARTIFACTS_BUCKET")}
    env |= {"BACKEND_API_URL": f"grpc://{backend.address}", "JOB_TELEMETRY_TOKEN": token}
    with StatusWatch(backend, job_id, "COMPLETED"):
        trained = subprocess.run(
            [
                str(Path(sys.executable).parent / "tp-train"),
                "--job-id",
                job_id,
                "--framework",
                installed_framework,
                "--model-config",
                '{"name": "tiny"}',
                "--dataset-config",
                '{"name": "numbers"}',
                "--training-config",
                '{"epochs": 2, "log_every_n_steps": 1}',
                "--output-dir",
                str(tmp_path / "run"),
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert trained.returncode == 0, trained.stderr[-3000:]

    with JobsClient(backend.address, backend.internal_token) as client:
        job = client.get_job(job_id)
        points = list(client.metrics(job_id))
    assert job.status == "COMPLETED"
    assert [p.value for p in points if p.key == "train/batch_loss"] == [1 / step for step in range(1, 7)]
    assert [p.value for p in points if p.key == "train/loss"] == [1.0, 0.5]
    assert (tmp_path / "run" / "weights" / "last.pt").read_text() == "1"


def test_an_unknown_framework_names_the_installed_ones() -> None:
    from trainingplatform_sdk.training.registry import resolve_adapter

    with pytest.raises(ValueError, match=r"installed are \[.*'timm'.*'ultralytics'.*\]"):
        resolve_adapter("tensorflow")
