"""What `tp` prints and draws: a job followed live, its summary, and PNG plots of its metrics."""

from __future__ import annotations

import errno
import heapq
import itertools
import math
import os
import queue
import re
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, TextIO

from trainingplatform_sdk.clients import Cursor, EpochSummary, Job, JobsClient, LogLine, MetricPoint, TelemetryEvent
from trainingplatform_sdk.clients.jobs import StatusChange
from trainingplatform_sdk.errors import PlatformError, UnavailableError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


class CliError(Exception):
    """An error shown as one line."""


def safe_write(out: TextIO, text: str) -> bool:
    """Writes and flushes; False (and nothing raised) when the reader went away (a closed pipe, a closed terminal)."""
    try:
        out.write(text)
        out.flush()
    except (BrokenPipeError, ValueError, OSError):
        return False
    return True


_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""What a terminal must never get from text it did not write: the C0 control characters but the tab (ESC starts
the sequences that set the title or clear the screen; "\\r" and "\\n" start a line that passes for one of `tp`'s
own), DEL, the C1 controls (U+009B is a CSI of its own), the line and paragraph separators and the bidi embeddings,
overrides and isolates (which reorder what follows them, in a table the rest of the row)."""

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str, continuation: str | None = None) -> str:
    """`text` as `tp` prints anything that came from the backend (log records, error messages, display names,
    reasons, metric keys: whatever a client of the backend could set): each character in `_UNSAFE` escaped as
    Python writes it (`\\x1b`, `\\r`, `\\n`, `\\x9b`, `\\u202e`), so it is visible and the terminal does nothing
    with it. With `continuation` (the blanks as wide as the prefix printed before the text), line breaks stay,
    each line after the first starting with `continuation`, so that no line of a multi-line record (a traceback)
    can pass for a line of its own (a "\\r\\n" is a line break too; trailing ones are dropped). Tabs stay."""
    if continuation is not None:
        text = text.replace("\r\n", "\n").rstrip("\n")

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if char == "\n" and continuation is not None:
            return "\n" + continuation
        if char in _NAMED:
            return _NAMED[char]
        return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"

    return _UNSAFE.sub(escape, text)


def _char_width(char: str) -> int:
    """The terminal columns one character takes: 0 for a combining mark, a format character (zero-width space,
    joiner) or a variation selector, 2 for an East Asian wide or fullwidth one (CJK, most emoji), else 1."""
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf") or "\ufe00" <= char <= "\ufe0f":
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def display_width(text: str) -> int:
    """The terminal columns `text` takes (`_char_width` of each character)."""
    return sum(_char_width(char) for char in text)


def cell(text: str, width: int, out: TextIO = sys.stdout) -> str:
    """`text` in a table column `width` terminal columns wide (`display_width`: a CJK character or an emoji takes
    two, a combining mark none): `printable` (a tab escaped too), padded, or cut to end in '…' so that the cut
    shows ('~' where `out` cannot encode '…'). A cut never parts a combining mark from its base character. No bidi
    override reaches the row: it is escaped."""
    text = printable(text).replace("\t", "\\t")
    used = display_width(text)
    if used > width:
        try:
            mark = "…" if "…".encode(out.encoding or "ascii") else "~"
        except (LookupError, UnicodeEncodeError, AttributeError):
            mark = "~"
        kept, used = [], 0
        for char in text:
            columns = _char_width(char)
            if columns and used + columns > width - 1:
                break  # the next base character does not fit; its marks go with it
            kept.append(char)
            used += columns
        text, used = "".join(kept) + mark, used + 1
    return text + " " * (width - used)


def clock(wall_time: float) -> str:
    """A wall time as the local HH:MM:SS, or `--:--:--` for one no clock shows (not finite, or past what the
    platform's time functions take: data stored before the backend checked the range)."""
    try:
        return time.strftime("%H:%M:%S", time.localtime(wall_time))
    except (OverflowError, OSError, ValueError):
        return "--:--:--"


def fmt_value(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.4g}"


# --- following a job ----------------------------------------------------------------------------------------


_EPOCH_LOG = re.compile(r"^Epoch (\d+)/\d+: ")
_FINAL_STATUSES = ("COMPLETED", "FAILED", "CANCELLED")

EPOCH_LINE_WAIT_S = 2.0
"""How long the trainer's own "Epoch N/M: ..." line waits for the epoch's summary, which says the same and is
printed instead when it comes. The trainer logs the line right after the summary, but the summary is a call made
once the epoch's points are committed, so the line can reach the view first. The log lines after it wait with it,
keeping their order; a status ends the wait (the trainer's summary call comes before its status call). The wait ends
on time whether or not another event comes: a script that reports no summaries (a `tp run` script) and is quiet
for the rest of its epoch has its line shown after this wait, not with its next event."""


class Follower:
    """Renders a job's live telemetry: a progress bar over epochs and steps, latest metrics, log lines."""

    SHOWN = ("train/loss", "train/batch_loss", "val/loss", "val/accuracy", "train/box_loss", "metrics/mAP50")

    def __init__(self, job: Job, out: TextIO = sys.stdout, *, show_logs: bool = True) -> None:
        self.job = job
        self.out = out
        self.tty = out.isatty()
        self.show_logs = show_logs
        self.epoch = 0
        self.step = 0
        self.done_epochs = 0
        """Epochs finished: the highest epoch summary + 1, all of them once the job COMPLETED."""
        self.printed_epochs: set[int] = set()
        self.last_log_sequence = 0
        self.latest: dict[str, float] = {}
        self.final_status = job.status
        self._last_line = 0.0
        # The trainer's "Epoch N/M" line waiting for epoch N-1's summary: (epoch, when it came, the line), and the
        # log lines that came after it, waiting with it.
        self._held: tuple[int, float, str] | None = None
        self._waiting: list[LogLine] = []
        # The final status (and its error), printed last by `finish`.
        self._final_lines: list[str] = []
        # One write at a time: `follow` reads the job's events on a thread of its own.
        self._lock = threading.Lock()

    def feed(self, event: TelemetryEvent) -> None:
        """Takes one subscription event."""
        if self._held is not None and (event.kind in ("status", "lagged") or self.release_in() == 0.0):
            self._release()  # the summary is late, or will not come: the trainer's line it is
        if event.kind == "metrics":
            for point in event.metrics:
                self.latest[point.key] = point.value
                if point.epoch is not None:
                    self.epoch = max(self.epoch, point.epoch)
                if point.step is not None:
                    self.step = max(self.step, point.step)
            self._progress()
        elif event.kind == "logs":
            for line in event.logs:
                if line.sequence and line.sequence <= self.last_log_sequence:
                    continue
                self.last_log_sequence = max(self.last_log_sequence, line.sequence)
                self._log_line(line)
        elif event.kind == "epoch_summary" and event.epoch_summary is not None:
            summary = event.epoch_summary
            self.done_epochs = max(self.done_epochs, summary.epoch + 1)
            answered = self._held is not None and self._held[0] == summary.epoch
            if answered:
                self._held = None  # the summary says it, as one line
            if summary.epoch not in self.printed_epochs:  # else a replay, or the trainer's line said it: once
                self.printed_epochs.add(summary.epoch)
                self.say(epoch_line(summary, self.job.epochs))
            if answered:
                self._replay_waiting()
        elif event.kind == "status" and event.status is not None:
            self.final_status = event.status.to_status
            if self.final_status == "COMPLETED":
                self.done_epochs = max(self.job.epochs, 1)
            reason = f" ({printable(event.status.reason)})" if event.status.reason else ""
            lines = [f"status {event.status.to_status}{reason}"]
            if event.status.error_message:
                lines.append(f"error: {printable(event.status.error_message, ' ' * 7)}")
            if self.final_status in _FINAL_STATUSES:
                # Printed by `finish`, after everything that still comes (late logs, the last metrics) and the
                # final progress bar: the final status is the view's last word.
                self._final_lines = lines
            else:
                for text in lines:
                    self.say(text)
        elif event.kind == "lagged":
            self.say("(fell behind the live stream; catching up from the database)")

    def release_in(self) -> float | None:
        """Seconds until the held "Epoch N/M" line is printed (0 when it is due), None when no line is held."""
        if self._held is None:
            return None
        return max(0.0, self._held[1] + EPOCH_LINE_WAIT_S - time.monotonic())

    def release_due(self) -> None:
        """Prints the held "Epoch N/M" line, and the lines after it, once it waited EPOCH_LINE_WAIT_S for its epoch's
        summary: called by `follow` when no event came meanwhile."""
        if self.release_in() == 0.0:
            self._release()

    def redraw(self) -> None:
        """Draws the progress bar again on a terminal, where something else (an outage notice on stderr) cleared
        its line."""
        if self.tty:
            self._write("\r\033[K" + self._bar())

    def _bar(self) -> str:
        total = max(self.job.epochs, 1)
        done = min(max(self.done_epochs, self.epoch), total)
        width = 24
        filled = int(width * done / total)
        shown = " ".join(f"{k} {fmt_value(self.latest[k])}" for k in self.SHOWN if k in self.latest)
        current = total if done >= total else min(max(self.epoch, self.done_epochs) + 1, total)
        return (
            f"epoch {current}/{total} [{'#' * filled}{'.' * (width - filled)}] {100 * done // total:3d}% "
            f"step {self.step} {shown}"
        ).rstrip()

    def _progress(self) -> None:
        if self.tty:
            self._write("\r\033[K" + self._bar())
        elif time.monotonic() - self._last_line > 2.0:  # a log file gets a line every 2 s, not a flood
            self._last_line = time.monotonic()
            self._write(self._bar() + "\n")

    def say(self, text: str) -> None:
        if self.tty:
            self._write("\r\033[K" + text + "\n" + self._bar())
        else:
            self._write(text + "\n")

    def _write(self, text: str) -> None:
        """Writes to the output; a reader that went away (`tp watch JOB | head -1`) ends the command as it ends the
        others (BrokenPipeError: quietly, 141) rather than following the job to its end for nobody."""
        with self._lock:
            written = safe_write(self.out, text)
        if not written:
            raise BrokenPipeError(errno.EPIPE, "the output was closed")

    def _log_line(self, line: LogLine) -> None:
        if self._held is not None:
            self._waiting.append(line)  # it keeps its place after the held line
            return
        text = log_text(line)
        epoch = _EPOCH_LOG.match(line.message)
        if epoch:  # the trainer's own "Epoch 2/3: ..." line says what the epoch summary says
            if int(epoch.group(1)) - 1 in self.printed_epochs:
                return
            if self.show_logs:
                self._held = (int(epoch.group(1)) - 1, time.monotonic(), text)
                return
            self.printed_epochs.add(int(epoch.group(1)) - 1)
        if self.show_logs:
            self.say(text)

    def _release(self) -> None:
        """Prints the held line (its summary did not come in time), then the lines that waited with it."""
        while self._held is not None:
            epoch, _, text = self._held
            self._held = None
            if epoch not in self.printed_epochs:
                self.printed_epochs.add(epoch)
                self.say(text)
            self._replay_waiting()  # may hold another epoch's line: released too

    def _replay_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        for index, line in enumerate(waiting):
            self._log_line(line)
            if self._held is not None:  # another epoch's line: the rest wait with it, in order
                self._waiting = waiting[index + 1 :] + self._waiting
                return

    def finish(self) -> None:
        """Ends the progress: the bar as it ends (full when the job completed), then the final status, if one came:
        nothing of the progress follows it."""
        self._release()
        self._write(("\r\033[K" if self.tty else "") + self._bar() + "\n")
        for line in self._final_lines:
            self._write(line + "\n")
        self._final_lines = []


def log_text(line: LogLine, prefix: str = "") -> str:
    """A log record as `tp` prints it: `<prefix>[info   ] message`, its message `printable` with any continuation
    lines indented under the message."""
    head = f"{prefix}[{line.level.lower():7}] "
    return head + printable(line.message, " " * len(head))


def epoch_line(summary: EpochSummary, epochs: int) -> str:
    """One epoch summary as a line: `epoch 2/3 done in 4.1s: train/loss 0.41, val/accuracy 0.93`."""
    shown = ", ".join(f"{printable(k)} {fmt_value(v)}" for k, v in sorted(summary.metrics.items()) if "/" in k)
    return f"epoch {summary.epoch + 1}/{epochs} done in {summary.duration_seconds:.1f}s: {shown}"


RECONNECT_S = 60.0
"""How long `tp watch`, `tp train` and `tp logs -f` keep resuming a subscription to a backend that does not answer
(counted from the last event, or the last time it answered) before they give up (exit 2)."""


class OutageNotice:
    """A subscription's `on_reconnect` for `tp`: says on stderr, once per outage, that the backend does not answer
    and that the command keeps retrying, and once it answers again, that it is back. The job's output (stdout) gets
    neither. On a terminal a notice first clears the line it starts on (a progress bar drawn in place), and
    `redraw`, when given, draws that bar again after it."""

    def __init__(self, address: str, redraw: Callable[[], None] | None = None) -> None:
        self.address = address
        self.redraw = redraw
        self.down = False

    def __call__(self, error: PlatformError | None) -> None:
        if error is None:
            if self.down:
                self.down = False
                self._say(f"tp: the backend at {self.address} is back; following again")
        elif isinstance(error, UnavailableError) and not self.down:
            self.down = True
            self._say(
                f"tp: the backend at {self.address} is unreachable; retrying for up to "
                f"{RECONNECT_S:.0f}s without an answer (Ctrl-C stops following, not the job)"
            )

    def _say(self, text: str) -> None:
        try:
            terminal = sys.stderr.isatty()
        except (ValueError, OSError, AttributeError):  # closed, or none
            terminal = False
        safe_write(sys.stderr, ("\r\033[K" if terminal else "") + text + "\n")
        if self.redraw is not None:
            self.redraw()


LATE_RESULTS_S = 15.0
"""How long `follow` waits, after a job was cancelled or failed, for its trainer's last logs and checkpoint."""


def _status_time(change: StatusChange) -> float:
    return change.time.timestamp() if change.time is not None else -math.inf


def timeline(client: JobsClient, job: Job, notice: OutageNotice | None = None) -> Iterator[TelemetryEvent]:
    """The job's telemetry as `follow` shows it: what it holds already (`job` as read before: its status changes,
    and its metric points and log records up to its cursor) in the order it happened, then what comes live.

    A subscription replays a job's status changes first, then its metric points, then its log records: a view of
    that story would say "status RUNNING" before the lines logged while the job was QUEUED. So the history is merged
    here by time (a status change's commit time, a point's or record's wall time; each kind keeps its own order):
    the status changes and log records in `job` (ListLogs, up to `job.last_log_sequence`) are merged into the
    subscription's replay of the metric points, which starts after them (no record or status twice, none left
    out), and follows live from there. `notice` (by default an `OutageNotice`) hears of an outage of the backend."""
    status_sequence = max((change.sequence for change in job.status_events), default=0)
    log_sequence, metric_sequence = job.last_log_sequence, job.last_metric_sequence
    records = (
        itertools.takewhile(lambda line: line.sequence <= log_sequence, client.logs(job.job_id))
        if log_sequence
        else iter(())
    )
    history: Iterator[tuple[float, TelemetryEvent]] = heapq.merge(
        ((_status_time(change), TelemetryEvent("status", Cursor(), status=change)) for change in job.status_events),
        ((line.wall_time, TelemetryEvent("logs", Cursor(), logs=(line,))) for line in records),
        key=lambda item: item[0],
    )
    if not metric_sequence:  # nothing to merge them with: the history as it is, then live
        yield from (event for _, event in history)
    pending = next(history, None)
    after = Cursor(log_sequence=log_sequence, status_sequence=status_sequence)
    notice = notice or OutageNotice(client.address)
    for event in client.subscribe(job.job_id, after=after, max_reconnect_s=RECONNECT_S, on_reconnect=notice):
        if pending is None:
            yield event
            continue
        if event.kind == "metrics" and event.metrics:
            batch: list[MetricPoint] = []
            for point in event.metrics:
                while pending is not None and pending[0] <= point.wall_time:
                    if batch:
                        yield TelemetryEvent("metrics", event.cursor, metrics=tuple(batch))
                        batch = []
                    yield pending[1]
                    pending = next(history, None)
                batch.append(point)
            yield TelemetryEvent("metrics", event.cursor, metrics=tuple(batch))
            if max(point.sequence for point in event.metrics) < metric_sequence:
                continue  # the history's points go on
        # The history's points are all replayed (or the replay went past them: a status change, a record or an
        # epoch summary that came since): the rest of its records and status changes came after them.
        while pending is not None:
            yield pending[1]
            pending = next(history, None)
        if event.kind != "metrics" or not event.metrics:
            yield event
    while pending is not None:
        yield pending[1]
        pending = next(history, None)


class _Ahead:
    """The events of an iterator, read on a thread of their own, so that their reader can wait for the next one for
    a while only (`get`): `follow` shows a held line on time though the job is quiet."""

    _QUEUED = 256
    """Events read ahead at most: a long history replayed to a slow terminal is not all read into memory."""

    def __init__(self, events: Iterator[TelemetryEvent]) -> None:
        self._events = events
        self._queue: queue.Queue[tuple[TelemetryEvent | None, BaseException | None]] = queue.Queue(self._QUEUED)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._read, name="tp-follow", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        """Puts each event on the queue, then (None, None) at the end, or (None, error) for what the iterator
        raised; ends early, closing the iterator (its subscription), once `close` was called."""
        try:
            for event in self._events:
                if not self._put((event, None)):
                    break
            else:
                self._put((None, None))
        except BaseException as error:  # passed on to the reader, raised there
            self._put((None, error))
        finally:
            close = getattr(self._events, "close", None)
            if close is not None:
                close()

    def _put(self, item: tuple[TelemetryEvent | None, BaseException | None]) -> bool:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.2)
            except queue.Full:
                continue
            return True
        return False

    def get(self, timeout: float | None) -> TelemetryEvent | None:
        """The next event; None when `timeout` seconds passed without one (None: no limit); StopIteration at the
        end, and what the iterator raised, raised here."""
        try:
            event, error = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if error is not None:
            raise error
        if event is None:
            raise StopIteration
        return event

    def close(self) -> None:
        """Stops reading ahead; the thread closes the iterator with its next event (or when the channel closes)."""
        self._stopped.set()


