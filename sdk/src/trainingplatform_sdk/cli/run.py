"""`tp run`: your own training script as a tracked job.

    tp run [--name N] [--framework F] [--model M] [--dataset D] -- python my_train.py --epochs 3

1. Creates a job that no trainer service runs (`dispatch=false`; framework `custom`, model the script's name,
   dataset `custom` and the command's `--epochs` unless given) and moves it to RUNNING. Its default name, the
   RUNNING reason and what `tp run` says show the command with the values of secret-looking arguments as `***`
   (`masked_command`: secrets never reach the job's records); the command gets them as given.
2. Runs the command with, in its environment: `BACKEND_API_URL` (the backend `tp` uses), `JOB_TELEMETRY_TOKEN`
   (the job's token; the platform's other tokens, `REMOVED_ENVS`, are removed), the job id as `TP_JOB_ID` and as
   `JOB_ID` (the old guide's scripts read `--job-id` from it), `TP_RUN_JOB_ID` (see below) and `PYTHONUNBUFFERED=1`. So
   `TrainingLogger(job_id=...)`, `TrainingLogger()` and `TrainingLogger.from_env(...)` in the script report to the
   job with no other setup.
3. Echoes the command's stdout and stderr to the terminal as they come and stores each line in the job's logs:
   stdout lines at INFO, stderr lines at WARNING, but ERROR for a traceback and a line naming its level
   (`ERROR`, `INFO: ...`, Python's `logging` default format) at that level. A line redrawn with carriage returns
   (a progress bar) is stored once, as last drawn.
4. Forwards SIGINT (Ctrl-C), SIGTERM and SIGHUP to the command's process group (the command runs in a group of its
   own, so a Ctrl-C reaches it once, through `tp run`; there it reads an empty stdin instead of the terminal). A
   second one sends SIGTERM, a third SIGKILL, for a command that ignores Ctrl-C; each is said in a line on stderr.
5. Sends SIGINT to the command when the job is cancelled meanwhile (`tp cancel JOB`, the dashboard): it stays
   CANCELLED.
6. Sets the final status, unless the script set one (or the job was cancelled): COMPLETED on exit code 0;
   CANCELLED when a signal was forwarded to it and it then exited non-zero or died (a stop the user asked for);
   FAILED otherwise. The error is the exception of the last Python traceback when the last 500 stderr lines end
   with one (`ValueError: boom here second line`: every line after its indented frame lines, joined on one line),
   else the last stderr line, followed by the exit code (`(exit code 1)`, `(killed by SIGKILL)`) and cut to fit
   4 KiB; the detail is those last 20 (non-blank) stderr lines.
7. Exits with the command's exit code (128 + N when it died of signal N).
8. Delivers the last log lines and the final status for up to 30 s after the command exited while the backend does
   not answer (--delivery-timeout, TP_RUN_DELIVERY_TIMEOUT_S). What is left then stays in its spool,
   `$TP_SPOOL_DIR/<job>.tp-run` (final status included, with the job's token in `tp-run.json`, mode 0600), and
   `tp run` says the command that delivers it: `tp run --resume SPOOL_DIR` (exit code 0 once all is delivered,
   2 while the backend still does not take it). The exit code is the command's all the same. A Ctrl-C (SIGTERM,
   SIGHUP) meanwhile says what is being delivered and that another stops it; the second stops the delivery, keeps
   what is left in the spool for `tp run --resume` (and says the command) and exits 130.

One writer per log stream: a job's log records are numbered by their writer, and two writers would collide.
`tp run` writes the job's logs; a `TrainingLogger` of the same job in the script (`TP_RUN_JOB_ID`) therefore hands
its log records and status changes to `tp run` on its stderr (`telemetry/relay.py`), and streams its metrics,
epoch summaries and run information itself. A final status the script sets is applied once the script has exited
and its last output is stored, so `tp watch` and subscribers see every line before the job ends.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

from trainingplatform.telemetry.v1 import telemetry_pb2

from trainingplatform_sdk.cli.argtypes import at_least
from trainingplatform_sdk.cli.output import CliError
from trainingplatform_sdk.clients import JobsClient
from trainingplatform_sdk.errors import PlatformError, SpoolLockedError
from trainingplatform_sdk.spec.limits import MAX_ERROR_MESSAGE_BYTES, truncate_utf8
from trainingplatform_sdk.telemetry import DeliveryReport, TrainingLogger, default_spool_dir
from trainingplatform_sdk.telemetry.relay import RELAY_JOB_ENV, RELAY_MARKER, parse_relayed
from trainingplatform_sdk.telemetry.spool import Spool, read_state
from trainingplatform_sdk.telemetry.values import job_status

__all__ = ["add_run_parser", "masked_command", "resume_delivery", "run_tracked"]

#: Environment variables the command gets besides BACKEND_API_URL and JOB_TELEMETRY_TOKEN: the job id.
JOB_ID_ENVS = ("TP_JOB_ID", "JOB_ID")
#: Front-end and service tokens never reach the script: the job's own token is all it needs.
REMOVED_ENVS = (
    "INTERNAL_AUTH_TOKEN",
    "TP_AUTH_TOKEN",
    "FRONTEND_AUTH_TOKEN",
    "READ_AUTH_TOKEN",
    "TP_DASHBOARD_TOKEN",
)
#: Stderr lines kept for the error detail of a failed command.
ERROR_TAIL_LINES = 20
#: Stderr lines searched for the last Python traceback, whose exception is the error of a failed command: a deep
#: stack (torch's) is longer than the detail.
TRACEBACK_TAIL_LINES = 500
#: Seconds to wait for the output pipes to end once the command exited (a grandchild may still hold them).
DRAIN_TIMEOUT_S = 5.0
#: A line longer than this without a newline is stored as it is.
MAX_LINE_BYTES = 1 << 20
#: Seconds between two looks at the job's status (a `tp cancel` stops the command).
CANCEL_POLL_S = 2.0
#: Seconds a relayed line waits for a partial line of the command on the same terminal stream to end.
RELAYED_LINE_WAIT_S = 0.5
#: Seconds `tp run` keeps delivering once the command exited (the last lines, the final status), unless
#: --delivery-timeout or TP_RUN_DELIVERY_TIMEOUT_S says otherwise; what is left is kept for `tp run --resume`.
DEFAULT_DELIVERY_TIMEOUT_S = 30.0
DELIVERY_TIMEOUT_ENV = "TP_RUN_DELIVERY_TIMEOUT_S"
#: The file in `tp run`'s spool that `tp run --resume` reads: the job, the backend and the job's token (0600).
RESUME_FILE = "tp-run.json"
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_MARKER = RELAY_MARKER.encode()
#: What the backend refuses in a display name.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LEVEL_WORD = re.compile(r"\b(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\b")
_TRACEBACK_HEADER = "Traceback (most recent call last):"
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b(:|$)")
_TERMINAL = frozenset(job_status(name) for name in ("completed", "failed", "cancelled"))
_LEVEL_NAMES = {1: "debug", 2: "info", 3: "warning", 4: "error", 5: "critical"}


def add_run_parser(commands: Any) -> argparse.ArgumentParser:
    """Adds `tp run` to the subcommands of `tp` and returns its parser (the caller sets its handler)."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "run",
        help="run your own training script as a tracked job: tp run [--name N] -- python my_train.py ...",
        description="Creates a job (no trainer service runs it), runs COMMAND with BACKEND_API_URL, "
        "JOB_TELEMETRY_TOKEN, TP_JOB_ID and JOB_ID set, stores its output as the job's logs, forwards Ctrl-C "
        "and SIGTERM to it, sets COMPLETED, FAILED or CANCELLED from its exit unless it set a final status, and "
        "exits with its exit code. From a terminal the command reads an empty stdin: input(), breakpoint() and "
        "pdb end with EOFError (it runs in a process group of its own, so that Ctrl-C reaches it once, through tp "
        "run, and a background group that reads the terminal is stopped); give it input with `< input.txt` or a "
        "pipe, or run it without tp run to debug it.",
    )
    parser.add_argument(
        "--name",
        help="the job's display name (default: the command, with the values of secret-looking arguments, such as "
        "--api-key X, --password=X, AWS_SECRET_ACCESS_KEY=X and the password in user:password@ of a URL, as ***; "
        "the command itself gets them as given)",
    )
    parser.add_argument("--framework", default="custom", help="the job's framework label (default: custom)")
    parser.add_argument("--model", help="the job's model label (default: the script's file name)")
    parser.add_argument("--dataset", default="custom", help="the job's dataset label (default: custom)")
    parser.add_argument(
        "--epochs",
        type=at_least(1),
        help="the job's number of epochs, for progress displays (default: the command's --epochs, else 1)",
    )
    parser.add_argument(
        "--delivery-timeout",
        type=float,
        metavar="SECONDS",
        help="how long to keep delivering the last log lines and the final status once the command exited, while "
        f"the backend does not answer; what is left then is kept for `tp run --resume` (default: "
        f"${DELIVERY_TIMEOUT_ENV}, else {DEFAULT_DELIVERY_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--resume",
        metavar="SPOOL_DIR",
        help="deliver what an earlier `tp run` kept in SPOOL_DIR (it says so, with this command) and exit",
    )
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...", help="the command to run, after `--`"
    )
    return parser


