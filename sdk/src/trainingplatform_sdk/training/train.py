"""The training entry point: runs one job's adapter in this process and reports its status.

    tp-train --job-id JOB --framework timm \\
        --model-config '{"name": "resnet10t", "image_size": 32}' \\
        --dataset-config '{"name": "digits"}' \\
        --training-config '{"epochs": 3}' \\
        --advanced-config @advanced.json \\
        --output-dir /data/jobs/JOB

Each config is JSON or `@path` of a JSON file; `--advanced-config` is optional. `--framework` is the name of an
installed framework (`timm`, `ultralytics`: the `trainingplatform.adapters` entry points, `training.registry`) or
a `module:Class` path to any TrainingAdapter subclass. Telemetry goes to the backend named by the
environment (`TrainingLogger.from_env`, spooling under OUTPUT_DIR/spool); nothing is read from a database.

While the adapter trains, the process's and the host's CPU and memory use (and NVIDIA GPUs' utilization and memory,
when nvidia-ml-py and a driver are there) are logged every 5 s as `system/...` metrics at the current step
(`telemetry.system`): TP_SYSTEM_METRICS=0 turns this off, TP_SYSTEM_METRICS_INTERVAL_S sets the interval.

The job's status: RUNNING once the configs are valid, the tracking and artifact stores answer and the adapter is
built, then COMPLETED, FAILED (with the error and the traceback, URL credentials and terminal colour codes removed)
or CANCELLED. Before training, `tp-train` checks
MLflow (MLFLOW_TRACKING_URI) and artifact storage (TP_ARTIFACTS_BUCKET, AWS_S3_ENDPOINT_URL, AWS_*), creates the
job's MLflow run and stores its config; checkpoints and results are stored when training ends
(`trainingplatform_sdk.recorder`, settings in docs/tracking.md). Exit codes:

- 0: COMPLETED.
- 1: FAILED (a bad config, an unknown model, an exception in training, MLflow or the artifact store unusable: the
  message names the setting to fix).
- 2: bad command-line arguments (argparse); no status is reported, there may be no job to report to.
- 143 (128 + SIGTERM): CANCELLED. SIGTERM (or SIGINT) stops training at the next batch boundary, writes the last
  checkpoint and exits 143, so a supervisor can tell a cancelled run from a completed one by the exit code alone.
  After training, while the results are stored, it stops the upload once the file in flight is stored and ends
  the job CANCELLED too: results.json says `cancelled` and the MLflow run ends KILLED (`recorder.StopRequested`).
  So it does when the backend refuses the COMPLETED that followed (it had committed the cancel first), waiting
  up to FINAL_ANSWER_WAIT_S for that answer; a signal after the backend took COMPLETED changes nothing.
  A second signal kills the process at once. A supervisor may first write why into `<output_dir>/stop_reason`
  (`progress.STOP_REASON_FILE`, one line): the CANCELLED status then gives `stop requested: <that line>` as its
  reason.

Under torchrun (`torchrun --nproc_per_node N -m trainingplatform_sdk.training.train ...`, WORLD_SIZE > 1),
every rank runs this entry point and the adapter trains with DistributedDataParallel (docs/distributed.md). The
job is one job: rank 0 alone reports its telemetry, status, MLflow run and artifacts, and writes progress.json
(the backend numbers
a job's stream from one writer: a second would collide). The other ranks report nothing — their sink discards —
and log to their stderr, each line naming the rank. A rank that fails writes its error to
OUTPUT_DIR/ranks/rank-N.error.json before it exits; rank 0, failing in turn when the connection to it closes,
reports FAILED with that rank's error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from trainingplatform_sdk.spec.configs import AdvancedConfig, ConfigError, DatasetConfig, ModelConfig, TrainingConfig
from trainingplatform_sdk.telemetry import SystemMetricsSampler, TrainingLogger
from trainingplatform_sdk.training.adapter import NullSink, Status, TelemetrySink, TrainingAdapter
from trainingplatform_sdk.training.artifacts import StorageError
from trainingplatform_sdk.training.progress import STOP_REASON_FILE
from trainingplatform_sdk.training.recorder import JobRecorder, RecorderSettings, StopRequested, local_data_dir
from trainingplatform_sdk.training.registry import resolve_adapter
from trainingplatform_sdk.training.tracking import TrackingError, redact_urls

__all__ = [
    "EXIT_CANCELLED",
    "EXIT_FAILED",
    "load_config_argument",
    "main",
    "resolve_adapter",
    "run_job",
    "strip_ansi",
    "torchrun_rank",
]

_log = logging.getLogger("trainingplatform_sdk.training.train")
# ANSI/VT escape sequences: CSI (colours, cursor moves; ESC [ or the 8-bit CSI), OSC (titles, hyperlinks; ended by
# BEL or ESC \\) and the two-character ones (ESC ( B ...). ultralytics colours its messages with them.
_ANSI_ESCAPE = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[ -/]*[0-~]")


def strip_ansi(text: str) -> str:
    """`text` without its terminal escape sequences (colours, cursor moves, hyperlinks); every other character kept."""
    return _ANSI_ESCAPE.sub("", text)


def _clean(text: str) -> str:
    """Error text as a job reports it: URL credentials redacted, terminal escape sequences removed."""
    return strip_ansi(redact_urls(text))


# torch's DataLoader re-raises a worker's exception as `Caught OSError in DataLoader worker process 0.\nOriginal
# Traceback (most recent call last): ...`: the worker's whole traceback as the message.
_WORKER_WRAPPER = re.compile(r"Caught \w+ in [^\n]*\.\nOriginal Traceback \(most recent call last\):\n")


def _error_message(error: BaseException) -> str:
    """`Type: message` of a failure, for the job's error; a DataLoader worker's exception as the end of its
    traceback (the original `Type: message`, every line of the message and its notes), without the traceback
    torch wraps around it."""
    text = str(error)
    if _WORKER_WRAPPER.match(text):
        lines = text.rstrip().splitlines()
        # The exception's own lines follow the last traceback's frames, which are indented: a multi-line message,
        # a note or a message line that looks like `Type: message` stays whole.
        starts = [i for i, line in enumerate(lines) if line.endswith("Traceback (most recent call last):")]
        rest = lines[starts[-1] + 1 :]
        first = next((i for i, line in enumerate(rest) if line.strip() and not line[0].isspace()), None)
        if first is not None:
            return "\n".join(rest[first:])
        return next(line.strip() for line in reversed(lines) if line.strip())
    return f"{type(error).__name__}: {text}"


EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_CANCELLED = 128 + signal.SIGTERM
#: Seconds `close()` may take to deliver the last telemetry.
CLOSE_TIMEOUT_S = 30.0
#: The same for a cancelled job: a stop comes with a grace period (TP_CANCEL_GRACE_S, 30 s by default) after which
#: the process is killed, and what is not delivered by then is as safe in the spool, which the trainer service
#: delivers once the process exited.
CANCELLED_CLOSE_TIMEOUT_S = 5.0
#: Seconds a job that stored its results waits for the backend to answer its COMPLETED, the signal of a cancel
#: still handled: a cancel the backend committed first ends the job's records cancelled too.
FINAL_ANSWER_WAIT_S = 10.0
#: Seconds the SIGTERM of a cancel may follow the backend's refusal of COMPLETED.
STOP_AFTER_REFUSAL_WAIT_S = 5.0
#: The config sections, as named in MLflow params and config.json.
_SECTIONS = ("model", "dataset", "training", "advanced")
#: Seconds rank 0, failing, waits for a peer's error file: a failed peer writes it before its connections close.
PEER_ERROR_WAIT_S = 2.0
# A peer's error file older than this process is from an earlier attempt.
_PROCESS_STARTED = time.time()


def _stop_reason(output_dir: Path) -> str:
    """The CANCELLED status's reason: what the supervisor wrote into STOP_REASON_FILE, if anything."""
    try:
        why = (output_dir / STOP_REASON_FILE).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        why = ""
    return f"stop requested: {why.splitlines()[0][:200]}" if why else "stop requested (SIGTERM)"


