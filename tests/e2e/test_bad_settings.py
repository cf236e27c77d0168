"""A setting with a bad value stops a service at start, in one line that names the setting: never a traceback, never
a value used as it came (a port past 65535 wrapped around, a grace period below 0, a word read as "off")."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support.backend import VENV_BIN, BackendProcess, auth
from trainer_service.trainer_process import spec
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform_backend import settings as backend_settings
from trainingplatform_dashboard import settings as dashboard_settings
from trainingplatform_sdk.trainer_service import settings as trainer_settings

BACKEND_CASES = [
    ({"TP_BACKEND_LISTEN": "127.0.0.1:65537"}, "TP_BACKEND_LISTEN"),
    ({"TP_BACKEND_LISTEN": "127.0.0.1"}, "TP_BACKEND_LISTEN"),
    ({"TP_LOG_LEVEL": "loud"}, "TP_LOG_LEVEL"),
    ({"TP_SHUTDOWN_GRACE_S": "abc"}, "TP_SHUTDOWN_GRACE_S"),
    ({"TP_SHUTDOWN_GRACE_S": "-1"}, "TP_SHUTDOWN_GRACE_S"),
    ({"TP_MIGRATE_ON_START": "maybe"}, "TP_MIGRATE_ON_START"),
    ({"TP_SUBSCRIBER_BUFFER_POINTS": "-1"}, "TP_SUBSCRIBER_BUFFER_POINTS"),
    ({"TP_TELEMETRY_ENDPOINT": "ftp://backend:50051"}, "TP_TELEMETRY_ENDPOINT"),
    ({"TP_MAX_CONNECTION_AGE_S": "-5"}, "TP_MAX_CONNECTION_AGE_S"),
    ({"TP_DISPATCH_TIMEOUT_S": "0"}, "TP_DISPATCH_TIMEOUT_S"),
    ({"TP_TRAINER_LEASE_S": "soon"}, "TP_TRAINER_LEASE_S"),
    ({"TP_WATCH_INTERVAL_S": "0"}, "TP_WATCH_INTERVAL_S"),
    ({"TP_TRAINER_CALL_TIMEOUT_S": "nan"}, "TP_TRAINER_CALL_TIMEOUT_S"),
    ({"TP_JOB_TOKEN_GRACE_S": "an hour"}, "TP_JOB_TOKEN_GRACE_S"),
    ({"TP_MAX_MESSAGE_BYTES": "8MiB"}, "TP_MAX_MESSAGE_BYTES"),
]


@pytest.mark.parametrize(("env", "name"), BACKEND_CASES, ids=[f"{name}={env[name]}" for env, name in BACKEND_CASES])
def test_the_backend_refuses_a_bad_setting_naming_it(env: dict[str, str], name: str) -> None:
    with pytest.raises(ValueError, match=name) as refused:
        backend_settings.load(env=env)
    assert repr(env[name]) in str(refused.value) or env[name] in str(refused.value), "the message shows the value"


def test_the_backend_reads_good_values_of_the_same_settings() -> None:
    settings = backend_settings.load(
        env={
            "TP_BACKEND_LISTEN": "[::1]:0",
            "TP_LOG_LEVEL": "warn",
            "TP_SHUTDOWN_GRACE_S": "0",
            "TP_MIGRATE_ON_START": "OFF",
            "TP_TELEMETRY_ENDPOINT": "https://backend.example.com",
            "TP_MAX_CONNECTION_AGE_S": "0",
        }
    )
    assert (settings.listen, settings.log_level, settings.shutdown_grace_s) == ("[::1]:0", "WARNING", 0)
    assert settings.migrate_on_start is False
    assert settings.effective_telemetry_endpoint == "https://backend.example.com"


TOKEN_SETTINGS = ("INTERNAL_AUTH_TOKEN", "FRONTEND_AUTH_TOKEN", "READ_AUTH_TOKEN")
UNSENDABLE_TOKENS = {"non-ASCII": "svc-tökén", "control character": "svc\x01token", "white space only": " \n"}


@pytest.mark.parametrize("value", UNSENDABLE_TOKENS.values(), ids=UNSENDABLE_TOKENS.keys())
@pytest.mark.parametrize("name", TOKEN_SETTINGS)
def test_the_backend_refuses_a_token_no_client_can_send_naming_the_setting_not_the_token(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name) as refused:
        backend_settings.load(env={name: value})
    assert "svc" not in str(refused.value) and "ö" not in str(refused.value)


def test_the_backend_strips_white_space_around_its_tokens() -> None:
    """A token from a Kubernetes Secret written with `echo` ends in a newline: clients send it without one (gRPC
    cannot send one), so every call would be refused."""
    settings = backend_settings.load(
        env={
            "INTERNAL_AUTH_TOKEN": "svc-token\n",
            "FRONTEND_AUTH_TOKEN": " front-token \r\n",
            "READ_AUTH_TOKEN": "\tread",
        }
    )
    assert settings.internal_auth_token == "svc-token"
    assert settings.frontend_auth_token == "front-token"
    assert settings.read_auth_token == "read"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"INTERNAL_AUTH_TOKEN": "same", "READ_AUTH_TOKEN": "same"}, "READ_AUTH_TOKEN must differ from"),
        ({"INTERNAL_AUTH_TOKEN": "same\n", "READ_AUTH_TOKEN": "same"}, "READ_AUTH_TOKEN must differ from"),
        ({"INTERNAL_AUTH_TOKEN": "same\n", "FRONTEND_AUTH_TOKEN": " same"}, "FRONTEND_AUTH_TOKEN must differ from"),
    ],
)
def test_the_backend_refuses_a_read_or_front_end_token_equal_to_a_stronger_one(
    env: dict[str, str], message: str
) -> None:
    """The read token equal to the internal token would let readers create and cancel jobs, and write telemetry."""
    with pytest.raises(ValueError, match=message) as refused:
        backend_settings.load(env=env)
    assert "same" not in str(refused.value)


def test_a_backend_given_tokens_ending_in_a_newline_takes_them_as_clients_send_them(tmp_path: Path) -> None:
    backend = BackendProcess(f"sqlite:///{tmp_path / 'backend.db'}", tmp_path / "data")
    backend.extra_env = {
        "INTERNAL_AUTH_TOKEN": backend.internal_token + "\n",
        "READ_AUTH_TOKEN": backend.read_token + "\n",
    }
    backend.start()
    try:
        create = jobs_pb2.CreateJobRequest(spec=spec(), dispatch=False)
        created = backend.jobs().CreateJob(create, metadata=auth(backend.internal_token), timeout=10)
        listed = backend.jobs().ListJobs(jobs_pb2.ListJobsRequest(), metadata=auth(backend.read_token), timeout=10)
        assert [job.job_id for job in listed.jobs] == [created.job.job_id]
    finally:
        backend.close()


TRAINER_CASES = [
    ({"TP_TRAINER_LISTEN": "127.0.0.1:99999"}, "TP_TRAINER_LISTEN"),
    ({"TP_LOG_LEVEL": "chatty"}, "TP_LOG_LEVEL"),
    ({"TP_SHUTDOWN_GRACE_S": "abc"}, "TP_SHUTDOWN_GRACE_S"),
    ({"TP_MAX_CONCURRENT_RPCS": "lots"}, "TP_MAX_CONCURRENT_RPCS"),
]


@pytest.mark.parametrize(("env", "name"), TRAINER_CASES, ids=[f"{name}={env[name]}" for env, name in TRAINER_CASES])
def test_a_trainer_refuses_a_bad_setting_naming_it(env: dict[str, str], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        trainer_settings.load("127.0.0.1:50061", env={"INTERNAL_AUTH_TOKEN": "t", **env})


DASHBOARD_CASES = [
    ({"TP_LOG_LEVEL": "verbose"}, "TP_LOG_LEVEL"),
    ({"TP_DASHBOARD_SECURE_COOKIE": "maybe"}, "TP_DASHBOARD_SECURE_COOKIE"),
]


@pytest.mark.parametrize(("env", "name"), DASHBOARD_CASES, ids=[f"{name}={env[name]}" for env, name in DASHBOARD_CASES])
def test_the_dashboard_refuses_a_bad_setting_naming_it(env: dict[str, str], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        dashboard_settings.load(env=env)


@pytest.mark.parametrize(
    ("program", "args", "env", "name"),
    [
        ("tp-backend", ["--listen", "127.0.0.1:65537"], {}, "TP_BACKEND_LISTEN"),
        ("tp-backend", ["--log-level", "LOUD"], {}, "TP_LOG_LEVEL"),
        ("tp-backend", ["--shutdown-grace-s", "-1"], {}, "TP_SHUTDOWN_GRACE_S"),
        ("tp-backend", ["--shutdown-grace-s", "soon"], {}, "TP_SHUTDOWN_GRACE_S"),
        ("tp-backend", ["--workers", "abc"], {}, "TP_BACKEND_WORKERS"),
        ("tp-backend", ["--workers", "0"], {}, "TP_BACKEND_WORKERS"),
        ("tp-backend", ["--metrics-port", "abc"], {}, "TP_METRICS_PORT"),
        ("tp-backend", ["--metrics-port", "70000"], {}, "TP_METRICS_PORT"),
        ("tp-trainer-timm", ["--metrics-port", "abc"], {"INTERNAL_AUTH_TOKEN": "t"}, "TP_METRICS_PORT"),
        ("tp-trainer-timm", ["--max-concurrent-jobs", "many"], {"INTERNAL_AUTH_TOKEN": "t"}, "TP_MAX_CONCURRENT_JOBS"),
        ("tp-dashboard", ["--metrics-port", "abc"], {}, "TP_METRICS_PORT"),
        ("tp-trainer-timm", ["--listen", "127.0.0.1:65537"], {"INTERNAL_AUTH_TOKEN": "t"}, "TP_TRAINER_LISTEN"),
        ("tp-dashboard", [], {"TP_LOG_LEVEL": "verbose"}, "TP_LOG_LEVEL"),
        ("tp-backend", [], {"INTERNAL_AUTH_TOKEN": "svc-tökén"}, "INTERNAL_AUTH_TOKEN"),
        ("tp-backend", [], {"FRONTEND_AUTH_TOKEN": "  "}, "FRONTEND_AUTH_TOKEN"),
        ("tp-backend", [], {"INTERNAL_AUTH_TOKEN": "same", "READ_AUTH_TOKEN": "same"}, "READ_AUTH_TOKEN"),
    ],
)
def test_a_service_started_with_a_bad_setting_exits_2_in_one_line(
    tmp_path: Path, program: str, args: list[str], env: dict[str, str], name: str
) -> None:
    environment = {**os.environ, "TP_DATA_DIR": str(tmp_path), **env}
    result = subprocess.run(
        [str(VENV_BIN / program), *args], env=environment, capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{program}: error: ") and name in lines[0], output
    assert not (tmp_path / "backend.db").exists(), "nothing was started"


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--workers", "0"], {}, "--workers (TP_BACKEND_WORKERS) must be"),
        ([], {"TP_BACKEND_WORKERS": "0"}, "error: TP_BACKEND_WORKERS must be"),
        (["--metrics-port", "abc"], {}, "--metrics-port (TP_METRICS_PORT) must be"),
        ([], {"TP_METRICS_PORT": "abc"}, "error: TP_METRICS_PORT must be"),
        (["--listen", "nowhere"], {}, "--listen (TP_BACKEND_LISTEN) must be"),
    ],
)
def test_the_backend_names_the_flag_or_the_variable_the_user_set(
    tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    environment = {**os.environ, "TP_DATA_DIR": str(tmp_path), **env}
    result = subprocess.run(
        [str(VENV_BIN / "tp-backend"), *args], env=environment, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2, result.stderr
    assert named in result.stderr, result.stderr