def _script_name(command: Sequence[str]) -> str:
    for part in command[1:]:
        if part.endswith(".py"):
            return Path(part).name
    if len(command) > 2 and command[1] == "-m":
        return command[2]
    return Path(command[0]).name


#: The word parts of an argument's name that make its value a secret (`--api-key`, `AWS_SECRET_ACCESS_KEY=`); a part
#: starting with `auth` (`--auth-header`, `--authorization`) does too, but `author` (`--author`, `--authors`) not.
_SECRET_PARTS = frozenset(
    {
        *("token", "tokens", "secret", "secrets", "password", "passwords", "passwd", "key", "keys"),
        *("credential", "credentials", "apikey", "accesstoken"),
    }
)
_NAME_PARTS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_FLAG = re.compile(r"(--?([A-Za-z][\w.-]*))(?:(=)(.*))?", re.DOTALL)
_ASSIGNMENT = re.compile(r"([A-Za-z_][\w.]*=)(.*)", re.DOTALL)
_URL_PASSWORD = re.compile(r"([A-Za-z][\w+.-]*://[^\s/@:]*:)([^\s/@]+)(?=@)")
#: What a secret value is shown as.
MASK = "***"


#: Word parts that start with `auth` but name a person, not a credential.
_AUTHOR_PARTS = frozenset({"author", "authors", "authored", "authoring", "authorship"})


