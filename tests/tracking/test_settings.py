"""Reading the tracking and storage settings, and what reaches MLflow: no servers needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainingplatform_sdk.training.artifacts import S3ArtifactStore, StorageError, StorageSettings
from trainingplatform_sdk.training.recorder import RecorderSettings
from trainingplatform_sdk.training.tracking import (
    TrackingError,
    TrackingSettings,
    flatten_params,
    metric_name,
    redact_uri,
    redact_urls,
)


def test_defaults_are_local_stores_in_the_data_dir(tmp_path: Path) -> None:
    settings = RecorderSettings.from_env({}, output_dir=tmp_path / "runs" / "job-1")
    assert settings.tracking == TrackingSettings(
        tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}",
        artifact_location=(tmp_path / "runs" / "mlartifacts").as_uri(),
        from_env_var=False,
    )
    assert settings.storage == StorageSettings(local_dir=tmp_path / "runs" / "artifacts")
    with_data_dir = RecorderSettings.from_env({"TP_DATA_DIR": str(tmp_path / "data")}, output_dir=tmp_path / "x")
    assert with_data_dir.storage.local_dir == tmp_path / "data" / "artifacts"


def test_environment_settings(tmp_path: Path) -> None:
    env = {
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MLFLOW_EXPERIMENT_NAME": "detectors",
        "TP_ARTIFACTS_BUCKET": "models",
        "AWS_S3_ENDPOINT_URL": "https://acct.r2.cloudflarestorage.com",
        "TP_ARTIFACTS_PREFIX": "/team-a/",
    }
    settings = RecorderSettings.from_env(env, output_dir=tmp_path)
    assert settings.tracking == TrackingSettings(tracking_uri="http://mlflow:5000", experiment_name="detectors")
    storage = settings.storage
    assert (storage.bucket, storage.endpoint_url, storage.prefix, storage.region) == (
        "models",
        "https://acct.r2.cloudflarestorage.com",
        "team-a",
        "auto",
    )
    assert RecorderSettings.from_env({"TP_MLFLOW_ENABLED": "false"}, output_dir=tmp_path).tracking is None


def test_an_endpoint_without_a_bucket_is_an_error_naming_both(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="AWS_S3_ENDPOINT_URL=http://s3:8333 is set but TP_ARTIFACTS_BUCKET is not"):
        StorageSettings.from_env({"AWS_S3_ENDPOINT_URL": "http://s3:8333"}, data_dir=tmp_path)


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://ann:s3cr3t@mlflow:5000/prefix", "http://mlflow:5000/prefix"),
        ("postgresql://u:pw@db/mlflow?sslmode=require&password=pw", "postgresql://db/mlflow?sslmode=require"),
        ("sqlite:////data/mlflow.db", "sqlite:////data/mlflow.db"),
        ("sqlite:////data/a@b/mlflow.db", "sqlite:////data/a@b/mlflow.db"),
        ("databricks", "databricks"),
        # An operator's typing: no scheme, a scheme-relative URL, a password with `/`, `?`, `#` or `@` unencoded.
        ("minio:Sup3r@127.0.0.1:8333", "127.0.0.1:8333"),
        ("//u:pw@host:1/x", "//host:1/x"),
        ("http://u:pa/ss@host:1/x", "http://host:1/x"),
        ("https://u:p?w#x@host", "https://host"),
        ("http://u:p@ss@host", "http://host"),
        ("http:/u:pw@host", "host"),
        ("http://TOKEN@host/", "http://host/"),
    ],
)
def test_uris_are_shown_without_credentials(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown
    assert TrackingSettings(tracking_uri=uri).display_uri == shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            'Could not connect to the endpoint URL: "http://u:pw@127.0.0.1:1/bkt"',
            'Could not connect to the endpoint URL: "http://127.0.0.1:1/bkt"',
        ),
        ("at https://a:b@s3:8333/x and http://c:d@other/ too", "at https://s3:8333/x and http://other/ too"),
        ("Invalid endpoint: minio:Sup3r@127.0.0.1:8333", "Invalid endpoint: 127.0.0.1:8333"),
        ("no scheme: user:p/ss@host and 'u:pw@[::1]:9'", "no scheme: host and '[::1]:9'"),
        ("a time 12:30, a mail bob@example.com", "a time 12:30, a mail bob@example.com"),
        ("fetch https://u:p@h/x?token=t: reset (see https://h/y).", "fetch https://h/x: reset (see https://h/y)."),
        ("sqlite:////data/mlflow.db and http://u:p/w@host/a", "sqlite:////data/mlflow.db and http://host/a"),
    ],
)
def test_urls_inside_a_message_lose_their_credentials(text: str, shown: str) -> None:
    assert redact_urls(text) == shown


@pytest.mark.parametrize(
    ("endpoint", "why"),
    [
        ("minio:Sup3r@127.0.0.1:8333", "AWS_S3_ENDPOINT_URL=127.0.0.1:8333 is not a valid endpoint URL: it must start"),
        ("127.0.0.1:8333", "AWS_S3_ENDPOINT_URL=127.0.0.1:8333 is not a valid endpoint URL: it must start"),
        ("s3://bucket", "AWS_S3_ENDPOINT_URL=s3://bucket is not a valid endpoint URL: it must start"),
        ("http://u:Sup3r@127.0.0.1:99999", "AWS_S3_ENDPOINT_URL=http://127.0.0.1:99999 is not a valid endpoint URL"),
        ("http://u:Sup3r@", "AWS_S3_ENDPOINT_URL=http:// is not a valid endpoint URL: it has no host"),
    ],
)
def test_an_endpoint_that_is_not_an_http_url_is_refused_without_its_credentials(
    tmp_path: Path, endpoint: str, why: str
) -> None:
    env = {"AWS_S3_ENDPOINT_URL": endpoint, "TP_ARTIFACTS_BUCKET": "bkt"}
    with pytest.raises(StorageError) as raised:
        StorageSettings.from_env(env, data_dir=tmp_path)
    assert why in str(raised.value)
    assert "Sup3r" not in str(raised.value)


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("alice:PWsecret9@127.0.0.1:5000", "MLFLOW_TRACKING_URI=127.0.0.1:5000 is not a valid tracking URI: it holds"),
        ("mlflow:5000", "MLFLOW_TRACKING_URI=mlflow:5000 is not a valid tracking URI: it has no scheme"),
    ],
)
def test_a_tracking_uri_without_a_scheme_is_refused_without_its_credentials(tmp_path: Path, uri: str, why: str) -> None:
    with pytest.raises(TrackingError) as raised:
        TrackingSettings.from_env({"MLFLOW_TRACKING_URI": uri}, data_dir=tmp_path)
    assert why in str(raised.value)
    assert "PWsecret9" not in str(raised.value)


#: Where the credentials of a tracking URI go, as the refusal says it: no URL with `user:password@` in it, which the
#: redaction of every reported message would cut to `https://host` and so hide the very hint.
CREDENTIALS_HINT = "credentials as user:password@ between https:// and the host"


def test_the_refusal_of_a_scheme_less_tracking_uri_keeps_its_hint_once_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = "alice:S3cretPW99@127.0.0.1:1"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # redact_urls also removes the secrets of this process's settings
    with pytest.raises(TrackingError) as raised:
        TrackingSettings.from_env({"MLFLOW_TRACKING_URI": uri}, data_dir=tmp_path)
    shown = redact_urls(str(raised.value))
    assert CREDENTIALS_HINT in shown
    assert "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD" in shown
    assert "S3cretPW99" not in shown and "alice" not in shown


@pytest.mark.parametrize(
    "uri",
    [
        "http://u:p@mlflow:5000",
        "sqlite:////data/mlflow.db",
        "sqlite:///file:/data/mlflow.db?mode=ro&uri=true",
        "databricks",
        "/data/mlruns",
        "file:///data/mlruns",
    ],
)
def test_tracking_uris_with_a_scheme_or_none_needed_are_accepted(tmp_path: Path, uri: str) -> None:
    settings = TrackingSettings.from_env({"MLFLOW_TRACKING_URI": uri}, data_dir=tmp_path)
    assert settings is not None and settings.tracking_uri == uri


def test_configs_flatten_into_mlflow_params() -> None:
    params = flatten_params(
        {
            "model": {"name": "resnet10t", "image_size": 32},
            "advanced": {"seed": None, "augmentation": {"scale": 0.5}, "extra": {"mosaic": 0, "size!": [1, 2]}},
        }
    )
    assert params == {
        "model.name": "resnet10t",
        "model.image_size": "32",
        "advanced.augmentation.scale": "0.5",
        "advanced.extra.mosaic": "0",
        "advanced.extra.size_": "[1, 2]",
    }
    assert len(flatten_params({"extra": {"long": "x" * 10_000}})["extra.long"]) == 6000


def test_metric_names_mlflow_accepts() -> None:
    assert metric_name("metrics/mAP50-95") == "metrics/mAP50-95"
    assert metric_name("metrics/mAP50(B)") == "metrics/mAP50_B_"
    assert metric_name("a//b/") == "a/b"


@pytest.mark.parametrize(
    ("uri", "absolute"),
    [
        ("sqlite:///mlflow.db", "sqlite:////srv/data/mlflow.db"),
        ("sqlite:///./stores/mlflow.db?timeout=5", "sqlite:////srv/data/mlflow.db"),
        ("file:./mlruns", "file:///srv/data/mlruns"),
        ("file:mlruns", "file:///srv/data/mlruns"),
        ("./mlruns", "file:///srv/data/mlruns"),
        ("stores/mlruns", "file:///srv/data/mlruns"),
        ("sqlite:///file:mlflow.db?mode=ro&uri=true", "sqlite:////srv/data/mlflow.db"),
    ],
)
def test_a_relative_local_store_is_refused_showing_the_absolute_form(uri: str, absolute: str) -> None:
    # Each training process runs in its own run directory: a relative store would be one store per job, not the one
    # the backend is told of (and `tp gc` deletes it with the run directory).
    with pytest.raises(TrackingError) as raised:
        TrackingSettings.from_env({"MLFLOW_TRACKING_URI": uri}, data_dir=Path("/srv/data"))
    message = str(raised.value)
    assert f"MLFLOW_TRACKING_URI={uri} is a relative path" in message
    assert absolute in message


@pytest.mark.parametrize("value", ["disabled", "n", "nope", "2"])
def test_an_unknown_tp_mlflow_enabled_value_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(TrackingError, match=f"TP_MLFLOW_ENABLED={value!r} is neither true nor false"):
        TrackingSettings.from_env({"TP_MLFLOW_ENABLED": value}, data_dir=tmp_path)


@pytest.mark.parametrize(("value", "on"), [("", True), ("1", True), ("Yes", True), ("on", True), ("OFF", False)])
def test_tp_mlflow_enabled_values(tmp_path: Path, value: str, on: bool) -> None:
    settings = TrackingSettings.from_env({"TP_MLFLOW_ENABLED": value}, data_dir=tmp_path)
    assert (settings is not None) == on


def test_aws_s3_without_a_region_lets_boto3_resolve_it(tmp_path: Path) -> None:
    # `auto` is R2's region: for AWS S3 it made boto3 target s3.auto.amazonaws.com, which does not exist.
    settings = StorageSettings.from_env({"TP_ARTIFACTS_BUCKET": "models"}, data_dir=tmp_path)
    assert settings.region is None
    store = S3ArtifactStore(settings, "job-1", "run-1")
    assert ".auto." not in store.client.meta.endpoint_url
    with_endpoint = {"TP_ARTIFACTS_BUCKET": "models", "AWS_S3_ENDPOINT_URL": "https://acct.r2.cloudflarestorage.com"}
    assert StorageSettings.from_env(with_endpoint, data_dir=tmp_path).region == "auto"
    with_region = {"TP_ARTIFACTS_BUCKET": "models", "AWS_DEFAULT_REGION": "eu-west-3"}
    assert StorageSettings.from_env(with_region, data_dir=tmp_path).region == "eu-west-3"


def test_an_auto_region_without_an_endpoint_is_named_when_aws_s3_cannot_be_reached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    env = {"TP_ARTIFACTS_BUCKET": "models", "AWS_REGION": "auto"}
    store = S3ArtifactStore(StorageSettings.from_env(env, data_dir=tmp_path), "job-1", "run-1")
    with pytest.raises(StorageError, match="AWS_REGION='auto' is R2's region") as raised:
        store.check()  # s3.auto.amazonaws.com: no such host
    assert "set AWS_REGION to the bucket's region" in str(raised.value)
