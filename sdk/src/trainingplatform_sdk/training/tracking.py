"""MLflow tracking of a training job: one MLflow run per job, checked at job start.

Settings come from the environment (see docs/tracking.md):

- `MLFLOW_TRACKING_URI`: the MLflow server (`http://mlflow:5000`) or store. Unset means a local SQLite store in the
  data directory, `sqlite:///<data dir>/mlflow.db`, with artifacts under `<data dir>/mlartifacts`. A local store must
  be given as an absolute path (`sqlite:////abs/mlflow.db`, `file:///abs/mlruns`): each training process runs in its
  own run directory, where a relative one would be a store per job; it is refused with the absolute form to write.
- `MLFLOW_EXPERIMENT_NAME`: the experiment of every run; default `trainingplatform`.
- `TP_MLFLOW_ENABLED`: `false` (or `0`, `no`, `off`) turns MLflow tracking off (artifact storage stays on);
  `true`, `1`, `yes`, `on` or unset leave it on; anything else is refused.

The run is named after the job id and tagged with `job_id`, `framework` and `model`; the job's configs are its
params (flattened: `model.name`, `advanced.extra.mosaic`, ...); each epoch's metrics are one `log_batch` call with
step = the epoch (0-based).

Several training processes may share one local SQLite store (a trainer service running concurrent jobs on the
default `sqlite:///<data dir>/mlflow.db`). SQLite allows one writer, and MLflow creates its schema (and migrates
it) in the first process that opens the store, with nothing to stop a second process doing the same meanwhile.
So every write to a `sqlite:///` store (schema creation, the experiment, the run, params, metrics, the end) is
serialised between processes by a file lock next to the store (`<store>.lock`, a POSIX lock, which a forked data
loader worker does not inherit), and a write that still meets
"database is locked" (another program using the store) is retried for up to `LOCKED_RETRY_S` seconds.

`mlflow` is imported inside functions only: this module is part of the SDK, which installs without it, and only
a trainer process that tracks a run pays for the import.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from trainingplatform_sdk.errors import TrackingError
from trainingplatform_sdk.spec.uris import AUTHORITY_START, redact_uri
from trainingplatform_sdk.telemetry.sender.validation import valid_key
from trainingplatform_sdk.telemetry.values import metric_value
from trainingplatform_sdk.training.files import is_checkpoint, store_file

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = [
    "DEFAULT_EXPERIMENT_NAME",
    "MlflowRun",
    "TrackingError",
    "TrackingSettings",
    "flatten_params",
    "has_scheme",
    "redact_uri",
    "redact_urls",
]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
# POSIX locks belong to the process: threads of one process take this one first.
_THREAD_LOCK = threading.Lock()

DEFAULT_EXPERIMENT_NAME = "trainingplatform"
#: MLflow's limits (mlflow.utils.validation), repeated here so that building params needs no mlflow import.
MAX_PARAM_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
#: HTTP settings of the start-of-job checks: an unreachable server must fail the job in seconds, not minutes.
PREFLIGHT_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
#: HTTP settings of each epoch's metrics: a hung server stalls the training loop for about 20 s at most, then
#: MLflow logging pauses (one WARNING line; see recorder._EpochTrackingSink: later tries wait 10 s at most).
EPOCH_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
#: Retries and per-request timeout (seconds) of the final uploads and the end of the run, unless the environment
#: sets its own. MLflow's defaults (7 retries with exponential backoff, 120 s) held a finished job for many
#: minutes when the server hung. The timeout bounds the connection and each wait for bytes, the server's answer
#: included: a server-proxied store (`mlflow server --artifacts-destination s3://...`) answers an upload only once
#: it pushed the whole file on, so an artifact upload waits longer, see UPLOAD_MIN_BYTES_PER_S.
DEFAULT_HTTP_MAX_RETRIES = "1"
DEFAULT_HTTP_TIMEOUT = "60"
#: The slowest rate an artifact upload is given time for: its timeout is MLFLOW_HTTP_REQUEST_TIMEOUT plus its size
#: at this rate (a 100 MB checkpoint: 60 s + 191 s), as the server may still be pushing it to its store.
UPLOAD_MIN_BYTES_PER_S = 512 * 1024
#: Longest wait for the lock of a local SQLite store while other jobs write to it, in seconds.
STORE_LOCK_TIMEOUT_S = 300.0
#: How long a write that meets "database is locked" is retried, in seconds.
LOCKED_RETRY_S = 60.0

_FALSE = ("0", "false", "no", "off")
_TRUE = ("", "1", "true", "yes", "on")
# Names MLflow accepts for params and metrics (mlflow.utils.validation.validate_param_and_metric_name).
_BAD_NAME_CHARACTERS = re.compile(r"[^/\w.\- :]")


@dataclass(frozen=True)
class TrackingSettings:
    """Where a job's MLflow run goes."""

    tracking_uri: str
    """The MLflow tracking URI, as given (it may hold credentials: show `display_uri` instead)."""
    experiment_name: str = DEFAULT_EXPERIMENT_NAME
    """The experiment of the run, created when missing."""
    artifact_location: str | None = None
    """Artifact root of a newly created experiment: `mlartifacts` beside a SQLite store; None lets the server
    choose."""
    from_env_var: bool = True
    """True when MLFLOW_TRACKING_URI set the URI, False for the local default."""

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, data_dir: Path) -> TrackingSettings | None:
        """Reads the settings; None when `TP_MLFLOW_ENABLED` is false.

        Args:
            env: The environment (`os.environ`).
            data_dir: The data directory of the local default store.

        Raises:
            TrackingError: MLFLOW_TRACKING_URI is not a URI (`user:password@host` or `host:port` without
                `http://`; the message shows it without its credentials) or a relative local store path;
                TP_MLFLOW_ENABLED is neither true nor false.
        """
        enabled = env.get("TP_MLFLOW_ENABLED", "").strip()
        if enabled.lower() in _FALSE:
            return None
        if enabled.lower() not in _TRUE:
            raise TrackingError(
                f"TP_MLFLOW_ENABLED={enabled!r} is neither true nor false: set false (or 0, no, off) to turn MLflow "
                "tracking off, true (or 1, yes, on) or nothing to keep it on"
            )
        experiment = env.get("MLFLOW_EXPERIMENT_NAME", "").strip() or DEFAULT_EXPERIMENT_NAME
        uri = env.get("MLFLOW_TRACKING_URI", "").strip()
        _check_tracking_uri(uri)
        _check_absolute_store(uri, data_dir.absolute())
        if uri.startswith("sqlite:///"):
            # MLflow would put a new experiment's artifacts in ./mlruns of whatever directory the trainer runs in.
            artifacts = Path(uri.removeprefix("sqlite:///")).absolute().parent / "mlartifacts"
            return cls(tracking_uri=uri, experiment_name=experiment, artifact_location=artifacts.as_uri())
        if uri:
            return cls(tracking_uri=uri, experiment_name=experiment)
        data_dir = data_dir.absolute()
        return cls(
            tracking_uri=f"sqlite:///{data_dir / 'mlflow.db'}",
            experiment_name=experiment,
            artifact_location=(data_dir / "mlartifacts").as_uri(),
            from_env_var=False,
        )

    @property
    def display_uri(self) -> str:
        """The tracking URI without credentials: what logs, messages and the backend get."""
        return redact_uri(self.tracking_uri)

    @property
    def setting(self) -> str:
        """How error messages name the tracking store: the variable to fix, or the default it fell back to."""
        if self.from_env_var:
            return f"MLFLOW_TRACKING_URI={self.display_uri}"
        return f"the local MLflow store {self.display_uri} (MLFLOW_TRACKING_URI is not set)"