def _secret_name(name: str) -> bool:
    parts = [part.lower() for part in _NAME_PARTS.findall(name)]
    return any(part in _SECRET_PARTS or (part.startswith("auth") and part not in _AUTHOR_PARTS) for part in parts)


def _masked_word(word: str, secret: bool) -> tuple[list[tuple[str, bool]], bool]:
    """One word of a command as pieces (text, whether it is a secret value), and whether the next word is the value
    of a secret flag. `secret`: this word is (the value of a secret flag before it)."""
    if secret and word and not word.startswith("-"):
        return [(word, True)], False
    flag = _FLAG.fullmatch(word)
    if flag and _secret_name(flag.group(2)):
        if flag.group(3) is None:
            return [(word, False)], True
        return [(flag.group(1) + "=", False), (flag.group(4), True)] if flag.group(4) else [(word, False)], False
    assignment = None if flag else _ASSIGNMENT.fullmatch(word)
    if assignment and assignment.group(2) and _secret_name(assignment.group(1)):
        return [(assignment.group(1), False), (assignment.group(2), True)], False
    pieces: list[tuple[str, bool]] = []
    start = 0
    for found in _URL_PASSWORD.finditer(word):  # scheme://user:password@host
        pieces += [(word[start : found.end(1)], False), (found.group(2), True)]
        start = found.end()
    return [*pieces, (word[start:], False)], False


def masked_command(command: Sequence[str]) -> str:
    """The command as shell text (`shlex.join`) with the values of secret-looking arguments as `***`: of a flag
    whose name has a word part token, secret, password, passwd, key, credential(s) or auth... but not author...
    (`--api-key X`, `--api_key=X`, `--authorization X`; any case), of a `NAME=value` word whose NAME has one
    (`AWS_SECRET_ACCESS_KEY=x`), and the password of a URL (`scheme://user:***@host`); the same inside a word that
    is a script (`sh -c '... --token X'`). For what `tp run` stores and says: the command runs as given."""
    words: list[str] = []
    secret = False
    for word in command:
        if any(character.isspace() for character in word):  # a script (`sh -c`, `python -c`): its words
            parts = re.split(r"(\s+)", word)
            inner = False
            for index in range(0, len(parts), 2):
                if parts[index]:
                    pieces, inner = _masked_word(parts[index], inner)
                    parts[index] = "".join(MASK if hidden else text for text, hidden in pieces)
            words.append(shlex.quote("".join(parts)))
            secret = False
            continue
        pieces, secret = _masked_word(word, secret)
        words.append("".join(MASK if hidden else shlex.quote(text) for text, hidden in pieces if text))
    return " ".join(words)


def _display_name(name: str | None, command: Sequence[str]) -> str:
    """The job's display name: `--name`, else the command with its secret-looking values as `***`
    (`masked_command`) and its control characters (a line break in a `sh -c` script) as spaces, which the backend
    refuses in a name.

    Raises:
        CliError: `--name` holds a control character.
    """
    if name:
        found = _CONTROL.search(name)
        if found:
            raise CliError(f"--name must not hold control characters; it holds {found.group()!r}")
        return name
    return _CONTROL.sub(" ", masked_command(command))[:200]