def follow(client: JobsClient, job: Job, out: TextIO = sys.stdout) -> Job:
    """Follows a job to its end, printing progress; returns the final job.

    A cancelled (or failed) job's trainer still writes its last logs and stores its last checkpoint after the
    status changed: those are waited for (up to LATE_RESULTS_S, until the job reports its `results`) and printed
    before the summary."""
    follower = Follower(job, out)
    events = _Ahead(timeline(client, job, OutageNotice(client.address, redraw=follower.redraw)))
    try:
        while True:
            try:
                event = events.get(timeout=follower.release_in())
            except StopIteration:
                break
            if event is None:
                follower.release_due()  # no event came while the held line waited: it is shown on time
            else:
                follower.feed(event)
    finally:
        events.close()
    final = client.get_job(job.job_id)
    if final.status in ("CANCELLED", "FAILED") and final.trainer_address:
        # A killed process stores nothing: a failed job is given less time than a cancelled one.
        deadline = time.monotonic() + (LATE_RESULTS_S if final.status == "CANCELLED" else LATE_RESULTS_S / 3)
        try:
            while True:
                for line in client.logs(job.job_id):
                    if line.sequence > follower.last_log_sequence:
                        follower.last_log_sequence = line.sequence
                        follower.say(log_text(line))
                if "results" in final.artifacts or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
                final = client.get_job(job.job_id)
        except KeyboardInterrupt:
            follower.finish()  # the view ends as it would have: its final status last
            raise FollowStopped(final.status) from None
    follower.finish()
    return final


