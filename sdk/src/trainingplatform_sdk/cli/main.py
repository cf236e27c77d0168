"""`tp`: the platform's command line.

    tp up                                   start the backend, both trainers and the dashboard (Ctrl-C stops them)
    tp train --framework timm --model resnet10t --dataset digits --epochs 3 [--advanced-config JSON|@file]
    tp jobs | show JOB | watch JOB | logs JOB [--follow] | metrics JOB [--key K] [--plot F.png] | cancel JOB
    tp gc [--older-than 7d | --keep N] [--dry-run]   delete ended jobs' local run files and artifacts
    tp run [--name N] -- python my_train.py ...   your own script as a tracked job (its logs, exit, Ctrl-C)
    tp demo                                 the whole platform end to end on embedded defaults

Every command finds the backend and its token the same way, from any directory (`clients.resolve_connection`):
flags (--backend and --data-dir, before or after the command), then the environment, then the per-user config
`tp up` writes (`~/.config/trainingplatform/config.json`, or under XDG_CONFIG_HOME; TP_CONFIG names another), then
`./.data`. The backend is --backend, else TP_BACKEND_ADDRESS
(or BACKEND_API_URL), else the config's, else 127.0.0.1:50051 (`https://` for TLS, with the CA in TP_TLS_CA_FILE
and, for mutual TLS, TP_TLS_CLIENT_CERT_FILE and TP_TLS_CLIENT_KEY_FILE). The token is a front end's: the token
file in --data-dir, else TP_AUTH_TOKEN (the backend's FRONTEND_AUTH_TOKEN), else INTERNAL_AUTH_TOKEN, else the
token file in TP_DATA_DIR, else the one the config names, else .data/frontend_auth_token (an explicit --data-dir
without a token file is an error, not a fall back to the next). A job is named by its id
or any unique prefix of it, as in git. Errors are one line on stderr. `train` and `watch` exit 0 when the job
COMPLETED, 1 when it FAILED, 3 when it was CANCELLED; any other error exits 2; Ctrl-C on them exits 130 and leaves
the job running. A closed stdout (`tp jobs | head -1`, `tp jobs >&-`) ends a command quietly with 141 (128 +
SIGPIPE); a closed stderr silences errors, not their exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import re
import select
import signal
import stat
import sys
import threading
import time
import unicodedata
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainingplatform_tp import EXIT_INTERRUPTED, install_interrupt_handler

from trainingplatform_sdk.channel import CA_FILE_ENV, CLIENT_CERT_FILE_ENV, CLIENT_KEY_FILE_ENV, parse_backend_address
from trainingplatform_sdk.cli.argtypes import INT32_MAX, INT32_MIN, at_least, in_range
from trainingplatform_sdk.cli.frameworks import add_frameworks_command
from trainingplatform_sdk.cli.gc import add_gc_parser
from trainingplatform_sdk.cli.output import (
    RECONNECT_S,
    CliError,
    FollowStopped,
    OutageNotice,
    cell,
    clock,
    fmt_value,
    follow,
    plot_families,
    plot_series,
    print_epochs,
    print_summary,
    printable,
    safe_write,
)
from trainingplatform_sdk.cli.run import add_run_parser
from trainingplatform_sdk.clients import Connection, Job, JobsClient, resolve_connection
from trainingplatform_sdk.clients._base import FRONTEND_TOKEN_FILE, INTERNAL_TOKEN_FILE
from trainingplatform_sdk.clients.jobs import JOB_STATUS_NAMES, LOG_LEVEL_NAMES, CreatedJob, LogLine
from trainingplatform_sdk.errors import (
    InvalidArgumentError,
    NotFoundError,
    PlatformError,
    UnauthenticatedError,
    UnavailableError,
)

EXIT_FOR_STATUS = {"COMPLETED": 0, "FAILED": 1, "CANCELLED": 3}
EXIT_ERROR = 2
EXIT_SIGPIPE = 128 + signal.SIGPIPE
"""The exit status when stdout's reader went away (`tp jobs | head -1`), as a Unix tool killed by SIGPIPE."""


_connection: Connection | None = None
"""The backend and token of this invocation (for error messages)."""


def _client(args: argparse.Namespace, *, token_in_data_dir: bool = True) -> JobsClient:
    """A client of the backend found by `resolve_connection` (flags, environment, per-user config, ./.data).

    An explicit --data-dir must exist, and hold a token unless `token_in_data_dir` is false (`tp gc`, for which it
    names the files to delete: its token may come from the environment)."""
    global _connection
    given = getattr(args, "data_dir_given", False)
    if given:
        _check_data_dir_flag(Path(args.data_dir), token=token_in_data_dir)
    connection = resolve_connection(args.backend, args.data_dir if given else None)
    try:
        parse_backend_address(connection.address)
    except ValueError as error:
        raise CliError(f"{connection.address_source}: {error}") from None
    _connection = connection
    return JobsClient(connection.address, connection.token)