def _epochs_of(command: Sequence[str]) -> int:
    """The value of an `--epochs N` or `--epochs=N` in the command, else 1."""
    for index, part in enumerate(command):
        value = None
        if part == "--epochs" and index + 1 < len(command):
            value = command[index + 1]
        elif part.startswith("--epochs="):
            value = part.split("=", 1)[1]
        if value is not None and value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def _level_of(text: str, stream: str, in_traceback: bool) -> str:
    if stream == "stderr" and (in_traceback or text.startswith("Traceback (most recent call last)")):
        return "ERROR"
    if stream == "stderr" and _EXCEPTION_LINE.match(text):
        return "ERROR"
    found = _LEVEL_WORD.search(text[:60])
    if found:
        return {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(found.group(1), found.group(1))
    return "INFO" if stream == "stdout" else "WARNING"


class _Echo:
    """One terminal stream (stdout or stderr) that the command's output and the relayed lines are echoed to, by one
    writer at a time: a relayed line waits for a partial line of the command (print() writes its newline apart)
    to end, so that the two are never merged on one line."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._bytes: Any = getattr(stream, "buffer", None)
        self._ended = threading.Condition()
        #: Whether the last bytes echoed from the command ended without a newline.
        self._partial = False
        #: Whether a relayed line waited in vain for the partial line to end (it will not soon: a progress bar).
        self._stuck = False

    def command(self, data: bytes) -> None:
        """Echoes bytes of the command's own output."""
        if not data:
            return
        with self._ended:
            self._write(data)
            self._partial = not data.endswith(b"\n")
            if not self._partial:
                self._stuck = False
                self._ended.notify_all()

    def line(self, data: bytes, wait: bool) -> None:
        """Echoes a whole line of `tp run`'s own (a relayed record) at a line start: after the command's partial
        line ends (`wait`: up to RELAYED_LINE_WAIT_S, once per partial line), else on a line of its own."""
        with self._ended:
            if self._partial and wait and not self._stuck:
                self._stuck = not self._ended.wait_for(lambda: not self._partial, RELAYED_LINE_WAIT_S)
            self._write(b"\n" + data if self._partial else data)
            self._partial = False  # at a line start now: the command's partial line goes on below

    def _write(self, data: bytes) -> None:
        try:
            if self._bytes is not None:
                self._bytes.write(data)
                self._bytes.flush()
            else:
                self._stream.write(data.decode("utf-8", "replace"))
                self._stream.flush()
        except (OSError, ValueError):
            pass  # the terminal or pipe is gone: the lines are still stored


class _Run:
    """One command under `tp run`: its output pumps, the signals forwarded to it, the statuses it relayed."""

    def __init__(self, logger: TrainingLogger) -> None:
        self.logger = logger
        self.child: subprocess.Popen[bytes] | None = None
        #: The first signal forwarded (Ctrl-C, SIGTERM, SIGHUP), and how many came.
        self.forwarded: int | None = None
        self.signals = 0
        self.final_status: dict[str, Any] | None = None
        self.stderr_tail: deque[str] = deque(maxlen=TRACEBACK_TAIL_LINES)
        self._lock = threading.Lock()
        #: Once the command exited: the spool `tp run --resume` delivers, said by the first Ctrl-C of the delivery.
        self.delivering: Path | None = None
        #: Ctrl-C (SIGTERM, SIGHUP) during the final delivery: the first says it, the second stops it.
        self.delivery_signals = 0
        #: Whether the delivery was stopped by a signal (what is left stays in the spool; exit 130).
        self.delivery_stopped = False
        #: Whether the main thread waits on the backend now, so that the second signal may interrupt the wait.
        self.interruptible = False
        self.stdout = _Echo(sys.stdout)
        self.stderr = _Echo(sys.stderr)

    # --- signals ---------------------------------------------------------------------------------------------

    def forward(self, signum: int, _frame: FrameType | None = None) -> None:
        """A signal handler: passes the first signal on to the command's process group, sends SIGTERM on the
        second and SIGKILL from the third on (a command that ignores Ctrl-C still stops), each said on stderr.
        Once the command exited, see `_during_delivery`."""
        if self.delivering is not None:
            self._during_delivery(signum)
            return
        self.signals += 1
        if self.forwarded is None:
            self.forwarded = signum
        child = self.child
        if child is None or child.returncode is not None:
            return
        name = signal.Signals(signum).name
        if self.signals == 1:
            _say(f"{name} forwarded to the command; again sends it SIGTERM")
            self.send(signum)
        elif self.signals == 2:
            _say(f"{name} again: sending SIGTERM to the command; once more sends SIGKILL")
            self.send(signal.SIGTERM)
        else:
            _say(f"{name} again: sending SIGKILL to the command")
            self.send(signal.SIGKILL)

    def _during_delivery(self, signum: int) -> None:
        """A signal while the last lines and the final status are delivered (the command exited): the first says
        what is delivered and that another stops it; the second stops the delivery (what is left stays in the spool,
        for `tp run --resume`); later ones change nothing."""
        self.delivery_signals += 1
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if self.delivery_signals == 1:
            what = "the last lines and the final status"
            with contextlib.suppress(Exception):  # the counters are ints read without a lock: never fails in fact
                stats = self.logger.stats
                lines = stats.pending_logs
                what = f"{lines} log line(s) and the final status" if lines else "the final status"
            _say(
                f"{name}: delivering {what} to the backend...; {name} again to stop and keep them for "
                f"`tp run --resume {self.delivering}`"
            )
            return
        if self.delivery_stopped:
            return
        self.delivery_stopped = True
        _say(f"{name} again: stopping the delivery; what is left stays in {self.delivering}")
        if self.interruptible:
            self.interruptible = False
            raise KeyboardInterrupt

    def send(self, signum: int) -> None:
        """Sends a signal to the command's process group, if it still runs."""
        child = self.child
        if child is None or child.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signum)

    # --- output ----------------------------------------------------------------------------------------------

    def pump(self, source: IO[bytes], echo: _Echo, stream: str) -> None:
        """Reads one output pipe to its end: echoes what comes at once, byte for byte (less the relayed lines,
        echoed as `[level] message`), and stores each line."""
        fd = source.fileno()
        pending = b""
        echoed = 0  # bytes of `pending` already echoed (a partial line, such as a progress bar)
        in_traceback = False
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            searched = len(pending)
            pending += chunk
            while True:
                newline = pending.find(b"\n", searched)
                if newline >= 0:
                    line, pending, ended = pending[:newline], pending[newline + 1 :], True
                elif len(pending) > MAX_LINE_BYTES:  # stored in pieces, echoed as it is
                    line, pending, ended = pending, b"", False
                else:
                    break
                in_traceback = self._line(line, echoed, ended, echo, stream, in_traceback)
                echoed = searched = 0
            # The partial line so far, up to what may start a relayed line (it is echoed once the line is whole).
            marker = pending.find(b"\x1e", echoed)
            upto = len(pending) if marker < 0 else marker
            if upto > echoed:
                echo.command(pending[echoed:upto])
                echoed = upto
        if pending:
            self._line(pending, echoed, False, echo, stream, in_traceback)

    def _line(self, raw: bytes, echoed: int, ended: bool, echo: _Echo, stream: str, in_traceback: bool) -> bool:
        """Echoes the rest of one line (`ended`: with the newline that ended it) and stores it; returns whether a
        traceback goes on."""
        if _MARKER in raw:
            relayed = parse_relayed(raw.decode("utf-8", "replace"))
            if relayed is not None:
                before, record = relayed
                # The command's bytes less the relayed line: what came before the marker stays on its line.
                echo.command(raw[echoed : raw.find(_MARKER)])
                if before.strip():
                    in_traceback = self._store(before, stream, in_traceback)
                self._relayed(record, echo)
                return in_traceback
        echo.command(raw[echoed:] + b"\n" if ended else raw[echoed:])
        text = raw.decode("utf-8", "replace").rstrip("\r")
        return self._store(text, stream, in_traceback)

    def _store(self, text: str, stream: str, in_traceback: bool) -> bool:
        """Stores one line of the command's output as a log record; returns whether a traceback goes on."""
        text = text.rsplit("\r", 1)[-1]  # a redrawn line (progress bar): its last state
        if not text.strip():
            return in_traceback
        level = _level_of(text, stream, in_traceback)
        if stream == "stderr":
            with self._lock:
                self.stderr_tail.append(text)
            if text.startswith("Traceback (most recent call last)"):
                in_traceback = True
            elif in_traceback and not text.startswith((" ", "\t")) and _EXCEPTION_LINE.match(text):
                in_traceback = False
        self.logger.log_message(text, level=level)
        return in_traceback

    def _relayed(self, record: dict[str, Any], source: _Echo) -> None:
        kind = record.get("kind")
        if kind == "log":
            level = record.get("level", 2)
            message = str(record.get("message", ""))
            epoch, step = record.get("epoch"), record.get("step")
            self.logger.log_message(
                message,
                level=level if isinstance(level, int) else 2,
                epoch=epoch if isinstance(epoch, int) else None,
                step=step if isinstance(step, int) else None,
            )
            name = _LEVEL_NAMES.get(level, "info") if isinstance(level, int) else "info"
            out = self.stdout if name in ("debug", "info") else self.stderr
            # A partial line on the stream the record came on ends only with what this thread reads next.
            out.line(f"[{name}] {message}\n".encode(), wait=out is not source)
        elif kind == "status":
            try:
                status = job_status(record.get("status", 0))
            except ValueError:
                return
            if status in _TERMINAL:
                # Applied once the command has exited and its last lines are stored.
                with self._lock:
                    if self.final_status is None:
                        self.final_status = record
                return
            self.logger.update_status(
                status, error_detail=str(record.get("error_detail") or ""), reason=str(record.get("reason") or "")
            )