class FollowStopped(KeyboardInterrupt):
    """A Ctrl-C once the followed job had ended, while its trainer's last lines were awaited: `status` is its
    final status (the job does not go on running)."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def epoch_summaries(client: JobsClient, job: Job) -> list[EpochSummary]:
    """The epoch summaries of an ended job (a replay of its subscription after its metrics and logs)."""
    if not job.finished:
        return []
    after = Cursor(metric_sequence=job.last_metric_sequence, log_sequence=job.last_log_sequence)
    found: dict[int, EpochSummary] = {}
    for event in client.subscribe(job.job_id, after=after, max_reconnect_s=5):
        if event.kind == "epoch_summary" and event.epoch_summary is not None:
            found[event.epoch_summary.epoch] = event.epoch_summary
    return [found[epoch] for epoch in sorted(found)]


def print_epochs(client: JobsClient, job: Job, out: TextIO = sys.stdout) -> None:
    """The epoch summaries of an ended job, one line each."""
    for summary in epoch_summaries(client, job):
        safe_write(out, "  " + epoch_line(summary, job.epochs) + "\n")


def print_summary(
    job: Job, out: TextIO = sys.stdout, client: JobsClient | None = None, *, epochs: bool = False
) -> None:
    """The final summary of a job: status, time, (with `epochs`, its epoch summaries,) last metrics, where its
    results are."""
    duration = ""
    if job.started_at and job.ended_at:
        duration = f" in {(job.ended_at - job.started_at).total_seconds():.1f}s"
    name = f" ({printable(job.display_name)})" if job.display_name else ""
    out.write(f"\njob {job.job_id}{name}: {job.status}{duration}\n")
    if job.error_message:
        out.write(f"  error: {printable(job.error_message, ' ' * 9)}\n")
    if client is not None and epochs:
        print_epochs(client, job, out)
    if client is not None:
        latest: dict[str, float] = {}
        for point in client.metrics(job.job_id):
            latest[point.key] = point.value
        for key in sorted(k for k in latest if not k.startswith("lr")):
            out.write(f"  {printable(key):24} {fmt_value(latest[key])}\n")
    if job.mlflow_run_id:
        out.write(f"  MLflow run {printable(job.mlflow_run_id)} at {printable(job.mlflow_tracking_uri)}\n")
    for name, uri in sorted(job.artifacts.items()):
        out.write(f"  artifact {printable(name)}: {printable(uri)}\n")
    out.flush()


_PLAIN_TEXT = {"text.parse_math": False, "text.usetex": False}
"""matplotlib settings for a plot's texts: a metric key or job name is drawn as it is written, never as math
(`$...$`) or LaTeX, which would fail on keys a script may choose (`$\\foo$/acc`)."""


def _pyplot() -> ModuleType:
    """matplotlib's pyplot, drawing to no screen; a CliError when matplotlib is not installed."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise CliError("--plot needs matplotlib: pip install 'trainingplatform-sdk[cli]'") from None
    return plt


