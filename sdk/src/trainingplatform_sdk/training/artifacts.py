"""Artifact storage of a training job: an S3-compatible bucket (AWS S3, Cloudflare R2, MinIO, SeaweedFS) or a local
directory.

Settings come from the environment (see docs/tracking.md):

- `TP_ARTIFACTS_BUCKET`: the bucket. Unset means local storage under `<data dir>/artifacts/<job_id>/`.
- `AWS_S3_ENDPOINT_URL`: the S3 endpoint (`https://<account>.r2.cloudflarestorage.com` for R2); unset means AWS.
- `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`: the credentials, read by boto3 itself (never by this module, so
  they cannot end up in a message or a log).
- `TP_ARTIFACTS_PREFIX`: a key prefix inside the bucket; default none.
- `AWS_REGION`: default `auto` (what R2 expects; S3-compatible servers ignore it).

Objects go under `<prefix>/jobs/<job_id>/` (`weights/best.pt`, `results.json`, ...) and are reported as
`s3://bucket/key`; local files as `file:///...`. Uploads use boto3's managed transfer: multipart above 8 MiB.

A hung endpoint holds a job for seconds, not minutes: the start-of-job check makes one attempt that waits 10 s for
an answer (CHECK_READ_TIMEOUT_S), an upload waits 30 s on each read or write (UPLOAD_READ_TIMEOUT_S, not the whole
upload) with 2 attempts (UPLOAD_ATTEMPTS).

`boto3` is imported inside functions only: the SDK installs without it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from trainingplatform_sdk.errors import StorageError
from trainingplatform_sdk.training.files import store_file
from trainingplatform_sdk.training.tracking import redact_uri, redact_urls

__all__ = [
    "MULTIPART_THRESHOLD",
    "ArtifactStore",
    "LocalArtifactStore",
    "S3ArtifactStore",
    "StorageError",
    "StorageSettings",
    "open_store",
]

#: Files larger than this are uploaded in parts of this size (boto3's TransferConfig).
MULTIPART_THRESHOLD = 8 * 1024 * 1024
#: Seconds to open a connection to the S3 endpoint.
CONNECT_TIMEOUT_S = 5
#: Seconds the start-of-job check (HeadBucket, one attempt) waits for an answer: a hung endpoint fails the job
#: within about 15 s.
CHECK_READ_TIMEOUT_S = 10
#: Seconds an upload waits on each read or write of its connection (not the whole upload: a large checkpoint
#: takes as long as it needs while bytes flow), with UPLOAD_ATTEMPTS attempts per request: a hung endpoint fails
#: an upload within about a minute.
UPLOAD_READ_TIMEOUT_S = 30
UPLOAD_ATTEMPTS = 2
DEFAULT_REGION = "auto"


@dataclass(frozen=True)
class StorageSettings:
    """Where a job's artifacts go: a bucket when `bucket` is set, else `local_dir`."""

    local_dir: Path
    """Root of local storage: `<data dir>/artifacts`."""
    bucket: str = ""
    """The S3 bucket; empty means local storage."""
    endpoint_url: str | None = None
    """The S3 endpoint; None means AWS."""
    prefix: str = ""
    """Key prefix inside the bucket, without leading or trailing slashes."""
    region: str = DEFAULT_REGION
    """The region requests are signed for."""

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, data_dir: Path) -> StorageSettings:
        """Reads the settings.

        Args:
            env: The environment (`os.environ`).
            data_dir: The data directory of local storage.

        Raises:
            StorageError: AWS_S3_ENDPOINT_URL is set without TP_ARTIFACTS_BUCKET (artifacts would silently stay local),
                or is not an `http://` or `https://` URL with a host (the message shows it without credentials).
        """
        bucket = env.get("TP_ARTIFACTS_BUCKET", "").strip()
        endpoint = env.get("AWS_S3_ENDPOINT_URL", "").strip() or None
        if endpoint:
            _check_endpoint(endpoint)
        if endpoint and not bucket:
            raise StorageError(
                f"AWS_S3_ENDPOINT_URL={redact_uri(endpoint)} is set but TP_ARTIFACTS_BUCKET is not: set the bucket "
                "(or unset AWS_S3_ENDPOINT_URL to keep artifacts in the local data directory)"
            )
        return cls(
            local_dir=(data_dir / "artifacts").absolute(),
            bucket=bucket,
            endpoint_url=endpoint,
            prefix=env.get("TP_ARTIFACTS_PREFIX", "").strip().strip("/"),
            region=env.get("AWS_REGION", "").strip() or env.get("AWS_DEFAULT_REGION", "").strip() or DEFAULT_REGION,
        )

    @property
    def endpoint_setting(self) -> str:
        """How error messages name the endpoint."""
        if self.endpoint_url:
            return f"AWS_S3_ENDPOINT_URL={redact_uri(self.endpoint_url)}"
        return "AWS S3 (AWS_S3_ENDPOINT_URL is not set)"


