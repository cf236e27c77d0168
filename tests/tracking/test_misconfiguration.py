"""A wrong MLflow URI, wrong S3 credentials or a missing bucket fail the job at start, naming the setting."""

from __future__ import annotations

import pytest
from support.backend import free_port
from trainingplatform.common.v1 import common_pb2


def unreachable_url() -> str:
    """A loopback URL where nothing listens: connections are refused at once."""
    return f"http://127.0.0.1:{free_port()}"


def assert_failed_at_start(run, expected: str, *, secrets: tuple[str, ...] = ()) -> None:
    assert run.returncode == 1, run.stderr[-3000:]
    assert run.job.status == common_pb2.JOB_STATUS_FAILED
    assert expected in run.job.error_message
    assert "Traceback" not in run.stderr  # the message, not a stack trace
    assert not (run.output_dir / "weights").exists()  # failed before any training
    for secret in secrets:
        assert secret not in run.job.error_message and secret not in run.stderr


def test_wrong_tracking_uri(run_training, s3) -> None:
    url = unreachable_url()
    run = run_training({**s3.env(), "MLFLOW_TRACKING_URI": url})
    assert_failed_at_start(run, f"MLFLOW_TRACKING_URI={url} is not reachable", secrets=(s3.secret_key,))


def test_credentials_in_the_tracking_uri_are_never_shown(run_training, s3) -> None:
    url = unreachable_url()
    run = run_training({**s3.env(), "MLFLOW_TRACKING_URI": url.replace("//", "//ann:s3cr3t@")})
    assert_failed_at_start(run, f"MLFLOW_TRACKING_URI={url} is not reachable", secrets=("s3cr3t",))


