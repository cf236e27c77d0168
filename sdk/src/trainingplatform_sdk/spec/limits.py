"""Input limits, in one place, so the contract's comments, the docs, the servers' checks and the SDK agree."""

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
"""Largest request message a server accepts by default (the backend's TP_MAX_MESSAGE_BYTES)."""

MAX_KEY_CHARS = 250
"""Longest metric key (MLflow's limit), in characters."""

MAX_LOG_MESSAGE_BYTES = 16 * 1024
"""Longest log record text kept, in UTF-8 bytes; longer text is truncated with a marker."""

MAX_SOURCE_CHARS = 250
"""Longest log source (logger name)."""

MAX_ERROR_MESSAGE_BYTES = 4 * 1024
"""Longest one-line error message of a status change; longer is truncated."""

MAX_ERROR_DETAIL_BYTES = 64 * 1024
"""Longest error detail (traceback) of a status change; longer is truncated."""

MAX_NAME_CHARS = 250
"""Longest model name, display name, framework name, artifact name."""

MAX_URI_CHARS = 2000
"""Longest artifact or tracking URI."""

MAX_EPOCHS = 1_000_000
"""Most epochs a job may ask for."""

MAX_EPOCH = 999_999_999
"""Largest epoch number a metric point, log record or epoch summary may carry (epochs count from 0)."""

MAX_STEP = 2**53 - 1
"""Largest step a metric point or log record may carry: JavaScript's largest safe integer, so every client reads
it exactly."""

MAX_SEQUENCE = 2**53 - 1
"""Largest sequence number of a metric point or log record (same bound as MAX_STEP, for the same reason)."""

MAX_JOB_ID_CHARS = 128
"""Longest job id a request may carry (the backend mints UUIDs, 36 characters; a trainer's job id becomes a
directory name): letters, digits, `.`, `_` and `-`, starting with a letter or digit (`JOB_ID`)."""

JOB_ID = r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z"
"""The form of a job id (a regular expression): usable as a directory name, nothing a shell or file system minds.
Anchored with `\\A` and `\\Z`, not `^` and `$`: Python's `$` also matches before a final newline, so a job id
ending in a newline would pass."""

MAX_REQUEST_ID_CHARS = 64
"""Longest CreateJob idempotency key (`request_id`)."""

MAX_SHORT_NAME_CHARS = 64
"""Longest short identifier of a spec: framework, dataset format, device, optimizer, learning-rate scheduler."""

MAX_PATH_CHARS = MAX_URI_CHARS
"""Longest dataset path of a spec (a path on the trainer's file system)."""

DEFAULT_MAX_SPEC_BYTES = 64 * 1024
"""Largest serialized JobSpec a server accepts by default (the backend's TP_MAX_SPEC_BYTES; a stored job is
returned by every GetJob and ListJobs, so its size bounds theirs)."""

MAX_EXTRA_BYTES = 64 * 1024
"""Largest serialized `spec.advanced.extra` (the framework's own options)."""

DEFAULT_MAX_EPOCHS = 10_000
"""Most epochs a job may ask for by default (the backend's and the trainers' TP_MAX_EPOCHS, at most
MAX_EPOCHS)."""

MAX_BATCH_SIZE = 65_536
"""Largest `spec.training.batch_size`."""

MAX_IMAGE_SIZE = 8192
"""Largest `spec.model.image_size`, in pixels."""

MAX_NUM_CLASSES = 1_000_000
"""Largest `spec.model.num_classes`."""

MAX_NUM_WORKERS = 1024
"""Largest `spec.training.num_workers` (a trainer may also refuse more workers than it has CPUs)."""

MAX_LOG_EVERY_N_STEPS = 1_000_000
"""Largest `spec.training.log_every_n_steps`."""

MAX_LEARNING_RATE = 100.0
"""Largest `spec.training.learning_rate`."""

MAX_WEIGHT_DECAY = 100.0
"""Largest `spec.advanced.weight_decay`."""

MAX_WARMUP_EPOCHS = float(MAX_EPOCHS)
"""Largest `spec.advanced.warmup_epochs`."""

MAX_SEED = 2**32 - 1
"""Largest `spec.advanced.seed` (seeds are 0 to 2^32-1, what every framework's random generators take)."""

MAX_FILTER_KEYS = 1000
"""Most metric keys in one ListMetrics filter."""

MAX_SUMMARY_METRICS = 10_000
"""Most metrics in one epoch summary."""

MAX_ARTIFACTS = 1000
"""Most artifacts in one ReportRunInfo call."""

MAX_STATUS_SEQUENCE = MAX_SEQUENCE
"""Largest status event position a subscription cursor may carry."""

MAX_DURATION_SECONDS = 1e12
"""Longest epoch duration (about 31,700 years: anything finite that is not absurd)."""

MIN_TIMESTAMP_SECONDS = -62_135_596_800
"""Earliest google.protobuf.Timestamp accepted: 0001-01-01T00:00:00Z (the well-known type's own range)."""

MAX_TIMESTAMP_SECONDS = 253_402_300_799
"""Latest google.protobuf.Timestamp accepted: 9999-12-31T23:59:59Z; nanos are 0 to 999,999,999."""

DEFAULT_JOBS_PAGE = 50
"""Jobs in a ListJobs page when the caller asks for none."""

MAX_JOBS_PAGE = 1000
"""Most jobs in one ListJobs page."""

DEFAULT_HISTORY_PAGE = 1000
"""Points or records in a ListMetrics or ListLogs page when the caller asks for none."""

MAX_HISTORY_PAGE = 10_000
"""Most points or records in one ListMetrics or ListLogs page."""


def truncate_utf8(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, ending with `...[truncated N bytes]` (N: the bytes cut)."""
    if len(text) * 4 <= limit:  # a UTF-8 character is at most 4 bytes: no need to encode
        return text
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return text
    keep = limit - len(f"...[truncated {len(encoded)} bytes]".encode())
    return encoded[:keep].decode("utf-8", "ignore") + f"...[truncated {len(encoded) - keep} bytes]"
