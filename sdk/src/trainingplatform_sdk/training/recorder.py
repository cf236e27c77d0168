"""What a job leaves behind outside the backend: its MLflow run and its files in artifact storage.

`JobRecorder.start` runs at job start, before training: it checks the artifact store (bucket reachable,
credentials accepted) and the MLflow server (reachable, experiment usable), creates the run with the job's params,
and stores the job's config.json in both — a first real upload that proves both stores accept writes. Any problem
fails the job at once with a message naming the setting (TrackingError or StorageError), never minutes into
training. The MLflow run id and tracking URI (without credentials) and the config's URI go to the backend through
`report_run_info`, so `GetJob` shows them while the job runs.

During training, `wrap()`'s sink logs each epoch summary's metrics to MLflow (one request per epoch; while
MLflow does not answer, they are kept and sent once it does: `_EpochTrackingSink`). At the end:

- completed: best and last checkpoints, results.json (final metrics) and results.csv (when the framework wrote
  one) go to the artifact store, the URIs to the backend; then the best checkpoint, results.json and results.csv
  to MLflow, and the run ends FINISHED. An upload to the artifact store that fails is retried with backoff for
  TP_ARTIFACTS_UPLOAD_RETRY_S (each retry a WARNING line). One that still fails fails the job: its message names
  the setting and where the files still are (this host, the output directory); results.json then says `failed`,
  with that message, in the output directory and in the artifact store when the completed one was already stored
  there; the checkpoint and that results.json still go to the MLflow run, which ends FAILED (best effort: a problem
  is a WARNING line). A failed upload to MLflow (the server went away) leaves the job COMPLETED: the artifact
  store holds its files, and one WARNING line says what the run misses and where the files are (only on the
  trainer's disk when TP_ARTIFACTS_BUCKET is not set).
- cancelled or failed: the last checkpoint and results.json are stored best effort (a problem is a WARNING line),
  in the artifact store and in the MLflow run independently (one of them down does not keep them from the other),
  and the run ends KILLED or FAILED.
- the training process died before it could end the run (SIGKILL after the cancel grace, the kernel's OOM killer,
  a crash): `mlflow_run.json` in the output directory names the run and says whether the process ended it, and
  the trainer service ends a run left RUNNING (`end_abandoned_run`) KILLED or FAILED, with the tag `end_reason`.
- cancelled while the results of a completed training were being stored (`finish` was given a `stop` that became
  true): no further file is uploaded once the one in flight is done (`StopRequested` is raised), and `abort` then
  makes every record say cancelled: results.json `cancelled` in the output directory and in both stores (replacing
  a `completed` one already stored), the run KILLED (even when it had been ended FINISHED).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainingplatform_sdk.training.adapter import Status, TelemetrySink, TrainingResult
from trainingplatform_sdk.training.artifacts import (
    ArtifactStore,
    LocalArtifactStore,
    StorageError,
    StorageSettings,
    open_store,
    run_key,
)
from trainingplatform_sdk.training.tracking import (
    MlflowRun,
    TrackingError,
    TrackingSettings,
    flatten_params,
    redact_urls,
)

__all__ = [
    "RUN_FILE",
    "JobRecorder",
    "RecorderSettings",
    "StopRequested",
    "end_abandoned_run",
    "local_data_dir",
    "run_left_open",
]

_log = logging.getLogger(__name__)

#: MLflow run status of each final job status.
_RUN_STATUS = {Status.COMPLETED: "FINISHED", Status.FAILED: "FAILED", Status.CANCELLED: "KILLED"}
#: The output directory's record of the job's MLflow run: its id, its store (without credentials) and the status
#: the training process ended it with (null until then). The trainer service reads it to end a run whose
#: process died first.
RUN_FILE = "mlflow_run.json"
#: After MLflow failed to take an epoch's metrics, seconds until the next try (at the first epoch end after it),
#: doubling after each failed try up to METRICS_RETRY_MAX_DELAY_S; the epochs in between are kept and sent then.
METRICS_RETRY_FIRST_DELAY_S = 30.0
METRICS_RETRY_MAX_DELAY_S = 600.0
#: Most metric values kept while MLflow does not take them (about 100 MB at most); the oldest epochs are dropped
#: beyond.
MAX_PENDING_POINTS = 1_000_000


class StopRequested(Exception):
    """A stop (a cancel) came while `JobRecorder.finish` stored a completed job's results: the job ends cancelled."""


