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
