"""TrainingLogger against a real backend process: kills, outages, restarts of the trainer, ordering, fork."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from reliability.polling import wait_until
from support.backend import BackendProcess
from trainingplatform_sdk import DeliveryReport, LoggerSettings, TrainingLogger
from trainingplatform_sdk.telemetry.sender.state import SEQUENCE_BLOCK

TRAINER = Path(__file__).with_name("trainer_script.py")
SETTINGS = LoggerSettings(reconnect_initial_backoff_s=0.05, reconnect_max_backoff_s=0.5)


def assert_report_matches_database(report: DeliveryReport, backend: BackendProcess, job_id: str) -> None:
    metrics = backend.cursor_row(job_id, "metrics")
    assert report.committed_metrics == metrics["committed_count"] == len(backend.metric_sequences(job_id))
    assert report.pending_metrics == 0 and report.pending_logs == 0
    assert report.committed_logs == len(backend.log_sequences(job_id))
    assert report.duplicates == metrics["duplicate_count"] + backend.cursor_row(job_id, "logs")["duplicate_count"]
    assert report.dropped == 0 and report.error is None


def test_exactly_once_while_the_backend_is_killed_twice(backend: BackendProcess, tmp_path: Path) -> None:
    job_id, token = backend.create_job()
    logger = TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path, settings=SETTINGS)
    total = 100_000
    # The trainer does not log past 30,000 before the first kill nor past 70,000 before the second, so both
    # kills land while points are being logged and streamed, however fast either side runs.
    kills = {30_000: threading.Event(), 70_000: threading.Event()}

    def train() -> None:
        for index in range(total):
            if index in kills:
                kills[index].wait(120)
            logger.log_metric("train/loss", float(index), step=index, epoch=index // 10_000)
            if index % 50 == 0:
                time.sleep(0.001)  # a training loop, not a tight loop

    trainer = threading.Thread(target=train)
    trainer.start()
    for committed_before_kill, gate in zip((10_000, 40_000), kills.values(), strict=True):
        wait_until(
            lambda n=committed_before_kill: logger.stats.committed_metrics >= n,
            60,
            "the points before the kill committed",
        )
        backend.kill()
        gate.set()
        backend.restart()
    trainer.join()
    assert logger.flush(120)
    report = logger.close(10)

    assert backend.metric_sequences(job_id) == list(range(1, total + 1))
    assert [row[2] for row in backend.metric_rows(job_id)] == [float(i) for i in range(total)]
    assert report.logged_metrics == report.committed_metrics == total
    assert report.reconnects >= 2
    assert_report_matches_database(report, backend, job_id)
    assert list(tmp_path.glob("*.seg")) == []  # delivered segments are deleted


def test_backend_down_at_start_then_delivered(backend: BackendProcess, tmp_path: Path) -> None:
    job_id, token = backend.create_job()
    backend.kill()
    logger = TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path, settings=SETTINGS)
    logger.update_status("running")
    for step in range(5000):
        logger.log_metric("train/loss", 1.0 / (step + 1), step=step, epoch=0)
    logger.log_message("first epoch started", level="INFO", epoch=0)
    wait_until(lambda: logger.stats.spooled == 5001, 60, "5001 points spooled")
    assert not logger.flush(0.2)

    backend.restart()
    assert logger.flush(60)
    assert backend.metric_sequences(job_id) == list(range(1, 5001))
    assert backend.log_sequences(job_id) == [1]
    assert backend.job_status(job_id) == "RUNNING"
    logger.update_status("completed")
    report = logger.close(30)
    assert backend.job_status(job_id) == "COMPLETED"
    assert report.calls_delivered == 2 and report.calls_pending == 0
    assert_report_matches_database(report, backend, job_id)


def _run_trainer(backend: BackendProcess, token: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "BACKEND_API_URL": f"grpc://{backend.address}", "JOB_TELEMETRY_TOKEN": token}
    env.pop("INTERNAL_AUTH_TOKEN", None)
    return subprocess.Popen([sys.executable, str(TRAINER), *args], env=env, stdout=subprocess.PIPE, text=True)


def _events(process: subprocess.Popen[str], until: str) -> dict:
    for line in process.stdout:
        event = json.loads(line)
        if event["event"] == until:
            return event
    raise AssertionError(f"trainer ended (code {process.wait()}) before {until!r}")


def test_trainer_killed_with_a_spool_is_replayed_by_its_restart(backend: BackendProcess, tmp_path: Path) -> None:
    job_id, token = backend.create_job()
    spool_dir = str(tmp_path / "spool")
    backend.kill()
    first = _run_trainer(backend, token, job_id, spool_dir, "0", "3000", "hang-when-spooled")
    try:
        _events(first, "ready")
    finally:
        first.kill()
        first.wait()
    backend.restart()

    second = _run_trainer(backend, token, job_id, spool_dir, "3000", "2000", "close")
    assert _events(second, "started")["replayed"] == 3000
    report = _events(second, "closed")["report"]
    assert second.wait() == 0
    # The killed process never released its block of reserved sequences: the restart numbers after it.
    sequences = backend.metric_sequences(job_id)
    assert sequences[:3000] == list(range(1, 3001))
    assert 3000 < sequences[3000] <= 3001 + SEQUENCE_BLOCK
    assert sequences[3000:] == list(range(sequences[3000], sequences[3000] + 2000))
    assert [row[2] for row in backend.metric_rows(job_id)] == [float(i) for i in range(5000)]
    assert report["committed_metrics"] == 5000 and report["logged_metrics"] == 2000
    assert report["pending_metrics"] == 0 and report["duplicates"] == 0


def test_trainer_killed_while_streaming_never_reuses_a_sequence(backend: BackendProcess, tmp_path: Path) -> None:
    job_id, token = backend.create_job()
    spool_dir = str(tmp_path / "spool")
    first = _run_trainer(backend, token, job_id, spool_dir, "0", "0", "stream")
    try:
        wait_until(lambda: len(backend.metric_sequences(job_id)) >= 500, 60, "500 points stored")
    finally:
        first.kill()
        first.wait()
    before = backend.metric_rows(job_id)
    # The restarted trainer cannot ask the backend where the numbering stands: only its spool state knows.
    backend.kill()
    second = _run_trainer(backend, token, job_id, spool_dir, "1000000", "2000", "spool-then-close")
    assert _events(second, "ready")["stats"]["spooled"] == 2000
    backend.restart()
    report = _events(second, "closed")["report"]
    assert second.wait() == 0

    rows = backend.metric_rows(job_id)
    sequences = [row[0] for row in rows]
    assert len(sequences) == len(set(sequences))
    # Whatever the killed process had committed is untouched, and the restart's points all arrived after it
    # with new sequences (the first process's memory-only points may be missing: the kill took them).
    assert rows[: len(before)] == before
    assert [row[2] for row in rows[len(before) :] if row[2] >= 1_000_000] == [float(1_000_000 + i) for i in range(2000)]
    first_run_values = [row[2] for row in rows if row[2] < 1_000_000]
    assert first_run_values == sorted(set(first_run_values))
    assert report["committed_metrics"] >= 2000 and report["pending_metrics"] == 0


def test_atexit_delivers_for_a_logger_never_closed(backend: BackendProcess, tmp_path: Path) -> None:
    job_id, token = backend.create_job()
    trainer = _run_trainer(backend, token, job_id, str(tmp_path / "spool"), "0", "20000", "exit-without-close")
    _events(trainer, "exiting")
    assert trainer.wait(60) == 0
    assert backend.metric_sequences(job_id) == list(range(1, 20001))
    assert backend.job_status(job_id) == "RUNNING"
    assert list((tmp_path / "spool").glob("*.seg")) == []


def test_streams_resume_when_the_server_ages_connections_out(database_url: str, tmp_path: Path) -> None:
    # Behind a load balancer the backend closes connections after a maximum age; the logger must resume.
    aged = BackendProcess(
        database_url,
        tmp_path / "backend",
        extra_env={"TP_MAX_CONNECTION_AGE_S": "0.5", "TP_SHUTDOWN_GRACE_S": "0.2"},
    )
    aged.start()
    try:
        job_id, token = aged.create_job()
        logger = TrainingLogger(
            job_id, backend_address=aged.address, token=token, spool_dir=tmp_path / "spool", settings=SETTINGS
        )
        index = 0
        while logger.stats.reconnects < 2:
            logger.log_metric("train/loss", float(index), step=index)
            index += 1
            if index % 100 == 0:
                time.sleep(0.01)
            assert index < 5_000_000, "the connection was never aged out"
        report = logger.close(60)
        assert aged.metric_sequences(job_id) == list(range(1, index + 1))
        assert_report_matches_database(report, aged, job_id)
    finally:
        aged.close()


class TlsBackendProcess(BackendProcess):
    """The backend serving TLS only: its health check goes over TLS too."""

    def __init__(self, database_url: str, data_dir: Path, certificate: Path, key: Path) -> None:
        super().__init__(
            database_url, data_dir, extra_env={"TP_TLS_CERT_FILE": str(certificate), "TP_TLS_KEY_FILE": str(key)}
        )
        self.certificate = certificate

    def wait_healthy(self, timeout: float = 60) -> None:
        credentials = grpc.ssl_channel_credentials(self.certificate.read_bytes())
        with grpc.secure_channel(self.address, credentials) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            wait_until(lambda: _serving(health), timeout, "the backend serving")


def _serving(health: health_pb2_grpc.HealthStub) -> bool:
    try:
        return health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def test_tls_with_a_custom_ca(backend: BackendProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id, token = backend.create_job()
    backend.stop()
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(certificate)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    tls_backend = TlsBackendProcess(backend.database_url, tmp_path / "tls-backend", certificate, key)
    tls_backend.start()
    try:
        monkeypatch.setenv("BACKEND_API_URL", f"https://{tls_backend.address}")
        monkeypatch.setenv("JOB_TELEMETRY_TOKEN", token)
        monkeypatch.setenv("TP_TLS_CA_FILE", str(certificate))
        with TrainingLogger.from_env(job_id, spool_dir=tmp_path / "spool") as logger:
            for step in range(1000):
                logger.log_metric("train/loss", 1.0, step=step)
            assert logger.flush(30)
        assert tls_backend.metric_sequences(job_id) == list(range(1, 1001))

        # Without the CA the server's certificate is not trusted: nothing is delivered, it stays spooled.
        monkeypatch.delenv("TP_TLS_CA_FILE")
        untrusted = TrainingLogger.from_env(job_id, spool_dir=tmp_path / "spool", settings=SETTINGS)
        untrusted.log_metric("train/loss", 2.0, step=1000)
        assert not untrusted.flush(1)
        assert untrusted.close(0.5).pending_metrics == 1
        assert tls_backend.metric_sequences(job_id) == list(range(1, 1001))
    finally:
        tls_backend.close()


def test_status_never_overtakes_the_metrics_logged_before_it(backend: BackendProcess, tmp_path: Path) -> None:
    job_id, token = backend.create_job()
    total = 60_000
    observed: list[int] = []
    stop = threading.Event()

    def observe() -> None:
        # Reads the status first, then the rows: rows only grow, so a COMPLETED seen with fewer rows is a violation.
        while not stop.is_set():
            if backend.job_status(job_id) == "COMPLETED":
                observed.append(len(backend.metric_sequences(job_id)))
                return
            time.sleep(0.002)

    observer = threading.Thread(target=observe)
    observer.start()
    try:
        logger = TrainingLogger(
            job_id, backend_address=backend.address, token=token, spool_dir=tmp_path, settings=SETTINGS
        )
        logger.update_status("running")
        for epoch in range(3):
            for step in range(total // 3):
                logger.log_metric("train/loss", 1.0, step=epoch * total // 3 + step, epoch=epoch)
            logger.log_epoch_summary(epoch, {"val/accuracy": 0.5 + epoch / 10}, duration_seconds=1.5)
        logger.log_message("training done")
        logger.report_run_info(mlflow_run_id="run-1", artifacts={"best_checkpoint": "file:///tmp/best.pt"})
        logger.update_status("completed")
        report = logger.close(60)
        observer.join(30)
    finally:
        stop.set()
    assert observed == [total]
    assert backend.status_events(job_id)[-2:] == ["RUNNING", "COMPLETED"]
    assert report.calls_delivered == 6 and report.calls_failed == 0
    assert_report_matches_database(report, backend, job_id)


def test_a_refused_status_is_not_retried_and_does_not_block(backend: BackendProcess, tmp_path: Path) -> None:
    job_id, token = backend.create_job()
    with TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path) as logger:
        logger.update_status("completed")  # PENDING -> COMPLETED is not a legal transition
        logger.update_status("running")
        logger.log_metric("loss", 1.0)
        began = time.monotonic()
        assert not logger.flush(30)  # the refused call is not committed: said by this flush
        assert time.monotonic() - began < 20
    assert logger.stats.calls_failed == 1 and logger.stats.calls_delivered == 1
    assert backend.job_status(job_id) == "RUNNING"


def test_flush_says_false_once_for_a_call_refused_for_good(backend: BackendProcess, tmp_path: Path) -> None:
    job_id, token = backend.create_job()
    with TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path) as logger:
        logger.update_status("running")
        logger.log_metric("loss", 1.0)
        assert logger.flush(30)
        logger.update_status("queued")  # RUNNING -> QUEUED is not a legal transition: refused for good
        logger.log_metric("loss", 0.5)
        assert not logger.flush(30)
        assert logger.stats.calls_failed == 1 and logger.stats.error is None
        # Each refusal is said by the flush after it; what is logged later is committed, and said so.
        logger.log_metric("loss", 0.25)
        assert logger.flush(30)
        logger.update_status("completed")
        assert logger.flush(30)
    assert logger.stats.calls_delivered == 2 and logger.stats.calls_failed == 1
    assert backend.job_status(job_id) == "COMPLETED"


@pytest.mark.parametrize("problem", ["bad token", "unknown job", "another job's token"])
def test_final_errors_stop_delivery_without_spinning(
    backend: BackendProcess, tmp_path: Path, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    job_id, token = backend.create_job()
    if problem == "bad token":
        token = "not-a-token"
    elif problem == "unknown job":
        job_id, token = "no-such-job", backend.internal_token
    else:
        _, token = backend.create_job()
    with caplog.at_level(logging.ERROR, logger="trainingplatform_sdk.logger"):
        logger = TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path)
        logger.log_metric("loss", 1.0)
        assert not logger.flush(30)
        report = logger.close(5)
    assert report.error is not None
    assert any(code in report.error for code in ("UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND"))
    assert report.reconnects == 0 and report.pending_metrics == 1  # kept in the spool for a later replay
    assert len([r for r in caplog.records if "refused telemetry for good" in r.getMessage()]) == 1
    assert token not in caplog.text


def test_dataloader_workers_forked_while_streaming_send_nothing(backend: BackendProcess, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, Dataset

    job_id, token = backend.create_job()
    logger = TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path, settings=SETTINGS)

    class Samples(Dataset):
        def __len__(self) -> int:
            return 64

        def __getitem__(self, index: int):  # type: ignore[no-untyped-def]
            # In a forked worker these are no-ops: the child must not touch the parent's channel.
            logger.log_metric("worker/item", float(index))
            logger.log_message("from a worker")
            return torch.tensor([float(index), float(logger.enabled)])

    steps = 0
    for epoch in range(2):
        loader = DataLoader(Samples(), batch_size=8, num_workers=2, multiprocessing_context="fork")
        for batch in loader:
            assert batch[:, 1].sum().item() == 0  # every worker saw a disabled logger
            logger.log_metric("train/loss", float(batch[:, 0].mean()), step=steps, epoch=epoch)
            steps += 1
        assert logger.flush(30)  # the parent's streams still work after the forks
    report = logger.close(30)
    assert logger.stats.logged_metrics == steps == 16
    assert backend.metric_sequences(job_id) == list(range(1, 17))
    assert backend.log_sequences(job_id) == []
    assert_report_matches_database(report, backend, job_id)