def _check_tracking_uri(uri: str) -> None:
    """Refuses a tracking URI that would fail later with its credentials in MLflow's message.

    Raises:
        TrackingError: The URI holds `user:password@` but no `scheme://`, or is a bare `host:port`.
    """
    why = ""
    if uri and not has_scheme(uri) and redact_uri(uri) != uri:
        why = "it holds credentials (user:password@) but no scheme"
    elif _HOST_PORT.match(uri):
        why = "it has no scheme"
    if why:
        # The hint shows no URL with `user:password@` in it: redact_urls, applied to every message reported, would
        # cut it to `https://host` and the hint with it.
        raise TrackingError(
            f"MLFLOW_TRACKING_URI={redact_uri(uri)} is not a valid tracking URI: {why}. Write the server's URL as "
            "http://host:port or https://host (credentials as user:password@ between https:// and the host, or in "
            "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD)"
        )


def _check_absolute_store(uri: str, data_dir: Path) -> None:
    """Refuses a local store given as a relative path (`sqlite:///mlflow.db`, MLflow's quickstart form; `file:mlruns`;
    `./mlruns`): each training process runs in its own run directory, so it would open a store of its own there,
    not the one the backend is told of, and `tp gc` would delete it with the run directory.

    Raises:
        TrackingError: Names MLFLOW_TRACKING_URI and shows the absolute form (in the data directory) to write.
    """
    relative = ""
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///").split("?", 1)[0].removeprefix("file:")  # SQLite's own `file:` form too
        if path and path != ":memory:" and not path.startswith("/"):
            relative = f"sqlite:///{data_dir / Path(path).name}"
    elif uri.lower().startswith("file:"):
        path = uri[len("file:") :]
        if not path.startswith("/"):
            relative = (data_dir / Path(path).name).as_uri()
    elif uri and not has_scheme(uri) and ":" not in uri and not uri.startswith("/") and (uri[0] == "." or "/" in uri):
        relative = (data_dir / Path(uri).name).as_uri()
    if relative:
        raise TrackingError(
            f"MLFLOW_TRACKING_URI={redact_uri(uri)} is a relative path: each training process runs in its own run "
            f"directory and would open a store of its own there, not the one the backend is told of. Give the "
            f"absolute path, for example {relative} (sqlite:/// followed by /path), or unset MLFLOW_TRACKING_URI for "
            f"the trainer's default store sqlite:///{data_dir / 'mlflow.db'}"
        )


