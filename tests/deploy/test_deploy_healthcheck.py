"""deploy/docker/grpc_health_check.py, the HEALTHCHECK of every service image, run the way Docker runs it: as a
process, reading the listen address from the environment as the images set it, against a real backend and against
the trainer services started with the environment their images and docker-compose.yml give them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from deploy_files import (
    dockerfile,
    env_example,
    env_of,
    environment,
    healthcheck_command,
    resolved_compose,
    stages,
    values,
)
from support.backend import BackendProcess, free_port
from support.certs import make_pki
from trainingplatform.trainer.v1 import trainer_pb2, trainer_pb2_grpc

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "grpc_health_check.py"
LISTEN_VARIABLES = (
    "TP_BACKEND_LISTEN",
    "TP_TRAINER_LISTEN",
    "TP_TLS_CERT_FILE",
    "TP_TLS_KEY_FILE",
    "TP_TLS_CA_FILE",
    "TP_HEALTHCHECK_TLS_CA_FILE",
)


def run_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in LISTEN_VARIABLES}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env={**base, **(env or {})}, capture_output=True, text=True, timeout=30
    )


@pytest.fixture(scope="module")
def plain_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendProcess]:
    directory = tmp_path_factory.mktemp("healthcheck")
    backend = BackendProcess(f"sqlite:///{directory / 'backend.db'}", directory / "data")
    backend.start()
    yield backend
    backend.close()


def test_serving_backend_passes_with_the_address_from_the_image_environment(plain_backend: BackendProcess):
    # The image sets TP_BACKEND_LISTEN=0.0.0.0:50051: the check turns the wildcard into loopback.
    result = run_check(env={"TP_BACKEND_LISTEN": f"0.0.0.0:{plain_backend.port}"})
    assert result.returncode == 0, result.stderr
    result = run_check(env={"TP_TRAINER_LISTEN": f"[::]:{plain_backend.port}"})
    assert result.returncode == 0, result.stderr


def test_explicit_address_and_service(plain_backend: BackendProcess):
    assert run_check(plain_backend.address).returncode == 0
    unknown = run_check(plain_backend.address, "--service", "no.such.Service")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr


def test_nothing_listening_fails():
    result = run_check(f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr or "DEADLINE_EXCEEDED" in result.stderr


def test_no_address_at_all_is_an_error():
    result = run_check()
    assert result.returncode != 0 and "TP_BACKEND_LISTEN" in result.stderr


def test_tls_backend_is_checked_over_tls(tmp_path: Path):
    pki = make_pki(tmp_path / "pki")
    tls = {"TP_TLS_CERT_FILE": str(pki.server_cert), "TP_TLS_KEY_FILE": str(pki.server_key)}
    backend = BackendProcess(
        f"sqlite:///{tmp_path / 'backend.db'}",
        tmp_path / "data",
        extra_env=tls,
        credentials=grpc.ssl_channel_credentials(root_certificates=pki.ca_cert.read_bytes()),
    )
    backend.start()
    try:
        env = {**tls, "TP_BACKEND_LISTEN": f"0.0.0.0:{backend.port}", "TP_HEALTHCHECK_TLS_CA_FILE": str(pki.ca_cert)}
        assert run_check(env=env).returncode == 0
        # The same server, asked in plaintext, is not healthy: the check must follow the service's TLS setting.
        assert run_check(backend.address, "--timeout", "2").returncode == 1
    finally:
        backend.close()


def test_tls_trainer_is_checked_with_its_own_certificate_not_the_backends_ca(tmp_path: Path):
    """A trainer's TP_TLS_CA_FILE names the CA of the backend it reports to (docs/trainer_service.md), which need
    not be the one that signed the trainer's own certificate. The check used it to verify the trainer, so the
    image's HEALTHCHECK and a Kubernetes exec probe failed for ever (the pod restarted every ~30 s). It trusts
    TP_HEALTHCHECK_TLS_CA_FILE, else the service's own certificate."""
    own, backends = make_pki(tmp_path / "own"), make_pki(tmp_path / "backend")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in LISTEN_VARIABLES},
        "INTERNAL_AUTH_TOKEN": "a-service-token-for-this-test",
        "TP_DATA_DIR": str(tmp_path / "data"),
        "TP_TRAINER_LISTEN": f"0.0.0.0:{port}",
        "TP_TLS_CERT_FILE": str(own.server_cert),
        "TP_TLS_KEY_FILE": str(own.server_key),
        "TP_TLS_CA_FILE": str(backends.ca_cert),
    }
    with (tmp_path / "trainer.log").open("wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "tp-trainer-timm")], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        check_env = {key: env[key] for key in ("TP_TRAINER_LISTEN", "TP_TLS_CERT_FILE", "TP_TLS_CA_FILE")}
        for _ in range(600):
            assert process.poll() is None, (tmp_path / "trainer.log").read_text()
            if "serving on" in (tmp_path / "trainer.log").read_text():
                break
            time.sleep(0.1)
        result = run_check(env=check_env)
        assert result.returncode == 0, result.stderr
        # TP_HEALTHCHECK_TLS_CA_FILE comes first: the CA that signed the trainer passes, another fails.
        assert run_check(env={**check_env, "TP_HEALTHCHECK_TLS_CA_FILE": str(own.ca_cert)}).returncode == 0
        wrong = run_check("--timeout", "2", env={**check_env, "TP_HEALTHCHECK_TLS_CA_FILE": str(backends.ca_cert)})
        assert wrong.returncode == 1
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, (tmp_path / "trainer.log").read_text()


def image_environment(name: str, root: Path) -> dict[str, str]:
    """The runtime stage's ENV with its absolute paths moved under `root` (PATH stays this machine's)."""
    env = env_of(stages(dockerfile(name))[-1])
    env.pop("PATH")
    return {k: str(root / v.lstrip("/")) if v.startswith("/") else v for k, v in env.items()}


@pytest.mark.parametrize("name", ["trainer-timm", "trainer-ultralytics"])
def test_trainer_starts_healthy_with_its_image_and_compose_environment(name: str, tmp_path: Path):
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in LISTEN_VARIABLES},
        **image_environment(name, tmp_path),
        **environment(resolved_compose()["services"][name]),
        "TP_TRAINER_LISTEN": f"127.0.0.1:{port}",
    }
    (entry_point,) = json.loads(values(stages(dockerfile(name))[-1], "ENTRYPOINT")[0])
    Path(env["TP_DATA_DIR"]).mkdir(parents=True)
    with (tmp_path / "trainer.log").open("wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / entry_point)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        for _ in range(600):
            assert process.poll() is None, (tmp_path / "trainer.log").read_text()
            if run_check(env={"TP_TRAINER_LISTEN": f"0.0.0.0:{port}"}).returncode == 0:
                break
        else:
            raise AssertionError(f"{name} never became healthy:\n{(tmp_path / 'trainer.log').read_text()}")
        # It took its token from the environment compose gives it.
        token = env_example()["INTERNAL_AUTH_TOKEN"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            capabilities = trainer_pb2_grpc.TrainerServiceStub(channel).GetCapabilities(
                trainer_pb2.GetCapabilitiesRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=30
            )
        assert capabilities.framework == name.removeprefix("trainer-")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, (tmp_path / "trainer.log").read_text()


def test_dashboard_starts_healthy_with_its_image_and_compose_environment(tmp_path: Path):
    # The image's HEALTHCHECK (GET /healthz on the port of TP_DASHBOARD_LISTEN), run as Docker runs it, against a
    # tp-dashboard started with the environment its image and docker-compose.yml give it (on free ports here).
    port, metrics_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in LISTEN_VARIABLES},
        **image_environment("dashboard", tmp_path),
        **environment(resolved_compose()["services"]["dashboard"]),
        "TP_METRICS_PORT": str(metrics_port),
    }
    assert env["TP_DASHBOARD_LISTEN"] == "0.0.0.0:8080"
    env["TP_DASHBOARD_LISTEN"] = f"0.0.0.0:{port}"
    python, *check = healthcheck_command(dockerfile("dashboard"))
    assert python == "python"

    def healthcheck() -> int:
        return subprocess.run([sys.executable, *check], env=env, capture_output=True, timeout=30).returncode

    assert healthcheck() != 0, "nothing listens yet"
    (entry_point,) = json.loads(values(stages(dockerfile("dashboard"))[-1], "ENTRYPOINT")[0])
    Path(env["TP_DATA_DIR"]).mkdir(parents=True)
    log_path = tmp_path / "dashboard.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / entry_point)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        for _ in range(600):
            assert process.poll() is None, log_path.read_text()
            if healthcheck() == 0:
                break
        else:
            raise AssertionError(f"the dashboard never became healthy:\n{log_path.read_text()}")
        # The login token compose gives it logs a browser in (a redirect with the session cookie), and again.
        token = env_example()["TP_DASHBOARD_TOKEN"]
        opener = urllib.request.build_opener(NoRedirect)
        for _ in range(2):
            with pytest.raises(urllib.error.HTTPError) as redirect:
                opener.open(f"http://127.0.0.1:{port}/login?token={token}", timeout=10)
            assert redirect.value.code == 303 and "tp_session" in redirect.value.headers["set-cookie"]
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            assert b"tp_dashboard_sse_clients" in response.read()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log_path.read_text()
        assert "Application shutdown complete" in log_path.read_text()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None