def _curves(axis: Axes, series: dict[str, list[tuple[float, float]]], keys: Iterable[str], fontsize: int) -> None:
    """Draws the curve of each key of `keys` in `series` and a legend naming each of them: the curves are given to
    the legend, which otherwise leaves out a label that starts with "_" (matplotlib's mark of a hidden one)."""
    lines, labels = [], []
    for key in keys:
        if key in series:
            xs, ys = zip(*series[key], strict=True)
            lines.extend(axis.plot(xs, ys, label=key, marker="." if len(xs) < 20 else None))
            labels.append(key)
    axis.legend(lines, labels, fontsize=fontsize)


def series_figure(jobs: dict[str, dict[str, list[tuple[float, float]]]], keys: Iterable[str] | None = None) -> Figure:
    """The figure `plot_series` writes (close it with `matplotlib.pyplot.close`)."""
    plt = _pyplot()
    wanted = list(keys) if keys else None
    with plt.rc_context(_PLAIN_TEXT):
        figure, axes = plt.subplots(1, len(jobs), figsize=(6 * len(jobs), 4), squeeze=False)
        for axis, (title, series) in zip(axes[0], jobs.items(), strict=True):
            _curves(axis, series, wanted or sorted(series), 8)
            axis.set_title(title)
            axis.set_xlabel("epoch / step")
            axis.grid(alpha=0.3)
        figure.tight_layout()
    return figure