def _stdin_is_a_terminal() -> bool:
    try:
        return os.isatty(sys.stdin.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def _exit_code(returncode: int) -> int:
    return returncode if returncode >= 0 else 128 - returncode


def _say(message: str) -> None:
    with contextlib.suppress(OSError, ValueError, RuntimeError):  # RuntimeError: a reentrant call from a handler
        print(f"tp run: {message}", file=sys.stderr, flush=True)


def run_tracked(args: argparse.Namespace, client: JobsClient, address: str) -> int:
    """`tp run`: runs `args.command` as a tracked job on the backend at `address`; returns the exit code."""
    command = list(args.command or [])
    if command and command[0] == "--":
        command = command[1:]
    timeout = _delivery_timeout(args)
    if args.resume:
        if command:
            raise CliError("tp run --resume SPOOL_DIR takes no command")
        return resume_delivery(Path(args.resume), address, timeout)
    if not command:
        raise CliError("tp run needs a command: tp run [--name N] -- python my_train.py ...")
    created = client.create_job(
        framework=args.framework or "custom",
        model=args.model or _script_name(command),
        dataset=args.dataset or "custom",
        epochs=args.epochs or _epochs_of(command),
        display_name=_display_name(args.name, command),
        dispatch=False,
    )
    job_id, token = created.job.job_id, created.telemetry_token
    spool = default_spool_dir(f"{job_id}.tp-run")
    logger = TrainingLogger(job_id, backend_address=address, token=token, spool_dir=spool)
    _write_resume_file(spool, job_id, address, token)
    run = _Run(logger)
    previous: dict[int, Any] = {}
    deadline: float | None = None
    outcome = ""
    code = 0
    try:
        for signum in FORWARDED_SIGNALS:
            previous[signum] = signal.signal(signum, run.forward)
        logger.update_status("running", reason=f"tp run: {masked_command(command)}"[:1000])
        _say(f"job {job_id} ({args.name or _script_name(command)}): running {masked_command(command)}")
        env = {**os.environ, "BACKEND_API_URL": address, "JOB_TELEMETRY_TOKEN": token, RELAY_JOB_ENV: job_id}
        env.update(dict.fromkeys(JOB_ID_ENVS, job_id))
        env["PYTHONUNBUFFERED"] = "1"
        for name in REMOVED_ENVS:
            env.pop(name, None)
        if run.forwarded is not None:  # stopped before the command started
            logger.update_status("cancelled", reason=f"{signal.Signals(run.forwarded).name} before the command started")
            _say(f"job {job_id}: CANCELLED before the command started")
            return 128 + run.forwarded
        try:
            run.child = subprocess.Popen(
                command,
                env=env,
                # In a process group of its own the command may not read the terminal (it would be stopped): it
                # reads an empty stdin there, and a redirected stdin as it is.
                stdin=subprocess.DEVNULL if _stdin_is_a_terminal() else None,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                process_group=0,
            )
        except OSError as error:
            message = f"cannot run {masked_command(command[:1])}: {error.strerror or error}"
            logger.log_message(message, level="ERROR")
            logger.update_status("failed", error=message)
            _say(f"{message}; job {job_id} FAILED")
            return 127
        if run.forwarded is not None:  # a signal came while the command was starting: pass it on
            run.send(run.forwarded)
        assert run.child.stdout is not None and run.child.stderr is not None
        pumps = [
            threading.Thread(target=run.pump, args=(run.child.stdout, run.stdout, "stdout"), daemon=True),
            threading.Thread(target=run.pump, args=(run.child.stderr, run.stderr, "stderr"), daemon=True),
        ]
        for pump in pumps:
            pump.start()
        exited = threading.Event()
        watcher = threading.Thread(target=_watch_cancel, args=(run, client, job_id, exited), daemon=True)
        watcher.start()
        returncode = run.child.wait()
        # From here on a Ctrl-C no longer reaches the command: the first says what is delivered, the second stops.
        run.delivering = spool
        exited.set()
        _drain(run.child.pid, pumps)
        deadline = time.monotonic() + timeout
        status = _final_status(run, client, job_id, returncode, address, token, deadline)
        outcome = f"job {job_id}: {status} (exit code {_exit_code(returncode)})"
        code = _exit_code(returncode)
    finally:
        if run.child is not None and run.child.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.child.pid, signal.SIGKILL)
            run.child.wait()
        run.delivering = spool  # a signal now stops the delivery (the handlers stay until it is over)
        left = timeout if deadline is None else max(0.0, deadline - time.monotonic())
        report = _close(run, left)
        for forwarded, handler in previous.items():
            signal.signal(forwarded, handler)
        if outcome:
            _say(outcome)
        delivered = not (report.pending_logs or report.pending_metrics or report.calls_pending)
        script_spool = default_spool_dir(job_id)
        if delivered and not script_spool.exists():
            _remove_resume_file(spool)
        else:
            what = _pending_words(report.pending_logs, spool)
            if script_spool.exists():
                what.append(f"what the script's logger left in {script_spool}")
            what_words = " and ".join(what) or "everything"
            why = (
                f"delivery stopped: {what_words} kept in {spool}"
                if run.delivery_stopped
                else f"the backend did not take {what_words} within {timeout:g} s; kept in {spool}"
            )
            _say(
                f"{why}. Nothing is lost: deliver them with: "
                + shlex.join(["tp", "--backend", address, "run", "--resume", str(spool)])
            )
    return 130 if run.delivery_stopped else code


