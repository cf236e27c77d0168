"""TLS on every hop: the backend dispatches to a trainer service that serves mutual TLS (TP_TRAINER_TLS_*), and the
trainer service and its training process report to a backend that serves mutual TLS (TP_TLS_CA_FILE,
TP_TLS_CLIENT_CERT_FILE, TP_TLS_CLIENT_KEY_FILE). Without the client certificate the dispatch fails, with the
TLS reason, instead of hanging."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.backend import VENV_BIN, BackendProcess, auth, free_port
from support.certs import Pki, make_pki
from trainer_service.trainer_process import FAKE_ADAPTER, TrainerProcess, spec
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.trainer.v1 import trainer_pb2_grpc
from trainingplatform_backend import settings as backend_settings
from trainingplatform_sdk.channel import ClientTls, open_channel

FINAL = (common_pb2.JOB_STATUS_COMPLETED, common_pb2.JOB_STATUS_FAILED, common_pb2.JOB_STATUS_CANCELLED)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _client_credentials(pki: Pki) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca_cert.read_bytes(),
        private_key=pki.client_key.read_bytes(),
        certificate_chain=pki.client_cert.read_bytes(),
    )


@pytest.fixture(scope="module")
def mtls_trainer(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerProcess]:
    """A trainer service (FakeAdapter) serving mutual TLS; as a client of the backend it presents the client
    certificate too (the SDK's TP_TLS_* client variables, inherited by the training process)."""
    trainer = TrainerProcess(
        tmp_path_factory.mktemp("mtls-trainer"),
        env={
            "TP_TRAINER_ADAPTER": FAKE_ADAPTER,
            "TP_TLS_CERT_FILE": str(pki.server_cert),
            "TP_TLS_KEY_FILE": str(pki.server_key),
            "TP_TLS_CLIENT_CA_FILE": str(pki.ca_cert),
            "TP_TLS_CA_FILE": str(pki.ca_cert),
            "TP_TLS_CLIENT_CERT_FILE": str(pki.client_cert),
            "TP_TLS_CLIENT_KEY_FILE": str(pki.client_key),
        },
    )
    trainer.channel.close()
    trainer.channel = grpc.secure_channel(trainer.address, _client_credentials(pki))
    trainer.stub = trainer_pb2_grpc.TrainerServiceStub(trainer.channel)
    trainer.start()
    yield trainer
    trainer.close()


def _backend(
    pki: Pki, trainer: TrainerProcess, data: Path, *, client_cert: bool, timeout_s: int = 60, database_url: str = ""
) -> BackendProcess:
    env = {
        "TP_TRAINERS": f"timm={trainer.address}",
        "TP_DISPATCH_TIMEOUT_S": str(timeout_s),
        "TP_TLS_CERT_FILE": str(pki.server_cert),
        "TP_TLS_KEY_FILE": str(pki.server_key),
        "TP_TLS_CLIENT_CA_FILE": str(pki.ca_cert),
        "TP_TRAINER_TLS_CA_FILE": str(pki.ca_cert),
    }
    if client_cert:
        env |= {"TP_TRAINER_TLS_CERT_FILE": str(pki.client_cert), "TP_TRAINER_TLS_KEY_FILE": str(pki.client_key)}
    backend = BackendProcess(
        database_url or f"sqlite:///{data / 'backend.db'}", data, extra_env=env, credentials=_client_credentials(pki)
    )
    backend.internal_token = trainer.token  # the trainer trusts the backend's internal token
    backend.start()
    return backend


def _wait_final(backend: BackendProcess, job_id: str, timeout: float) -> common_pb2.Job:
    deadline = time.monotonic() + timeout
    while True:
        job = backend.jobs().GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=auth(backend.internal_token)).job
        if job.status in FINAL:
            return job
        assert time.monotonic() < deadline, f"job still {common_pb2.JobStatus.Name(job.status)}:\n{backend.log_text()}"
        time.sleep(0.2)


def _create(backend: BackendProcess) -> str:
    job_spec = spec(epochs=1, extra={"fake_batches": 3, "fake_batch_s": 0.01})
    created = backend.jobs().CreateJob(
        jobs_pb2.CreateJobRequest(spec=job_spec), metadata=auth(backend.internal_token), timeout=60
    )
    return created.job.job_id


def test_a_job_dispatched_over_mutual_tls_completes(
    pki: Pki, mtls_trainer: TrainerProcess, tmp_path: Path, database_url: str
):
    backend = _backend(pki, mtls_trainer, tmp_path / "data", client_cert=True, database_url=database_url)
    try:
        job_id = _create(backend)
        job = _wait_final(backend, job_id, timeout=180)
        assert job.status == common_pb2.JOB_STATUS_COMPLETED, (job.error_message, mtls_trainer.log_text()[-3000:])
        assert job.trainer_address == mtls_trainer.address
        # The training process's telemetry reached the mTLS backend (https://, client certificate from the env).
        assert backend.metric_sequences(job_id)
    finally:
        backend.close()