@dataclass(frozen=True)
class RecorderSettings:
    """Where a job's MLflow run and files go."""

    tracking: TrackingSettings | None
    """The MLflow settings; None when tracking is turned off."""
    storage: StorageSettings
    """The artifact storage settings."""

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, output_dir: Path) -> RecorderSettings:
        """Reads the settings. The data directory of the local defaults is TP_DATA_DIR, else `output_dir`'s parent.

        Raises:
            StorageError: Contradictory storage settings.
        """
        data_dir = local_data_dir(env, output_dir=output_dir)
        return cls(
            tracking=TrackingSettings.from_env(env, data_dir=data_dir),
            storage=StorageSettings.from_env(env, data_dir=data_dir),
        )


def local_data_dir(env: Mapping[str, str], *, output_dir: Path) -> Path:
    """The data directory of the local defaults (the artifacts directory, the MLflow store): TP_DATA_DIR, else
    `output_dir`'s parent."""
    return Path(env.get("TP_DATA_DIR", "").strip() or Path(output_dir).absolute().parent)


class JobRecorder:
    """One job's MLflow run and artifact store; see the module docstring. Build it with `start`."""

    def __init__(
        self,
        *,
        job_id: str,
        run: MlflowRun | None,
        store: ArtifactStore,
        output_dir: Path,
        logger: TelemetrySink,
        upload_retry_s: float = 0.0,
    ) -> None:
        self.job_id = job_id
        #: How long `finish` retries an upload to the artifact store (TP_ARTIFACTS_UPLOAD_RETRY_S).
        self.upload_retry_s = upload_retry_s
        self.run = run
        self.store = store
        self.output_dir = output_dir
        self.logger = logger
        #: Artifact URIs by name, as reported to the backend.
        self.artifacts: dict[str, str] = {}
        #: The status the MLflow run was ended with; None while it runs.
        self._ended: Status | None = None
        #: (local path, artifact folder) of the files logged to the MLflow run: `abort` after `finish` skips them.
        self._logged: set[tuple[Path, str | None]] = set()
        #: (local path, key) of the files stored in the artifact store.
        self._stored: set[tuple[Path, str]] = set()
        #: The sink of `wrap`, which keeps the epochs' metrics MLflow has not taken yet.
        self._tracking_sink: _EpochTrackingSink | None = None

    @classmethod
    def start(
        cls,
        settings: RecorderSettings,
        *,
        job_id: str,
        framework: str,
        configs: Mapping[str, Mapping[str, Any]],
        output_dir: Path,
        logger: TelemetrySink,
    ) -> JobRecorder:
        """Checks both stores, creates the MLflow run and stores the config; see the module docstring.

        Args:
            settings: Where the run and the files go.
            job_id: The backend's job id.
            framework: The job's framework.
            configs: The job's configs by section (`model`, `dataset`, `training`, `advanced`), as dicts.
            output_dir: The job's output directory; config.json and results.json are written there.
            logger: Where `report_run_info` and warnings go.

        Raises:
            StorageError: The artifact store cannot be used; the message names the setting.
            TrackingError: MLflow cannot be used; the message names the setting.
        """
        store = open_store(settings.storage, job_id, run_key(output_dir), warn=lambda message: _warn(logger, message))
        store.check()
        output_dir.mkdir(parents=True, exist_ok=True)
        config_path = output_dir / "config.json"
        # Without the credentials a URL in a config holds: the file goes to the artifact store and the MLflow run.
        config = json.dumps({"job_id": job_id, "framework": framework, **configs}, indent=2, default=str)
        config_path.write_text(redact_urls(config), encoding="utf-8")
        recorder = cls(
            job_id=job_id,
            run=None,
            store=store,
            output_dir=output_dir,
            logger=logger,
            upload_retry_s=settings.storage.upload_retry_s,
        )
        recorder.artifacts["config"] = store.upload(config_path, "config.json")
        if settings.tracking is not None:
            model_name = str(configs.get("model", {}).get("name", ""))
            run = MlflowRun.start(
                settings.tracking,
                job_id=job_id,
                framework=framework,
                model_name=model_name,
                params={"framework": framework, **flatten_params(configs)},
                # Recorded before anything else is asked of MLflow: if this process dies from here on, the trainer
                # service ends the run (end_abandoned_run).
                on_created=lambda created: _record_run(output_dir, created, ended=None),
            )
            try:
                run.log_artifact(config_path, fail_fast=True)
            except Exception as error:
                if _end_quietly(run, "FAILED"):
                    _record_run(output_dir, run, ended="FAILED")
                raise TrackingError(
                    f"{settings.tracking.setting}: the run's artifact store does not accept files (check the "
                    f"server's --artifacts-destination, or MLFLOW_S3_ENDPOINT_URL and the AWS_* credentials for "
                    f"artifacts the trainer writes itself): {run.describe_error(error)}"
                ) from error
            recorder.run = run
        logger.report_run_info(
            mlflow_run_id=recorder.run.run_id if recorder.run else None,
            mlflow_tracking_uri=settings.tracking.display_uri if settings.tracking else None,
            artifacts=dict(recorder.artifacts),
        )
        return recorder

    def describe(self) -> str:
        """One line for the job's logs: where the run and the files go."""
        where = self.artifacts["config"].rpartition("/")[0] + "/"
        if self.run is None:
            return f"MLflow tracking is off; artifacts go to {where}"
        settings = self.run.settings
        return (
            f"MLflow run {self.run.run_id} in experiment {settings.experiment_name!r} at {settings.display_uri}; "
            f"artifacts go to {where}"
        )

    def wrap(self, sink: TelemetrySink) -> TelemetrySink:
        """A sink that forwards everything to `sink` and also logs each epoch summary's metrics to MLflow."""
        if self.run is None:
            return sink
        self._tracking_sink = _EpochTrackingSink(sink, self.run)
        return self._tracking_sink

    def finish(self, result: TrainingResult, *, stop: Callable[[], bool] | None = None) -> None:
        """Stores the results of a completed job and ends the run FINISHED; after a failed upload to the artifact
        store, ends it FAILED and leaves a results.json that says so. A failed upload to the MLflow run is a
        WARNING line, not a failure: the artifact store holds the files (see the module docstring).

        Args:
            result: The adapter's result.
            stop: Whether the job was asked to stop (a cancel), read before each upload and before the run is
                ended: once true, nothing more is uploaded and StopRequested is raised; the caller then `abort`s.

        Raises:
            StorageError: An upload to the artifact store failed.
            StopRequested: `stop` became true; the run is not ended and results.json may say completed until
                `abort(Status.CANCELLED, ...)` rewrites it.
        """

        def check_stop() -> None:
            if stop is not None and stop():
                raise StopRequested

        check_stop()
        results = self._write_results(result)
        csv = self.output_dir / "results.csv"
        uploads = {
            "best_checkpoint": (result.best_checkpoint, "weights/best.pt"),
            "last_checkpoint": (result.last_checkpoint, "weights/last.pt"),
            "results": (results, "results.json"),
            "results_csv": (csv if csv.is_file() else None, "results.csv"),
        }
        checkpoint = result.best_checkpoint or result.last_checkpoint
        try:
            for name, (path, key) in uploads.items():
                if path is not None and Path(path).is_file():
                    check_stop()
                    self.artifacts[name] = self._upload(Path(path), key, retry_s=self.upload_retry_s, stop=stop)
        except StorageError as error:
            check_stop()  # a cancel ended the retries: the job ends cancelled, not failed
            where = Path(checkpoint) if checkpoint is not None and Path(checkpoint).is_file() else self.output_dir
            failure = StorageError(
                redact_urls(f"{error}. The job's files are still on host {socket.gethostname()}, in {where.absolute()}")
            )
            failed_results = self._store_failed_results(result, str(failure))
            self.logger.report_run_info(artifacts=dict(self.artifacts))
            if self.run is not None:
                self._send_pending_metrics()
                # MLflow may well be up while S3 is not: the run still gets the checkpoint and the failed results.
                to_mlflow = [
                    (Path(path), folder)
                    for path, folder in ((checkpoint, "checkpoints"), (failed_results, None))
                    if path is not None and Path(path).is_file()
                ]
                for path, folder in to_mlflow:
                    try:
                        self._log_to_mlflow(path, folder)
                    except TrackingError as mlflow_error:
                        self._warn(
                            f"The failed job's MLflow run {self.run.run_id} is missing {path.name}: {mlflow_error}"
                        )
                        break
            self._end_run(Status.FAILED)
            raise failure from error
        self.logger.report_run_info(artifacts=dict(self.artifacts))
        if self.run is not None:
            check_stop()
            self._send_pending_metrics()
            to_mlflow = [
                (Path(path), folder)
                for path, folder in ((checkpoint, "checkpoints"), (results, None), (csv, None))
                if path is not None and Path(path).is_file()
            ]
            if not self._log_to_mlflow_or_warn(to_mlflow, check_stop):
                check_stop()
                # One more try, without retries: a server still down must not hold the completed job again.
                self._end_run(Status.COMPLETED, fail_fast=True)
                return
        check_stop()
        self._end_run(Status.COMPLETED)

    def _log_to_mlflow_or_warn(self, files: list[tuple[Path, str | None]], check_stop: Callable[[], None]) -> bool:
        """Uploads `files` (path, artifact folder) to the MLflow run of a completed job, stopping at the first
        failure. The job's files are already in the artifact store, its durable copy: a failure is one WARNING
        line that says what the run misses and where the files are, and False is returned. `check_stop` runs
        before each upload (it raises StopRequested)."""
        assert self.run is not None
        for index, (path, folder) in enumerate(files):
            check_stop()
            try:
                self._log_to_mlflow(path, folder)
            except TrackingError as error:
                missing = ", ".join(f"{folder}/{p.name}" if folder else p.name for p, folder in files[index:])
                self._warn(
                    f"The job completed, but the MLflow run {self.run.run_id} is missing {missing}: {error}. "
                    f"{self._where_files_are()}"
                )
                return False
        return True

    def _where_files_are(self) -> str:
        """Where a completed job's files are, for a warning about what the MLflow run misses."""
        where = self.artifacts.get("config", "").rpartition("/")[0] + "/"
        if isinstance(self.store, LocalArtifactStore):
            return (
                f"No remote copy of them exists: they are only on this trainer's disk, in {self.store.root} "
                "(TP_ARTIFACTS_BUCKET is not set); copy them before this trainer's data directory is cleaned up"
            )
        return f"The job's checkpoints and results are stored: they are in {where}"

    def abort(
        self, status: Status, *, result: TrainingResult | None = None, last_checkpoint: Path | None = None
    ) -> None:
        """Best effort for a cancelled or failed job: stores the last checkpoint and results.json, ends the run.

        After `finish` (a cancel while it stored the results), files it already stored are not sent again, the
        stored results.json is replaced and the run is ended again, with the status given here.

        The artifact store and the MLflow run each get what they can take: a failed upload to one (S3 down, the
        cancel having stopped `finish`'s retries) does not keep the files from the other.

        Never raises: a problem is logged as a WARNING line in the job's logs.

        Args:
            status: `Status.CANCELLED` or `Status.FAILED`.
            result: The adapter's result when it returned one (cancel).
            last_checkpoint: The last checkpoint, when no result names it.
        """
        checkpoint = (result.last_checkpoint if result else None) or last_checkpoint
        checkpoint = Path(checkpoint) if checkpoint is not None and Path(checkpoint).is_file() else None
        try:
            results: Path | None = self._write_results(result, status=status)
        except Exception as error:
            results = None
            self._warn(f"Writing the {status.value} job's results.json failed: {error}")
        # The artifact store and the MLflow run each get what they can: one of them down (S3 restarting while
        # MLflow is up, a cancel during the final uploads' retries) does not keep the files from the other.
        try:
            if checkpoint is not None and (checkpoint, "weights/last.pt") not in self._stored:
                self.artifacts["last_checkpoint"] = self._upload(checkpoint, "weights/last.pt")
            if results is not None:
                self.artifacts["results"] = self._upload(results, "results.json")
        except Exception as error:
            self._warn(f"Storing the {status.value} job's last checkpoint and results.json failed: {error}")
        if self.run is not None:
            self._send_pending_metrics()
            try:
                # After `finish`, the run may hold the best checkpoint already: that one is kept, not sent again.
                if checkpoint is not None and not any(folder == "checkpoints" for _, folder in self._logged):
                    self._log_to_mlflow(checkpoint, "checkpoints")
                if results is not None:
                    self._log_to_mlflow(results, None)
            except Exception as error:
                self._warn(f"The {status.value} job's MLflow run {self.run.run_id} is missing files: {error}")
        if self.artifacts:
            self.logger.report_run_info(artifacts=dict(self.artifacts))
        self._end_run(status)

    def _send_pending_metrics(self) -> None:
        """Sends the epochs' metrics MLflow did not take during training (one try); a WARNING line says which the run
        is missing when it fails again. Never raises."""
        sink = self._tracking_sink
        if sink is None or self.run is None:
            return
        try:
            if sink.send_pending():
                return
            why = sink.last_error
        except Exception as error:
            why = self.run.describe_error(error)
        self._warn(
            f"The MLflow run {self.run.run_id} is missing the metrics of {sink.missing()} (the backend has them): {why}"
        )

    def _store_failed_results(self, result: TrainingResult, error: str) -> Path | None:
        """After a failed upload in `finish`: results.json says `failed`, with `error`, in the output directory, and
        replaces the completed one wherever it was already stored (the artifact store). Nothing is sent to the
        artifact store when it never got it: the store may be what failed. Never raises: a problem is a WARNING line.

        Returns:
            The written results.json; None when it could not be written.
        """
        try:
            results = self._write_results(result, status=Status.FAILED, error=error)
        except OSError as write_error:
            self._warn(f"Writing the failed job's results.json failed: {write_error}")
            return None
        if "results" in self.artifacts:
            try:
                self.artifacts["results"] = self._upload(results, "results.json")
            except Exception as upload_error:
                self._warn(
                    "Replacing the stored results.json of the failed job failed (it still says completed): "
                    + redact_urls(str(upload_error))
                )
        return results

    def _upload(self, path: Path, key: str, *, retry_s: float = 0.0, stop: Callable[[], bool] | None = None) -> str:
        uri = self.store.upload(path, key, retry_s=retry_s, stop=stop)
        self._stored.add((path, key))
        return uri

    def _log_to_mlflow(self, path: Path, artifact_path: str | None) -> None:
        assert self.run is not None
        try:
            self.run.log_artifact(path, artifact_path)
        except Exception as error:
            raise TrackingError(
                f"{self.run.settings.setting}: uploading {path.name} to the MLflow run failed: "
                f"{self.run.describe_error(error)}"
            ) from error
        self._logged.add((path, artifact_path))

    def _write_results(
        self, result: TrainingResult | None, *, status: Status | None = None, error: str | None = None
    ) -> Path:
        path = self.output_dir / "results.json"
        content: dict[str, Any] = {"job_id": self.job_id, "status": (status or Status.COMPLETED).value}
        if error is not None:
            content["error"] = error
        if result is not None:
            content.update(
                status=(status or result.status).value,
                epochs_completed=result.epochs_completed,
                best_epoch=result.best_epoch,
                best_value=result.best_value,
                metrics=result.metrics,
            )
        path.write_text(json.dumps(content, indent=2), encoding="utf-8")
        return path

    def _end_run(self, status: Status, *, fail_fast: bool = False) -> None:
        """Ends the run with `status`'s MLflow status; a run ended with another status (FINISHED, then a cancel
        before the job's status was reported) is ended again."""
        if self.run is None or self._ended == status:
            return
        self._ended = status
        try:
            self.run.end(_RUN_STATUS[status], fail_fast=fail_fast)
            _record_run(self.output_dir, self.run, ended=_RUN_STATUS[status])
        except Exception as error:
            self._warn(
                f"Ending the MLflow run {self.run.run_id} failed (MLflow shows it RUNNING): "
                f"{self.run.describe_error(error)}"
            )

    def _warn(self, message: str) -> None:
        _warn(self.logger, message)