def _close(run: _Run, timeout: float) -> DeliveryReport:
    """Closes `tp run`'s logger: delivers for up to `timeout` seconds (none once a second Ctrl-C stopped the
    delivery, which also cuts a delivery under way short); what is left stays in its spool."""
    if not run.delivery_stopped:
        run.interruptible = True
        try:
            return run.logger.close(timeout)
        except KeyboardInterrupt:  # the second Ctrl-C: the sender stops now, spooling what is left
            pass
        finally:
            run.interruptible = False
    return run.logger.close(0)


def _watch_cancel(run: _Run, client: JobsClient, job_id: str, exited: threading.Event) -> None:
    """`tp cancel JOB` (or the dashboard) while the command runs: the command gets SIGINT, as from a Ctrl-C."""
    while not exited.wait(CANCEL_POLL_S):
        try:
            status = client.get_job(job_id).status
        except Exception:  # the backend is away for a moment: the command runs on
            continue
        if status == "CANCELLED" and not exited.is_set():
            _say(f"job {job_id} was cancelled; stopping the command (SIGINT)")
            child = run.child
            if child is not None and child.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGINT)
            return


def _drain(group: int, pumps: list[threading.Thread]) -> None:
    """Waits for the output pipes to end; processes the command left behind that hold them (its process group)
    get SIGTERM, then SIGKILL, so nothing it started outlives `tp run`."""
    for signum in (None, signal.SIGTERM, signal.SIGKILL):
        if signum is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signum)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        for pump in pumps:
            pump.join(max(0.0, deadline - time.monotonic()))
        if not any(pump.is_alive() for pump in pumps):
            return