#: `host:port` or `host:port/path` typed without `http://`.
_HOST_PORT = re.compile(r"[\w.-]+:\d+(/|$)")


def has_scheme(uri: str) -> bool:
    """True when `uri` starts with `scheme://` (`http://`, `sqlite:///`, ...)."""
    return _SCHEME.match(uri) is not None


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
#: A URL inside free text (an exception's message): a scheme, `://`, then anything up to a space or a quote, less
#: the punctuation that ends a sentence or a clause (`... at https://host/x: connection reset`).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>`]+(?<![.,:;!?)\]])")
#: Credentials without a scheme inside free text (`Invalid endpoint: minio:Sup3rSecret@127.0.0.1:9000`): a name,
#: a colon, then anything but a space or a quote up to an `@` followed by a host.
_USERINFO_IN_TEXT = re.compile(r"[^\s\"'<>`@/:=]+:[^\s\"'<>`]*@(?=[\w\[])")


#: Settings whose whole value is a secret, and settings holding a URL whose `user:password@` is one.
_SECRET_SETTINGS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
_URL_SETTINGS = ("AWS_S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL")
#: Shorter secrets are left to the patterns: removing every `abc` from a message would leave nothing to read.
_MIN_SECRET_LENGTH = 4


def _configured_secrets() -> list[str]:
    """The secrets this process's settings hold (`AWS_SECRET_ACCESS_KEY`, ..., and the password of each URL setting,
    as typed and percent-decoded), longest first, those of at least 4 characters."""
    found: set[str] = set()
    for name in _SECRET_SETTINGS:
        found.add(os.environ.get(name, ""))
    for name in _URL_SETTINGS:
        url = os.environ.get(name, "")
        match = AUTHORITY_START.match(url)
        rest = url[match.end() :] if match else url
        if "@" not in rest:
            continue
        user, colon, password = rest.rpartition("@")[0].partition(":")
        secret = password if colon else user  # a token alone (`https://token@host`) is a secret too
        found.update((secret, unquote(secret)))
    return sorted((s for s in found if len(s) >= _MIN_SECRET_LENGTH), key=len, reverse=True)


def redact_urls(text: str) -> str:
    """Returns `text` with every URL in it passed through `redact_uri`, any other `user:password@` removed, and every
    secret of this process's settings (`_configured_secrets`) replaced by `***`: a library's message (botocore's
    `Could not connect to the endpoint URL: "http://user:password@host/bucket"`, `Invalid endpoint:
    user:password@host`) repeats the URL it was given, credentials included, and a password typed with a space or a
    quote in it ends the URL for a pattern."""
    for secret in _configured_secrets():
        text = text.replace(secret, "***")
    text = _URL_IN_TEXT.sub(lambda match: redact_uri(match.group(0)), text)
    return _USERINFO_IN_TEXT.sub("", text)


