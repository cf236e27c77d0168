"""TrainingLogger: a trainer's metrics, logs, status and run information, delivered exactly once to the backend."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import enum
import logging
import math
import operator
import os
import re
import threading
import time
import traceback
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from google.protobuf.message import Message
from trainingplatform.common.v1 import common_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2

from trainingplatform_sdk import grpc_env
from trainingplatform_sdk.channel import auth_metadata, check_token, open_channel, parse_backend_address
from trainingplatform_sdk.errors import SpoolError, SpoolLockedError
from trainingplatform_sdk.spec.limits import (
    MAX_DURATION_SECONDS,
    MAX_EPOCH,
    MAX_ERROR_DETAIL_BYTES,
    MAX_ERROR_MESSAGE_BYTES,
    MAX_KEY_CHARS,
    MAX_LOG_MESSAGE_BYTES,
    MAX_SUMMARY_METRICS,
    truncate_utf8,
)
from trainingplatform_sdk.telemetry import lifetime
from trainingplatform_sdk.telemetry.relay import relay_job_id, write_relayed
from trainingplatform_sdk.telemetry.report import DeliveryReport
from trainingplatform_sdk.telemetry.sender import CALL, FLUSH, LOG, METRIC, BufferItem, FlushWaiter, Sender
from trainingplatform_sdk.telemetry.sender.validation import KNOWN_KEYS_LIMIT, valid_key
from trainingplatform_sdk.telemetry.settings import LoggerSettings, channel_options
from trainingplatform_sdk.telemetry.spool import Spool
from trainingplatform_sdk.telemetry.values import (
    job_status,
    log_level,
    log_text,
    metric_value,
    torchrun_rank,
    utf8_text,
)

_LOG = logging.getLogger("trainingplatform_sdk.logger")
# The wall clock of a point, bound once: the log calls run at every training step, and this saves them a lookup.
_wall_time = time.time

_UNSAFE_PATH_CHARS = re.compile(r"[^A-Za-z0-9._-]")

# The longest wait of `close()`: a timeout above it (infinity) means "as long as it takes". A wait of a lock or a
# thread fails with OverflowError past threading.TIMEOUT_MAX (about 292 years on Linux, less elsewhere).
_NO_LIMIT_S = 365 * 24 * 3600.0
# Longest error message `__exit__` reports for an exception that left the with-block.
_EXIT_ERROR_CHARS = 500
# The public name of each call a logger makes, for the warning about calls after close.
_CALL_NAMES = {
    "UpdateStatus": "update_status",
    "RecordEpochSummary": "log_epoch_summary",
    "ReportRunInfo": "report_run_info",
}

# Longest name of a key left out of an epoch summary in the warning about it.
_KEY_NAME_CHARS = 80
_SUMMARY_KEYS_SHOWN = 20
"""The keys left out of an epoch summary that its warning names; the rest are counted."""
_BAD_KEY = f"a key must be 1 to {MAX_KEY_CHARS} characters, no control characters"

_TERMINAL = frozenset({common_pb2.JOB_STATUS_COMPLETED, common_pb2.JOB_STATUS_FAILED, common_pb2.JOB_STATUS_CANCELLED})


def _spool_error(job_id: str, directory: Path, passed: bool, exc: OSError) -> SpoolError:
    """The error of a spool directory a logger cannot use: it names the directory, the file and the setting."""
    setting = (
        "the spool_dir argument"
        if passed
        else "TP_SPOOL_DIR"
        if os.environ.get("TP_SPOOL_DIR")
        else "the default under $HOME; set TP_SPOOL_DIR or pass spool_dir"
    )
    problem = exc.strerror or str(exc)
    if exc.strerror and exc.filename and Path(exc.filename) != directory:
        problem = f"{exc.strerror}: {exc.filename}"
    return SpoolError(
        f"job {job_id}: cannot use the telemetry spool directory {directory} ({setting}): {problem}; choose a "
        "directory this process can create and write"
    )


def _error_text(error: object) -> str:
    """An error for UpdateStatus: text as it is, an exception as `<type>: <message>` (its type alone when empty);
    never raises (an exception whose message cannot be printed is named by its type)."""
    if error is None:
        return ""
    if isinstance(error, BaseException):
        message = log_text(error)
        return f"{type(error).__name__}: {message}" if message else type(error).__name__
    return log_text(error)


def _exit_error(exc: BaseException) -> str:
    """The error of an exception that left the with-block, in one line: `<type>: <first line of its message>`."""
    lines = [line.strip() for line in log_text(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= _EXIT_ERROR_CHARS else text[: _EXIT_ERROR_CHARS - 3] + "..."


def _summary_key_name(key: object) -> str:
    """A key left out of an epoch summary, as a warning names it: its repr, cut to _KEY_NAME_CHARS."""
    name = repr(key) if isinstance(key, str) else f"{log_text(key)} ({type(key).__name__})"
    return name if len(name) <= _KEY_NAME_CHARS else name[: _KEY_NAME_CHARS - 3] + "..."


def _epoch_summary(
    epoch: object, metrics: Mapping[Any, object], duration_seconds: object
) -> tuple[telemetry_pb2.EpochSummary, dict[Any, str]]:
    """The EpochSummary message of `log_epoch_summary`, ended now, and the metrics left out of it: each key the
    backend would refuse (the whole summary with it) or whose value is not a number, with the problem in words.

    Raises:
        TypeError, ValueError: saying which argument is wrong, in the contract's words.
    """
    try:
        number = operator.index(epoch)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"epoch must be a whole number, got {type(epoch).__name__}") from None
    if not 0 <= number <= MAX_EPOCH:
        raise ValueError(f"epoch must be between 0 and {MAX_EPOCH}, got {number}")
    values: dict[str, float] = {}
    left_out: dict[Any, str] = {}
    for key, value in metrics.items():
        as_float = metric_value(value)
        if not valid_key(key):
            left_out[key] = _BAD_KEY
        elif as_float is None:
            left_out[key] = "not a number"
        elif len(values) >= MAX_SUMMARY_METRICS:
            left_out[key] = f"past the {MAX_SUMMARY_METRICS:,} metrics a summary holds"
        else:
            values[key] = as_float
    try:
        if isinstance(duration_seconds, str | bytes):
            raise TypeError
        duration = float(duration_seconds or 0.0)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"duration_seconds must be a number, got {type(duration_seconds).__name__}") from None
    if not 0 <= duration <= MAX_DURATION_SECONDS:
        raise ValueError(f"duration_seconds must be from 0 to {MAX_DURATION_SECONDS:g} seconds, got {duration!r}")
    summary = telemetry_pb2.EpochSummary(epoch=number, metrics=values, duration_seconds=duration)
    summary.end_time.FromNanoseconds(time.time_ns())
    return summary, left_out


def _run_info(
    job_id: str,
    mlflow_run_id: str | None,
    mlflow_tracking_uri: str | None,
    artifacts: Mapping[str, str] | None,
) -> telemetry_pb2.ReportRunInfoRequest:
    """The ReportRunInfoRequest of `report_run_info`'s arguments, checked: the annotations are not enforced.

    Raises:
        TypeError: An argument is not text (or None), or the artifacts are not a mapping of text to text.
    """
    for name, value in (("mlflow_run_id", mlflow_run_id), ("mlflow_tracking_uri", mlflow_tracking_uri)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be text, got {type(value).__name__}")
    if artifacts is not None and not (
        isinstance(artifacts, Mapping) and all(isinstance(n, str) and isinstance(u, str) for n, u in artifacts.items())
    ):
        raise TypeError("artifacts must map names to URIs, both text, for example {'best_checkpoint': 's3://b/k'}")
    return telemetry_pb2.ReportRunInfoRequest(
        job_id=job_id,
        mlflow_run_id=utf8_text(mlflow_run_id or ""),
        mlflow_tracking_uri=utf8_text(mlflow_tracking_uri or ""),
        artifacts=[
            telemetry_pb2.Artifact(name=utf8_text(name), uri=utf8_text(uri)) for name, uri in (artifacts or {}).items()
        ],
    )


def _ends_the_job(saved_call: object) -> bool:
    """Whether a call kept in a spool state is an UpdateStatus to a terminal status."""
    if not isinstance(saved_call, dict) or saved_call.get("method") != "UpdateStatus":
        return False
    try:
        request = telemetry_pb2.UpdateStatusRequest.FromString(base64.b64decode(saved_call["request"]))
    except Exception:
        return False
    return request.status in _TERMINAL


class _Idle:
    """Stands for the sender of a logger without one: never asks to be told of a point."""

    wake_at_length = 0

    def point_logged(self) -> None:
        pass


_NEVER_IDLE = _Idle()


class _FromEnv(enum.Enum):
    """The default of an argument read from the environment when not passed (None, passed, means "none")."""

    FROM_ENV = "from the environment"


FROM_ENV = _FromEnv.FROM_ENV


def default_spool_dir(job_id: str) -> Path:
    """Where a job's spool lives by default: `$TP_SPOOL_DIR/<job>` or `~/.cache/trainingplatform/spool/<job>`."""
    root = os.environ.get("TP_SPOOL_DIR") or Path.home() / ".cache" / "trainingplatform" / "spool"
    return Path(root) / _UNSAFE_PATH_CHARS.sub("_", job_id)