def _final_status(
    run: _Run, client: JobsClient, job_id: str, returncode: int, address: str, token: str, deadline: float
) -> str:
    """Sets the job's final status (the one the script asked for, else one from the exit) and returns it; it is
    delivered after the last lines (and after what the script's logger left undelivered in its spool), or kept in
    the spool when the backend does not answer by `deadline`."""
    logger = run.logger
    answers, job = False, None
    if not run.delivery_stopped:
        run.interruptible = True  # a second Ctrl-C stops the waiting: the status is then kept in the spool
        try:
            flushed = logger.flush(max(0.0, deadline - time.monotonic()))
            # The backend answered everything sent so far; a call it refused for good makes flush() False too.
            stats = logger.stats
            answers = flushed or (
                stats.error is None and stats.pending_metrics == stats.pending_logs == stats.calls_pending == 0
            )
            script_spool = default_spool_dir(job_id)
            if answers and script_spool.exists():  # the script's logger could not deliver everything: try again
                _deliver_spool(job_id, address, token, script_spool, max(0.0, deadline - time.monotonic()))
            if answers and run.final_status is None:
                with contextlib.suppress(PlatformError):
                    job = client.get_job(job_id)
        except KeyboardInterrupt:
            answers, job = False, None
        finally:
            run.interruptible = False
    relayed = run.final_status
    if relayed is not None:
        status = job_status(relayed.get("status", 0))
        logger.update_status(
            status,
            error=str(relayed.get("error") or ""),
            error_detail=str(relayed.get("error_detail") or ""),
            reason=str(relayed.get("reason") or "set by the script"),
        )
        return _TERMINAL_NAMES[status]
    # Ended some other way (`tp cancel`, another client): kept; repeating it changes nothing. Unknown while the
    # backend does not answer: the status from the exit is kept in the spool, and the backend keeps an ended job's.
    if job is not None and job.finished:
        logger.update_status(job.status.lower(), reason="ended while tp run ran the command")
        return job.status
    code = _exit_code(returncode)
    if returncode == 0:
        logger.update_status("completed", reason="the command exited with code 0")
        return "COMPLETED"
    if run.forwarded is not None:
        name = signal.Signals(run.forwarded).name
        logger.update_status("cancelled", reason=f"{name} forwarded by tp run; the command exited with code {code}")
        return "CANCELLED"
    with run._lock:
        lines = list(run.stderr_tail)
    tail = lines[-ERROR_TAIL_LINES:]
    how = f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exit code {code}"
    # Cut to leave room for the exit code: the logger would otherwise cut it off a long message.
    summary = truncate_utf8(_failure_summary(lines), MAX_ERROR_MESSAGE_BYTES - len(f" ({how})".encode()))
    logger.update_status(
        "failed",
        error=f"{summary} ({how})" if summary else f"the command failed ({how})",
        error_detail="\n".join(tail),
        reason=f"the command exited: {how}",
    )
    return "FAILED"


def _failure_summary(tail: Sequence[str]) -> str:
    """The error of a failed command, from its last stderr lines: when they end with a Python traceback, the
    exception of the last `Traceback (most recent call last):` block (what follows its indented frame lines, every
    line of the exception's message) joined on one line; else the last line."""
    headers = [index for index, line in enumerate(tail) if line.startswith(_TRACEBACK_HEADER)]
    if headers:
        after = tail[headers[-1] + 1 :]
        frames = 0
        while frames < len(after) and after[frames].startswith((" ", "\t")):
            frames += 1
        if frames and frames < len(after):
            return " ".join(line.strip() for line in after[frames:])
    return tail[-1].strip() if tail else ""


_TERMINAL_NAMES = {
    job_status("completed"): "COMPLETED",
    job_status("failed"): "FAILED",
    job_status("cancelled"): "CANCELLED",
}