def _check_data_dir_flag(data_dir: Path, *, token: bool = True) -> None:
    """An explicit --data-dir must exist and (`token`) hold a token: falling back to TP_AUTH_TOKEN and the rest in
    silence would talk to another backend, or with another token, than the one named.

    Raises:
        CliError: it does not exist, is not a directory, or holds no token file with a token in it.
    """
    names = f"{FRONTEND_TOKEN_FILE} or {INTERNAL_TOKEN_FILE}"
    if not data_dir.exists():
        why = "does not exist"
    elif not data_dir.is_dir():
        why = "is not a directory"
    elif not token:
        return
    else:
        for name in (FRONTEND_TOKEN_FILE, INTERNAL_TOKEN_FILE):
            path = data_dir / name
            try:
                if path.is_file() and path.read_bytes().strip():
                    return
            except OSError:
                return  # resolve_connection names the file it cannot read
        why = f"holds no token ({names})"
    raise CliError(
        f"--data-dir {data_dir} {why}: give the data directory of a stack (`tp up` writes {FRONTEND_TOKEN_FILE} "
        f"there), or leave --data-dir out to use TP_AUTH_TOKEN, TP_DATA_DIR or the per-user config"
    )


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_JOB_ID_PREFIX = re.compile(r"^[0-9a-z._-]{1,128}$")
"""What may start a job id (at most 128 letters, digits, `.`, `_` or `-`): anything else matches no job."""


def resolve_job(client: JobsClient, job: str) -> str:
    """A job id from the id or a unique prefix of it (as git resolves commits).

    Raises:
        CliError: no job or more than one starts with `job`.
    """
    wanted = job.strip().lower()
    if _UUID.match(wanted):
        return wanted
    if not wanted:
        raise CliError("name a job (its id, or a prefix of it)")
    # Only the jobs that hold the prefix are read (the backend's text filter), not every job it has.
    found = client.list_jobs(text=wanted) if _JOB_ID_PREFIX.match(wanted) else iter(())
    matches = [j for j in found if j.job_id.startswith(wanted)]
    if not matches:
        raise CliError(f"no job id starts with {job!r} (`tp jobs` lists them)")
    if len(matches) > 1:
        shown = ", ".join(f"{j.job_id} ({printable(j.display_name or j.model)}, {j.status})" for j in matches[:10])
        more = f" and {len(matches) - 10} more" if len(matches) > 10 else ""
        raise CliError(f"job prefix {job!r} is ambiguous: {shown}{more}")
    return matches[0].job_id


def _quoted(text: str) -> str:
    """A client's name in quotes, `printable`."""
    return f"'{printable(text)}'"


def _job_label(job: Job) -> str:
    return f"{_quoted(job.display_name)}, " if job.display_name else ""


