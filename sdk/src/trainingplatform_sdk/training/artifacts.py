"""Artifact storage of a training job: an S3-compatible bucket (AWS S3, Cloudflare R2, MinIO, SeaweedFS) or a local
directory.

Settings come from the environment (see docs/tracking.md):

- `TP_ARTIFACTS_BUCKET`: the bucket. Unset means local storage under `<data dir>/artifacts/<job_id>/<run>/`.
- `AWS_S3_ENDPOINT_URL`: the S3 endpoint (`https://<account>.r2.cloudflarestorage.com` for R2); unset means AWS.
- `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`: the credentials, read by boto3 itself (never by this module, so
  they cannot end up in a message or a log).
- `TP_ARTIFACTS_PREFIX`: a key prefix inside the bucket; default none.
- `AWS_REGION` (then `AWS_DEFAULT_REGION`): default `auto` with an endpoint (what R2 expects; S3-compatible servers
  ignore it); without one (AWS S3), boto3 resolves it (AWS config, else us-east-1).
- `TP_ARTIFACTS_UPLOAD_RETRY_S`: how long the final uploads of a completed job are retried, in seconds;
  default 300 (DEFAULT_UPLOAD_RETRY_S), 0 = one attempt.

Objects go under `<prefix>/jobs/<job_id>/<run>/` (`weights/best.pt`, `results.json`, ...), local files under
`<data dir>/artifacts/<job_id>/<run>/`, `<run>` being one run of the job (`run_key`): a superseded dispatch attempt
of the job, still running on a trainer the backend lost touch with, never overwrites the current attempt's files.
They are reported as `s3://bucket/key` or `file:///...`: consumers read the URIs from the job. Uploads use
boto3's managed transfer: multipart above 8 MiB; the multipart uploads of failed attempts are aborted once a retry
stored the file.

A hung endpoint holds a job for seconds, not minutes: the start-of-job check makes one attempt that waits 10 s for
an answer (CHECK_READ_TIMEOUT_S), an upload waits 30 s on each read or write (UPLOAD_READ_TIMEOUT_S, not the whole
upload) with 2 attempts (UPLOAD_ATTEMPTS). The final uploads of a completed job (`upload(..., retry_s=...)`) are
retried with exponential backoff (1 s, 2 s, 4 s, ... at most 30 s apart) for up to TP_ARTIFACTS_UPLOAD_RETRY_S: an S3
endpoint restarting as a long training ends does not fail it. A refusal that a retry cannot change (no
credentials, access denied, no such bucket) is not retried.

`boto3` is imported inside functions only: the SDK installs without it.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping
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
    "run_key",
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
#: The region of an S3-compatible endpoint (AWS_S3_ENDPOINT_URL) when none is set: what R2 expects.
DEFAULT_REGION = "auto"
#: Seconds the final uploads of a completed job are retried (TP_ARTIFACTS_UPLOAD_RETRY_S); 0 = one attempt.
DEFAULT_UPLOAD_RETRY_S = 300.0
#: First and longest wait between two retries of an upload, in seconds (doubling in between).
FIRST_RETRY_DELAY_S = 1.0
MAX_RETRY_DELAY_S = 30.0

_log = logging.getLogger(__name__)


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
    region: str | None = None
    """The region requests are signed for; None lets boto3 resolve it (AWS S3 without AWS_REGION)."""
    upload_retry_s: float = DEFAULT_UPLOAD_RETRY_S
    """How long the final uploads of a completed job are retried (TP_ARTIFACTS_UPLOAD_RETRY_S); 0 = one attempt."""

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, data_dir: Path) -> StorageSettings:
        """Reads the settings.

        Args:
            env: The environment (`os.environ`).
            data_dir: The data directory of local storage.

        Raises:
            StorageError: AWS_S3_ENDPOINT_URL is set without TP_ARTIFACTS_BUCKET (artifacts would silently stay local),
                or is not an `http://` or `https://` URL with a host (the message shows it without credentials);
                TP_ARTIFACTS_UPLOAD_RETRY_S is not a number of seconds >= 0.
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
            # `auto` only for an endpoint: for AWS S3 it would make boto3 target s3.auto.amazonaws.com.
            region=env.get("AWS_REGION", "").strip()
            or env.get("AWS_DEFAULT_REGION", "").strip()
            or (DEFAULT_REGION if endpoint else None),
            upload_retry_s=_retry_seconds(env.get("TP_ARTIFACTS_UPLOAD_RETRY_S", "")),
        )

    @property
    def endpoint_setting(self) -> str:
        """How error messages name the endpoint."""
        if self.endpoint_url:
            return f"AWS_S3_ENDPOINT_URL={redact_uri(self.endpoint_url)}"
        return "AWS S3 (AWS_S3_ENDPOINT_URL is not set)"