def _check_endpoint(endpoint: str) -> None:
    """Refuses an endpoint botocore would reject later, repeating it credentials included ("Invalid endpoint").

    Raises:
        StorageError: Names AWS_S3_ENDPOINT_URL, shown without credentials, and what to fix.
    """
    why = ""
    if not _HTTP_URL.match(endpoint):
        why = "it must start with http:// or https://"
    else:
        try:
            parts = urlsplit(endpoint)
            if not parts.hostname:
                why = "it has no host"
            parts.port  # noqa: B018 (raises ValueError for a port that is not a number in 0-65535)
        except ValueError as error:
            why = f"it is not a URL ({error})"
    if why:
        raise StorageError(
            f"AWS_S3_ENDPOINT_URL={redact_uri(endpoint)} is not a valid endpoint URL: {why} "
            "(for example https://<account_id>.r2.cloudflarestorage.com or http://minio:9000)"
        )


_HTTP_URL = re.compile(r"https?://", re.IGNORECASE)


class ArtifactStore(Protocol):
    """Where one job's files go."""

    def check(self) -> None:
        """Fails fast when the store cannot be used.

        Raises:
            StorageError: The message names the setting to fix.
        """
        ...

    def upload(self, path: Path, name: str) -> str:
        """Stores a local file as `name` (a relative path such as `weights/best.pt`) and returns its URI.

        Raises:
            StorageError: The upload failed.
        """
        ...


class LocalArtifactStore:
    """Files stored under `root` (`<data dir>/artifacts/<job_id>`), reported as `file://` URIs; checkpoints are
    hard links to the run directory's file (one copy on disk), other files copies."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def check(self) -> None:
        """Creates the directory.

        Raises:
            StorageError: It cannot be created (names TP_DATA_DIR, which decides where it is).
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(
                f"the local artifacts directory {self.root} cannot be created (set TP_DATA_DIR, or "
                f"TP_ARTIFACTS_BUCKET for S3 storage): {error.strerror or error}"
            ) from error

    def upload(self, path: Path, name: str) -> str:
        """Stores the file under `name` (write then rename, so a reader never sees half a file).

        A checkpoint (`files.CHECKPOINT_SUFFIXES`) is hard-linked rather than copied when it can be (same file system):
        the run directory and the artifacts then share one copy on disk, and either path stays valid when the
        other is deleted. Checkpoints are stored once training ended, so the run never rewrites the linked file.
        Anything else, or a checkpoint on another file system, is copied."""
        target = self.root / name
        try:
            store_file(path, target)
        except OSError as error:
            raise StorageError(f"copying {path} to {target} failed: {error.strerror or error}") from error
        return target.as_uri()