class TrainingLogger:
    """Reports a training job's metrics, logs, status and run information to the backend.

    Logging a point costs the calling thread one append to an in-memory buffer (and a wake-up of the sleeping sender
    when the buffer was empty); a background thread numbers, batches and streams the points, keeps them (in
    memory, then on disk) until the backend has committed them,
    and resumes from the backend's cursor after any failure, so each point is stored exactly once. Unary calls
    (status, epoch summary, run information) wait until everything logged before them is committed.

    A logger without a backend address or token is disabled: every call is a cheap no-op. In a process forked
    from the one that created it (a DataLoader worker), a logger is disabled too and never touches the channel.

    `TrainingLogger(job_id)` (or `TrainingLogger.from_env(job_id)`) reads the backend and the token from the
    environment: BACKEND_API_URL, JOB_TELEMETRY_TOKEN (else INTERNAL_AUTH_TOKEN). Under `tp run`, the log records
    and status changes of a logger of the run's job go through `tp run` (`telemetry/relay.py`).

    Example:
        with TrainingLogger(job_id) as logger:
            logger.update_status("running")
            logger.log_metric("train/loss", 0.42, step=10, epoch=0)
            logger.update_status("completed")
    """

    def __init__(
        self,
        job_id: str | None = None,
        enabled: bool = True,
        *,
        backend_address: str | _FromEnv | None = FROM_ENV,
        token: str | _FromEnv | None = FROM_ENV,
        spool_dir: str | os.PathLike[str] | None = None,
        settings: LoggerSettings | None = None,
    ) -> None:
        """Creates a logger and starts its sender thread (the streams open on the first point).

        `TrainingLogger(job_id=args.job_id, enabled=True)`, as the old Platform SDK's guide wrote it, reads the
        backend and the token from the environment, as `from_env` does.

        Args:
            job_id: The job the telemetry belongs to; default TP_JOB_ID, else JOB_ID (both set by `tp run`).
            enabled: False gives a disabled logger (every call a no-op), whatever the environment says.
            backend_address: The backend's gRPC address, `host:port`, `grpc://host:port` or `https://host:port`;
                None disables the logger. Default: BACKEND_API_URL (unset or empty disables the logger).
            token: The job's telemetry token (or the internal service token); None disables the logger. Default:
                JOB_TELEMETRY_TOKEN, else INTERNAL_AUTH_TOKEN.
            spool_dir: Directory of this job's spool (for example `<output dir>/telemetry-spool`); default
                `$TP_SPOOL_DIR/<job>` or `~/.cache/trainingplatform/spool/<job>`. A later logger for the same job and
                directory replays what is left there and continues the numbering. `close()` removes the directory
                once the job has ended (a terminal status delivered) and nothing in it is pending.
            settings: Batching, buffering, spooling and reconnect settings.

        A disabled logger logs one warning saying why (enabled=False, no backend address, no token).

        Raises:
            ValueError: No job id though the logger would be enabled, the address is malformed, the token is not
                printable ASCII (surrounding whitespace is stripped), or the spool belongs to another job.
            trainingplatform_sdk.errors.SpoolLockedError: Another live process uses the same spool directory.
            trainingplatform_sdk.errors.SpoolError: The spool directory cannot be created or opened, or its state
                cannot be written (an OSError too); the message names the directory, the file and the setting it
                came from (spool_dir, TP_SPOOL_DIR).
        """
        if isinstance(backend_address, _FromEnv):
            backend_address = os.environ.get("BACKEND_API_URL", "").strip() or None
        token_source = "the token argument"
        if isinstance(token, _FromEnv):
            token_source = "JOB_TELEMETRY_TOKEN" if os.environ.get("JOB_TELEMETRY_TOKEN") else "INTERNAL_AUTH_TOKEN"
            token = os.environ.get("JOB_TELEMETRY_TOKEN") or os.environ.get("INTERNAL_AUTH_TOKEN") or None
        if token is not None:
            token = token.strip() or None  # a token read from a file keeps its newline
        if not job_id:
            job_id = os.environ.get("TP_JOB_ID", "").strip() or os.environ.get("JOB_ID", "").strip()
        if not job_id and enabled and backend_address and token:
            raise ValueError("job_id is required (pass it, or set TP_JOB_ID)")
        self.job_id = job_id or ""
        self.settings = settings or LoggerSettings()
        self._buffer: deque[BufferItem] = deque()
        # Checked first by every logging call: True when disabled, closed, in a forked child, or the sender stopped.
        self._off = True
        # True once the sender stopped on its own: what is logged from then on is counted as dropped.
        self._discarding = False
        # Points and records (and calls) lost on the caller's side, counted as dropped: logged after the sender
        # stopped on its own, left in the buffer at close, or not written to `tp run` (relayed).
        self._discarded = 0
        self._discarded_calls = 0
        # True once close() began on a logger with a sender: what is logged from then on is counted and said once.
        self._closed = False
        self._after_close = 0
        self._calls_after_close = 0
        # Set by the sender thread as it ends: `Thread.is_alive()` is wrong after a join interrupted by Ctrl-C.
        self._sender_done = threading.Event()
        self._not_mappings = 0
        # The keys already warned about as left out of an epoch summary (each is said once).
        self._summary_keys_warned: set[object] = set()
        # Whether a terminal status was asked of this logger (or left in its spool): the job has ended.
        self._ended = False
        self._spool_dir: Path | None = None
        self._sender: Sender | None = None
        # The sender, whose `wake_at_length` says at what length of the buffer it must be told (0: never, it looks
        # on its own); `point_logged` tells it. The sender's twin below while there is none, so that the logging
        # calls need no check.
        self._wake: _Idle | Sender = _NEVER_IDLE
        self._pid = os.getpid()
        self._close_lock = threading.Lock()
        self._final_report: DeliveryReport | None = None
        # Under `tp run` for this job: log records and statuses go to `tp run` on stderr (telemetry/relay.py).
        self._relay = False
        # Whether a record that could not be written to `tp run` was warned about (said once).
        self._relay_failed = False
        if not enabled:
            _LOG.warning("job %s: telemetry disabled (enabled=False): every call is a no-op", job_id or "-")
            return
        if not backend_address:
            _LOG.warning("job %s: telemetry disabled: no backend address (BACKEND_API_URL is not set)", job_id or "-")
            return
        if not token:
            _LOG.warning(
                "job %s: telemetry disabled: no token (neither JOB_TELEMETRY_TOKEN nor INTERNAL_AUTH_TOKEN is set)",
                job_id,
            )
            return
        assert job_id
        address = parse_backend_address(backend_address)
        check_token(token, token_source)
        directory = Path(spool_dir) if spool_dir is not None else default_spool_dir(job_id)
        try:
            spool = Spool(directory, job_id, self.settings.spool_max_bytes, self.settings.spool_segment_bytes)
        except OSError as exc:
            raise _spool_error(job_id, directory, spool_dir is not None, exc) from exc
        try:
            channel = open_channel(address, options=channel_options(self.settings))
        except BaseException:
            spool.close()
            raise
        self._spool_dir = directory
        self._ended = any(_ends_the_job(call) for call in spool.state.get("calls", []))
        try:
            self._sender = Sender(
                job_id, self._buffer, channel, auth_metadata(token), spool, self.settings, torchrun_rank()
            )
        except BaseException as exc:
            spool.close()
            channel.close()
            if isinstance(exc, OSError):  # the spool's state cannot be written
                raise _spool_error(job_id, directory, spool_dir is not None, exc) from exc
            raise
        self._sender.on_exit = self._sender_stopped
        self._wake = self._sender
        self._relay = relay_job_id() == job_id
        lifetime.register(self)
        self._off = False
        self._sender.start()
        grpc_env.warn_if_fork_handlers_on()
        _LOG.info(
            "job %s: telemetry to %s (%s), spool %s",
            job_id,
            address.target,
            "TLS" if address.tls else "plaintext",
            directory,
        )

    @classmethod
    def from_env(
        cls,
        job_id: str,
        *,
        spool_dir: str | os.PathLike[str] | None = None,
        settings: LoggerSettings | None = None,
    ) -> TrainingLogger:
        """Creates a logger configured by the environment.

        BACKEND_API_URL is the backend's gRPC address (`host:port`, `grpc://host:port` for plaintext,
        `https://host:port` for TLS with the system roots or the CA bundle in TP_TLS_CA_FILE). The token is
        JOB_TELEMETRY_TOKEN, else INTERNAL_AUTH_TOKEN. Without an address the logger is disabled.

        Args:
            job_id: The job the telemetry belongs to.
            spool_dir: Directory of this job's spool; see the constructor.
            settings: Batching, buffering, spooling and reconnect settings.
        """
        address = os.environ.get("BACKEND_API_URL", "").strip() or None
        token = os.environ.get("JOB_TELEMETRY_TOKEN") or os.environ.get("INTERNAL_AUTH_TOKEN") or None
        return cls(job_id, backend_address=address, token=token, spool_dir=spool_dir, settings=settings)

    @property
    def enabled(self) -> bool:
        """Whether calls are delivered (False when disabled, closed, in a forked child, once the sender stopped on
        its own: what is logged then is counted as dropped, or once the backend refused telemetry for good: what is
        logged then stays in the spool)."""
        return not self._off and self._sender is not None and not self._sender.refused

    @property
    def stats(self) -> DeliveryReport:
        """The delivery counters so far; readable at any time from any thread."""
        report = self._final_report
        if report is None:
            if self._sender is None:
                return DeliveryReport()
            report = self._sender.report()
            if self._discarded or self._discarded_calls:
                report = dataclasses.replace(
                    report,
                    dropped=report.dropped + self._discarded,
                    calls_dropped=report.calls_dropped + self._discarded_calls,
                )
            if self._not_mappings:
                report = dataclasses.replace(report, invalid=report.invalid + self._not_mappings)
        if self._after_close or self._calls_after_close:
            report = dataclasses.replace(
                report,
                dropped=report.dropped + self._after_close,
                calls_dropped=report.calls_dropped + self._calls_after_close,
            )
        return report

    def log_metric(self, key: str, value: float, step: int | None = None, epoch: int | None = None) -> None:
        """Logs one metric value; costs an append to a buffer, nothing is checked or sent on this thread.

        Args:
            key: Metric name, 1 to 250 characters without control characters, for example `train/loss`.
            value: The value: anything `float()` takes but text (numpy scalars, 0-d tensors, ints of any size: too
                large for a float is +-infinity); NaN and infinities are kept. Anything else (None, a string) is
                counted invalid and warned about once per key. Never raises.
            step: Optimizer step (at least 0), if the value belongs to one.
            epoch: Epoch (0-based), if the value belongs to one.
        """
        if self._off:
            if self._discarding or self._closed:
                self._lost("log_metric", points=1)
            return
        buffer = self._buffer
        # The value is None when not a number: the sender counts and reports it.
        buffer.append((METRIC, key, value if type(value) is float else metric_value(value), step, epoch, _wall_time()))
        # Only a sender asleep for longer than an interval needs waking, by the point that made the buffer as long as
        # it asked (1 when idle). It is asked first: while a trainer logs at every step the sender looks at the
        # buffer on its own, and the length is never asked.
        if (wake_at := self._wake.wake_at_length) and len(buffer) == wake_at:
            self._wake.point_logged()

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, epoch: int | None = None) -> None:
        """Logs several metric values of the same step and epoch.

        Args:
            metrics: Values by metric name; each value as in `log_metric`. Anything but a mapping is counted as one
                invalid point and warned about once. Never raises.
            step: Optimizer step (at least 0), if the values belong to one.
            epoch: Epoch (0-based), if the values belong to one.
        """
        try:
            items = metrics.items()
        except AttributeError:  # telemetry never stops the training: counted invalid and said once
            self._not_a_mapping(metrics)
            return
        if self._off:
            if self._discarding or self._closed:
                self._lost("log_metrics", points=len(metrics))
            return
        wall_time = _wall_time()
        buffer = self._buffer
        append = buffer.append
        for key, value in items:
            append((METRIC, key, value if type(value) is float else metric_value(value), step, epoch, wall_time))
        if (wake_at := self._wake.wake_at_length) and len(buffer) >= wake_at:
            self._wake.point_logged()

    def log_message(
        self, message: str, level: str | int = "INFO", epoch: int | None = None, step: int | None = None
    ) -> None:
        """Logs one line of text to the job's log stream.

        Args:
            message: The text (anything else is logged as its `str()`); beyond 16 KiB of UTF-8 it is truncated
                with a `...[truncated N bytes]` marker. Never raises.
            level: `DEBUG`, `INFO`, `WARNING`, `ERROR` or `CRITICAL` (any case), a `logging` level number, or a
                `common_pb2.LogLevel` value. Anything else is logged as INFO.
            epoch: Epoch (0-based), if the line belongs to one.
            step: Optimizer step, if the line belongs to one.
        """
        if self._off:
            if self._discarding or self._closed:
                self._lost("log_message", points=1)
            return
        if self._relay:
            record: dict[str, object] = {"kind": "log", "level": int(log_level(level)), "message": log_text(message)}
            for name, number in (("epoch", epoch), ("step", step)):
                if number is not None:
                    with contextlib.suppress(TypeError, ValueError, OverflowError):
                        record[name] = int(number)  # numpy and torch integers too
            self._write_relayed(record)
            return
        buffer = self._buffer
        buffer.append(
            (LOG, truncate_utf8(log_text(message), MAX_LOG_MESSAGE_BYTES), log_level(level), epoch, step, _wall_time())
        )
        if (wake_at := self._wake.wake_at_length) and len(buffer) == wake_at:
            self._wake.point_logged()

    def update_status(
        self,
        status: str | int,
        error: str | BaseException | None = None,
        *,
        error_detail: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Moves the job to a new status once everything logged before this call is committed.

        The call is delivered reliably (retried, and kept in the spool at close if the backend stays unreachable)
        and never overtakes the metrics and logs logged before it, so COMPLETED arrives after the last metrics.

        Args:
            status: `queued`, `running`, `completed`, `failed` or `cancelled` (any case), or a
                `common_pb2.JobStatus` value. `queued` says the job waits (a batch queue around the script); the
                backend never hands a job created with dispatch=false to a trainer, whatever its status. A job is
                created `pending` and never returns to it.
            error: On failure, the error in one line (truncated to 4 KiB), or the exception itself (stored as
                `<type>: <message>`).
            error_detail: On failure, the detail such as a traceback (truncated to 64 KiB).
            reason: Why the status changed, in a sentence.

        In `error`, `error_detail` and `reason`, what UTF-8 cannot encode (a lone surrogate, as in a file name
        decoded with surrogateescape) is replaced by `?`.

        Raises:
            ValueError: The status is unknown, or `pending`.
        """
        value = job_status(status)
        if value == common_pb2.JOB_STATUS_PENDING:
            raise ValueError(
                "a job is created pending and no status leads back to it; report queued (it waits), running, "
                "completed, failed or cancelled"
            )
        request = telemetry_pb2.UpdateStatusRequest(
            job_id=self.job_id,
            status=value,
            reason=utf8_text(log_text(reason or "")),
            error_message=truncate_utf8(utf8_text(_error_text(error)), MAX_ERROR_MESSAGE_BYTES),
            error_detail=truncate_utf8(utf8_text(log_text(error_detail or "")), MAX_ERROR_DETAIL_BYTES),
        )
        if request.status in _TERMINAL and not self._off:
            self._ended = True
        if self._relay and not self._off:
            # `tp run` moves the job after the log lines before this call; what this logger sent goes first.
            if request.status in _TERMINAL:
                self.flush(self.settings.close_timeout_s)
            self._write_relayed(
                {
                    "kind": "status",
                    "status": int(request.status),
                    "error": request.error_message,
                    "error_detail": request.error_detail,
                    "reason": request.reason,
                }
            )
            return
        self._call("UpdateStatus", request)

    def log_epoch_summary(
        self,
        epoch: int,
        metrics: Mapping[str, float] | None = None,
        duration_seconds: float | None = None,
        *,
        train_loss: float | None = None,
        train_accuracy: float | None = None,
        val_loss: float | None = None,
        val_accuracy: float | None = None,
        learning_rate: float | None = None,
        epoch_time: float | None = None,
    ) -> None:
        """Records the summary of a finished epoch, after everything logged before it is committed.

        Two forms are accepted, alone or together: `log_epoch_summary(epoch, {"val/accuracy": 0.93},
        duration_seconds=12.5)`, and the old Platform SDK's keywords, `log_epoch_summary(epoch, train_loss=0.4,
        val_loss=0.5, val_accuracy=0.93, learning_rate=1e-3, epoch_time=12.5)`, stored as `train/loss`,
        `train/accuracy`, `val/loss`, `val/accuracy` and `train/learning_rate` (docs/migrating.md). A key given
        both ways keeps the keyword's value.

        Args:
            epoch: The epoch (0-based).
            metrics: The epoch's final metrics by key, for example `{"val/accuracy": 0.93}`; each value as in
                `log_metric`. A key as `log_metric` refuses it (not text, empty, over 250 characters, a control
                character) and a value that is not a number are left out, with one warning per key; the rest is
                recorded.
            duration_seconds: How long the epoch took, if known.
            train_loss: Old form: the epoch's training loss (`train/loss`).
            train_accuracy: Old form: the epoch's training accuracy (`train/accuracy`).
            val_loss: Old form: the validation loss (`val/loss`).
            val_accuracy: Old form: the validation accuracy (`val/accuracy`).
            learning_rate: Old form: the learning rate at the end of the epoch (`train/learning_rate`).
            epoch_time: Old form of `duration_seconds`, in seconds.
        """
        try:
            merged: dict[str, object] = dict(metrics or {})
        except (TypeError, ValueError):  # telemetry never stops the training: said, and not sent
            _LOG.warning(
                "job %s: epoch summary of epoch %r not recorded: metrics must map names to values, got %s",
                self.job_id,
                epoch,
                type(metrics).__name__,
            )
            return
        for key, value in (
            ("train/loss", train_loss),
            ("train/accuracy", train_accuracy),
            ("val/loss", val_loss),
            ("val/accuracy", val_accuracy),
            ("train/learning_rate", learning_rate),
        ):
            if value is not None:
                merged[key] = value
        if duration_seconds is None:
            duration_seconds = epoch_time
        try:
            summary, left_out = _epoch_summary(epoch, merged, duration_seconds)
        except (TypeError, ValueError) as error:  # telemetry never stops the training: said, and not sent
            _LOG.warning("job %s: epoch summary of epoch %r not recorded: %s", self.job_id, epoch, error)
            return
        if left_out:
            self._summary_left_out(summary.epoch, left_out)
        self._call("RecordEpochSummary", telemetry_pb2.RecordEpochSummaryRequest(job_id=self.job_id, summary=summary))

    def report_run_info(
        self,
        *,
        mlflow_run_id: str | None = None,
        mlflow_tracking_uri: str | None = None,
        artifacts: Mapping[str, str] | None = None,
    ) -> None:
        """Records where the run is tracked and stored; fields left None keep their stored values.

        What UTF-8 cannot encode (a lone surrogate) is replaced by `?`. An argument of the wrong type is warned
        about and nothing is recorded; never raises.

        Args:
            mlflow_run_id: The MLflow run id of the job.
            mlflow_tracking_uri: The MLflow tracking URI (never with credentials).
            artifacts: Artifact URIs by name, for example `{"best_checkpoint": "s3://bucket/key"}`.
        """
        try:
            request = _run_info(self.job_id, mlflow_run_id, mlflow_tracking_uri, artifacts)
        except (TypeError, ValueError) as error:  # telemetry never stops the training: said, and not sent
            _LOG.warning("job %s: run info not recorded: %s", self.job_id, error)
            return
        self._call("ReportRunInfo", request)

    def _write_relayed(self, record: dict[str, object]) -> None:
        """Relays a log record or a status to `tp run`; one that cannot be written is lost: counted as dropped (a
        status in `calls_dropped`), and warned about once."""
        if write_relayed(record):
            return
        if record.get("kind") == "status":
            self._discarded_calls += 1
        else:
            self._discarded += 1
        if self._relay_failed:
            return
        self._relay_failed = True
        _LOG.warning(
            "job %s: a %s could not be written to `tp run` on stderr (closed, or `tp run` is gone): it is lost, and "
            "so is any other that cannot be (said once)",
            self.job_id,
            "status" if record.get("kind") == "status" else "log record",
        )

    def _summary_left_out(self, epoch: int, left_out: dict[Any, str]) -> None:
        """Warns, in one line, of the metrics left out of an epoch summary; each key once."""
        warned = self._summary_keys_warned
        new = [(key, problem) for key, problem in left_out.items() if key not in warned]
        if not new:
            return
        if len(warned) + len(new) > KNOWN_KEYS_LIMIT:
            warned.clear()
        warned.update(key for key, _ in new)
        shown = "; ".join(f"{_summary_key_name(key)}: {problem}" for key, problem in new[:_SUMMARY_KEYS_SHOWN])
        if len(new) > _SUMMARY_KEYS_SHOWN:
            shown += f"; and {len(new) - _SUMMARY_KEYS_SHOWN:,} more"
        _LOG.warning(
            "job %s: left out of the epoch summary of epoch %d, the rest recorded (each key said once): %s",
            self.job_id,
            epoch,
            shown,
        )

    def _not_a_mapping(self, metrics: object) -> None:
        """Counts a `log_metrics` argument that is not a mapping as one invalid point, warning the first time."""
        self._not_mappings += 1
        if self._not_mappings == 1:
            _LOG.warning(
                "job %s: log_metrics takes a mapping of metric names to values, got %s: nothing logged (counted "
                "invalid; said once)",
                self.job_id,
                type(metrics).__name__,
            )

    def _lost(self, call: str, points: int = 0, calls: int = 0) -> None:
        """Counts what a call made while the logger is off loses: after close (counted, said once, naming the call),
        or after the sender stopped on its own (counted; said when it stopped)."""
        if self._closed:
            if os.getpid() != self._pid:
                return
            first = not (self._after_close or self._calls_after_close)
            self._after_close += points
            self._calls_after_close += calls
            if first:
                _LOG.warning(
                    "job %s: %s after close: nothing is sent once the logger is closed (counted as dropped in "
                    "its stats; said once)",
                    self.job_id,
                    call,
                )
        elif self._discarding:
            self._discarded += points
            self._discarded_calls += calls

    def _call(self, method: str, request: Message) -> None:
        sender = self._sender
        if self._off or sender is None:
            if self._discarding or self._closed:
                self._lost(_CALL_NAMES.get(method, method), calls=1)
            return
        self._buffer.append((CALL, method, request))
        sender.wake.set()

    def flush(self, timeout: float | None = None) -> bool:
        """Sends what is buffered now and waits until everything logged so far is committed.

        Args:
            timeout: Seconds to wait; None (or infinity) waits as long as it takes.

        Returns:
            True when every point and call logged before this call is committed (also when nothing was, or the
            logger is disabled); False on timeout, after a final error (the backend refused the telemetry for
            good: `stats.error`), when points were dropped, or when a call (status, epoch summary, run info) made
            since the previous flush was refused for good (`stats.calls_failed` counts them; each refusal fails
            only the flush that follows it).

        Raises:
            ValueError: The timeout is NaN.
        """
        if timeout is not None and math.isnan(timeout):
            raise ValueError("timeout must be a number of seconds (or None: no limit), got nan")
        sender = self._sender
        if sender is None or os.getpid() != self._pid:
            return True
        if self._off:
            return self.stats.pending_metrics == 0 and self.stats.pending_logs == 0
        waiter = FlushWaiter()
        self._buffer.append((FLUSH, waiter))
        sender.request_flush()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if remaining <= 0:
                return False
            if waiter.event.wait(remaining):
                return waiter.result
            if self._sender_done.is_set():
                return False

    def close(self, timeout: float | None = None) -> DeliveryReport:
        """Delivers what it can within `timeout`, half-closes the streams and stops the sender.

        Whatever is not delivered stays in the spool (points, and the calls not yet made) for the next logger of
        the same job and spool directory, and one WARNING says how much and where. When the job has ended (this
        logger delivered a terminal status, or replayed one from the spool, or it relays to `tp run`, which ends the
        job) and nothing is pending, the spool directory is removed. Calling close again returns the same report
        (counting what was logged after close as dropped). A close interrupted (Ctrl-C) can be called again: it
        waits for the sender anew.

        Args:
            timeout: Seconds to spend delivering; default `settings.close_timeout_s`. Infinity waits as long as it
                takes.

        Returns:
            The final delivery report.

        Raises:
            ValueError: The timeout is NaN.
        """
        if timeout is not None and math.isnan(timeout):
            raise ValueError("timeout must be a number of seconds (or None: close_timeout_s), got nan")
        with self._close_lock:
            if self._final_report is not None:
                return self.stats
            sender = self._sender
            if sender is None or os.getpid() != self._pid:
                self._off = True
                return self.stats
            self._off = True
            self._closed = True
            timeout = self.settings.close_timeout_s if timeout is None else max(0.0, timeout)
            timeout = min(timeout, _NO_LIMIT_S)
            sender.request_close(timeout)
            # The sender checks its deadline between calls; one call and the half-close may run past it. Its own
            # end is waited for, not `join`: after a join interrupted by Ctrl-C, `is_alive()` says False for a
            # thread that still runs.
            if not self._sender_done.wait(timeout + self.settings.rpc_timeout_s + 1.0):
                _LOG.warning("job %s: the telemetry sender did not stop in time", self.job_id)
            self._discard_buffer()
            report = self.stats
            self._final_report = report
            lifetime.unregister(self)  # not before: an interrupted close is closed again at exit
            undelivered = (report.pending_metrics, report.pending_logs, report.calls_pending)
            if any(undelivered):  # the with-block form drops the report: say it here
                _LOG.warning(
                    "job %s: closed with %d metric points, %d log records and %d calls not delivered; they are kept "
                    "in %s for the next logger of this job",
                    self.job_id,
                    *undelivered,
                    self._spool_dir,
                )
            if report.dropped or report.calls_dropped:
                _LOG.warning(
                    "job %s: closed with %d metric points and log records and %d calls (status, epoch summary, run "
                    "info) dropped: past the spool's cap, with the spool unwritable or unreadable, logged after the "
                    "sender stopped, or not written to `tp run` (the WARNING or ERROR lines above say which; counted "
                    "in the delivery report)",
                    self.job_id,
                    report.dropped,
                    report.calls_dropped,
                )
            # Under `tp run` the job's end is `tp run`'s to deliver, after this process exits: a relaying logger
            # removes its spool once nothing in it is pending.
            if (
                (self._ended or self._relay)
                and self._sender_done.is_set()
                and report.pending_metrics == report.pending_logs == report.calls_pending == 0
                and report.error is None
            ):
                self._remove_spool()
            return report

    def _sender_stopped(self) -> None:
        """On the sender thread as it ends: unless the logger is closing, stop buffering what nobody will send."""
        try:
            self._stop_buffering()
        finally:
            self._sender_done.set()

    def _stop_buffering(self) -> None:
        if self._off:
            return
        self._discarding = True
        self._off = True
        _LOG.error(
            "job %s: the telemetry sender stopped; what is logged from now on is dropped (counted in the delivery "
            "report)",
            self.job_id,
        )
        self._discard_buffer()

    def _discard_buffer(self) -> None:
        """Drops what is left in the caller's buffer after the sender's last drain, counting points and records."""
        while True:
            try:
                item = self._buffer.popleft()
            except IndexError:
                return
            if item[0] == METRIC or item[0] == LOG:
                self._discarded += 1
            elif item[0] == CALL:
                self._discarded_calls += 1
            elif item[0] == FLUSH:
                item[1].finish(False)

    def _remove_spool(self) -> None:
        """Removes the spool directory of an ended job once nothing in it is pending (checked again under its lock)."""
        directory = self._spool_dir
        if directory is None:
            return
        try:
            spool = Spool(directory, self.job_id, self.settings.spool_max_bytes, self.settings.spool_segment_bytes)
        except (SpoolLockedError, ValueError, OSError) as exc:
            _LOG.debug("job %s: spool %s not removed (%s)", self.job_id, directory, exc)
            return
        try:
            removed = spool.remove()
        except OSError as exc:
            spool.close()
            _LOG.warning("job %s: cannot remove the spool %s (%s)", self.job_id, directory, exc)
            return
        if removed:
            _LOG.info("job %s: the job ended and everything is delivered; spool %s removed", self.job_id, directory)

    def __enter__(self) -> TrainingLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Closes the logger. When an exception leaves the block and no terminal status was asked of this logger,
        the job is first moved to FAILED with the exception in one line (`<type>: <message>`, its traceback as the
        detail), or to CANCELLED for Ctrl-C (KeyboardInterrupt): a job run without a trainer service would stay
        RUNNING until the backend's reporter timeout. `sys.exit(0)` changes nothing; under `tp run`, `tp run`
        reports the end from the command's exit. The exception that left the block is never replaced: should the
        report fail, that is logged and the logger is closed all the same."""
        try:
            if exc is not None:
                self._report_exit(exc)
        except Exception:
            _LOG.exception("job %s: the end of the job could not be reported", self.job_id)
        finally:
            self.close()

    def _report_exit(self, exc: BaseException) -> None:
        """Reports the end of a job whose with-block an exception left, unless a terminal status was asked."""
        if self._ended or self._off or self._relay or os.getpid() != self._pid:
            return
        if isinstance(exc, KeyboardInterrupt):
            self.update_status("cancelled", reason="KeyboardInterrupt left the TrainingLogger's with-block")
            return
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            return
        if not isinstance(exc, Exception | SystemExit):
            return  # GeneratorExit and the like: not a failure of the training
        try:
            detail = "".join(traceback.format_exception(exc))
        except Exception:
            detail = ""
        self.update_status(
            "failed",
            _exit_error(exc),
            error_detail=detail,
            reason="an exception left the TrainingLogger's with-block",
        )

    def disable_in_forked_child(self) -> None:
        """Turns the logger off in a forked child: it shares the parent's channel and spool and must never send,
        write or close them."""
        self._off = True
