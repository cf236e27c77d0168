"""`tp gc`: deletes the local files of ended jobs in a data directory, by age or count.

A job's files there are its run directories (`runs/<job>/<run>`, written by a trainer service), its local
artifacts (`artifacts/<job>`) and the copy of its MLflow run's artifacts in the data directory's own MLflow store
(`mlartifacts/<run id>` or `mlartifacts/<experiment>/<run id>`). What the backend says of a job is not enough to
delete them:

- the MLflow run id and tracking URI are reported by the job's training process (anyone holding its telemetry
  token): the run id is used only when it is a plain MLflow run id (32 lowercase hex digits, as the SQLite store
  makes them) and the tracking URI is this data directory's own store (`sqlite:///<data dir>/mlflow.db`), and it is
  a name looked up in each experiment directory, never a pattern or a path;
- a job can be ended at the backend while its training process still runs (CANCELLED during the cancel grace,
  FAILED by the lease while its trainer is unreachable, a stray run): a job is skipped, with the reason said, when
  one of its run directories has no run.json (its trainer is starting it; unless nothing in it changed for a day:
  a start that never finished), a run.json whose end the trainer has
  not reported (it still needs run.json and the spool to do so), names a process that is alive (pid and start
  time), or an mlflow_run.json that names an MLflow run not ended.

Every path deleted resolves strictly inside the directory it belongs to (`runs`, `artifacts`, `mlartifacts`): a
symbolic link is never followed out of it. Of runs/<job>, only the run directories checked are deleted (one a
trainer created since stays, and so does runs/<job>).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from trainingplatform_sdk.cli.argtypes import at_least
from trainingplatform_sdk.cli.output import CliError, printable
from trainingplatform_sdk.clients import Job

__all__ = ["add_gc_parser", "gc_data_dir", "run_gc"]

MLFLOW_RUN_ID = re.compile(r"[0-9a-f]{32}")
"""A run id of MLflow's SQL store (`uuid.uuid4().hex`): the only kind `tp gc` looks up in `mlartifacts`."""

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
_AGE_UNITS = {"": 86400, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

DESCRIPTION = (
    "Deletes the local files of ended jobs in the data directory: run directories (runs/<job>), local artifacts "
    "(artifacts/<job>) and the copy of a job's MLflow run in the data directory's own MLflow store "
    "(mlartifacts; only for a job whose tracking URI is that store and whose run id is a plain MLflow run id, 32 "
    "hex digits). The job records and MLflow runs stay. A job whose training process may still run is skipped, "
    "with the reason: a run directory without run.json that changed in the last day, one whose end its trainer "
    "has not reported, whose process is alive, or whose mlflow_run.json names an MLflow run not ended."
)


def _age_seconds(text: str) -> float:
    match = _AGE.match(text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age: use e.g. 30m, 12h, 7d, 2w")
    return float(match.group(1)) * _AGE_UNITS[match.group(2)]


def add_gc_parser(commands: Any) -> argparse.ArgumentParser:
    """Adds `tp gc` to the subcommands of `tp` and returns its parser (the caller sets its handler)."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "gc",
        help="delete ended jobs' local files in the data directory: run directories, artifacts, the local MLflow "
        "store's artifacts (the job records and MLflow runs stay; a job whose process may still run is skipped)",
        description=DESCRIPTION,
    )
    parser.add_argument(
        "--older-than", type=_age_seconds, metavar="AGE", help="jobs that ended longer ago than AGE (30m, 12h, 7d)"
    )
    parser.add_argument(
        "--keep",
        type=at_least(0),
        metavar="N",
        help="keep the files of the N most recently ended jobs (0: keep none)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would be deleted, delete nothing")
    return parser


def gc_data_dir(args: argparse.Namespace) -> Path:
    """The data directory `tp gc` deletes in, as the backend is found: --data-dir, TP_DATA_DIR, the one `tp up`
    wrote to the per-user config; checked before anything else.

    Raises:
        CliError: neither --older-than nor --keep was given; the per-user config is malformed.
    """
    if args.older_than is None and args.keep is None:
        raise CliError("say what to delete: --older-than AGE (e.g. 7d) and/or --keep N")
    from trainingplatform_sdk.clients import read_config

    config = read_config()  # a malformed one is named here, before anything is deleted
    data_dir = Path(args.data_dir)
    if not args.data_dir_given and not os.environ.get("TP_DATA_DIR", "").strip():
        data_dir = Path(config.get("data_dir") or args.data_dir)
    return data_dir.resolve()


def _inside(path: Path, base: Path) -> bool:
    """Whether `path` is a directory that resolves strictly inside `base` (not `base` itself), not a link."""
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        resolved, root = path.resolve(), base.resolve()
    except (OSError, RuntimeError):
        return False
    return resolved != root and resolved.is_relative_to(root)


def _local_store(uri: str, data_dir: Path) -> bool:
    """Whether the tracking URI `uri` is the data directory's own MLflow store, `sqlite:///<data dir>/mlflow.db`."""
    if not uri.startswith("sqlite:///"):
        return False
    path = Path(unquote(uri.removeprefix("sqlite:///").split("?", 1)[0]))
    if not path.is_absolute():
        return False  # relative to the training process's working directory, which is unknown here
    try:
        return path.resolve() == (data_dir / "mlflow.db").resolve()
    except (OSError, RuntimeError):
        return False


def _mlflow_copies(job: Job, data_dir: Path) -> tuple[list[Path], str]:
    """The directories of `job`'s MLflow run in the data directory's own store, and a note when its run id is not
    one to look up there."""
    store = data_dir / "mlartifacts"
    if not job.mlflow_run_id or not store.is_dir() or not _local_store(job.mlflow_tracking_uri, data_dir):
        return [], ""
    if not MLFLOW_RUN_ID.fullmatch(job.mlflow_run_id):
        shown = printable(job.mlflow_run_id[:100])
        return [], f"its MLflow run id {shown!r} is not an MLflow run id (32 lowercase hex digits): mlartifacts kept"
    # MLflow keeps a run's artifacts in <experiment's location>/<run id>: `mlartifacts` itself for the
    # experiments our trainers create, `mlartifacts/<experiment id>` for those the MLflow server created.
    candidates = [store / job.mlflow_run_id]
    for experiment in sorted(store.iterdir()):
        if not experiment.is_symlink() and experiment.is_dir():
            candidates.append(experiment / job.mlflow_run_id)
    return [path for path in candidates if _inside(path, store)], ""


ABANDONED_START_S = 24 * 3600
"""A run directory without run.json in which nothing changed for this long is an abandoned start: a trainer writes
run.json within a second of making the directory, and a training process writes its log at least every epoch."""


def _last_change(run: Path) -> float:
    """The newest modification time of `run` and of what it holds (symlinks not followed)."""
    newest = 0.0
    for path in (run, *run.rglob("*")):
        with contextlib.suppress(OSError):
            newest = max(newest, path.lstat().st_mtime)
    return newest


def _in_use(run: Path) -> str:
    """Why the run directory `run` may still be in use by a training process or its trainer; empty when not."""
    # Here, not at the top: every `tp` command imports this module for its parser, and these take ~0.1 s.
    from trainingplatform_sdk.trainer_service.run import RUN_FILE_NAME, process_start_time
    from trainingplatform_sdk.training.recorder import RUN_FILE as MLFLOW_RUN_FILE

    try:
        record = json.loads((run / RUN_FILE_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        quiet = time.time() - _last_change(run)
        if quiet >= ABANDONED_START_S:
            return ""  # a start that never finished (the trainer died, or could not write run.json), long ago
        return f"no {RUN_FILE_NAME}: its trainer may be starting it (nothing in it changed for {quiet:.0f} s)"
    except (OSError, ValueError) as error:
        return f"{RUN_FILE_NAME} unreadable ({printable(str(error))[:200]})"
    if not isinstance(record, dict):
        return f"{RUN_FILE_NAME} is not an object"
    if record.get("reported") is not True:
        return "its trainer has not reported the run's end (run.json: not reported)"
    pid, started = record.get("pid"), record.get("pid_start_time")
    if isinstance(pid, int) and pid > 0:
        now = process_start_time(pid)
        if now is not None and (not isinstance(started, int) or started <= 0 or now == started):
            return f"its training process (pid {pid}) is alive"
    try:
        mlflow = json.loads((run / MLFLOW_RUN_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return ""
    except (OSError, ValueError) as error:
        return f"{MLFLOW_RUN_FILE} unreadable ({printable(str(error))[:200]})"
    if isinstance(mlflow, dict) and mlflow.get("run_id") and not mlflow.get("ended"):
        return f"its MLflow run is not ended ({MLFLOW_RUN_FILE})"
    return ""


@dataclass
class _Files:
    """What `tp gc` would delete of one job, or why it keeps it."""

    paths: list[Path] = field(default_factory=list)
    """The directories to delete (runs/<job>, artifacts/<job>, its MLflow run's copies), as printed."""
    job_runs: Path | None = None
    """runs/<job>, when it is to be deleted."""
    run_entries: list[Path] = field(default_factory=list)
    """What runs/<job> held when its runs were checked: only these are deleted there (a run started since stays)."""
    skip: list[str] = field(default_factory=list)
    """Why the job is kept: nothing of it is deleted."""
    note: str = ""


def _job_files(job: Job, data_dir: Path) -> _Files:
    """`job`'s files to delete, or why it is skipped."""
    runs, artifacts = data_dir / "runs", data_dir / "artifacts"
    files = _Files()
    job_runs = runs / job.job_id
    if job_runs.exists() or job_runs.is_symlink():
        if not _inside(job_runs, runs):
            files.skip.append(f"{job_runs} is not a directory inside {runs}")
            return files
        files.run_entries = sorted(job_runs.iterdir())
        for run in files.run_entries:
            if run.is_dir() and not run.is_symlink():
                why = _in_use(run)
                if why:
                    files.skip.append(f"run {printable(run.name)}: {why}")
        if files.skip:
            return files
        files.paths.append(job_runs)
        files.job_runs = job_runs
    job_artifacts = artifacts / job.job_id
    if _inside(job_artifacts, artifacts):
        files.paths.append(job_artifacts)
    copies, files.note = _mlflow_copies(job, data_dir)
    files.paths += copies
    return files


def _delete(files: _Files) -> None:
    """Deletes `files.paths`: of runs/<job>, only the entries checked, then the directory when it is empty."""
    for path in files.paths:
        if path != files.job_runs:
            shutil.rmtree(path, ignore_errors=True)
            continue
        for entry in files.run_entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
        with contextlib.suppress(OSError):
            path.rmdir()


def _size(paths: list[Path]) -> int:
    """Bytes trees hold on disk, a hard-linked file once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _dirs, files in (entry for path in paths for entry in os.walk(path)):
        for name in files:
            try:
                info = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


def run_gc(args: argparse.Namespace, ended: Sequence[Job], data_dir: Path, label: Any) -> int:
    """Deletes (or, --dry-run, lists) the files of the ended jobs `ended` that --older-than and --keep select;
    `label(job)` is the job's name as printed."""
    jobs = sorted(
        ended, key=lambda j: j.ended_at or j.created_at or dt.datetime.min.replace(tzinfo=dt.UTC), reverse=True
    )
    now = dt.datetime.now(dt.UTC)
    doomed: list[Job] = []
    for index, job in enumerate(jobs):
        when = job.ended_at or job.created_at
        too_old = args.older_than is not None and when is not None and (now - when).total_seconds() > args.older_than
        beyond = args.keep is not None and index >= args.keep
        if (args.older_than is None or too_old) and (args.keep is None or beyond):
            doomed.append(job)
    freed, count, skipped = 0, 0, 0
    for job in doomed:
        files = _job_files(job, data_dir)
        if files.skip:
            skipped += 1
            print(f"skipping {job.job_id} ({job.status}, {label(job)}files kept): {'; '.join(files.skip)}")
            continue
        if files.note:
            print(f"{job.job_id}: {files.note}")
        paths = files.paths
        if not paths:
            continue
        size = _size(paths)
        freed, count = freed + size, count + 1
        verb = "would delete" if args.dry_run else "deleting"
        print(f"{verb} {job.job_id} ({job.status}, {label(job)}{size / 1e6:.1f} MB): {', '.join(map(str, paths))}")
        if not args.dry_run:
            _delete(files)
    kept = len(jobs) - len(doomed)
    summary = "would free" if args.dry_run else "freed"
    tail = f", {skipped} skipped as still in use (above)" if skipped else ""
    print(f"{summary} {freed / 1e6:.1f} MB from {count} ended job(s) in {data_dir}; {kept} ended job(s) kept{tail}")
    return 0