def test_wrong_s3_secret(run_training, s3, mlflow_server) -> None:
    env = {**s3.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret", "MLFLOW_TRACKING_URI": mlflow_server.uri}
    run = run_training(env)
    expected = f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY were rejected by AWS_S3_ENDPOINT_URL={s3.endpoint_url}"
    assert_failed_at_start(run, expected, secrets=("not-the-secret",))


def test_missing_bucket(run_training, s3, mlflow_server) -> None:
    env = {**s3.env(), "TP_ARTIFACTS_BUCKET": "no-such-bucket", "MLFLOW_TRACKING_URI": mlflow_server.uri}
    run = run_training(env)
    expected = f"TP_ARTIFACTS_BUCKET='no-such-bucket' does not exist at AWS_S3_ENDPOINT_URL={s3.endpoint_url}"
    assert_failed_at_start(run, expected, secrets=(s3.secret_key,))


def test_unreachable_s3_endpoint(run_training, s3, mlflow_server) -> None:
    url = unreachable_url()
    run = run_training({**s3.env(), "AWS_S3_ENDPOINT_URL": url, "MLFLOW_TRACKING_URI": mlflow_server.uri})
    assert_failed_at_start(run, f"AWS_S3_ENDPOINT_URL={url} is not reachable", secrets=(s3.secret_key,))


def test_credentials_in_the_s3_endpoint_are_never_shown(run_training) -> None:
    """botocore repeats the endpoint URL, user:password included, in its own message: the job's error must not."""
    url = unreachable_url()
    env = {
        "AWS_S3_ENDPOINT_URL": url.replace("//", "//u:pw-s3cr3t@"),
        "TP_ARTIFACTS_BUCKET": "bkt",
        "AWS_ACCESS_KEY_ID": "key-id",
        "AWS_SECRET_ACCESS_KEY": "key-secret",
    }
    run = run_training(env)
    assert_failed_at_start(run, f"AWS_S3_ENDPOINT_URL={url} is not reachable", secrets=("pw-s3cr3t", "u:pw"))
    assert f'"{url}/bkt"' in run.job.error_message  # botocore's URL stays, without its credentials


def test_credentials_in_a_scheme_less_s3_endpoint_are_refused_and_never_shown(run_training) -> None:
    """`user:password@host:port` without http://: botocore's "Invalid endpoint" message repeated it whole."""
    port = free_port()
    env = {
        "AWS_S3_ENDPOINT_URL": f"minio:Sup3rSecretPW@127.0.0.1:{port}",
        "TP_ARTIFACTS_BUCKET": "bkt",
        "AWS_ACCESS_KEY_ID": "key-id",
        "AWS_SECRET_ACCESS_KEY": "key-secret",
        "TP_MLFLOW_ENABLED": "false",
    }
    run = run_training(env)
    expected = f"AWS_S3_ENDPOINT_URL=127.0.0.1:{port} is not a valid endpoint URL: it must start with http://"
    assert_failed_at_start(run, expected, secrets=("Sup3rSecretPW", "minio:Sup"))
    assert "Sup3rSecretPW" not in run.stdout


@pytest.mark.parametrize("password", ["pw with spaces", 'pw"quoted', "pw<angled>"])
def test_a_password_that_a_url_cannot_hold_unencoded_is_never_shown(run_training, password: str) -> None:
    """A password typed unencoded with a space or a quote in it: the message's URL ends there for a pattern, so only
    the configured secret itself, removed wherever it shows, keeps it out of the job's error and the logs."""
    env = {
        "AWS_S3_ENDPOINT_URL": f"http://minio:{password}@127.0.0.1:{free_port()}",
        "TP_ARTIFACTS_BUCKET": "bkt",
        "AWS_ACCESS_KEY_ID": "key-id",
        "AWS_SECRET_ACCESS_KEY": "key-secret",
        "TP_MLFLOW_ENABLED": "false",
    }
    run = run_training(env)
    assert_failed_at_start(run, "AWS_S3_ENDPOINT_URL=", secrets=(password, password[2:]))
    assert password not in run.stdout


def test_credentials_in_a_scheme_less_tracking_uri_are_refused_and_never_shown(run_training) -> None:
    port = free_port()
    run = run_training({"MLFLOW_TRACKING_URI": f"alice:PWsecret9@127.0.0.1:{port}"})
    expected = f"MLFLOW_TRACKING_URI=127.0.0.1:{port} is not a valid tracking URI: it holds credentials"
    assert_failed_at_start(run, expected, secrets=("PWsecret9", "alice:"))
    assert "PWsecret9" not in run.stdout
    # The hint on where credentials go survives the redaction of the message the job and tp-train report.
    hint = "credentials as user:password@ between https:// and the host"
    assert hint in run.job.error_message and hint in run.stderr


def test_a_read_only_local_store_fails_the_job_with_the_cause(run_training, tmp_path) -> None:
    """SQLAlchemy's message starts with a hint ("raised as a result of Query-invoked autoflush"): the job's error
    must say what went wrong, not only that hint."""
    from mlflow import MlflowClient

    store = tmp_path / "ro" / "mlflow.db"
    store.parent.mkdir()
    MlflowClient(f"sqlite:///{store}").create_experiment("read-only")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///file:{store}?mode=ro&uri=true", "MLFLOW_EXPERIMENT_NAME": "read-only"}
    run = run_training(env)
    assert run.returncode == 1, run.stderr[-3000:]
    assert run.job.status == common_pb2.JOB_STATUS_FAILED
    expected = "cannot create a run in experiment MLFLOW_EXPERIMENT_NAME='read-only': (sqlite3.OperationalError) "
    assert expected + "attempt to write a readonly database" in run.job.error_message
    assert "[SQL:" not in run.job.error_message


def test_an_aws_profile_that_does_not_exist_is_named(run_training, s3, tmp_path) -> None:
    """boto3 raised ProfileNotFound from the store's construction: the job failed as an exception in training, with
    a stack trace, instead of naming AWS_PROFILE."""
    env = {
        **s3.env(),
        "AWS_PROFILE": "no-such-profile",
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),  # none: no profile exists
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
        "TP_MLFLOW_ENABLED": "false",
    }
    run = run_training(env)
    expected = f"TP_ARTIFACTS_BUCKET={s3.bucket!r} cannot be used with AWS_PROFILE='no-such-profile'"
    assert_failed_at_start(run, expected, secrets=(s3.secret_key,))
    assert "The config profile (no-such-profile) could not be found" in run.job.error_message
