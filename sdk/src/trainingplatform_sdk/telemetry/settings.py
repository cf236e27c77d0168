"""Tuning knobs of the TrainingLogger."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from trainingplatform_sdk.spec.limits import DEFAULT_MAX_MESSAGE_BYTES as SERVER_MAX_MESSAGE_BYTES

# A single log record (16 KiB of text, a source name, the other fields) must always fit in one batch.
MIN_BATCH_BYTES = 64 * 1024
# Longest pause between two of the channel's own connection attempts (a TCP connect and a handshake) while the
# backend is unreachable: it bounds how late a sender notices a backend that is back.
CHANNEL_MAX_RECONNECT_BACKOFF_S = 0.5
# Deadline of one connection attempt of the channel (gRPC's default): a slow handshake is never cut short.
CHANNEL_CONNECT_TIMEOUT_MS = 20_000


@dataclass(frozen=True)
class LoggerSettings:
    """How the TrainingLogger batches, buffers, spools and reconnects.

    The defaults suit a training process on one machine; every field can be overridden by keyword.
    """

    flush_interval_s: float = 0.05
    """Longest time a point waits in the sender before a partial batch is sent (at most 0.05 s by default), while
    someone watches the job live."""

    unwatched_flush_interval_s: float = 1.0
    """The same while the backend says nobody watches the job live (GetStreamCursor's `unwatched`): a trainer
    logging every step then sends a message a second instead of one per step, and its points reach history reads
    up to this much later. A new subscriber is heard of at once: the backend ends the job's streams, and the sender
    resumes from the cursor, which then says watched. A value at or below `flush_interval_s` keeps
    `flush_interval_s` always."""

    target_batch_points: int = 500
    """Points a partial message should carry at most while points come fast: past this many per
    `flush_interval_s`, the sender sends sooner, down to every 10 ms. A message's points wait for the backend to
    commit and fan out the whole message, which takes time in proportion to its size, so at 50,000 points/s a
    fixed 50 ms interval (2,500-point messages) gave a p99 of 134 ms from `log_metric` to a live subscriber, and
    500-point messages 65 ms (`bench/bench_latency.py`). Below 10,000 points/s (500 per 50 ms) nothing changes."""

    max_batch_points: int = 5000
    """Most points (or log records) in one stream message."""

    max_batch_bytes: int = 1024 * 1024
    """Largest serialized stream message the sender builds; never above the server's 8 MiB limit. A server with a
    smaller limit (TP_MAX_MESSAGE_BYTES) tells it in GetStreamCursor and the sender builds smaller messages."""

    memory_buffer_points: int = 100_000
    """Points of one stream kind held in memory while not yet known committed; beyond it they spill to disk."""

    spool_max_bytes: int = 1024 * 1024 * 1024
    """Disk cap of the spool. Only points that would go past it are dropped (counted, logged once, reported)."""

    spool_segment_bytes: int = 8 * 1024 * 1024
    """Size at which the spool starts a new append-only segment file (committed segments are deleted whole)."""

    reconnect_initial_backoff_s: float = 0.1
    """Upper bound of the first reconnect delay."""

    reconnect_max_backoff_s: float = 5.0
    """Largest upper bound of a reconnect delay, however many attempts failed. While the backend is unreachable
    the channel itself tries to connect at least every 0.5 s, and a reconnect attempt waits for it; the sender
    resumes as soon as the channel is connected again, whatever its own delay."""

    reconnect_backoff_multiplier: float = 2.0
    """Growth of the delay bound per failed attempt. The count starts over only once the backend commits again: a
    backend that answers `GetStreamCursor` but fails every stream (its database read-only) is asked with backoff."""

    reconnect_jitter: float = 1.0
    """Share of the delay bound drawn at random: 1.0 is full jitter (uniform between 0 and the bound)."""

    rpc_timeout_s: float = 5.0
    """Deadline of each unary call (GetStreamCursor, UpdateStatus, RecordEpochSummary, ReportRunInfo)."""

    cursor_poll_interval_s: float = 1.0
    """How often the sender asks the committed cursor while points are in flight, to release their memory."""

    unwatched_cursor_poll_interval_s: float = 10.0
    """The same while the backend says nobody watches the job live: each read costs the backend about as much CPU
    as a message. The backend ends the job's streams when someone subscribes, so the sender does not wait for
    this read to hear of it; the read still comes `cursor_poll_interval_s` after a stream opens (a subscriber that
    came before the backend knew of the stream), and at once when half of `memory_buffer_points` waits. A value at
    or below `cursor_poll_interval_s` keeps `cursor_poll_interval_s` always (a backend that does not end streams
    for a new subscriber: before 2026-12)."""

    heartbeat_interval_s: float = 30.0
    """Longest time the logger goes without a call to the backend while open: when nothing else went for this long
    it reads the cursor. The backend fails a RUNNING job that no trainer runs (dispatch=false: `tp run`, your own
    script) once no call of its token arrived for TP_REPORTER_TIMEOUT_S (300 s by default), so a quiet stretch of
    training (evaluation, a slow checkpoint) must not look like a killed process. Keep it well under that timeout."""

    close_timeout_s: float = 30.0
    """Timeout of close() when none is given, and of the atexit hook that closes a logger never closed."""

    keepalive_time_ms: int = 30_000
    """Interval of HTTP/2 keepalive pings (the backend permits one every 10 s or more)."""

    keepalive_timeout_ms: int = 10_000
    """How long a keepalive ping may go unanswered before the connection is considered dead."""

    keepalive_permit_without_calls: bool = True
    """Ping even when no call is active, so a dead connection is noticed before the next batch."""

    def __post_init__(self) -> None:
        self._check_kinds()
        positive = {
            "flush_interval_s": self.flush_interval_s,
            "unwatched_flush_interval_s": self.unwatched_flush_interval_s,
            "target_batch_points": self.target_batch_points,
            "max_batch_points": self.max_batch_points,
            "memory_buffer_points": self.memory_buffer_points,
            "spool_segment_bytes": self.spool_segment_bytes,
            "reconnect_initial_backoff_s": self.reconnect_initial_backoff_s,
            "reconnect_max_backoff_s": self.reconnect_max_backoff_s,
            "rpc_timeout_s": self.rpc_timeout_s,
            "cursor_poll_interval_s": self.cursor_poll_interval_s,
            "unwatched_cursor_poll_interval_s": self.unwatched_cursor_poll_interval_s,
            "heartbeat_interval_s": self.heartbeat_interval_s,
            "keepalive_time_ms": self.keepalive_time_ms,
            "keepalive_timeout_ms": self.keepalive_timeout_ms,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if not MIN_BATCH_BYTES <= self.max_batch_bytes <= SERVER_MAX_MESSAGE_BYTES - MIN_BATCH_BYTES:
            raise ValueError(
                f"max_batch_bytes must be between {MIN_BATCH_BYTES} and {SERVER_MAX_MESSAGE_BYTES - MIN_BATCH_BYTES}"
                f" (the server refuses messages over {SERVER_MAX_MESSAGE_BYTES}), got {self.max_batch_bytes}"
            )
        if self.memory_buffer_points < self.max_batch_points:
            raise ValueError("memory_buffer_points must be at least max_batch_points")
        if self.spool_max_bytes < 0:
            raise ValueError("spool_max_bytes must be 0 or more")
        if self.reconnect_max_backoff_s < self.reconnect_initial_backoff_s:
            raise ValueError("reconnect_max_backoff_s must be at least reconnect_initial_backoff_s")
        if self.reconnect_backoff_multiplier < 1:
            raise ValueError("reconnect_backoff_multiplier must be at least 1")
        if not 0 <= self.reconnect_jitter <= 1:
            raise ValueError("reconnect_jitter must be between 0 and 1")
        if self.keepalive_time_ms < 10_000:
            raise ValueError("keepalive_time_ms must be at least 10000: the backend answers faster pings with GOAWAY")
        if not self.close_timeout_s >= 0:
            raise ValueError(f"close_timeout_s must be 0 or more seconds (inf: no limit), got {self.close_timeout_s!r}")

    def _check_kinds(self) -> None:
        """Refuses a value of the wrong kind (text, a bool for a number, a fraction for a count, NaN, an infinite
        duration but close_timeout_s) with a ValueError naming the field, before the range checks compare it."""
        for field in fields(self):
            value = getattr(self, field.name)
            if field.type == "bool":
                if not isinstance(value, bool):
                    raise ValueError(f"{field.name} must be True or False, got {value!r}")
            elif field.type == "int":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"{field.name} must be a whole number, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{field.name} must be a number, got {value!r}")
            elif field.name == "close_timeout_s":
                if math.isnan(value):
                    raise ValueError(f"close_timeout_s must be 0 or more seconds (inf: no limit), got {value!r}")
            elif not math.isfinite(value):
                raise ValueError(f"{field.name} must be a finite number, got {value!r}")


def channel_options(settings: LoggerSettings) -> list[tuple[str, int]]:
    """The logger's channel arguments: keepalive matched to the backend's ping policy, message limits, fast
    reconnects."""
    max_backoff_s = min(settings.reconnect_max_backoff_s, CHANNEL_MAX_RECONNECT_BACKOFF_S)
    return [
        ("grpc.keepalive_time_ms", settings.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", settings.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(settings.keepalive_permit_without_calls)),
        # 0 lets pings go out on an idle stream; the server permits one every 10 s, we send one every 30 s.
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_send_message_length", SERVER_MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", SERVER_MAX_MESSAGE_BYTES),
        # gRPC's own reconnect backoff (up to 120 s by default) would keep a restarted backend unused for minutes:
        # it starts at the sender's first delay and stays within CHANNEL_MAX_RECONNECT_BACKOFF_S (a connection
        # attempt is cheap); the sender's reconnect attempts wait for the channel (wait_for_ready), so the two
        # backoffs do not add up. The "min" one is gRPC's connect deadline, not a delay.
        ("grpc.initial_reconnect_backoff_ms", int(min(settings.reconnect_initial_backoff_s, max_backoff_s) * 1000)),
        ("grpc.max_reconnect_backoff_ms", int(max_backoff_s * 1000)),
        ("grpc.min_reconnect_backoff_ms", CHANNEL_CONNECT_TIMEOUT_MS),
    ]