class S3ArtifactStore:
    """Objects under `<prefix>/jobs/<job_id>/` in an S3-compatible bucket.

    Args:
        settings: The bucket, endpoint, prefix and region.
        job_id: The job whose files these are.
    """

    def __init__(self, settings: StorageSettings, job_id: str) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as error:
            raise StorageError(
                f"TP_ARTIFACTS_BUCKET={settings.bucket!r} needs boto3, which is not installed in this trainer"
            ) from error
        self.settings = settings
        self.bucket = settings.bucket
        self.key_prefix = "/".join(part for part in (settings.prefix, "jobs", job_id) if part)

        def client(read_timeout: int, attempts: int) -> Any:
            config = Config(
                signature_version="s3v4",
                # Path-style works with every S3-compatible server (R2, MinIO, SeaweedFS) and with any bucket name.
                s3={"addressing_style": "path"},
                # Only the checksums S3 requires: newer boto3 adds CRC32 headers some S3-compatible servers reject.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=read_timeout,
                retries={"total_max_attempts": attempts, "mode": "standard"},
            )
            return session.client("s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=config)

        try:
            session = boto3.session.Session()
            self.client: Any = client(UPLOAD_READ_TIMEOUT_S, UPLOAD_ATTEMPTS)
            self.check_client: Any = client(CHECK_READ_TIMEOUT_S, 1)
        except ValueError as error:  # "Invalid endpoint: <the URL, credentials included>"
            raise StorageError(
                redact_urls(f"{settings.endpoint_setting} cannot be used for TP_ARTIFACTS_BUCKET: {error}")
            ) from error

    def uri(self, name: str) -> str:
        """The `s3://` URI of a stored name."""
        return f"s3://{self.bucket}/{self.key_prefix}/{name}"

    def check(self) -> None:
        """Checks that the endpoint answers, the credentials are accepted and the bucket exists (HeadBucket).

        Raises:
            StorageError: The message names AWS_S3_ENDPOINT_URL, the credentials or TP_ARTIFACTS_BUCKET.
        """
        try:
            self.check_client.head_bucket(Bucket=self.bucket)
        except Exception as error:
            raise self._error(error, "checking the bucket", CHECK_READ_TIMEOUT_S) from error

    def upload(self, path: Path, name: str) -> str:
        """Uploads with boto3's managed transfer (multipart above MULTIPART_THRESHOLD)."""
        from boto3.s3.transfer import TransferConfig

        transfer = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD)
        try:
            self.client.upload_file(str(path), self.bucket, f"{self.key_prefix}/{name}", Config=transfer)
        except Exception as error:
            raise self._error(error, f"uploading {path.name} to {self.uri(name)}", UPLOAD_READ_TIMEOUT_S) from error
        return self.uri(name)

    def _error(self, error: Exception, action: str, read_timeout_s: int) -> StorageError:
        """A StorageError naming the setting behind a boto3 error, with the credentials of every URL in it
        removed (botocore's messages repeat the endpoint URL as it was given)."""
        return StorageError(redact_urls(self._describe(error, action, read_timeout_s)))

    def _describe(self, error: Exception, action: str, read_timeout_s: int) -> str:
        from botocore.exceptions import (
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ParamValidationError,
            ReadTimeoutError,
        )

        endpoint, bucket = self.settings.endpoint_setting, f"TP_ARTIFACTS_BUCKET={self.bucket!r}"
        if isinstance(error, NoCredentialsError):
            return f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not set; {bucket} needs them"
        if isinstance(error, EndpointConnectionError | ConnectTimeoutError):
            return f"{endpoint} is not reachable ({action}): {error}"
        if isinstance(error, ReadTimeoutError):
            return f"{endpoint} did not answer within {read_timeout_s}s ({action}): {error}"
        if isinstance(error, ParamValidationError):
            return f"{bucket} is not a valid bucket name: {error}"
        if isinstance(error, ClientError):
            code = str(error.response.get("Error", {}).get("Code", ""))
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = error.response.get("Error", {}).get("Message", "") or code
            if code in ("404", "NoSuchBucket"):
                return f"{bucket} does not exist at {endpoint}: create it or fix the name"
            if status in (401, 403) or code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
                return (
                    f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY were rejected by {endpoint} for {bucket} "
                    f"({action}: {status} {message}): check the keys and their access to the bucket"
                )
            if status == 301 or code in ("PermanentRedirect", "AuthorizationHeaderMalformed"):
                return f"{bucket} is in another region than AWS_REGION={self.settings.region!r}: {message}"
            return f"{action} failed at {endpoint} for {bucket}: {status} {message}"
        return f"{action} failed at {endpoint} for {bucket}: {type(error).__name__}: {error}"


def open_store(settings: StorageSettings, job_id: str) -> ArtifactStore:
    """The store of one job: S3 when a bucket is set, else the local directory. Call `check()` before use.

    Raises:
        StorageError: boto3 is missing for a bucket.
    """
    if settings.bucket:
        return S3ArtifactStore(settings, job_id)
    return LocalArtifactStore(settings.local_dir / job_id)