def load_config_argument(text: str | None, name: str) -> dict[str, Any]:
    """Parses a config argument: JSON, `@path` of a JSON file, or empty/None for `{}`.

    Raises:
        ConfigError: The file is missing or the text is not a JSON object; the message names the argument.
    """
    if not text:
        return {}
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"--{name}: cannot read {text[1:]!r}: {error.strerror}") from error
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--{name}: not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise ConfigError(f"--{name}: expected a JSON object, got {type(value).__name__}")
    return value


def run_job(
    *,
    job_id: str,
    framework: str,
    model_config: Mapping[str, Any] | ModelConfig,
    dataset_config: Mapping[str, Any] | DatasetConfig,
    training_config: Mapping[str, Any] | TrainingConfig,
    advanced_config: Mapping[str, Any] | AdvancedConfig | None,
    output_dir: str | Path,
    logger: TelemetrySink,
    recorder_settings: RecorderSettings | None = None,
    system_metrics: SystemMetricsSampler | None = None,
) -> int:
    """Runs one job with `logger` and returns the process exit code; reports every status through `logger`.

    Configs may be dataclasses or plain mappings (parsed JSON). When called from the main thread, SIGTERM and
    SIGINT request a graceful stop for the duration of the call. The logger is not closed.

    Args:
        recorder_settings: Where the job's MLflow run and artifacts go (`RecorderSettings.from_env`); both are
            checked before training starts. None records nothing outside the backend.
        system_metrics: Sampled from when the adapter is built until training ends (stamped with the adapter's
            `global_step`), stopped before the final status is reported. `tp-train` passes
            `SystemMetricsSampler.from_env` (on by default; TP_SYSTEM_METRICS=0 turns it off,
            TP_SYSTEM_METRICS_INTERVAL_S sets the interval, 5 s by default). None samples nothing.

    Returns:
        0 (COMPLETED), 1 (FAILED) or 143 (CANCELLED).
    """
    stop = threading.Event()
    adapter: TrainingAdapter | None = None
    recorder: JobRecorder | None = None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        if adapter is not None:
            adapter.request_stop()
        # A second signal should end the process at once, not wait for a batch boundary again.
        signal.signal(signum, signal.SIG_DFL)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        model = model_config if isinstance(model_config, ModelConfig) else ModelConfig.from_mapping(model_config)
        _report(logger, f"Starting training: {model.name}")
        dataset = _typed(DatasetConfig, dataset_config)
        training = _typed(TrainingConfig, training_config)
        advanced = _typed(AdvancedConfig, advanced_config or {})
        sink = logger
        # Before the framework import (torch: seconds): a misconfigured store fails the job as fast as it can.
        if recorder_settings is not None:
            configs = {c: v.to_dict() for c, v in zip(_SECTIONS, (model, dataset, training, advanced), strict=True)}
            recorder = JobRecorder.start(
                recorder_settings,
                job_id=job_id,
                framework=framework,
                configs=configs,
                output_dir=Path(output_dir),
                logger=logger,
            )
            sink = recorder.wrap(logger)
            _report(logger, recorder.describe())
        adapter_cls = resolve_adapter(framework)
        adapter = adapter_cls(
            model_config=model,
            dataset_config=dataset,
            training_config=training,
            output_dir=Path(output_dir),
            job_id=job_id,
            logger=sink,
            advanced_config=advanced,
        )
        if stop.is_set():
            adapter.request_stop()
        if system_metrics is not None:
            built = adapter
            system_metrics.start(step=lambda: getattr(built, "global_step", None))
        logger.update_status(Status.RUNNING)
        result = adapter.train()
        if system_metrics is not None:
            system_metrics.stop()  # no sample after the final status
        when = ""
        if result.status != Status.CANCELLED:
            _report(logger, f"Training completed: {result.epochs_completed} epoch(s)")
            refused_before = _calls_refused(logger)
            if recorder is not None:
                with contextlib.suppress(StopRequested):
                    recorder.finish(result, stop=stop.is_set)
            when = ", while its results were stored"
            if not stop.is_set():
                logger.update_status(Status.COMPLETED)
                if recorder is None or refused_before is None or not _completed_refused(logger, refused_before, stop):
                    return EXIT_COMPLETED
                when = ", after its results were stored (the backend had cancelled the job before COMPLETED came)"
            # Cancelled while the results were stored, or just after (the backend's job is CANCELLED already when
            # the trainer service cancelled it): the upload stops and every record says cancelled, none completed.
        _report(logger, f"Training cancelled after {result.epochs_completed} epoch(s){when}")
        if recorder is not None:
            recorder.abort(Status.CANCELLED, result=result)
        logger.update_status(Status.CANCELLED, reason=_stop_reason(Path(output_dir)))
        return EXIT_CANCELLED
    except (TrackingError, StorageError) as error:
        if system_metrics is not None:
            system_metrics.stop()
        # A setting to fix, named in the message: a traceback would only bury it.
        message = str(error)
        _report(logger, f"Training failed: {message}", level="ERROR")
        logger.update_status(Status.FAILED, message, reason="tracking or artifact storage unusable")
        return EXIT_FAILED
    except Exception as error:
        if system_metrics is not None:
            system_metrics.stop()
        # A library's message repeats the URLs it was given, credentials included: none reaches the job or a log.
        message = _clean(_error_message(error))
        detail = _clean(traceback.format_exc())  # a DataLoader worker's traceback included
        reason = "exception in training"
        rank, world_size = torchrun_rank(os.environ)
        if rank != 0:
            _write_rank_error(Path(output_dir), rank, message, detail)
        elif world_size > 1 and (peer := _read_peer_error(Path(output_dir), world_size)) is not None:
            # Rank 0's own error is then only the closed connection to the rank that failed first.
            reason = f"exception in training on rank {peer['rank']}"
            detail = f"{peer['detail']}\nRank 0 then failed with:\n{detail}"
            message = f"rank {peer['rank']}: {peer['message']}"
        _report(logger, f"Training failed: {message}\n{detail}", level="ERROR")
        if recorder is not None:
            last = adapter.last_checkpoint_path if adapter is not None else None
            recorder.abort(Status.FAILED, last_checkpoint=last)
        logger.update_status(Status.FAILED, message, error_detail=detail, reason=reason)
        return EXIT_FAILED
    finally:
        if system_metrics is not None:
            system_metrics.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _calls_refused(logger: TelemetrySink) -> int | None:
    """How many calls (statuses, run info) the backend refused for good so far; None for a sink that does not say."""
    calls_failed = getattr(getattr(logger, "stats", None), "calls_failed", None)
    return calls_failed if isinstance(calls_failed, int) else None


