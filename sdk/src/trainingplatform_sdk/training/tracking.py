"""MLflow tracking of a training job: one MLflow run per job, checked at job start.

Settings come from the environment (see docs/tracking.md):

- `MLFLOW_TRACKING_URI`: the MLflow server (`http://mlflow:5000`) or store. Unset means a local SQLite store in the
  data directory, `sqlite:///<data dir>/mlflow.db`, with artifacts under `<data dir>/mlartifacts`.
- `MLFLOW_EXPERIMENT_NAME`: the experiment of every run; default `trainingplatform`.
- `TP_MLFLOW_ENABLED`: `false` turns MLflow tracking off (artifact storage stays on).

The run is named after the job id and tagged with `job_id`, `framework` and `model`; the job's configs are its
params (flattened: `model.name`, `advanced.extra.mosaic`, ...); each epoch's metrics are one `log_batch` call with
step = the epoch (0-based).

`mlflow` is imported inside functions only: this module is part of the SDK, which installs without it, and only
a trainer process that tracks a run pays for the import.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from trainingplatform_sdk.errors import TrackingError

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = [
    "DEFAULT_EXPERIMENT_NAME",
    "MlflowRun",
    "TrackingError",
    "TrackingSettings",
    "flatten_params",
    "redact_uri",
]

DEFAULT_EXPERIMENT_NAME = "trainingplatform"
#: MLflow's limits (mlflow.utils.validation), repeated here so that building params needs no mlflow import.
MAX_PARAM_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
#: HTTP settings of the start-of-job checks: an unreachable server must fail the job in seconds, not minutes.
PREFLIGHT_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
#: Retries of later calls unless the environment sets its own: MLflow's default (7, with exponential backoff)
#: would hold a finished job for minutes when the server went away during training.
DEFAULT_HTTP_MAX_RETRIES = "3"

_FALSE = ("0", "false", "no", "off")
# Names MLflow accepts for params and metrics (mlflow.utils.validation.validate_param_and_metric_name).
_BAD_NAME_CHARACTERS = re.compile(r"[^/\w.\- :]")
_SECRET_QUERY_KEYS = re.compile(r"pass|secret|token|key|credential|signature", re.IGNORECASE)


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
        """
        if env.get("TP_MLFLOW_ENABLED", "").strip().lower() in _FALSE:
            return None
        experiment = env.get("MLFLOW_EXPERIMENT_NAME", "").strip() or DEFAULT_EXPERIMENT_NAME
        uri = env.get("MLFLOW_TRACKING_URI", "").strip()
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