def test_without_the_client_certificate_the_dispatch_fails_with_the_tls_reason(
    pki: Pki, mtls_trainer: TrainerProcess, tmp_path: Path
):
    backend = _backend(pki, mtls_trainer, tmp_path / "data", client_cert=False, timeout_s=3)
    try:
        job_id = _create(backend)
        job = _wait_final(backend, job_id, timeout=60)
        assert job.status == common_pb2.JOB_STATUS_FAILED
        assert "no timm trainer accepted the job within 3 s" in job.error_message
        assert mtls_trainer.address in job.error_message
        assert "UNAVAILABLE" in job.error_message
        assert backend.status_events(job_id) == ["PENDING", "QUEUED", "FAILED"]
        assert not [run for run in mtls_trainer.list_all() if run.job_id == job_id]
    finally:
        backend.close()


def test_trainer_tls_settings_are_checked_at_load(pki: Pki):
    with pytest.raises(ValueError, match="TP_TRAINER_TLS_CERT_FILE and TP_TRAINER_TLS_KEY_FILE"):
        backend_settings.load(env={"TP_TRAINER_TLS_CA_FILE": "ca.pem", "TP_TRAINER_TLS_CERT_FILE": "c.pem"})
    with pytest.raises(ValueError, match="TP_TRAINER_TLS_CERT_FILE and TP_TRAINER_TLS_KEY_FILE"):
        backend_settings.load(env={"TP_TRAINER_TLS_CA_FILE": "ca.pem", "TP_TRAINER_TLS_KEY_FILE": "k.pem"})
    with pytest.raises(ValueError, match="need TP_TRAINER_TLS_CA_FILE"):
        backend_settings.load(env={"TP_TRAINER_TLS_CERT_FILE": "c.pem", "TP_TRAINER_TLS_KEY_FILE": "k.pem"})
    files = (str(pki.ca_cert), str(pki.client_cert), str(pki.client_key))
    loaded = backend_settings.load(env=dict(zip(backend_settings.TRAINER_TLS_NAMES, files, strict=True)))
    assert (loaded.trainer_tls_ca_file, loaded.trainer_tls_cert_file, loaded.trainer_tls_key_file) == files


def _bad_trainer_tls(pki: Pki, tmp_path: Path) -> dict[str, tuple[dict[str, str], list[str]]]:
    """TP_TRAINER_TLS_* files that cannot be used, and what the backend's line must say about each."""
    not_pem = tmp_path / "not-pem.txt"
    not_pem.write_text("hello\n")
    ca = {"TP_TRAINER_TLS_CA_FILE": str(pki.ca_cert)}
    return {
        "CA file missing": (
            {"TP_TRAINER_TLS_CA_FILE": str(tmp_path / "missing.pem")},
            ["TP_TRAINER_TLS_CA_FILE: cannot read", str(tmp_path / "missing.pem")],
        ),
        "CA file not PEM": (
            {"TP_TRAINER_TLS_CA_FILE": str(not_pem)},
            ["TP_TRAINER_TLS_CA_FILE", str(not_pem), "no PEM certificate"],
        ),
        "certificate and key swapped": (
            {
                **ca,
                "TP_TRAINER_TLS_CERT_FILE": str(pki.client_key),
                "TP_TRAINER_TLS_KEY_FILE": str(pki.client_cert),
            },
            ["TP_TRAINER_TLS_CERT_FILE", "swapped"],
        ),
        "key of another certificate": (
            {
                **ca,
                "TP_TRAINER_TLS_CERT_FILE": str(pki.client_cert),
                "TP_TRAINER_TLS_KEY_FILE": str(pki.server_key),
            },
            ["TP_TRAINER_TLS_KEY_FILE", str(pki.server_key), "not the key of the certificate"],
        ),
    }


@pytest.mark.parametrize(
    "case", ["CA file missing", "CA file not PEM", "certificate and key swapped", "key of another certificate"]
)
def test_a_bad_trainer_tls_file_stops_the_backend_with_one_line(pki: Pki, tmp_path: Path, case: str):
    """Before, a file holding the wrong content stopped the backend with a traceback (exit 1), after its migrations;
    an unreadable one was one line, exit 1. Now both are bad values: one line naming the variable, exit 2."""
    tls, said = _bad_trainer_tls(pki, tmp_path)[case]
    env = {key: value for key, value in os.environ.items() if not key.startswith("TP_")}
    env |= {
        **tls,
        "TP_TRAINERS": "timm=127.0.0.1:1",
        "TP_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'backend.db'}",
    }
    result = subprocess.run(
        [str(VENV_BIN / "tp-backend"), "--listen", f"127.0.0.1:{free_port()}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("tp-backend: error: "), result.stderr
    for part in said:
        assert part in lines[0], lines[0]
    assert not (tmp_path / "backend.db").exists(), "refused before the migrations"


def test_client_tls_from_the_environment(pki: Pki, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TP_TLS_CA_FILE", str(pki.ca_cert))
    monkeypatch.setenv("TP_TLS_CLIENT_CERT_FILE", str(pki.client_cert))
    monkeypatch.setenv("TP_TLS_CLIENT_KEY_FILE", str(pki.client_key))
    tls = ClientTls.from_env()
    assert tls.root_certificates == pki.ca_cert.read_bytes()
    assert tls.certificate_chain == pki.client_cert.read_bytes()
    assert tls.private_key == pki.client_key.read_bytes()
    assert "PRIVATE" not in repr(tls)
    monkeypatch.delenv("TP_TLS_CLIENT_KEY_FILE")
    with pytest.raises(ValueError, match="TP_TLS_CLIENT_CERT_FILE and TP_TLS_CLIENT_KEY_FILE"):
        open_channel("https://127.0.0.1:1")
