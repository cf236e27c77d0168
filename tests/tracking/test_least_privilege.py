"""A least-privilege key for the artifact bucket: write access is all a job needs. HeadBucket, which needs list (or
read) access, answers 403 to a write-only key: the start-of-job check takes that as inconclusive and lets the
config.json upload decide. A key that cannot write is refused naming the permission it lacks. One SeaweedFS server
of this module's own, with IAM identities."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.s3 import SeaweedS3
from trainingplatform_sdk.training.adapter import NullSink
from trainingplatform_sdk.training.artifacts import StorageError
from trainingplatform_sdk.training.recorder import JobRecorder, RecorderSettings

BUCKET = "tp-artifacts"
WRITER = ("tp-writer-key", "tp-writer-secret-0123456789")
READER = ("tp-reader-key", "tp-reader-secret-0123456789")


@pytest.fixture(scope="module")
def iam_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    identities = [
        {"name": name, "credentials": [{"accessKey": key, "secretKey": secret}], "actions": actions}
        for name, (key, secret), actions in (
            ("writer", WRITER, [f"Write:{BUCKET}"]),
            ("reader", READER, [f"Read:{BUCKET}", f"List:{BUCKET}"]),
        )
    ]
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs-iam"), bucket=BUCKET, identities=identities).start()
    try:
        yield server
    finally:
        server.close()


def start_job(iam_s3: SeaweedS3, key: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> JobRecorder:
    env = {
        **iam_s3.env(),
        "AWS_ACCESS_KEY_ID": key[0],
        "AWS_SECRET_ACCESS_KEY": key[1],
        "TP_MLFLOW_ENABLED": "false",
        "TP_DATA_DIR": str(tmp_path),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # boto3 reads the key pair from the environment
    output_dir = tmp_path / "runs" / "job-1" / "run-1"
    return JobRecorder.start(
        RecorderSettings.from_env(env, output_dir=output_dir),
        job_id="job-1",
        framework="timm",
        configs={},
        output_dir=output_dir,
        logger=NullSink(),
    )


def test_a_write_only_key_starts_the_job(iam_s3, tmp_path, monkeypatch) -> None:
    recorder = start_job(iam_s3, WRITER, tmp_path, monkeypatch)
    assert iam_s3.keys("jobs/job-1/") == ["jobs/job-1/run-1/config.json"]
    assert recorder.artifacts["config"] == f"s3://{BUCKET}/jobs/job-1/run-1/config.json"


def test_a_key_without_write_access_is_refused_naming_the_permission(iam_s3, tmp_path, monkeypatch) -> None:
    with pytest.raises(StorageError) as raised:
        start_job(iam_s3, READER, tmp_path, monkeypatch)
    message = str(raised.value)
    assert f"AWS_ACCESS_KEY_ID={READER[0]} is not allowed to write" in message
    assert f"s3:PutObject on s3://{BUCKET}/jobs/job-1/run-1/config.json" in message
    assert READER[1] not in message


def test_a_wrong_secret_is_still_blamed_on_the_keys(iam_s3, tmp_path, monkeypatch) -> None:
    with pytest.raises(StorageError, match="AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY were rejected"):
        start_job(iam_s3, (WRITER[0], "not-the-secret-0123"), tmp_path, monkeypatch)