def _retry_seconds(value: str) -> float:
    """TP_ARTIFACTS_UPLOAD_RETRY_S's seconds; DEFAULT_UPLOAD_RETRY_S when empty.

    Raises:
        StorageError: Not a finite number >= 0.
    """
    if not value.strip():
        return DEFAULT_UPLOAD_RETRY_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        raise StorageError(
            f"TP_ARTIFACTS_UPLOAD_RETRY_S={value.strip()!r} is not a number of seconds >= 0 (how long the final "
            f"uploads are retried; 0 = one attempt; default {DEFAULT_UPLOAD_RETRY_S:.0f})"
        )
    return seconds


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


def run_key(output_dir: Path) -> str:
    """The folder of one run's files under the job's: the name of the run's output directory, which is the trainer
    service's run id (`<runs>/<job_id>/<run_id>`): each dispatch attempt of a job has its own. A training process
    started by hand with `--output-dir DIR` uses DIR's name; a rerun in the same directory replaces its files."""
    return Path(output_dir).absolute().name or "run"


class ArtifactStore(Protocol):
    """Where one job's files go."""

    def check(self) -> None:
        """Fails fast when the store cannot be used.

        Raises:
            StorageError: The message names the setting to fix.
        """
        ...

    def upload(self, path: Path, name: str, *, retry_s: float = 0.0, stop: Callable[[], bool] | None = None) -> str:
        """Stores a local file as `name` (a relative path such as `weights/best.pt`) and returns its URI.

        Args:
            retry_s: How long a failed upload is retried (with exponential backoff); 0 = one attempt.
            stop: Read while waiting to retry: once true, the last error is raised without waiting further.

        Raises:
            StorageError: The upload failed.
        """
        ...