def _delivery_timeout(args: argparse.Namespace) -> float:
    value: object = getattr(args, "delivery_timeout", None)
    source = "--delivery-timeout"
    if value is None:
        value = os.environ.get(DELIVERY_TIMEOUT_ENV, "").strip() or DEFAULT_DELIVERY_TIMEOUT_S
        source = DELIVERY_TIMEOUT_ENV
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except ValueError:
        raise CliError(f"{source} must be a number of seconds, got {value!r}") from None
    if not 0 <= seconds <= 86400:
        raise CliError(f"{source} must be from 0 to 86400 seconds, got {value!r}")
    return seconds


def _write_resume_file(spool: Path, job_id: str, address: str, token: str) -> None:
    """Writes what `tp run --resume` needs to deliver the spool later (the job's token: mode 0600)."""
    path = spool / RESUME_FILE
    data = json.dumps({"job_id": job_id, "backend": address, "token": token}).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _remove_resume_file(spool: Path) -> None:
    """Removes the resume file and the spool directory, once the logger removed the spool's own files."""
    with contextlib.suppress(OSError):
        if read_state(spool):  # the logger kept the spool: something in it is pending
            return
        (spool / RESUME_FILE).unlink(missing_ok=True)
        spool.rmdir()


def _kept_status(spool: Path) -> str | None:
    """The final status kept in a spool's pending calls, if any (COMPLETED, FAILED, CANCELLED)."""
    for call in read_state(spool).get("calls", []):
        if not isinstance(call, dict) or call.get("method") != "UpdateStatus":
            continue
        try:
            request = telemetry_pb2.UpdateStatusRequest.FromString(base64.b64decode(call["request"]))
        except Exception:
            continue
        if request.status in _TERMINAL_NAMES:
            return _TERMINAL_NAMES[request.status]
    return None


def _pending_words(pending_logs: int, spool: Path) -> list[str]:
    what = [f"{pending_logs} log line(s)"] if pending_logs else []
    status = _kept_status(spool)
    if status is not None:
        what.append(f"the final status {status}")
    return what


def _deliver_spool(job_id: str, address: str, token: str, directory: Path, timeout: float) -> tuple[bool, int]:
    """Replays a spool of the job (a logger of it delivers what an earlier one left) for up to `timeout` seconds;
    removes it once everything is delivered. Returns whether it was, and how many of its calls (a status) the backend
    refused for good."""
    try:
        logger = TrainingLogger(job_id, backend_address=address, token=token, spool_dir=directory)
    except (SpoolLockedError, ValueError, OSError) as error:
        _say(f"cannot deliver {directory}: {error}")
        return False, 0
    report = logger.close(timeout)
    if report.pending_logs or report.pending_metrics or report.calls_pending or report.error is not None:
        return False, report.calls_failed
    with contextlib.suppress(SpoolLockedError, ValueError, OSError):
        Spool(directory, job_id, logger.settings.spool_max_bytes, logger.settings.spool_segment_bytes).remove()
    return True, report.calls_failed


def _status_now(job_id: str, address: str, token: str) -> str:
    """The job's status as the backend has it (read with the job's token), or why it could not be read."""
    try:
        with JobsClient(address, token) as client:
            job = client.get_job(job_id)
    except PlatformError as error:
        return f"unknown ({error})"
    reason = f": {job.error_message}" if job.error_message else ""
    return f"{job.status}{reason}"


def resume_delivery(spool: Path, address: str, timeout: float) -> int:
    """`tp run --resume SPOOL_DIR`: delivers what an earlier `tp run` kept (its log lines, the final status, and
    what the script's logger left next to it); 0 once everything is delivered, 2 when something is left."""
    try:
        saved = json.loads((spool / RESUME_FILE).read_text())
        job_id, token = str(saved["job_id"]), str(saved["token"])
    except FileNotFoundError:
        raise CliError(f"nothing to deliver in {spool}: no {RESUME_FILE} there (already delivered?)") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CliError(f"cannot read {spool / RESUME_FILE}: {error}") from None
    deadline = time.monotonic() + timeout
    script_spool = spool.parent / default_spool_dir(job_id).name
    ok, refused = True, 0
    if script_spool.exists():  # the script's metrics go before the final status
        ok, _ = _deliver_spool(job_id, address, token, script_spool, timeout)
    status = _kept_status(spool)
    if ok:
        ok, refused = _deliver_spool(job_id, address, token, spool, max(0.0, deadline - time.monotonic()))
    if not ok:
        _say(f"job {job_id}: the backend at {address} did not take everything yet; still kept in {spool}: run again")
        return 2
    _remove_resume_file(spool)
    if status is None:
        _say(
            f"job {job_id}: delivered; no final status was kept (tp run stopped before the command ended): the job "
            f"stays as it is; `tp cancel {job_id}` ends it"
        )
    elif refused:
        # The job ended meanwhile (cancelled, or failed because nothing vouched for it: TP_REPORTER_TIMEOUT_S).
        _say(
            f"job {job_id}: the lines were delivered, but the backend refused the final status {status}: the job had "
            f"already ended {_status_now(job_id, address, token)}"
        )
    else:
        _say(f"job {job_id}: everything delivered; {status}")
    return 0