def _warn(logger: TelemetrySink, message: str) -> None:
    """One WARNING line in this process's log and in the job's logs, without credentials."""
    message = redact_urls(message)
    _log.warning(message)
    logger.log_message(message, level="WARNING")


def _record_run(output_dir: Path, run: MlflowRun, *, ended: str | None) -> None:
    _write_record(output_dir, {"run_id": run.run_id, "tracking_uri": run.settings.display_uri, "ended": ended})


def _write_record(output_dir: Path, content: dict[str, Any]) -> None:
    """Writes RUN_FILE (replacing it whole, so a reader never sees half of it); a failure is a log line only."""
    path = output_dir / RUN_FILE
    try:
        partial = path.with_name(RUN_FILE + ".partial")
        partial.write_text(json.dumps(content) + "\n", encoding="utf-8")
        os.replace(partial, path)
    except OSError as error:
        _log.warning("cannot write %s: %s", path, error)


def run_left_open(output_dir: Path) -> bool:
    """Whether RUN_FILE names an MLflow run that the training process did not end (it may still be running)."""
    return _open_run_record(output_dir) is not None


def _open_run_record(output_dir: Path) -> dict[str, Any] | None:
    """RUN_FILE's content when it names a run not ended; None without one (tracking off, or the process died
    before it created the run) or once the run is ended."""
    try:
        record = json.loads((output_dir / RUN_FILE).read_text(encoding="utf-8"))
        if isinstance(record, dict) and record.get("run_id") and record.get("tracking_uri") and not record.get("ended"):
            return record
    except (OSError, ValueError):
        pass
    return None