def _completed_refused(logger: TelemetrySink, refused_before: int, stop: threading.Event) -> bool:
    """Whether the job was cancelled at the backend before its COMPLETED arrived: the backend refused a call made
    since the results began to be stored (COMPLETED, or the run info: the job had ended) and the cancel's SIGTERM
    came. Waits up to FINAL_ANSWER_WAIT_S for the backend's answer, and STOP_AFTER_REFUSAL_WAIT_S more for the
    signal, which follows the backend's commit of the cancel. An unreachable backend's answer is not waited for
    longer: the trainer service reports the end once the process exited."""
    logger.flush(FINAL_ANSWER_WAIT_S)
    refused = _calls_refused(logger)
    if refused is None or refused <= refused_before:
        return False
    if stop.wait(STOP_AFTER_REFUSAL_WAIT_S):
        return True
    message = (
        "The backend refused the job's COMPLETED status: the job had already ended (see its status there); "
        "results.json and the MLflow run say completed"
    )
    _report(logger, message, level="WARNING")
    return False


def torchrun_rank(env: Mapping[str, str]) -> tuple[int, int]:
    """(RANK, WORLD_SIZE) as torchrun sets them; (0, 1) for a single process."""
    try:
        return int(env.get("RANK") or 0), max(1, int(env.get("WORLD_SIZE") or 1))
    except ValueError:
        return 0, 1