def _load_json(value: str | None) -> dict[str, Any]:
    if not value:
        return {}
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise CliError(f"--advanced-config: {value[1:]} is not UTF-8 text") from None
        except OSError as error:
            raise CliError(f"--advanced-config: cannot read {value[1:]}: {error.strerror or error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise CliError(f"--advanced-config is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise CliError("--advanced-config must be a JSON object")
    return data


# --- commands -----------------------------------------------------------------------------------------------


def _reader_gone(fd: int) -> bool:
    """Whether `fd` is a pipe whose reading end was closed (`tp up | tee` after tee ended)."""
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def _silence(stream: Any) -> None:
    """The reader of `stream` went away: what is printed from now on (and what is still buffered) goes to
    /dev/null, so neither a later print nor the flush at exit fails."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


def cmd_up(args: argparse.Namespace) -> int:
    from trainingplatform_sdk.cli.stack import Stack
    from trainingplatform_sdk.clients import config_path, write_config

    stopping: list[str] = []

    def say(text: str, stream: Any = None) -> None:
        """Prints; a closed stdout (the pipe's reader ended) stops the stack instead of killing `tp up`."""
        stream = stream or sys.stdout
        if not safe_write(stream, text + "\n"):
            if not stopping:
                stopping.append("output closed")
            _silence(stream)

    started = False

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signal.Signals(signum).name)
        if not started:
            raise KeyboardInterrupt  # during start: stop what was started, then exit

    _distinct_ports(args)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    stack = Stack(
        Path(args.data_dir),
        backend_port=args.backend_port,
        timm_port=args.timm_port,
        ultralytics_port=args.ultralytics_port,
        data_roots=tuple(Path(root) for root in (args.data_root or [Path.cwd()])),
        dashboard_port=None if args.no_dashboard else args.dashboard_port,
    )
    say(f"starting the stack in {stack.data_dir} ...")
    say(f"trainers read data sets under {', '.join(str(root) for root in stack.data_roots)}")
    if note := stack.withheld_note():
        say(note)
    try:
        stack.start()  # stops what it started when it fails
    except KeyboardInterrupt:
        say("stopped before the stack was up")
        return 130
    started = True
    try:
        for service in stack.services:
            pid = service.process.pid if service.process is not None else "-"
            say(f"  {service.name:20} {service.address}  (pid {pid}, log {service.log_path})")
        say(f"database {stack.database}")
        token_file = stack.data_dir / "frontend_auth_token"
        if not token_file.exists():
            token_file = stack.data_dir / "internal_auth_token"
        previous = _read_bytes(config_path())
        config = write_config(backend_address=stack.backend_address, token_file=token_file, data_dir=stack.data_dir)
        written = _read_bytes(config)
        say(f"every `tp` command finds this stack through {config} (from any directory); other front ends:")
        say(f"  export TP_BACKEND_ADDRESS={stack.backend_address}")
        say(f'  export TP_AUTH_TOKEN="$(cat {token_file})"')
        if stack.dashboard_login_url:
            say(f"dashboard: open {stack.dashboard_login_url}")
            say(
                "  (the login link of this start: it sets a session cookie and leads to the plain URL; keep it private)"
            )
            if stack.dashboard_token_one_time:
                say(f"  (it works once; the next one: cat {stack.data_dir / 'dashboard_login_url'})")
        say("Ctrl-C stops everything.")
        while not stopping:
            dead = [s for s in stack.services if s.process is not None and s.process.poll() is not None]
            if dead:
                # The config would name a stack that is gone: what it held before comes back (unless another
                # `tp up` wrote it since).
                _restore(config, written, previous)
                reasons = "; ".join(str(stack.exit_error(service)) for service in dead)
                say(f"error: {reasons}; stopping the stack", sys.stderr)
                return EXIT_ERROR
            if _reader_gone(sys.stdout.fileno()):
                stopping.append("output closed")
                _silence(sys.stdout)
                break
            time.sleep(0.2)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
        say("\nstopping ...")
        stack.stop()
        say("stopped")
    return 0


def _distinct_ports(args: argparse.Namespace) -> None:
    """`tp up`: every service on its own port, checked before anything is started or written.

    Raises:
        CliError: two flags give one port (one line naming both).
    """
    flags = [
        ("--backend-port", args.backend_port),
        ("--timm-port", args.timm_port),
        ("--ultralytics-port", args.ultralytics_port),
    ]
    if not args.no_dashboard:
        flags.append(("--dashboard-port", args.dashboard_port))
    seen: dict[int, str] = {}
    for flag, port in flags:
        if port in seen:
            raise CliError(f"{seen[port]} and {flag} are both {port}: each service of `tp up` needs its own port")
        seen[port] = flag


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _restore(path: Path, written: bytes | None, previous: bytes | None) -> None:
    """Puts back what `path` held before `tp up` wrote `written` to it (None: nothing, so it is removed), unless
    it was changed since."""
    if _read_bytes(path) != written:
        return
    with contextlib.suppress(OSError):
        if previous is None:
            path.unlink()
        else:
            partial = path.with_name(path.name + f".{os.getpid()}.partial")
            partial.write_bytes(previous)
            os.chmod(partial, 0o600)
            os.replace(partial, path)


#: The `tp train` flag of each config field a refusal may name: the backend's `spec.<section>.<field>`, a trainer's
#: `<section>_config.<field>`, or the job's `display_name`; None: the field has no flag of its own
#: (`--advanced-config` holds every other field).
_TRAIN_FLAGS: dict[tuple[str, str | None], str] = {
    ("model", "name"): "--model",
    ("model", "image_size"): "--image-size",
    ("dataset", "name"): "--dataset",
    ("dataset", "path"): "--dataset-path",
    ("dataset", None): "--dataset or --dataset-path",
    ("training", "epochs"): "--epochs",
    ("training", "batch_size"): "--batch-size",
    ("training", "learning_rate"): "--lr",
    ("training", "device"): "--device",
    ("training", "log_every_n_steps"): "--log-every-n-steps",
    ("advanced", None): "--advanced-config",
    ("display_name", None): "--name",
}
_CONFIG_FIELD = re.compile(
    r"\b(?:spec\.(model|dataset|training|advanced)|(model|dataset|training|advanced)_config|(display_name)\b)"
    r"(?:\.(\w+))?"
)


def _train_flags(message: str) -> list[str]:
    """The `tp train` flags of the config fields a refusal's message names, in order, each once."""
    flags: list[str] = []
    for match in _CONFIG_FIELD.finditer(message):
        section, field = match.group(1) or match.group(2) or match.group(3), match.group(4)
        flag = _TRAIN_FLAGS.get((section, field)) or _TRAIN_FLAGS.get((section, None))
        if flag and flag not in flags:
            flags.append(flag)
    return flags


def cmd_train(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            created = _create_training_job(client, args)
        except (InvalidArgumentError, NotFoundError) as error:
            # The refusal names fields of the protos (`spec.training.epochs`): say which flag sets them.
            flags = _train_flags(error.message)
            if not flags:
                raise
            raise CliError(f"{error.message} (tp train: {', '.join(flags)})") from error
        job = created.job
        print(
            f"job {job.job_id} ({_job_label(job)}{printable(job.framework)} {printable(job.model)} on "
            f"{printable(job.dataset)}, {job.epochs} epochs): "
            f"{job.status}",
            flush=True,
        )
        try:
            if not job.finished:
                job = follow(client, job)
        except KeyboardInterrupt as interrupt:
            _detached(job, interrupt)
            return 130
        print_summary(job, client=client)
        return EXIT_FOR_STATUS.get(job.status, EXIT_ERROR)


def _create_training_job(client: JobsClient, args: argparse.Namespace) -> CreatedJob:
    """CreateJob with `tp train`'s flags."""
    return client.create_job(
        framework=args.framework,
        model=args.model,
        dataset=args.dataset or "",
        dataset_path=args.dataset_path or "",
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        image_size=args.image_size,
        device=args.device or "",
        log_every_n_steps=args.log_every_n_steps,
        advanced=_load_json(args.advanced_config),
        display_name=args.name or "",
    )


def _detached(job: Job, interrupt: KeyboardInterrupt) -> None:
    """Says on stderr what a Ctrl-C that stopped following `job` left: a job that goes on running, or one that had
    ended (`FollowStopped`: while its trainer's last lines were awaited)."""
    job_id = job.job_id
    ended = interrupt.status if isinstance(interrupt, FollowStopped) else job.status if job.finished else ""
    if ended:
        text = (
            f"\ninterrupted: job {job_id} has ended ({ended}); `tp logs {job_id[:8]}` shows the last lines its "
            f"trainer writes."
        )
    else:
        text = (
            f"\ninterrupted: job {job_id} goes on running on its trainer. Watch it with `tp watch {job_id[:8]}`, "
            f"cancel it with `tp cancel {job_id[:8]}`."
        )
    safe_write(sys.stderr, text + "\n")
    _exit_unless_done_in(INTERRUPTED_CLEANUP_S)


INTERRUPTED_CLEANUP_S = 5.0
"""How long the cleanup after a Ctrl-C that `_detached` reported (closing the gRPC channel) may take."""

_cleanup_deadline: threading.Timer | None = None
"""The timer that ends the process if that cleanup blocks (`_exit_unless_done_in`); `main` cancels it."""


def _exit_unless_done_in(seconds: float) -> None:
    """A safety net once a Ctrl-C was reported: all that is left is closing the channel, which a Ctrl-C can no
    longer interrupt (`interrupt_once`); should it block all the same, the process ends with 130 after `seconds`,
    its output flushed, rather than hang with the job's fate already said."""
    global _cleanup_deadline

    def stuck() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(EXIT_INTERRUPTED)

    _cleanup_deadline = threading.Timer(seconds, stuck)
    _cleanup_deadline.daemon = True
    _cleanup_deadline.start()


def cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get_job(resolve_job(client, args.job))
        try:
            if not job.finished:
                job = follow(client, job)
                print_summary(job, client=client)
            else:
                print_summary(job, client=client, epochs=True)
        except KeyboardInterrupt as interrupt:
            _detached(job, interrupt)
            return 130
        return EXIT_FOR_STATUS.get(job.status, EXIT_ERROR)


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        listed: list[Job] = []
        more = False
        try:
            for job in client.list_jobs(statuses=args.status or (), framework=args.framework or "", text=args.search):
                if len(listed) >= args.limit:
                    more = True
                    break
                listed.append(job)
        except InvalidArgumentError as error:
            # The refusal names the request's field (`text contains control characters`): say the flag that set it.
            if args.search and error.message.startswith("text "):
                raise CliError(f"--search: the {error.message}") from error
            raise
        print(f"{'JOB':36}  {'NAME':20}  {'STATUS':9}  {'FRAMEWORK':11}  {'MODEL':18}  CREATED")
        for job in listed:
            created = job.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S") if job.created_at else ""
            name = job.display_name or "-"
            print(
                f"{job.job_id:36}  {cell(name, 20)}  {job.status:9}  {cell(job.framework, 11)}  {cell(job.model, 18)}  "
                f"{created}"
            )
        if more:  # on stderr: a pipe gets the table and nothing else
            sys.stdout.flush()
            shown = "the newest job" if args.limit == 1 else f"the {args.limit} newest jobs"
            safe_write(sys.stderr, f"tp: showing {shown}; more exist (--limit N)\n")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get_job(resolve_job(client, args.job))
        print(f"job {job.job_id}  {job.status}" + (f"  {_quoted(job.display_name)}" if job.display_name else ""))
        print(
            f"  {printable(job.framework)} {printable(job.model)} on {printable(job.dataset)}, {job.epochs} epochs; "
            f"trainer {printable(job.trainer_address or '-')}"
        )
        print(f"  metrics committed up to {job.last_metric_sequence}, logs up to {job.last_log_sequence}")
        if job.waiting_reason:
            print(f"  waiting for a trainer: {printable(job.waiting_reason)}")
        for event in job.status_events:
            when = event.time.astimezone().strftime("%H:%M:%S") if event.time else ""  # local, as `tp logs`
            print(f"  {when} {event.from_status:>11} -> {event.to_status:9} {printable(event.reason)}")
        print_summary(job, client=client, epochs=True)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        args.job = resolve_job(client, args.job)
        if not args.follow:
            for line in client.logs(args.job, min_level=args.level or ""):
                print(_log_line(line))
            return 0
        # The backend filters a history read by level; a subscription sends every record, so they are filtered here.
        minimum = LOG_LEVEL_NAMES.index(args.level) if args.level else 0
        for event in client.subscribe(args.job, max_reconnect_s=RECONNECT_S, on_reconnect=OutageNotice(client.address)):
            for line in event.logs:
                if _LEVEL_RANK.get(line.level, len(LOG_LEVEL_NAMES)) >= minimum:
                    print(_log_line(line), flush=True)
    return 0


_LEVEL_RANK = {name.upper(): rank for rank, name in enumerate(LOG_LEVEL_NAMES)}
"""The rank of a record's level (`INFO`) among LOG_LEVEL_NAMES, as `tp logs --level` compares them."""


def _log_line(line: LogLine) -> str:
    """A record as `tp logs` prints it: `HH:MM:SS [level] message`, the message's continuation lines under it."""
    head = f"{clock(line.wall_time)} [{line.level.lower()}] "
    return head + printable(line.message, " " * len(head))


def cmd_metrics(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get_job(resolve_job(client, args.job))
        series: dict[str, list[tuple[float, float]]] = {}
        for point in client.metrics(job.job_id, keys=args.key or ()):
            x = point.step if point.step is not None else (point.epoch if point.epoch is not None else point.sequence)
            series.setdefault(point.key, []).append((x, point.value))
        if not series:
            keys = f" with the keys {', '.join(printable(key) for key in args.key)}" if args.key else ""
            raise CliError(f"job {job.job_id} has no metrics{keys}")
        for key, values in sorted(series.items()):
            print(f"{printable(key):28} {len(values):7} points  last {fmt_value(values[-1][1])}")
        if job.finished:
            print("epochs:")
            print_epochs(client, job)
    if args.plot:
        path = plot_path(args.plot, job.job_id)
        title = _shortened(f"{job.display_name or job.job_id[:8]}: {job.framework} {job.model} on {job.dataset}", 64)
        labelled = _short_labels(series)
        with warnings.catch_warnings():
            # A key or name in a script the font lacks (CJK, emoji) is drawn as boxes, and a legend too wide for the
            # figure is drawn as it is: matplotlib says so in lines of warnings, which are noise here.
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
            warnings.filterwarnings("ignore", message=r"Tight layout not applied", category=UserWarning)
            try:
                if args.key:
                    plot_series({title: labelled}, path)
                else:
                    panels = plot_families(labelled, path, title)
                    print(f"panels: {', '.join(panels)}")
            except OSError as error:
                raise CliError(f"--plot {path}: cannot write it: {error.strerror or error}") from None
        print(f"wrote {path}")
    return 0


_LABEL_CHARS = 48


def _shortened(text: str, limit: int) -> str:
    """`text` cut to `limit` columns (a wide character, as CJK, takes two) with an ellipsis at its end."""
    widths = [2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text]
    if sum(widths) <= limit:
        return text
    columns = 0
    for index, width in enumerate(widths):
        if columns + width > limit - 1:
            return text[:index] + "\u2026"
        columns += width
    return text


def _short_labels(series: dict[str, list[tuple[float, float]]]) -> dict[str, list[tuple[float, float]]]:
    """`series` with each key longer than a legend fits cut in its middle (its start and its last part stay, so
    `metric_family` puts it in the same panel); a key whose cut form another key already has stays whole."""
    shown: dict[str, list[tuple[float, float]]] = {}
    for key in sorted(series, key=len):
        label = key
        if len(key) > _LABEL_CHARS:
            head = _LABEL_CHARS // 2
            label = key[:head] + "\u2026" + key[-(_LABEL_CHARS - head - 1) :]
        shown[key if label in shown or label in series else label] = series[key]
    return shown


def plot_path(value: str, job_id: str) -> Path:
    """The file `tp metrics --plot VALUE` writes: `<job_id>.png` inside a directory (one that exists, or VALUE
    ending in a slash), VALUE with `.png` added when it has no suffix (as matplotlib would add it, unsaid), else
    VALUE (its suffix picks the format: .png, .svg, .pdf, ...)."""
    path = Path(value).expanduser()
    if value.endswith(("/", os.sep)) or path.is_dir():
        return path / f"{job_id}.png"
    if not path.suffix:
        return path.with_name(path.name + ".png")
    return path


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel_job(resolve_job(client, args.job), reason=args.reason or "cancelled from the command line")
        print(f"job {job.job_id}: {job.status}")
    return 0


def _plot_target(text: str) -> str:
    """An argparse type: where `--plot` writes, not empty."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a file or a directory (FILE.png, or DIR/)")
    return text


def _port(text: str) -> int:
    """An argparse type: a TCP port to listen on, 1 to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: must be a number 1-65535") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: must be 1-65535")
    return port


def _one_of(names: tuple[str, ...], what: str) -> Any:
    """An argparse type: one of `names`, any case, as given in lower case."""

    def parse(text: str) -> str:
        if text.strip().lower() not in names:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what}: must be one of {', '.join(names)}")
        return text.strip().lower()

    return parse


def cmd_gc(args: argparse.Namespace) -> int:
    from trainingplatform_sdk.cli.gc import gc_data_dir, run_gc

    data_dir = gc_data_dir(args)
    with _client(args, token_in_data_dir=False) as client:
        ended = [job for job in client.list_jobs() if job.finished]
    return run_gc(args, ended, data_dir, _job_label)


def cmd_run(args: argparse.Namespace) -> int:
    from trainingplatform_sdk.cli.run import run_tracked

    with _client(args) as client:
        assert _connection is not None
        return run_tracked(args, client, _connection.address)


def cmd_demo(args: argparse.Namespace) -> int:
    from trainingplatform_sdk.cli.demo import run_demo

    return run_demo(Path(args.data_dir))


# --- parser -------------------------------------------------------------------------------------------------


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default in --help when it has one worth showing (not None, False, empty or already said)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, "", argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Every `tp` parser shows each option's default in --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `tp`."""
    parser = _Parser(prog="tp", description="The training platform's command line.")
    _add_global_flags(parser, "global options (also after a command that uses them)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    up = commands.add_parser("up", help="start the backend, both trainer services and the dashboard locally")
    up.add_argument("--backend-port", type=_port, default=50051, help="the backend's gRPC port on 127.0.0.1")
    up.add_argument("--dashboard-port", type=_port, default=8080, help="the dashboard's port on 127.0.0.1")
    up.add_argument("--no-dashboard", action="store_true", help="do not start the dashboard")
    up.add_argument("--timm-port", type=_port, default=50061, help="the timm trainer's gRPC port on 127.0.0.1")
    up.add_argument(
        "--ultralytics-port", type=_port, default=50062, help="the ultralytics trainer's gRPC port on 127.0.0.1"
    )
    up.add_argument(
        "--data-root",
        action="append",
        metavar="DIR",
        help="a directory whose data sets the trainers may read, besides <data-dir>/datasets (repeatable; "
        "default: the current directory). Dataset paths outside these are refused",
    )
    up.set_defaults(run=cmd_up)

    train = commands.add_parser("train", help="submit a job and follow it live")
    train.add_argument("--framework", required=True, choices=("timm", "ultralytics"), help="the trainer to run on")
    train.add_argument("--model", required=True, help="timm model name or ultralytics yaml / .pt")
    datasets = train.add_mutually_exclusive_group()
    datasets.add_argument("--dataset", help="built-in dataset (digits, shapes); this or --dataset-path")
    datasets.add_argument(
        "--dataset-path",
        help="on the trainer: an ImageFolder directory, a YOLO data.yaml, or a YOLO data set directory holding one",
    )
    # The integers are int32 fields of the protos: a value outside their range is a usage error naming the flag
    # (protobuf's own 'Value out of range' named none); the backend checks the rest, and its refusal names the flag.
    int32 = in_range(INT32_MIN, INT32_MAX)
    train.add_argument("--epochs", type=int32, default=3, help="epochs to train")
    train.add_argument("--batch-size", type=int32, default=0, help="batch size (default: 0, the framework's own)")
    train.add_argument("--lr", type=float, default=0.0, help="learning rate (default: 0, the framework's own)")
    train.add_argument("--image-size", type=int32, default=0, help="input size in pixels (default: 0, the model's own)")
    train.add_argument("--device", help="auto, cpu, cuda, cuda:N (default: auto)")
    train.add_argument(
        "--log-every-n-steps", type=int32, default=0, help="log batch metrics every N steps (default: 0, every 100)"
    )
    train.add_argument("--advanced-config", help="JSON object or @file.json")
    train.add_argument("--name", help="display name")
    train.set_defaults(run=cmd_train)

    jobs = commands.add_parser("jobs", help="list jobs, newest first")
    jobs.add_argument(
        "--status",
        action="append",
        type=_one_of(JOB_STATUS_NAMES, "status"),
        help=f"filter by status: {', '.join(JOB_STATUS_NAMES)} (repeatable)",
    )
    jobs.add_argument("--framework", help="only this framework's jobs")
    jobs.add_argument(
        "--search", default="", metavar="TEXT", help="only jobs whose name, id or model contains TEXT (any case)"
    )
    jobs.add_argument(
        "--limit",
        type=at_least(1),
        default=50,
        help="list at most this many (at least 1); a listing cut short says so on stderr",
    )
    jobs.set_defaults(run=cmd_jobs)

    for name, function, text in (
        ("show", cmd_show, "one job and its status history"),
        ("watch", cmd_watch, "follow a job live until it ends"),
        ("cancel", cmd_cancel, "cancel a job"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("job", help="the job's id or a unique prefix of it")
        command.set_defaults(run=function)
        if name == "cancel":
            command.add_argument("--reason", help="why (kept in the job's status history)")

    logs = commands.add_parser("logs", help="a job's log lines")
    logs.add_argument("job", help="the job's id or a unique prefix of it")
    logs.add_argument("--follow", "-f", action="store_true", help="follow new lines until the job ends")
    logs.add_argument(
        "--level",
        type=_one_of(LOG_LEVEL_NAMES, "level"),
        help=f"minimum level: {', '.join(LOG_LEVEL_NAMES)} (default: all)",
    )
    logs.set_defaults(run=cmd_logs)

    metrics = commands.add_parser("metrics", help="a job's metrics; --plot writes a PNG of the curves")
    metrics.add_argument("job", help="the job's id or a unique prefix of it")
    metrics.add_argument("--key", action="append", help="only this key (repeatable)")
    metrics.add_argument(
        "--plot",
        metavar="FILE.png",
        type=_plot_target,
        help="write a PNG of the curves: one panel per family (loss, accuracy, ...). Without a suffix, .png is "
        "added; a directory (existing, or ending in /) gets <job id>.png inside it; the file written is printed",
    )
    metrics.set_defaults(run=cmd_metrics)

    add_gc_parser(commands).set_defaults(run=cmd_gc)

    add_frameworks_command(commands)

    add_run_parser(commands).set_defaults(run=cmd_run)

    demo = commands.add_parser("demo", help="run the platform end to end on embedded defaults")
    demo.set_defaults(run=cmd_demo)

    for name, command in commands.choices.items():
        command.set_defaults(tp_command=name)  # `command` itself is `tp run`'s command line once parsed
        if name in _STACK_COMMANDS:
            _add_global_flags(command, backend=False, data_dir_help=_STACK_DATA_DIR_HELP)
            # Taken only to be refused by name: else argparse read `tp up --backend X` as `--backend-port X`.
            command.add_argument("--backend", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        elif name != "frameworks":  # offline: neither flag means anything to it
            _add_global_flags(command)
    return parser


_STACK_COMMANDS = ("up", "demo")
"""The commands that start a stack: --data-dir is where it keeps its files, and no --backend is asked."""

_STACK_DATA_DIR_HELP = (
    "the stack's data directory: its database, tokens, logs and runs (default: $TP_DATA_DIR, else .data)"
)


def _add_global_flags(
    parser: argparse.ArgumentParser,
    title: str = "global options (also before the command)",
    *,
    backend: bool = True,
    data_dir_help: str = "",
) -> None:
    """Adds the flags every command that uses them takes before or after its name (`tp --data-dir D jobs`, `tp
    jobs --data-dir D`), in a group of their own. Their default is SUPPRESS, so that a subcommand's copy left out
    does not overwrite a value given before the command; `main` fills in the defaults."""
    group = parser.add_argument_group(title)
    if backend:
        group.add_argument(
            "--backend",
            metavar="ADDRESS",
            default=argparse.SUPPRESS,
            help="backend address (default: TP_BACKEND_ADDRESS, else BACKEND_API_URL, else the address `tp up` "
            "wrote to the per-user config, else 127.0.0.1:50051)",
        )
    group.add_argument(
        "--data-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help=data_dir_help
        or "a stack's data directory: given, its front-end token is used, and `tp gc` deletes there (default: "
        "$TP_DATA_DIR, else .data)",
    )


_UNREACHABLE = ("failed to connect", "connection refused", "dns resolution", "connect failed", "deadline exceeded")


_NOT_TLS = ("WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST", "RECORD_TOO_LARGE")
"""OpenSSL's reasons for a handshake whose peer answered, but not in TLS (a plaintext gRPC server answers an
https:// client's hello with an HTTP/2 frame)."""


_CLIENT_CERTIFICATE_WANTED = ("CERTIFICATE_REQUIRED",)
"""OpenSSL's reason for a handshake that a server asking for a client certificate ended (TLS 1.3)."""


def _closed_at_connect(address: str) -> str:
    """The line for a server that took the connection and closed it without a word (gRPC says "Socket closed", which
    read as "no backend answers"): a TLS server that wants a client certificate, or a plaintext client's HTTP/2
    that a TLS server cannot read."""
    try:
        parsed = parse_backend_address(address)
    except ValueError:
        return f"the server at {address} closed the connection"
    if not parsed.tls:
        return (
            f"the server at {address} closed the connection: it may speak TLS only; try https://{parsed.target} "
            f"(with {CA_FILE_ENV} naming the CA of its certificate)"
        )
    return _client_certificate_wanted(address)


def _client_certificate_wanted(address: str) -> str:
    certificate = os.environ.get(CLIENT_CERT_FILE_ENV, "").strip()
    if certificate:
        return (
            f"the server at {address} refused the TLS handshake: it may not trust the client certificate in "
            f"{CLIENT_CERT_FILE_ENV} ({certificate}); check that its CA signed it"
        )
    return (
        f"the server at {address} refused the TLS handshake: it probably wants a client certificate (mutual TLS); "
        f"set {CLIENT_CERT_FILE_ENV} and {CLIENT_KEY_FILE_ENV}"
    )


def _handshake_failed(address: str, message: str) -> str:
    """The line for a backend that answered but whose TLS handshake failed (gRPC says "failed to connect", which
    read as "no backend answers")."""
    reason = re.search(r"OPENSSL_internal:([A-Z0-9_]+)", message)
    why = f" ({reason.group(1)})" if reason else ""
    if reason and reason.group(1) in _NOT_TLS:
        return f"the TLS handshake with {address} failed{why}: the server may not speak TLS; try without https://"
    if reason and any(part in reason.group(1) for part in _CLIENT_CERTIFICATE_WANTED):
        return _client_certificate_wanted(address)
    return (
        f"the TLS handshake with {address} failed{why}: check that TP_TLS_CA_FILE holds the CA of its certificate "
        f"(and, for mutual TLS, TP_TLS_CLIENT_CERT_FILE and TP_TLS_CLIENT_KEY_FILE); a server that may not speak "
        f"TLS: try without https://"
    )


def _error_line(error: BaseException) -> str:
    """One line for an error; a backend that does not answer gets a hint to run `tp up`, a refused token names
    where it came from, and where the backend's address came from."""
    if isinstance(error, PlatformError):
        message = _first_line(error.details or str(error)) or type(error).__name__
        connection = _connection
        if connection is not None and isinstance(error, UnavailableError) and "handshake failed" in message.lower():
            return _handshake_failed(connection.address, message)
        if connection is not None and isinstance(error, UnavailableError) and "socket closed" in message.lower():
            return _closed_at_connect(connection.address)
        if connection is not None and isinstance(error, UnavailableError) and "errors resolving" in message.lower():
            found = re.search(r"lookup failed for [^:]+:\d+: (.+?)\]?$", message)
            why = f" ({found.group(1)})" if found else ""
            return (
                f"cannot resolve the host of the backend address {connection.address} (from "
                f"{connection.address_source}){why}: check the name, or pass --backend / set TP_BACKEND_ADDRESS"
            )
        if (
            connection is not None
            and isinstance(error, UnavailableError)
            and any(part in message.lower() for part in _UNREACHABLE)
        ):
            return (
                f"no backend answers at {connection.address} (from {connection.address_source}): start one with "
                f"`tp up`, or pass --backend / set TP_BACKEND_ADDRESS"
            )
        if connection is not None and isinstance(error, UnauthenticatedError):
            return (
                f"the backend at {connection.address} (from {connection.address_source}) refused the token from "
                f"{connection.token_source}: {message}"
            )
        return message
    return _first_line(str(error)) or type(error).__name__


def _first_line(text: str) -> str:
    """The first line of `text` that is not blank (a library's message may start with a line break)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _stdout_closed() -> bool:
    """Whether a broken pipe was stdout's: its reader went away (stdout not a pipe: assumed so, as nothing else
    `tp` writes to is a pipe of its own)."""
    try:
        fd = sys.stdout.fileno()
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            return _reader_gone(fd)
    except (OSError, ValueError, AttributeError):
        pass
    return True


class _ClosedStdout(io.TextIOBase):
    """`sys.stdout` of a `tp` started without one (`tp jobs >&-`, where Python leaves it None): a write fails as a
    write to a pipe whose reader went away, so that the command ends as it does then (quietly, 141)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(errno.EPIPE, "stdout is closed")


def _closed_streams() -> None:
    """A `tp` started with stdout or stderr closed: the descriptor gets /dev/null (so that no file or socket opened
    later takes its number, and a child inheriting it writes nowhere), a closed stdout a `_ClosedStdout`, a closed
    stderr a stream to /dev/null (errors are not said, but the exit status still says them)."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is not None:
            continue
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)
        if name == "stdout":
            sys.stdout = _ClosedStdout()
        else:
            sys.stderr = open(os.devnull, "w")  # noqa: SIM115  (for the process's life)


def _escaping_streams() -> None:
    """stdout and stderr keep their encoding but write what it cannot encode as backslash escapes (a job named in
    CJK on an ASCII or latin-1 terminal, PYTHONIOENCODING=ascii): output never fails on encoding."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(OSError, ValueError):
                reconfigure(errors="backslashreplace")


_UNUSED_GLOBAL_FLAGS = {
    "up": {"--backend": "it starts its own backend, on 127.0.0.1 at --backend-port"},
    "demo": {"--backend": "it starts its own backend"},
    "frameworks": {
        "--backend": "it reads the trainers installed here, not a backend",
        "--data-dir": "it reads the trainers installed here, not a data directory",
    },
}
"""The global flags (given before the command) that a command has no use for, and why."""


def _refuse_unused_global_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A usage error (exit 2) for `tp --backend X up` and the like: a flag given and silently ignored would leave
    the user believing it was used."""
    for flag, why in _UNUSED_GLOBAL_FLAGS.get(args.tp_command, {}).items():
        if hasattr(args, flag[2:].replace("-", "_")):
            parser.error(f"{flag} does not apply to tp {args.tp_command}: {why}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `tp` (the console script runs it through `trainingplatform_tp.main`).

    A Ctrl-C exits 130: the first raises KeyboardInterrupt, and any later one is ignored from then on
    (`interrupt_once`), so that the cleanup the first one starts cannot be cut short."""
    install_interrupt_handler()
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        if _cleanup_deadline is not None:
            _cleanup_deadline.cancel()


def _main(argv: Sequence[str] | None) -> int:
    """`main`, but for its handling of Ctrl-C."""
    _closed_streams()
    _escaping_streams()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    _refuse_unused_global_flags(parser, args)
    # Only a flag given (before or after the command) sets these: see `_add_global_flags`.
    args.data_dir_given = hasattr(args, "data_dir")
    if not args.data_dir_given:
        args.data_dir = os.environ.get("TP_DATA_DIR", ".data")
    if not hasattr(args, "backend"):
        args.backend = None
    try:
        code = int(args.run(args))
        sys.stdout.flush()  # a closed stdout shows here, not in the interpreter's flush at exit
        return code
    except BrokenPipeError as error:
        if not _stdout_closed():
            safe_write(sys.stderr, f"error: {printable(_error_line(error))}\n")
            return EXIT_ERROR
        # `tp jobs | head -1`: the reader has what it wanted. End quietly, as a Unix tool killed by SIGPIPE does;
        # stdout goes to /dev/null so that the interpreter's own flush at exit does not fail again.
        _silence(sys.stdout)
        return EXIT_SIGPIPE
    except (PlatformError, CliError, OSError, TimeoutError, RuntimeError, ValueError) as error:
        safe_write(sys.stderr, f"error: {printable(_error_line(error))}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