def flatten_params(sections: Mapping[str, Any]) -> dict[str, str]:
    """Flattens nested configs into MLflow params: `{"advanced": {"extra": {"mosaic": 0}}}` -> `advanced.extra.mosaic`.

    None values (a setting left at the adapter's default) are left out; lists become JSON; keys and values are cut
    to MLflow's limits, and characters MLflow rejects in keys become `_`. A URL in a value is shown without its
    credentials (`redact_urls`: `user:password@`, secret query parameters, this process's secrets).
    """
    params: dict[str, str] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                visit(f"{prefix}.{key}" if prefix else str(key), item)
            return
        if value is None:
            return
        text = json.dumps(value, default=str) if isinstance(value, list | tuple) else str(value)
        params[metric_name(prefix)[:MAX_PARAM_KEY_LENGTH]] = redact_urls(text)[:MAX_PARAM_VALUE_LENGTH]

    visit("", sections)
    return params


def metric_name(key: str) -> str:
    """`key` as a name MLflow accepts for a metric or param (`metrics/mAP50-95` stays as it is)."""
    cleaned = _BAD_NAME_CHARACTERS.sub("_", key)
    # MLflow also rejects names that are not normalised paths ("a//b", "./a", "a/").
    segments = [s for s in cleaned.split("/") if s not in ("", ".", "..")]
    return "/".join(segments) or "_"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI; None for any other store (and for an in-memory one)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path).absolute() if path and path != ":memory:" else None


@contextlib.contextmanager
def store_lock(settings: TrackingSettings) -> Iterator[None]:
    """Holds the inter-process lock of a local SQLite store (`<store>.lock`); does nothing for a server.

    A POSIX record lock (`lockf`), not `flock`: a child forked meanwhile (a data loader worker) does not inherit it,
    so it cannot keep the store locked for the rest of training.

    Raises:
        TrackingError: Other processes held the lock for longer than STORE_LOCK_TIMEOUT_S.
    """
    path = _sqlite_path(settings.tracking_uri)
    if path is None:
        yield
        return
    lock_path = path.with_name(path.name + ".lock")
    deadline = time.monotonic() + STORE_LOCK_TIMEOUT_S
    # The thread lock is held until the descriptor is closed: closing any descriptor of the file releases every
    # POSIX lock this process holds on it, another thread's included.
    if not _THREAD_LOCK.acquire(timeout=STORE_LOCK_TIMEOUT_S):
        raise TrackingError(f"{settings.setting}: {lock_path} stayed held for more than {STORE_LOCK_TIMEOUT_S:.0f}s")
    try:
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:  # the store's directory is unusable: MLflow's own error says so
            _log.warning("cannot open the MLflow store's lock %s: %s", lock_path, error)
            fd = -1
        if fd < 0:
            yield
            return
        try:
            while True:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:  # EACCES or EAGAIN: another process holds it
                    if time.monotonic() > deadline:
                        raise TrackingError(
                            f"{settings.setting}: other jobs held {lock_path} for more than {STORE_LOCK_TIMEOUT_S:.0f}s"
                        ) from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)  # releases the lock
    finally:
        _THREAD_LOCK.release()


def _is_locked(error: BaseException) -> bool:
    text = str(error).lower()
    return "database is locked" in text or "database table is locked" in text


def retry_locked(call: Callable[[], _T], *, timeout_s: float = LOCKED_RETRY_S) -> _T:
    """Calls `call`, again with a growing delay while it fails with SQLite's "database is locked"."""
    deadline, delay = time.monotonic() + timeout_s, 0.05
    while True:
        try:
            return call()
        except Exception as error:
            if not _is_locked(error) or time.monotonic() + delay > deadline:
                raise
            _log.info("the MLflow store is locked by another writer; retrying in %.2fs", delay)
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def _fail_fast_http() -> contextlib.AbstractContextManager[None]:
    """No retries and a short timeout for the calls inside, whatever the environment says."""
    return _http_settings(PREFLIGHT_HTTP_ENV)


@contextlib.contextmanager
def _http_settings(settings: Mapping[str, str]) -> Iterator[None]:
    """MLflow's HTTP settings (`MLFLOW_HTTP_REQUEST_*`, read at each request) for the calls inside."""
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


#: Lines of SQLAlchemy's messages that say nothing of the cause: a hint that comes first ("(raised as a result of
#: Query-invoked autoflush; ...)"), the statement, its parameters and a link.
_NOISE_LINES = ("(raised as a result of", "[SQL:", "[parameters:", "(Background on this error")