def end_abandoned_run(output_dir: Path, status: str, reason: str, env: Mapping[str, str]) -> str | None:
    """Ends the MLflow run of a training process that died before it could (see the module docstring).

    Args:
        output_dir: The job's output directory.
        status: `FINISHED`, `FAILED` or `KILLED`.
        reason: Why the process ended (the tag `end_reason` of the run).
        env: The training process's environment, which says where its MLflow store is.

    Returns:
        One line for the trainer service's log, or None when there was nothing to do (no run, or the process ended
        it).

    Raises:
        TrackingError: The MLflow store did not answer.
    """
    record = _open_run_record(output_dir)
    if record is None:
        return None
    run_id, recorded_uri = str(record["run_id"]), str(record["tracking_uri"])
    settings = RecorderSettings.from_env(env, output_dir=output_dir).tracking
    if settings is None or settings.display_uri != recorded_uri:
        now = "tracking is off" if settings is None else f"it is now {settings.display_uri}"
        return f"MLflow run {run_id} in {recorded_uri} is left as it is: the service's MLflow setting changed ({now})"
    found = MlflowRun.end_abandoned(settings, run_id, status, reason)
    _write_record(output_dir, {**record, "ended": status if found == "RUNNING" else found})
    if found != "RUNNING":
        return None
    return f"MLflow run {run_id} ended {status}: its training process died before it could ({reason})"


