"""deploy/docker-compose.yml (and its GPU override): parsed against the Compose specification, checked for what
each service needs, and its environment fed to the services' own settings loaders.

`docker compose config` runs too where the Compose plugin exists; the CI machine has the docker client without it,
so that one check is skipped there, with the reason printed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from compose_spec import ComposeSpecification, PyCompose
from deploy_files import (
    COMPOSE_FILE,
    DEPLOY,
    ENV_EXAMPLE,
    GPU_FILE,
    ROOT,
    VARIABLE,
    dashboard_variables,
    dockerfile,
    env_example,
    environment,
    healthcheck_command,
    interpolate,
    load,
    resolved_compose,
)
from trainingplatform_backend import settings as backend_settings
from trainingplatform_dashboard import settings as dashboard_settings
from trainingplatform_sdk.trainer_service import settings as trainer_settings

OUR_SERVICES = {"backend": 50051, "trainer-timm": 50061, "trainer-ultralytics": 50062}
TRAINERS = ("trainer-timm", "trainer-ultralytics")
SECRET_VARIABLES = (
    "INTERNAL_AUTH_TOKEN",
    "READ_AUTH_TOKEN",
    "POSTGRES_PASSWORD",
    "S3_ACCESS_KEY_ID",
    "S3_SECRET_ACCESS_KEY",
    "TP_DASHBOARD_TOKEN",
)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load(COMPOSE_FILE)


@pytest.fixture(scope="module")
def resolved() -> dict:
    return resolved_compose()


def test_files_follow_the_compose_specification(resolved: dict):
    # After interpolation, as compose reads them: the parser checks values too (image tags, durations, ports).
    for data in (resolved, interpolate(load(GPU_FILE), env_example())):
        parsed = PyCompose.from_json(json.dumps(data))  # strict: an unknown key is an error
        parsed.validate()
        ComposeSpecification.model_validate(parsed.to_dict())


def test_the_specification_check_is_not_vacuous(resolved: dict):
    broken = json.loads(json.dumps(resolved))
    broken["services"]["backend"]["healthcheck"]["retrys"] = 3
    with pytest.raises(ValueError, match="retrys"):
        PyCompose.from_json(json.dumps(broken))


def test_the_whole_stack_is_there(compose: dict):
    assert set(compose["services"]) == {"postgres", "seaweedfs", "mlflow", "backend", *TRAINERS, "dashboard"}


def test_every_service_has_an_image_a_healthcheck_and_a_restart_policy(compose: dict):
    for name, service in compose["services"].items():
        assert "image" in service or "build" in service, name
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"
        assert service.get("restart") == "unless-stopped", name


def test_our_images_build_from_the_repository_root(compose: dict):
    for name in ("mlflow", "dashboard", *OUR_SERVICES):
        build = compose["services"][name]["build"]
        assert (DEPLOY / build["context"]).resolve() == ROOT
        assert (ROOT / build["dockerfile"]).is_file(), build["dockerfile"]
        assert compose["services"][name]["image"].startswith("trainingplatform/")


def test_our_services_check_grpc_health_and_run_hardened(compose: dict):
    for name in OUR_SERVICES:
        service = compose["services"][name]
        assert service["healthcheck"]["test"] == ["CMD", "python", "/opt/tp/grpc_health_check.py"]
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert service["read_only"] is True and "/tmp" in service["tmpfs"]
        assert any(volume.endswith(":/data") for volume in service["volumes"]), f"{name}: /data must be a volume"


def test_depends_on_waits_for_services_that_exist(compose: dict):
    services = compose["services"]
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert condition["condition"] == "service_healthy", f"{name} -> {dependency}"
    assert "postgres" in services["backend"]["depends_on"]
    assert {"postgres", "seaweedfs"} <= set(services["mlflow"]["depends_on"])
    for trainer in TRAINERS:
        assert {"mlflow", "seaweedfs"} <= set(services[trainer]["depends_on"])


def test_ports_are_published_on_loopback_only(compose: dict):
    published = {name: s.get("ports", []) for name, s in compose["services"].items()}
    assert published["backend"] == ["127.0.0.1:50051:50051"]
    assert published["mlflow"] == ["127.0.0.1:5000:5000"]
    assert published["seaweedfs"] == ["127.0.0.1:8333:8333"]
    assert published["dashboard"] == ["127.0.0.1:8080:8080"]
    for name, ports in published.items():
        assert all(port.startswith("127.0.0.1:") for port in ports), name
    # The trainers are called by the backend only, over the compose network.
    assert not published["trainer-timm"] and not published["trainer-ultralytics"]


def test_every_variable_is_documented_in_the_env_file(compose: dict):
    documented = env_example()
    text = COMPOSE_FILE.read_text() + GPU_FILE.read_text()
    used = {match.group(1) for match in VARIABLE.finditer(text)} - {"TORCH_CUDA_INDEX_URL"}
    assert used <= set(documented), f"not in deploy/.env.example: {sorted(used - set(documented))}"
    # Secrets have no default in the compose file: compose stops when deploy/.env lacks them.
    for name in SECRET_VARIABLES:
        if name != "READ_AUTH_TOKEN":
            assert re.search(r"\$\{" + name + r":\?", text), f"{name} should be required (${{{name}:?...}})"


def test_the_env_file_holds_placeholders_only():
    for name in SECRET_VARIABLES:
        assert env_example()[name].startswith("change-me"), f"{name}: only placeholders in .env.example"
    ignored = (DEPLOY / ".gitignore").read_text().splitlines()
    assert ".env" in ignored, "deploy/.env must never be committed"


def test_a_missing_secret_stops_compose(compose: dict):
    env = env_example()
    del env["INTERNAL_AUTH_TOKEN"]
    with pytest.raises(AssertionError, match="INTERNAL_AUTH_TOKEN is required"):
        interpolate(compose, env)


def test_backend_settings_accept_the_backend_environment(resolved: dict):
    env = environment(resolved["services"]["backend"])
    loaded = backend_settings.load(env=env)
    assert loaded.listen == "0.0.0.0:50051"
    assert loaded.internal_auth_token == env_example()["INTERNAL_AUTH_TOKEN"]
    assert loaded.effective_telemetry_endpoint == "grpc://backend:50051"
    assert loaded.metrics_port == 9090
    url = urlsplit(loaded.effective_database_url)
    assert (url.scheme, url.hostname, url.port, url.path) == ("postgresql+psycopg", "postgres", 5432, "/platform")
    assert url.password == env_example()["POSTGRES_PASSWORD"]
    assert resolved["services"]["postgres"]["environment"]["POSTGRES_DB"] == "platform"
    # Each trainer address is a compose service listening on that port.
    assert loaded.trainers == {"timm": ["trainer-timm:50061"], "ultralytics": ["trainer-ultralytics:50062"]}
    for (address,) in loaded.trainers.values():
        host, port = address.split(":")
        assert environment(resolved["services"][host])["TP_TRAINER_LISTEN"] == f"0.0.0.0:{port}"


def test_dashboard_settings_accept_the_dashboard_environment(resolved: dict):
    services = resolved["services"]
    env = environment(services["dashboard"])
    # Only what the dashboard reads: a variable it ignores would be a setting that silently does nothing.
    assert set(env) <= dashboard_variables(), sorted(set(env) - dashboard_variables())
    loaded = dashboard_settings.load(env=env)
    # Every address of the container, on the port published on the host's loopback.
    assert loaded.listen == "0.0.0.0:8080"
    assert services["dashboard"]["ports"] == [f"127.0.0.1:{loaded.port}:{loaded.port}"]
    # The backend by its service name, on the port it listens on.
    host, port = loaded.backend_address.split(":")
    assert environment(services[host])["TP_BACKEND_LISTEN"] == f"0.0.0.0:{port}"
    assert "backend" in services["dashboard"]["depends_on"]
    # The backend's front-end token writes, its read token reads, and the login token is the operator's.
    backend = environment(services["backend"])
    assert loaded.write_token == backend["FRONTEND_AUTH_TOKEN"] == env_example()["FRONTEND_AUTH_TOKEN"]
    assert loaded.read_token == backend["READ_AUTH_TOKEN"] == env_example()["READ_AUTH_TOKEN"]
    assert loaded.login_token == env_example()["TP_DASHBOARD_TOKEN"] and not loaded.login_token_one_time
    # Served over plain HTTP on loopback: a Secure cookie is for an HTTPS proxy in front (.env can turn it on).
    assert loaded.secure_cookie is False
    assert loaded.metrics_port == 9090


def test_dashboard_runs_hardened_and_checks_its_health(compose: dict):
    service = compose["services"]["dashboard"]
    assert service["healthcheck"]["test"] == ["CMD", *healthcheck_command(dockerfile("dashboard"))]
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert service["read_only"] is True and "/tmp" in service["tmpfs"]


@pytest.mark.parametrize("name", TRAINERS)
def test_trainer_settings_accept_the_trainer_environment(resolved: dict, name: str, tmp_path: Path):
    env = environment(resolved["services"][name])
    loaded = trainer_settings.load(f"127.0.0.1:{OUR_SERVICES[name]}", env={**env, "TP_DATA_DIR": str(tmp_path)})
    assert loaded.listen == f"0.0.0.0:{OUR_SERVICES[name]}"
    assert loaded.internal_auth_token == env_example()["INTERNAL_AUTH_TOKEN"]
    assert loaded.metrics_port == 9090
    assert not {"DATABASE_URL", "POSTGRES_PASSWORD"} & set(env), "trainers never see the database"
    # Data sets and local .pt models (docs/deployment.md: `/models/yolo11n.pt`) are both paths StartTraining checks
    # against the data roots: /datasets alone refused every local model.
    assert {Path("/datasets"), Path("/models")} <= set(loaded.data_roots), loaded.data_roots


@pytest.mark.parametrize("name", TRAINERS)
def test_trainers_reach_mlflow_and_seaweedfs_with_their_keys(resolved: dict, name: str):
    services = resolved["services"]
    env = environment(services[name])
    mlflow = urlsplit(env["MLFLOW_TRACKING_URI"])
    assert (mlflow.hostname, mlflow.port) == ("mlflow", 5000)
    assert "127.0.0.1:5000:5000" in services["mlflow"]["ports"]
    # MLflow refuses Host headers it does not know: the one the trainers send must be allowed.
    allowed_hosts = environment(services["mlflow"])["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert f"{mlflow.hostname}:{mlflow.port}" in allowed_hosts
    s3 = urlsplit(env["AWS_S3_ENDPOINT_URL"])
    assert (s3.hostname, s3.port) == ("seaweedfs", 8333)
    seaweedfs = services["seaweedfs"]
    assert environment(seaweedfs)["AWS_ACCESS_KEY_ID"] == env["AWS_ACCESS_KEY_ID"]
    assert environment(seaweedfs)["AWS_SECRET_ACCESS_KEY"] == env["AWS_SECRET_ACCESS_KEY"]
    created = next(arg for arg in seaweedfs["command"] if arg.startswith("-bucket=")).removeprefix("-bucket=")
    assert env["TP_ARTIFACTS_BUCKET"] in created.split(",")
    mlflow_env = environment(services["mlflow"])
    assert urlsplit(mlflow_env["MLFLOW_ARTIFACTS_DESTINATION"]).hostname in created.split(",")
    assert mlflow_env["MLFLOW_S3_ENDPOINT_URL"] == env["AWS_S3_ENDPOINT_URL"]
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://postgres:")
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"].endswith("@postgres:5432/mlflow")
    assert "CREATE DATABASE mlflow;" in (DEPLOY / "compose" / "postgres-init.sql").read_text()


def test_gpu_override_reserves_a_gpu_and_builds_cuda_torch(compose: dict):
    override = load(GPU_FILE)
    assert set(override["services"]) == set(TRAINERS)
    for name in TRAINERS:
        service = override["services"][name]
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == 1
        index = interpolate(service["build"]["args"]["TORCH_INDEX_URL"], {})
        assert index.startswith("https://download.pytorch.org/whl/cu"), index
        # A separate tag, so the CPU and CUDA images of a trainer never overwrite each other.
        assert service["image"] != compose["services"][name]["image"]
    # The base file keeps GPUs out: it must run on any Docker host.
    assert all("deploy" not in compose["services"][n] for n in TRAINERS)


def test_docker_compose_config_accepts_the_files():
    docker = shutil.which("docker")
    probe = None
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
    if probe is None or probe.returncode != 0:
        why = "no docker client" if probe is None else (probe.stderr or probe.stdout).strip().splitlines()[0]
        reason = f"`docker compose` is not available here ({why})"
        print(f"SKIPPED docker compose config: {reason}")
        pytest.skip(reason)
    result = subprocess.run(
        [docker, "compose", "--env-file", ENV_EXAMPLE, "-f", COMPOSE_FILE, "-f", GPU_FILE, "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