def _describe(error: BaseException, settings: TrackingSettings) -> str:
    """An error's text on one line, with the raw tracking URI (which may hold credentials) redacted.

    SQLAlchemy's hint, statement, parameters and link are left out, so the cause ("(sqlite3.OperationalError)
    attempt to write a readonly database") is what is shown; at most the first 3 remaining lines are kept.
    """
    lines = [line.strip() for line in str(error).splitlines()]
    kept = [line for line in lines if line and not line.startswith(_NOISE_LINES)]
    if not kept and error.__cause__ is not None:
        return _describe(error.__cause__, settings)
    text = " ".join(kept[:3]) or type(error).__name__
    if settings.tracking_uri != settings.display_uri:
        text = text.replace(settings.tracking_uri, settings.display_uri)
        text = text.replace(settings.tracking_uri.rstrip("/"), settings.display_uri.rstrip("/"))
    return redact_urls(text)[:500]


def _env_number(name: str, default: float) -> float:
    """A number of this process's environment (MLflow's HTTP settings); `default` when unset or not a number."""
    try:
        value = float(os.environ.get(name, "") or default)
    except ValueError:
        return default
    return value if math.isfinite(value) and value >= 0 else default


def _http_status(error: BaseException) -> int | None:
    get = getattr(error, "get_http_status_code", None)
    return get() if callable(get) else None


