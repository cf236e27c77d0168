"""Settings: defaults, the service token and refusing to start without one."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
from trainingplatform.trainer.v1 import trainer_pb2
from trainingplatform_sdk.trainer_service import settings as settings_module

from .trainer_process import FAKE_ADAPTER, VENV_BIN, TrainerProcess, spec

LISTEN = "127.0.0.1:50061"


def test_defaults(tmp_path: Path) -> None:
    settings = settings_module.load(LISTEN, env={"INTERNAL_AUTH_TOKEN": "secret", "TP_DATA_DIR": str(tmp_path)})
    assert settings.listen == LISTEN
    assert settings.max_concurrent_jobs == 1
    assert settings.cancel_grace_s == 30
    assert settings.keep_ended_runs == 1000
    assert settings.runs_dir == tmp_path / "runs"
    assert not settings.tls_enabled
    assert "secret" not in repr(settings)


def test_token_from_the_data_directory(tmp_path: Path) -> None:
    (tmp_path / "internal_auth_token").write_text("from-file\n")
    settings = settings_module.load(LISTEN, env={"TP_DATA_DIR": str(tmp_path)})
    assert settings.internal_auth_token == "from-file"


def test_a_token_that_is_not_printable_ascii_is_refused_without_showing_it(tmp_path: Path) -> None:
    # Accepted before: every call the backend made to this trainer then failed with INTERNAL 'Invalid metadata'.
    with pytest.raises(ValueError, match="the token from INTERNAL_AUTH_TOKEN must be printable ASCII") as refused:
        settings_module.load(LISTEN, env={"INTERNAL_AUTH_TOKEN": "svc-tökén", "TP_DATA_DIR": str(tmp_path)})
    assert "tök" not in str(refused.value)
    (tmp_path / "internal_auth_token").write_text("from\x01file\n")
    with pytest.raises(ValueError, match="internal_auth_token must be printable ASCII"):
        settings_module.load(LISTEN, env={"TP_DATA_DIR": str(tmp_path)})


def test_no_token_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="INTERNAL_AUTH_TOKEN"):
        settings_module.load(LISTEN, env={"TP_DATA_DIR": str(tmp_path)})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TP_MAX_CONCURRENT_JOBS", "0"),
        ("TP_CANCEL_GRACE_S", "-1"),
        ("TP_MAX_CONCURRENT_JOBS", "many"),
        ("TP_KEEP_ENDED_RUNS", "-1"),
    ],
)
def test_bad_values_are_refused(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=variable):
        settings_module.load(LISTEN, env={"INTERNAL_AUTH_TOKEN": "t", variable: value})


def test_service_without_token_exits_with_a_message(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "INTERNAL_AUTH_TOKEN"}
    env["TP_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [str(VENV_BIN / "tp-trainer-timm")], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2
    assert "no service token: set INTERNAL_AUTH_TOKEN" in result.stderr


def test_data_dir_given_as_a_flag_reaches_the_training_process(tmp_path: Path) -> None:
    """`--data-dir data` (relative, TP_DATA_DIR unset): the run's MLflow store and artifacts go to the documented
    `<data dir>/mlflow.db` and `<data dir>/artifacts/<job_id>/<run_id>/`, not under the run's own directory."""
    trainer = TrainerProcess(Path("data"), env={"TP_TRAINER_ADAPTER": FAKE_ADAPTER}, flags=True, cwd=tmp_path)
    try:
        trainer.start()
        job_id = uuid.uuid4().hex
        run_id = trainer.start_training(job_id, spec(extra={"fake_batches": 1}))
        run = trainer.wait_state(run_id, trainer_pb2.RUN_STATE_SUCCEEDED)
    finally:
        trainer.close()
    data_dir = tmp_path / "data"
    assert Path(run.output_dir).is_relative_to(data_dir / "runs" / job_id)
    log = trainer.train_log(run)
    assert (data_dir / "mlflow.db").is_file(), log[-3000:]
    assert (data_dir / "artifacts" / job_id / run_id / "config.json").is_file(), log[-3000:]
    assert not (data_dir / "runs" / job_id / "mlflow.db").exists()
    assert not (data_dir / "runs" / job_id / "artifacts").exists()
