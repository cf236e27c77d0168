"""The TrainingLogger's delivery counters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeliveryReport:
    """What a TrainingLogger logged and what reached the backend, as counted by the logger.

    Points are metric points; records are log records. `logged_*` count what the sender took from the caller's
    buffer (it trails the caller by at most one flush interval until flush() or close()).

    Attributes:
        logged_metrics: Metric points logged through this logger and accepted by its checks.
        logged_logs: Log records logged through this logger and accepted by its checks.
        committed_metrics: Metric points known committed by the backend (the cursor passed them), including points
            replayed from an earlier process's spool.
        committed_logs: Log records known committed, likewise.
        duplicates: Points and records the backend reported as already stored (from the responses of streams
            closed by this logger).
        spooled: Points and records written to the on-disk spool (memory full, backend unreachable, or close).
        dropped: Points and records lost: past the spool's cap (spool_max_bytes); past memory_buffer_points while
            the spool could not be written (disk full, read-only, permission denied); spooled but unreadable (a
            segment deleted or damaged); left in memory when the sender stopped without a spool to write them to;
            logged after the sender stopped on its own or after `close()`; under `tp run`, log records that could
            not be written to `tp run` (`telemetry/relay.py`: its stderr closed, or `tp run` gone).
        invalid: Points and records refused before sending (empty or too long key, negative step, non-numeric
            value...); each kind of problem is logged once.
        replayed: Points and records found in the spool at start, left by an earlier process for this job.
        pending_metrics: Metric points not yet known committed (in memory or in the spool). After a final error,
            `close()` reads the committed cursor once more (a job's token still reads it once its job ended), so
            what the backend committed before refusing the stream is not counted.
        pending_logs: Log records not yet known committed.
        calls_delivered: Unary calls (status, epoch summary, run info) the backend accepted.
        calls_pending: Unary calls not yet delivered (kept in the spool's state at close).
        calls_failed: Unary calls the backend refused for good (for example an illegal status transition); the
            `flush()` that follows each refusal returns False.
        calls_dropped: Unary calls lost: made after `close()` or after the sender stopped on its own, left
            unread in the caller's buffer when `close()` stopped waiting for the sender, or, under `tp run`, a
            status that could not be written to `tp run`.
        reconnects: Times the sender re-established its streams after losing them.
        error: The final error that stopped delivery (bad token, unknown job), if any.
    """

    logged_metrics: int = 0
    logged_logs: int = 0
    committed_metrics: int = 0
    committed_logs: int = 0
    duplicates: int = 0
    spooled: int = 0
    dropped: int = 0
    invalid: int = 0
    replayed: int = 0
    pending_metrics: int = 0
    pending_logs: int = 0
    calls_delivered: int = 0
    calls_pending: int = 0
    calls_failed: int = 0
    calls_dropped: int = 0
    reconnects: int = 0
    error: str | None = None