class LocalArtifactStore:
    """Files stored under `root` (`<data dir>/artifacts/<job_id>/<run>`), reported as `file://` URIs; checkpoints are
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

    def upload(self, path: Path, name: str, *, retry_s: float = 0.0, stop: Callable[[], bool] | None = None) -> str:
        """Stores the file under `name` (write then rename, so a reader never sees half a file); no retries (a local
        disk that fails does not get better by waiting).

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
    """Objects under `<prefix>/jobs/<job_id>/<run>/` in an S3-compatible bucket.

    Args:
        settings: The bucket, endpoint, prefix and region.
        job_id: The job whose files these are.
        run: The run of the job (`run_key`).
        warn: Where each retry of an upload is reported (one line, without credentials); default a log WARNING.
    """

    def __init__(
        self, settings: StorageSettings, job_id: str, run: str, *, warn: Callable[[str], None] | None = None
    ) -> None:
        try:
            import boto3
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError, ProfileNotFound
        except ImportError as error:
            raise StorageError(
                f"TP_ARTIFACTS_BUCKET={settings.bucket!r} needs boto3, which is not installed in this trainer"
            ) from error
        self.settings = settings
        self.bucket = settings.bucket
        self.warn = warn or _log.warning
        #: Where every job's files go: what a key needs to be allowed to write.
        self.jobs_prefix = "/".join(part for part in (settings.prefix, "jobs") if part)
        self.key_prefix = f"{self.jobs_prefix}/{job_id}/{run}"

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
            self._session = session = boto3.session.Session()
            self.client: Any = client(UPLOAD_READ_TIMEOUT_S, UPLOAD_ATTEMPTS)
            self.check_client: Any = client(CHECK_READ_TIMEOUT_S, 1)
        except ValueError as error:  # "Invalid endpoint: <the URL, credentials included>"
            raise StorageError(
                redact_urls(f"{settings.endpoint_setting} cannot be used for TP_ARTIFACTS_BUCKET: {error}")
            ) from error
        except ProfileNotFound as error:  # AWS_PROFILE (or AWS_DEFAULT_PROFILE) names no profile of the AWS config
            raise StorageError(
                f"TP_ARTIFACTS_BUCKET={settings.bucket!r} cannot be used with AWS_PROFILE="
                f"{error.kwargs.get('profile', '')!r}: {error} in the AWS config (~/.aws/config, AWS_CONFIG_FILE): "
                "fix the name, or unset AWS_PROFILE to use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
            ) from error
        except BotoCoreError as error:  # another AWS setting boto3 cannot use
            raise StorageError(
                redact_urls(f"TP_ARTIFACTS_BUCKET={settings.bucket!r} cannot be used: the AWS settings: {error}")
            ) from error
        #: (key, upload id) of each multipart upload this store started, in order (see `_abort_stale_uploads`).
        self._multipart: list[tuple[str, str]] = []
        self.client.meta.events.register("after-call.s3.CreateMultipartUpload", self._note_multipart)

    def _note_multipart(self, parsed: Mapping[str, Any], **_: Any) -> None:
        if parsed.get("UploadId") and parsed.get("Key"):
            self._multipart.append((str(parsed["Key"]), str(parsed["UploadId"])))

    def _abort_stale_uploads(self, key: str) -> None:
        """Once an attempt stored `key`, aborts the multipart uploads of `key` that the failed attempts before it
        started (not the last one: it stored the file). boto3 aborts a failed one itself, but not while the endpoint
        is unreachable, and its parts would stay in the bucket, invisible and billed. Best effort, one request each
        (s3:AbortMultipartUpload): stops at the first that does not get an answer."""
        from botocore.exceptions import ClientError

        ours = [upload_id for uploaded, upload_id in self._multipart if uploaded == key]
        self._multipart = [(uploaded, upload_id) for uploaded, upload_id in self._multipart if uploaded != key]
        for upload_id in ours[:-1]:
            try:
                self.check_client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except ClientError as error:  # aborted already by boto3 (NoSuchUpload), or not allowed
                _log.info("aborting an interrupted multipart upload of %s: %s", key, redact_urls(str(error)))
            except Exception as error:
                _log.info("aborting an interrupted multipart upload of %s failed: %s", key, redact_urls(str(error)))
                return

    def uri(self, name: str) -> str:
        """The `s3://` URI of a stored name."""
        return f"s3://{self.bucket}/{self.key_prefix}/{name}"

    def check(self) -> None:
        """Checks that the endpoint answers, the credentials are accepted and the bucket exists (HeadBucket).

        A 403 is inconclusive: HeadBucket needs list access (s3:ListBucket), which a least-privilege key that may
        only write objects lacks, and a HEAD answer has no body to tell a refused key from a missing permission.
        The config.json upload that follows decides.

        Raises:
            StorageError: The message names AWS_S3_ENDPOINT_URL, the credentials or TP_ARTIFACTS_BUCKET.
        """
        from botocore.exceptions import ClientError

        try:
            self.check_client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 403:
                _log.info(
                    "HeadBucket of %s answered 403 (a key without list access?): the first upload decides", self.bucket
                )
                return
            raise self._error(error, "checking the bucket", CHECK_READ_TIMEOUT_S) from error
        except Exception as error:
            raise self._error(error, "checking the bucket", CHECK_READ_TIMEOUT_S) from error

    def upload(self, path: Path, name: str, *, retry_s: float = 0.0, stop: Callable[[], bool] | None = None) -> str:
        """Uploads with boto3's managed transfer (multipart above MULTIPART_THRESHOLD); a failure that a retry may
        cure (the endpoint unreachable or silent, a 5xx, throttling) is retried with exponential backoff for up to
        `retry_s` seconds, each retry one line to `warn`."""
        from boto3.s3.transfer import TransferConfig

        transfer = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD)
        action = f"uploading {path.name} to {self.uri(name)}"
        deadline, delay = time.monotonic() + retry_s, FIRST_RETRY_DELAY_S
        key = f"{self.key_prefix}/{name}"
        while True:
            try:
                self.client.upload_file(str(path), self.bucket, key, Config=transfer)
            except Exception as error:
                failure = self._error(
                    error, action, UPLOAD_READ_TIMEOUT_S, permission=f"s3:PutObject on {self.uri(name)}"
                )
                left = deadline - time.monotonic()
                if not _retryable(error) or left <= 0 or (stop is not None and stop()):
                    raise failure from error
                wait = min(delay, left)
                self.warn(
                    f"{failure}; retrying in {wait:.0f}s ({left:.0f}s of TP_ARTIFACTS_UPLOAD_RETRY_S="
                    f"{retry_s:.0f} left)"
                )
                if not _sleep(wait, stop):
                    raise failure from error
                delay = min(delay * 2, MAX_RETRY_DELAY_S)
            else:
                self._abort_stale_uploads(key)
                return self.uri(name)

    def _error(self, error: Exception, action: str, read_timeout_s: int, *, permission: str = "") -> StorageError:
        """A StorageError naming the setting behind a boto3 error, with the credentials of every URL in it
        removed (botocore's messages repeat the endpoint URL as it was given). `permission`: what the request
        needs (`s3:PutObject on s3://...`), named when the key is refused it."""
        return StorageError(redact_urls(self._describe(error, action, read_timeout_s, permission)))

    def _access_key_id(self) -> str:
        """The access key id boto3 found (not a secret: it names the key), or a placeholder."""
        try:
            credentials = self._session.get_credentials()
            return str(credentials.access_key) if credentials is not None else "?"
        except Exception:
            return "?"

    def _describe(self, error: Exception, action: str, read_timeout_s: int, permission: str = "") -> str:
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
            if not self.settings.endpoint_url and (self.settings.region == "auto" or ".auto." in str(error)):
                return (
                    f"{endpoint} is not reachable ({action}): AWS_REGION='auto' is R2's region: without "
                    "AWS_S3_ENDPOINT_URL boto3 targets s3.auto.amazonaws.com, which does not exist; set AWS_REGION to "
                    f"the bucket's region (or unset it), or AWS_S3_ENDPOINT_URL for R2: {error}"
                )
            return f"{endpoint} is not reachable ({action}): {error}"
        if isinstance(error, ReadTimeoutError):
            return f"{endpoint} did not answer within {read_timeout_s}s ({action}): {error}"
        if isinstance(error, ParamValidationError):
            return f"{bucket} is not a valid bucket name: {error}"
        if isinstance(client_error := _client_error(error), ClientError):
            response = client_error.response
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = response.get("Error", {}).get("Message", "") or code
            if code in ("404", "NoSuchBucket"):
                return f"{bucket} does not exist at {endpoint}: create it or fix the name"
            if permission and code == "AccessDenied":
                return (
                    f"AWS_ACCESS_KEY_ID={self._access_key_id()} is not allowed to write to {bucket} at {endpoint} "
                    f"({action}: {status} {message}): grant the key {permission} (s3:PutObject on "
                    f"s3://{self.bucket}/{self.jobs_prefix}/*; see docs/tracking.md)"
                )
            if status in (401, 403) or code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
                return (
                    f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY were rejected by {endpoint} for {bucket} "
                    f"({action}: {status} {message}): check the keys and their access to the bucket"
                )
            if status == 301 or code in ("PermanentRedirect", "AuthorizationHeaderMalformed"):
                return f"{bucket} is in another region than AWS_REGION={self.settings.region or '(unset)'!r}: {message}"
            return f"{action} failed at {endpoint} for {bucket}: {status} {message}"
        return f"{action} failed at {endpoint} for {bucket}: {type(error).__name__}: {error}"