def redact_uri(uri: str) -> str:
    """Returns `uri` without a `user:password@` part and without secret-looking query parameters."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(key, value) for key, value in pairs if not _SECRET_QUERY_KEYS.search(key)]
    if "@" not in parts.netloc and len(kept) == len(pairs):
        return uri  # unchanged: urlunsplit would turn `sqlite:////abs/path` into `sqlite://abs/path`
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(kept), parts.fragment))


def flatten_params(sections: Mapping[str, Any]) -> dict[str, str]:
    """Flattens nested configs into MLflow params: `{"advanced": {"extra": {"mosaic": 0}}}` -> `advanced.extra.mosaic`.

    None values (a setting left at the adapter's default) are left out; lists become JSON; keys and values are cut
    to MLflow's limits, and characters MLflow rejects in keys become `_`.
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
        params[metric_name(prefix)[:MAX_PARAM_KEY_LENGTH]] = text[:MAX_PARAM_VALUE_LENGTH]

    visit("", sections)
    return params


def metric_name(key: str) -> str:
    """`key` as a name MLflow accepts for a metric or param (`metrics/mAP50-95` stays as it is)."""
    cleaned = _BAD_NAME_CHARACTERS.sub("_", key)
    # MLflow also rejects names that are not normalised paths ("a//b", "./a", "a/").
    segments = [s for s in cleaned.split("/") if s not in ("", ".", "..")]
    return "/".join(segments) or "_"


@contextlib.contextmanager
def _fail_fast_http() -> Iterator[None]:
    """No retries and a short timeout for the calls inside, whatever the environment says."""
    saved = {key: os.environ.get(key) for key in PREFLIGHT_HTTP_ENV}
    os.environ.update(PREFLIGHT_HTTP_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _describe(error: BaseException, settings: TrackingSettings) -> str:
    """An error's text, first line only, with the raw tracking URI (which may hold credentials) redacted."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if settings.tracking_uri != settings.display_uri:
        text = text.replace(settings.tracking_uri, settings.display_uri)
        text = text.replace(settings.tracking_uri.rstrip("/"), settings.display_uri.rstrip("/"))
    return text[:500]


def _http_status(error: BaseException) -> int | None:
    get = getattr(error, "get_http_status_code", None)
    return get() if callable(get) else None


class MlflowRun:
    """One job's MLflow run, created by `start`; every method talks to the tracking server.

    Args:
        client: The MLflow client of the tracking URI.
        run_id: The run's id.
        settings: Where the run lives.
    """

    def __init__(self, client: MlflowClient, run_id: str, settings: TrackingSettings) -> None:
        self.client = client
        self.run_id = run_id
        self.settings = settings

    @classmethod
    def start(
        cls,
        settings: TrackingSettings,
        *,
        job_id: str,
        framework: str,
        model_name: str,
        params: Mapping[str, str],
    ) -> MlflowRun:
        """Checks that the tracking server answers, then creates the run and logs its params.

        The checks fail fast: no retries and a 10 s timeout per request.

        Args:
            settings: Where the run goes.
            job_id: The backend's job id: the run's name and its `job_id` tag.
            framework: The `framework` tag.
            model_name: The `model` tag.
            params: The run's params (see `flatten_params`).

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
        # MLflow prints "View run <url>" built from the raw tracking URI, credentials included; the job's logs
        # already say where the run is.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        with _fail_fast_http():
            try:
                client = MlflowClient(tracking_uri=settings.tracking_uri)
                client.search_experiments(max_results=1)
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
                run = client.create_run(
                    experiment_id,
                    run_name=job_id,
                    tags={"job_id": job_id, "framework": framework, "model": model_name},
                )
            except Exception as error:
                raise TrackingError(
                    f"{settings.setting}: cannot create a run in experiment MLFLOW_EXPERIMENT_NAME="
                    f"{settings.experiment_name!r}: {_describe(error, settings)}"
                ) from error
            tracked = cls(client, run.info.run_id, settings)
            try:
                tracked.log_params(params)
            except Exception as error:
                tracked.end("FAILED")
                raise TrackingError(
                    f"{settings.setting}: logging the job's params failed: {_describe(error, settings)}"
                ) from error
        return tracked

    @staticmethod
    def _experiment_id(client: MlflowClient, settings: TrackingSettings) -> str:
        name = settings.experiment_name
        try:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                try:
                    return client.create_experiment(name, artifact_location=settings.artifact_location)
                except Exception:
                    # Another job may have created it in the meantime.
                    experiment = client.get_experiment_by_name(name)
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
        from mlflow.entities import Param

        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + MAX_PARAMS_PER_BATCH])

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Logs one epoch's metrics with step = `epoch`, in one request (per 1,000 metrics)."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        items = [Metric(metric_name(key), float(value), timestamp, epoch) for key, value in metrics.items()]
        for start in range(0, len(items), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=items[start : start + MAX_METRICS_PER_BATCH])

    def log_artifact(self, path: Path, artifact_path: str | None = None, *, fail_fast: bool = False) -> None:
        """Uploads one file into the run's artifacts (under `artifact_path`, a directory, when given).

        Args:
            path: The local file.
            artifact_path: Directory inside the run's artifacts; None for the top level.
            fail_fast: No retries and a short timeout: for the start-of-job check of the artifact store.
        """
        with _fail_fast_http() if fail_fast else contextlib.nullcontext():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def end(self, status: str) -> None:
        """Ends the run: `FINISHED`, `FAILED` or `KILLED`."""
        self.client.set_terminated(self.run_id, status)

    def describe_error(self, error: BaseException) -> str:
        """An error's text for the job's logs, with the tracking URI's credentials redacted."""
        return _describe(error, self.settings)