class MlflowRun:
    """One job's MLflow run, created by `start`; every method talks to the tracking server.

    Args:
        client: The MLflow client of the tracking URI.
        run_id: The run's id.
        settings: Where the run lives.
        artifact_uri: The run's artifact root; a `file://` root (a local store) gets checkpoints as hard links.
    """

    def __init__(
        self, client: MlflowClient, run_id: str, settings: TrackingSettings, artifact_uri: str | None = None
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.settings = settings
        self.artifact_uri = artifact_uri

    @classmethod
    def start(
        cls,
        settings: TrackingSettings,
        *,
        job_id: str,
        framework: str,
        model_name: str,
        params: Mapping[str, str],
        on_created: Callable[[MlflowRun], None] | None = None,
    ) -> MlflowRun:
        """Checks that the tracking server answers, then creates the run and logs its params.

        The checks fail fast: no retries and a 10 s timeout per request.

        Args:
            settings: Where the run goes.
            job_id: The backend's job id: the run's name and its `job_id` tag.
            framework: The `framework` tag.
            model_name: The `model` tag.
            params: The run's params (see `flatten_params`).
            on_created: Called with the run as soon as it exists, before its params are logged: to record it where
                a process outliving this one finds it (the run is left RUNNING if this process dies).

        Raises:
            TrackingError: mlflow is not installed, the server is unreachable or rejects the credentials, or the
                experiment cannot be used; the message names the setting.
        """
        try:
            from mlflow import MlflowClient
        except ImportError as error:
            raise TrackingError(
                f"{settings.setting}: the mlflow package is not installed in this trainer "
                f"(install mlflow, or set TP_MLFLOW_ENABLED=false): {error}"
            ) from error
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", DEFAULT_HTTP_MAX_RETRIES)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", DEFAULT_HTTP_TIMEOUT)
        # MLflow prints "View run <url>" built from the raw tracking URI, credentials included; the job's logs
        # already say where the run is.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        # The lock covers MLflow's creation (or migration) of a local store's schema, the experiment and the run.
        with store_lock(settings), _fail_fast_http():
            try:
                client = MlflowClient(tracking_uri=settings.tracking_uri)
                retry_locked(lambda: client.search_experiments(max_results=1))
            except Exception as error:
                if _http_status(error) in (401, 403):
                    raise TrackingError(
                        f"{settings.setting} rejected the credentials (MLFLOW_TRACKING_USERNAME/"
                        f"MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN): {_describe(error, settings)}"
                    ) from error
                raise TrackingError(
                    f"{settings.setting} is not reachable or not an MLflow tracking server: "
                    f"{_describe(error, settings)}"
                ) from error
            experiment_id = cls._experiment_id(client, settings)
            try:
                run = retry_locked(
                    lambda: client.create_run(
                        experiment_id,
                        run_name=job_id,
                        tags={"job_id": job_id, "framework": framework, "model": model_name},
                    )
                )
            except Exception as error:
                raise TrackingError(
                    f"{settings.setting}: cannot create a run in experiment MLFLOW_EXPERIMENT_NAME="
                    f"{settings.experiment_name!r}: {_describe(error, settings)}"
                ) from error
            tracked = cls(client, run.info.run_id, settings, run.info.artifact_uri)
            if on_created is not None:
                on_created(tracked)
            try:
                tracked._log_params(params)
            except Exception as error:
                retry_locked(lambda: client.set_terminated(tracked.run_id, "FAILED"))
                raise TrackingError(
                    f"{settings.setting}: logging the job's params failed: {_describe(error, settings)}"
                ) from error
        return tracked

    @staticmethod
    def _experiment_id(client: MlflowClient, settings: TrackingSettings) -> str:
        name = settings.experiment_name
        try:
            experiment = retry_locked(lambda: client.get_experiment_by_name(name))
            if experiment is None:
                try:
                    return retry_locked(
                        lambda: client.create_experiment(name, artifact_location=settings.artifact_location)
                    )
                except Exception:
                    # Another job may have created it in the meantime.
                    experiment = retry_locked(lambda: client.get_experiment_by_name(name))
                    if experiment is None:
                        raise
        except Exception as error:
            raise TrackingError(
                f"MLFLOW_EXPERIMENT_NAME={name!r} cannot be used at {settings.setting}: {_describe(error, settings)}"
            ) from error
        if experiment.lifecycle_stage != "active":
            raise TrackingError(
                f"MLFLOW_EXPERIMENT_NAME={name!r} is a deleted experiment at {settings.setting}: restore it in MLflow "
                "or choose another name"
            )
        return experiment.experiment_id

    def log_params(self, params: Mapping[str, str]) -> None:
        """Logs params in batches of MLflow's maximum size."""
        with store_lock(self.settings):
            self._log_params(params)

    def _log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            batch = items[start : start + MAX_PARAMS_PER_BATCH]
            retry_locked(lambda batch=batch: self.client.log_batch(self.run_id, params=batch))  # type: ignore[misc]

    def log_epoch(
        self, epoch: int, metrics: Mapping[str, float], *, timestamp_ms: int | None = None, fail_fast: bool = False
    ) -> None:
        """Logs one epoch's metrics with step = `epoch`, in one request (per 1,000 metrics), with EPOCH_HTTP_ENV's
        short timeout and single retry (`fail_fast`: no retry): the training loop waits on this call. `timestamp_ms`:
        when the epoch ended (default now); the same on a resend, MLflow keeps one point.

        A metric the backend leaves out of an epoch summary (a key that is not text of 1 to 250 characters, a value
        that is not a number: `TrainingLogger.log_epoch_summary` warns of each) is left out here too, not sent to
        fail the whole request."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        items = [
            Metric(metric_name(key), number, timestamp, epoch)
            for key, value in metrics.items()
            if valid_key(key) and (number := metric_value(value)) is not None
        ]
        with store_lock(self.settings), _http_settings(PREFLIGHT_HTTP_ENV if fail_fast else EPOCH_HTTP_ENV):
            for start in range(0, len(items), MAX_METRICS_PER_BATCH):
                batch = items[start : start + MAX_METRICS_PER_BATCH]
                retry_locked(lambda batch=batch: self.client.log_batch(self.run_id, metrics=batch))  # type: ignore[misc]

    def log_artifact(self, path: Path, artifact_path: str | None = None, *, fail_fast: bool = False) -> None:
        """Uploads one file into the run's artifacts (under `artifact_path`, a directory, when given).

        Args:
            path: The local file.
            artifact_path: Directory inside the run's artifacts; None for the top level.
            fail_fast: No retries and a short timeout: for the start-of-job check of the artifact store.
        """
        local = self._local_artifact_dir()
        if local is not None and is_checkpoint(path):
            # A local store: MLflow would copy the checkpoint; a hard link keeps one copy on disk (issue 15).
            store_file(path, local / (artifact_path or "") / path.name)
            return
        if fail_fast:
            with _fail_fast_http():
                # Not under the store's lock: a checkpoint's upload must not hold other jobs' writes.
                retry_locked(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))
            return
        self._upload(path, artifact_path)

    def _upload(self, path: Path, artifact_path: str | None) -> None:
        """Uploads a file with a timeout that grows with its size (UPLOAD_MIN_BYTES_PER_S) and no blind retry.

        MLflow's own retries would send the whole file again after a read timeout while the server still pushes the
        first copy to its store. So each request is made without them; after a failure the run's artifacts are
        listed, and a file of the right size there is a success. A timed-out upload is awaited there for as long as
        the upload itself was given, never sent again; another failure (refused, a 5xx) is tried again up to
        MLFLOW_HTTP_REQUEST_MAX_RETRIES times.
        """
        size = path.stat().st_size
        base = _env_number("MLFLOW_HTTP_REQUEST_TIMEOUT", float(DEFAULT_HTTP_TIMEOUT))
        retries = int(_env_number("MLFLOW_HTTP_REQUEST_MAX_RETRIES", float(DEFAULT_HTTP_MAX_RETRIES)))
        timeout = base + size / UPLOAD_MIN_BYTES_PER_S
        http = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(math.ceil(timeout))}
        for attempt in range(retries + 1):
            try:
                with _http_settings(http):
                    retry_locked(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))
                return
            except Exception as error:
                timed_out = "timed out" in str(error).lower()
                if self._has_artifact(path.name, artifact_path, size, wait_s=timeout if timed_out else 0.0):
                    _log.info("MLflow stored %s although the upload failed: %s", path.name, self.describe_error(error))
                    return
                if timed_out or attempt == retries:
                    raise
                time.sleep(min(2.0**attempt, 10.0))

    def _has_artifact(self, name: str, artifact_path: str | None, size: int, *, wait_s: float) -> bool:
        """Whether the run's artifacts hold `name` (in `artifact_path`) with `size` bytes, looking again each second
        for `wait_s` seconds; False when listing them fails."""
        wanted = f"{artifact_path}/{name}" if artifact_path else name
        deadline = time.monotonic() + wait_s
        while True:
            try:
                with _fail_fast_http():
                    listed = self.client.list_artifacts(self.run_id, artifact_path)
                if any(item.path == wanted and item.file_size == size for item in listed):
                    return True
            except Exception as error:
                _log.info("listing the MLflow run's artifacts failed: %s", self.describe_error(error))
            if time.monotonic() + 1.0 > deadline:
                return False
            time.sleep(1.0)

    def _local_artifact_dir(self) -> Path | None:
        """The run's artifact directory when its artifacts live on this machine's disk (`file://`), else None."""
        uri = self.artifact_uri or ""
        if not uri.startswith("file://"):
            return None
        return Path(url2pathname(urlsplit(uri).path))

    def end(self, status: str, *, fail_fast: bool = False) -> None:
        """Ends the run: `FINISHED`, `FAILED` or `KILLED`; `fail_fast`: no retries and a short timeout."""
        with store_lock(self.settings), _fail_fast_http() if fail_fast else contextlib.nullcontext():
            retry_locked(lambda: self.client.set_terminated(self.run_id, status))

    @staticmethod
    def end_abandoned(settings: TrackingSettings, run_id: str, status: str, reason: str) -> str:
        """Ends a run whose training process died before it could end it (SIGKILL after the cancel grace, the
        kernel's OOM killer, a crash), so MLflow does not show it RUNNING for ever: only while it is RUNNING,
        with `status` (`FINISHED`, `FAILED` or `KILLED`) and the tag `end_reason`. No retries, a short timeout.

        Returns:
            The run's status as MLflow showed it before: `RUNNING` when this call ended it.

        Raises:
            TrackingError: mlflow is not installed or the server did not answer; the message names the setting.
        """
        try:
            from mlflow import MlflowClient
        except ImportError as error:
            raise TrackingError(f"{settings.setting}: the mlflow package is not installed: {error}") from error
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        with store_lock(settings), _fail_fast_http():
            try:
                client = MlflowClient(tracking_uri=settings.tracking_uri)
                found = retry_locked(lambda: client.get_run(run_id)).info.status
                if found == "RUNNING":
                    retry_locked(lambda: client.set_tag(run_id, "end_reason", reason[:5000]))
                    retry_locked(lambda: client.set_terminated(run_id, status))
            except Exception as error:
                raise TrackingError(
                    f"{settings.setting}: cannot end the MLflow run {run_id}: {_describe(error, settings)}"
                ) from error
        return str(found)

    def describe_error(self, error: BaseException) -> str:
        """An error's text for the job's logs, with the tracking URI's credentials redacted."""
        return _describe(error, self.settings)