def _client_error(error: BaseException) -> BaseException:
    """The ClientError behind boto3's S3UploadFailedError (raised while handling it, without `from`), else `error`."""
    from botocore.exceptions import ClientError

    cause = error.__cause__ or error.__context__
    if not isinstance(error, ClientError) and isinstance(cause, ClientError):
        return cause
    return error


def _retryable(error: BaseException) -> bool:
    """Whether a retry may cure an upload's failure: not for missing credentials, a bad bucket name or a 4xx refusal
    (access denied, no such bucket), except a request timeout (408) or throttling (429)."""
    from botocore.exceptions import ClientError, NoCredentialsError, ParamValidationError

    if isinstance(error, NoCredentialsError | ParamValidationError):
        return False
    error = _client_error(error)
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return not (isinstance(status, int) and 400 <= status < 500 and status not in (408, 429))
    return True


def _sleep(seconds: float, stop: Callable[[], bool] | None) -> bool:
    """Waits `seconds`, checking `stop` every 0.1 s; False when it became true."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if stop is not None and stop():
            return False
        time.sleep(min(0.1, left))
    return stop is None or not stop()


def open_store(
    settings: StorageSettings, job_id: str, run: str, *, warn: Callable[[str], None] | None = None
) -> ArtifactStore:
    """The store of one run of a job: S3 when a bucket is set, else the local directory. Call `check()` before use.

    Args:
        run: The run of the job (`run_key`): its files go in a folder of their own.
        warn: Where an S3 store reports each retry of an upload (see `S3ArtifactStore`).

    Raises:
        StorageError: boto3 is missing for a bucket.
    """
    if settings.bucket:
        return S3ArtifactStore(settings, job_id, run, warn=warn)
    return LocalArtifactStore(settings.local_dir / job_id / run)
