"""Reading the tracking and storage settings, and what reaches MLflow: no servers needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainingplatform_sdk.training.artifacts import StorageError, StorageSettings
from trainingplatform_sdk.training.recorder import RecorderSettings
from trainingplatform_sdk.training.tracking import (
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
        ("databricks", "databricks"),
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
        ("no URL: user:password@host", "no URL: user:password@host"),
        ("fetch https://u:p@h/x?token=t: reset (see https://h/y).", "fetch https://h/x: reset (see https://h/y)."),
        ("sqlite:////data/mlflow.db and http://host/a@b", "sqlite:////data/mlflow.db and http://host/a@b"),
    ],
)
def test_urls_inside_a_message_lose_their_credentials(text: str, shown: str) -> None:
    assert redact_urls(text) == shown


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