def _rank_error_path(output_dir: Path, rank: int) -> Path:
    return output_dir / "ranks" / f"rank-{rank}.error.json"


def _write_rank_error(output_dir: Path, rank: int, message: str, detail: str) -> None:
    path = _rank_error_path(output_dir, rank)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps({"rank": rank, "message": message, "detail": detail}), encoding="utf-8")
        os.replace(partial, path)
    except OSError as error:  # this rank's stderr still has the traceback
        _log.warning("cannot write %s for rank 0 to report: %s", path, error)


def _read_peer_error(output_dir: Path, world_size: int) -> dict[str, Any] | None:
    """The error of the lowest rank that failed during this attempt, waiting up to PEER_ERROR_WAIT_S for one."""
    deadline = time.monotonic() + PEER_ERROR_WAIT_S
    while True:
        for rank in range(1, world_size):
            path = _rank_error_path(output_dir, rank)
            try:
                if path.stat().st_mtime < _PROCESS_STARTED:
                    continue
                return json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def build_logger(job_id: str, output_dir: Path) -> TelemetrySink:
    """The SDK's TrainingLogger configured from the environment, spooling under `output_dir/spool`."""
    return TrainingLogger.from_env(job_id, spool_dir=output_dir / "spool")


def main(argv: Sequence[str] | None = None) -> int:
    """The `tp-train` command. Returns the exit code (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="tp-train", description="Run one training job of the training platform.")
    parser.add_argument("--job-id", required=True, help="the backend's job id")
    parser.add_argument("--framework", required=True, help="timm, ultralytics or a module:Class adapter path")
    parser.add_argument("--model-config", required=True, help="ModelConfig as JSON or @file")
    parser.add_argument("--dataset-config", required=True, help="DatasetConfig as JSON or @file")
    parser.add_argument("--training-config", default="{}", help="TrainingConfig as JSON or @file")
    parser.add_argument("--advanced-config", default="{}", help="AdvancedConfig as JSON or @file")
    parser.add_argument("--output-dir", required=True, type=Path, help="checkpoints, spool and framework files")
    args = parser.parse_args(argv)
    rank, world_size = torchrun_rank(os.environ)
    # Every rank's stderr goes to the same terminal or log file under torchrun: each line names its rank.
    where = f" rank {rank}/{world_size}" if world_size > 1 else ""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s{where} %(name)s: %(message)s")

    # The data directory, when this creates it, is private (0700) as the trainer service and `tp up` make theirs:
    # it holds the local artifacts and MLflow store. One that exists keeps its mode.
    local_data_dir(os.environ, output_dir=args.output_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    # One writer per job stream: the backend numbers a job's telemetry from one sender, so only rank 0 reports.
    logger = build_logger(args.job_id, args.output_dir) if rank == 0 else NullSink()
    # CPU, memory and GPU use as `system/` metrics, straight to the logger (rank 0: one writer per job stream).
    sampler = SystemMetricsSampler.from_env(logger) if isinstance(logger, TrainingLogger) else None
    code = EXIT_FAILED
    try:
        try:
            configs = {
                name: load_config_argument(getattr(args, name), name.replace("_", "-"))
                for name in ("model_config", "dataset_config", "training_config", "advanced_config")
            }
            recorder_settings = RecorderSettings.from_env(os.environ, output_dir=args.output_dir)
        except (ConfigError, StorageError, TrackingError) as error:
            # The job exists and waits for a status: a bad argument must end it FAILED, not leave it QUEUED.
            message = _clean(str(error))
            _report(logger, f"Training failed: {message}", level="ERROR")
            logger.update_status(Status.FAILED, message, reason="invalid configuration")
            return EXIT_FAILED
        # progress.json in the output dir is how a trainer service reads the epoch and the latest metrics.
        from trainingplatform_sdk.training.progress import ProgressSink

        if rank == 0:
            epochs = configs["training_config"].get("epochs")
            logger = ProgressSink(logger, args.output_dir, total_epochs=epochs if isinstance(epochs, int) else 0)
        code = run_job(
            job_id=args.job_id,
            framework=args.framework,
            output_dir=args.output_dir,
            logger=logger,
            # Settings are read on every rank, so a bad one fails them all alike; only rank 0 records.
            recorder_settings=recorder_settings if rank == 0 else None,
            system_metrics=sampler,
            **configs,
        )
        return code
    finally:
        logger.close(timeout=CANCELLED_CLOSE_TIMEOUT_S if code == EXIT_CANCELLED else CLOSE_TIMEOUT_S)


def _typed(cls: Any, value: Any) -> Any:
    return value if isinstance(value, cls) else cls.from_mapping(value)


def _report(logger: TelemetrySink, message: str, level: str = "INFO") -> None:
    _log.log(logging.getLevelName(level), message)
    logger.log_message(message, level=level)


if __name__ == "__main__":
    sys.exit(main())