def plot_series(
    jobs: dict[str, dict[str, list[tuple[float, float]]]], path: Path, keys: Iterable[str] | None = None
) -> None:
    """A PNG with one panel per job: the curves of its (loss) metrics against step or epoch."""
    plt = _pyplot()
    figure = series_figure(jobs, keys)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)


def metric_family(key: str) -> str:
    """The panel a metric is drawn in by `plot_families`: keys of one kind and scale share an axis."""
    k = key.lower()
    name = k.rsplit("/", 1)[-1]
    if k.startswith("system/"):
        if "percent" in name or "util" in name:
            return "system (%)"
        if any(part in name for part in ("mem", "bytes", "_mb", "_gb")):
            return "system memory"
        return "system"
    if "loss" in name:
        return "loss"
    if name in ("lr", "learning_rate") or name.startswith("lr") or "learning_rate" in name:
        return "learning rate"
    if any(part in name for part in ("per_s", "per_sec", "throughput", "it_s", "/s")):
        return "throughput (per s)"
    if any(part in name for part in ("acc", "map", "precision", "recall", "f1", "top1", "top5", "iou")):
        return "accuracy / mAP"
    if any(part in name for part in ("time", "duration", "seconds")):
        return "time (s)"
    return "other"


def families_figure(series: dict[str, list[tuple[float, float]]], title: str) -> tuple[Figure, list[str]]:
    """The figure `plot_families` writes (close it with `matplotlib.pyplot.close`), and its panels' names."""
    plt = _pyplot()
    panels: dict[str, list[str]] = {}
    for key in sorted(series):
        family = metric_family(key)
        if family == "other":
            values = [abs(v) for _, v in series[key] if math.isfinite(v)]
            top = max(values, default=0.0)
            family = f"other (~1e{math.floor(math.log10(top)) if top > 0 else 0})"
        panels.setdefault(family, []).append(key)
    order = ("loss", "accuracy / mAP", "learning rate", "throughput (per s)", "time (s)")
    panels = dict(
        sorted(panels.items(), key=lambda item: (order.index(item[0]) if item[0] in order else len(order), item[0]))
    )
    count = len(panels)
    columns = min(count, 3)
    rows = math.ceil(count / columns)
    with plt.rc_context(_PLAIN_TEXT):
        figure, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 3.6 * rows + 0.6), squeeze=False)
        for index, (family, keys) in enumerate(panels.items()):
            axis = axes[index // columns][index % columns]
            _curves(axis, series, keys, 7)
            axis.set_title(family, fontsize=10)
            axis.set_ylabel(family)
            axis.set_xlabel("step (or epoch)")
            axis.grid(alpha=0.3)
        for index in range(count, rows * columns):
            axes[index // columns][index % columns].set_visible(False)
        figure.suptitle(title)
        figure.tight_layout()
    return figure, list(panels)


def plot_families(series: dict[str, list[tuple[float, float]]], path: Path, title: str) -> list[str]:
    """A PNG with one panel per metric family (losses, accuracies, throughput, learning rate, ...; `metric_family`),
    so a throughput of ~600 never flattens the losses; "other" keys are split by order of magnitude. Each panel has
    its y label; the figure has `title`. Returns the panels' names."""
    plt = _pyplot()
    figure, panels = families_figure(series, title)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)
    return panels