def _end_quietly(run: MlflowRun, status: str) -> bool:
    """Ends the run with `status`; False (and a log line) when that failed."""
    try:
        run.end(status)
    except Exception as error:
        _log.warning("ending the MLflow run %s failed: %s", run.run_id, run.describe_error(error))
        return False
    return True


class _EpochTrackingSink:
    """Forwards every call to the inner sink; logs each epoch summary's metrics to the MLflow run as well.

    When MLflow does not take an epoch's metrics (a restart, an outage, a hung server), the job logs one WARNING line
    and training goes on without waiting on MLflow at each epoch: the epochs' metrics are kept (up to
    MAX_PENDING_POINTS values) and sent, oldest first, at the first epoch end METRICS_RETRY_FIRST_DELAY_S later
    (doubling after each failed try, up to METRICS_RETRY_MAX_DELAY_S), each try without retries (10 s at most on a
    hung server). One INFO line says when MLflow took them again; `send_pending` tries once more as the job ends.
    """

    def __init__(self, inner: TelemetrySink, run: MlflowRun) -> None:
        self._inner = inner
        self._run = run
        #: (when it ended, in ms since the epoch, its metrics) by epoch not yet taken by MLflow, oldest first.
        self._pending: dict[int, tuple[int, dict[str, float]]] = {}
        #: Metric values in `_pending`.
        self._pending_points = 0
        #: Epochs dropped from `_pending` (past MAX_PENDING_POINTS) during the current outage.
        self._dropped = 0
        #: The epoch at which MLflow stopped taking metrics; None while it takes them.
        self._paused_at: int | None = None
        self._retry_at = 0.0
        self._delay = METRICS_RETRY_FIRST_DELAY_S
        #: Why the last try failed (the setting, the error without credentials).
        self.last_error = ""

    def __getattr__(self, name: str) -> Any:
        # Anything beyond the TelemetrySink protocol (stats, ...) is the inner sink's.
        return getattr(self._inner, name)

    def log_metric(self, key: str, value: float, step: int | None = None, epoch: int | None = None) -> None:
        """Forwards the value."""
        self._inner.log_metric(key, value, step=step, epoch=epoch)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, epoch: int | None = None) -> None:
        """Forwards the values."""
        self._inner.log_metrics(metrics, step=step, epoch=epoch)

    def log_message(self, message: str, level: str = "INFO", epoch: int | None = None, step: int | None = None) -> None:
        """Forwards the line."""
        self._inner.log_message(message, level=level, epoch=epoch, step=step)

    def update_status(
        self, status: str, error: str | None = None, *, error_detail: str | None = None, reason: str | None = None
    ) -> None:
        """Forwards the status."""
        self._inner.update_status(status, error, error_detail=error_detail, reason=reason)

    def log_epoch_summary(
        self, epoch: int, metrics: Mapping[str, float], duration_seconds: float | None = None
    ) -> None:
        """Forwards the summary and logs its metrics to MLflow with step = `epoch` (see the class docstring)."""
        self._inner.log_epoch_summary(epoch, metrics, duration_seconds=duration_seconds)
        try:
            _, kept = self._pending.get(epoch, (0, {}))
            merged = {**kept, **metrics}
            self._pending[epoch] = (int(time.time() * 1000), merged)
        except (TypeError, ValueError):  # not a mapping, or an epoch that is not a number: the inner sink warned
            return
        self._pending_points += len(merged) - len(kept)
        while self._pending_points > MAX_PENDING_POINTS and len(self._pending) > 1:
            self._pending_points -= len(self._pending.pop(next(iter(self._pending)))[1])
            self._dropped += 1
        if time.monotonic() >= self._retry_at:
            self.send_pending(epoch)

    def send_pending(self, epoch: int | None = None) -> bool:
        """Sends the kept epochs' metrics to MLflow, oldest first; True when none is left. A failure starts or
        continues the pause (see the class docstring). `epoch`: the epoch that ends now, None as the job ends."""
        while self._pending:
            oldest = next(iter(self._pending))
            try:
                ended_ms, metrics = self._pending[oldest]
                self._run.log_epoch(oldest, metrics, timestamp_ms=ended_ms, fail_fast=self._paused_at is not None)
            except Exception as error:
                self._paused(oldest if epoch is None else epoch, error)
                return False
            del self._pending[oldest]
            self._pending_points -= len(metrics)
        if self._paused_at is not None:
            dropped = f"; the {self._dropped} oldest epoch(s) were dropped" if self._dropped else ""
            at = f"at epoch {epoch}" if epoch is not None else "as the job ended"
            message = f"MLflow metric logging resumed {at}: the metrics kept since epoch {self._paused_at} were sent"
            _log.info(message + dropped)
            self._inner.log_message(message + dropped, level="INFO", epoch=epoch)
            self._paused_at, self._dropped = None, 0
            self._delay = METRICS_RETRY_FIRST_DELAY_S
        return not self._pending

    def missing(self) -> str:
        """The epochs whose metrics MLflow has not taken, in words (`epochs 3-7`), or "" when none."""
        if not self._pending:
            return ""
        epochs = list(self._pending)
        kept = f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {epochs[0]}-{epochs[-1]}"
        return kept + (f" and of {self._dropped} older epoch(s) dropped" if self._dropped else "")

    def _paused(self, epoch: int, error: Exception) -> None:
        self._retry_at = time.monotonic() + self._delay
        self.last_error = why = f"{self._run.settings.setting}: {self._run.describe_error(error)}"
        if self._paused_at is None:
            self._paused_at = epoch
            _warn(
                self._inner,
                f"MLflow metric logging paused at epoch {epoch}: {why}. Training goes on; the epochs' metrics are "
                f"kept and sent once MLflow answers (next try in {self._delay:.0f}s, at an epoch end)",
            )
        else:
            _log.info("MLflow still does not take the metrics (epoch %s): %s", epoch, why)
        self._delay = min(self._delay * 2, METRICS_RETRY_MAX_DELAY_S)

    def report_run_info(self, **kwargs: Any) -> None:
        """Forwards the information."""
        self._inner.report_run_info(**kwargs)

    def flush(self, timeout: float | None = None) -> Any:
        """Flushes the inner sink."""
        return self._inner.flush(timeout)

    def close(self, timeout: float | None = None) -> Any:
        """Closes the inner sink."""
        return self._inner.close(timeout)
