"""Conversions between stored rows and the contract's protobuf messages, and page tokens."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

from google.protobuf import json_format, message, timestamp_pb2
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk.errors import InvalidArgumentError
from trainingplatform_sdk.spec.uris import redact_uri

from trainingplatform_backend.models import LogRecord, StatusEvent
from trainingplatform_backend.statemachine import status_value
from trainingplatform_backend.store import JobView, SummaryView, nan_from_null

P = TypeVar("P")
R = TypeVar("R")
M = TypeVar("M", bound=message.Message)


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    """A protobuf Timestamp of an aware datetime (None stays None)."""
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def message_to_dict(message: Any) -> dict[str, Any]:
    """A message as the JSON document stored in the database (field names as in the proto)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def job_to_proto(view: JobView) -> jobs_pb2.Job:
    """The Job message of a stored job."""
    job = view.job
    spec = common_pb2.JobSpec(framework=job.framework)
    json_format.ParseDict(job.model_config, spec.model)
    json_format.ParseDict(job.dataset_config, spec.dataset)
    json_format.ParseDict(job.training_config, spec.training)
    json_format.ParseDict(job.advanced_config, spec.advanced)
    message = jobs_pb2.Job(
        job_id=job.job_id,
        spec=spec,
        status=status_value(job.status),
        error_message=job.error_message,
        error_detail=job.error_detail,
        create_time=timestamp(job.created_at),
        update_time=timestamp(job.updated_at),
        start_time=timestamp(job.started_at),
        end_time=timestamp(job.ended_at),
        trainer_address=job.trainer_address,
        trainer_run_id=job.trainer_run_id,
        mlflow_run_id=job.mlflow_run_id,
        # Stored without credentials since ReportRunInfo strips them; a row stored before is shown stripped too.
        mlflow_tracking_uri=redact_uri(job.mlflow_tracking_uri),
        artifacts=[
            telemetry_pb2.Artifact(name=a.name, uri=redact_uri(a.uri), size_bytes=a.size_bytes) for a in view.artifacts
        ],
        display_name=job.display_name,
        cursor=telemetry_pb2.GetStreamCursorResponse(
            last_metric_sequence=view.cursor[0], last_log_sequence=view.cursor[1]
        ),
        waiting_reason=job.dispatch_reasons if job.status == "QUEUED" and not job.trainer_address else "",
    )
    return message


def status_event_to_proto(event: StatusEvent) -> jobs_pb2.StatusEvent:
    """The StatusEvent message of a stored transition."""
    return jobs_pb2.StatusEvent(
        sequence=event.sequence,
        from_status=common_pb2.JOB_STATUS_UNSPECIFIED
        if event.from_status == "UNSPECIFIED"
        else status_value(event.from_status),
        to_status=status_value(event.to_status),
        reason=event.reason,
        error_message=event.error_message,
        time=timestamp(event.created_at),
    )


def metric_points(rows: Iterable[tuple[int, str, float | None, int | None, int | None, float]]) -> list[Any]:
    """MetricPoint messages of stored rows (sequence, key, value, step, epoch, wall_time)."""
    points = []
    for sequence, key, value, step, epoch, wall_time in rows:
        point = telemetry_pb2.MetricPoint(key=key, value=nan_from_null(value), wall_time=wall_time, sequence=sequence)
        if step is not None:
            point.step = step
        if epoch is not None:
            point.epoch = epoch
        points.append(point)
    return points


def log_records(rows: Iterable[LogRecord]) -> list[telemetry_pb2.LogRecord]:
    """LogRecord messages of stored rows."""
    records = []
    for row in rows:
        record = telemetry_pb2.LogRecord(
            level=cast(common_pb2.LogLevel, row.level),
            message=row.message,
            wall_time=row.wall_time,
            sequence=row.sequence,
            source=row.source,
            rank=row.rank,
        )
        if row.epoch is not None:
            record.epoch = row.epoch
        if row.step is not None:
            record.step = row.step
        records.append(record)
    return records


def epoch_summary_to_proto(summary: SummaryView) -> telemetry_pb2.EpochSummary:
    """The EpochSummary message of a stored summary."""
    return telemetry_pb2.EpochSummary(
        epoch=summary.epoch,
        metrics=summary.metrics,
        duration_seconds=summary.duration_seconds,
        end_time=timestamp(summary.end_time),
    )


PAGE_TOKEN_MAX_CHARS = 1024
"""Longest page token accepted; the tokens this server issues are about 100 characters."""

BAD_PAGE_TOKEN = "page_token is not a token this server issued (start again without it)"

_TOKEN_VERSION = b"\x01"
_MAC_BYTES = 32
_POSITION_MAX = 2**63 - 1


class PageTokens:
    """Issues and checks page tokens: opaque, signed, bound to the request kind and filters they were issued for.

    A token is base64url (no padding) of a version byte, the keyset position (JSON, a list of integers) and
    HMAC-SHA256 over the SHA-256 of its scope (request kind and filters) and the position. Only a token this
    deployment issued for the same scope is accepted: anything else (forged, truncated, tampered, issued for
    other filters or by a deployment with another key, too long) is refused with `BAD_PAGE_TOKEN`, before its
    position is ever used.
    """

    def __init__(self, key: bytes | None = None) -> None:
        """Args:
        key: the signing key; None draws a random one (tokens then stay valid only in this process).
        """
        self._key = key if key else secrets.token_bytes(32)

    @classmethod
    def for_deployment(cls, page_token_key: str, internal_token: str) -> PageTokens:
        """The signer of a deployment: TP_PAGE_TOKEN_KEY, or when that is empty a key derived from the internal
        service token, so every replica accepts the others' tokens."""
        if page_token_key:
            return cls(page_token_key.encode())
        return cls(hmac.new(internal_token.encode(), b"tp-page-token", hashlib.sha256).digest())

    def _mac(self, scope: str, payload: bytes) -> bytes:
        message = hashlib.sha256(scope.encode("utf-8", "surrogatepass")).digest() + _TOKEN_VERSION + payload
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def issue(self, scope: str, position: Sequence[int]) -> str:
        """A token for the keyset `position` of a request of `scope`."""
        payload = json.dumps(list(position), separators=(",", ":")).encode()
        raw = _TOKEN_VERSION + payload + self._mac(scope, payload)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def position(self, token: str, *, scope: str, length: int) -> list[int]:
        """The keyset position (`length` integers, each 0 to 2^63-1) of a token issued for `scope`.

        Raises:
            InvalidArgumentError: `BAD_PAGE_TOKEN`, whatever is wrong with the token.
        """
        if len(token) > PAGE_TOKEN_MAX_CHARS or not token.isascii():
            raise InvalidArgumentError(BAD_PAGE_TOKEN)
        try:
            raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        except ValueError:
            raise InvalidArgumentError(BAD_PAGE_TOKEN) from None
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != token:
            raise InvalidArgumentError(BAD_PAGE_TOKEN)  # only the one spelling this server issues
        if len(raw) <= 1 + _MAC_BYTES or raw[:1] != _TOKEN_VERSION:
            raise InvalidArgumentError(BAD_PAGE_TOKEN)
        payload, mac = raw[1:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(scope, payload)):
            raise InvalidArgumentError(BAD_PAGE_TOKEN)
        try:
            position = json.loads(payload)
        except ValueError:
            raise InvalidArgumentError(BAD_PAGE_TOKEN) from None
        if (
            not isinstance(position, list)
            or len(position) != length
            or not all(type(value) is int and 0 <= value <= _POSITION_MAX for value in position)
        ):
            raise InvalidArgumentError(BAD_PAGE_TOKEN)
        return position


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def time_to_micros(value: dt.datetime) -> int:
    """An aware datetime as whole microseconds since the Unix epoch (exact, for keyset positions)."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def micros_to_time(value: int) -> dt.datetime:
    """The aware UTC datetime of `time_to_micros`.

    Raises:
        InvalidArgumentError: `BAD_PAGE_TOKEN`, the value is beyond the years a datetime holds.
    """
    try:
        return _EPOCH + dt.timedelta(microseconds=value)
    except OverflowError:
        raise InvalidArgumentError(BAD_PAGE_TOKEN) from None


def tagged_size(size: int) -> int:
    """Bytes that a message of `size` bytes takes as one element of a repeated field: tag, length, body."""
    length = 1
    while size >= 0x80 << (7 * (length - 1)):
        length += 1
    return 1 + length + size


def bounded_page(
    fetch: Callable[[P, int], Sequence[R]],
    build: Callable[[Sequence[R]], Sequence[M]],
    position: Callable[[R], P],
    start: P,
    *,
    size: int,
    budget: int,
    first_chunk: int,
) -> tuple[list[M], P | None]:
    """One page of a list: up to `size` messages after the position `start` whose serialized size together stays
    within `budget` bytes (the first message is always taken, whatever its size), and the position of its last
    message when more follow, None when the page ends the list.

    Rows are fetched `fetch(after, limit)` a chunk at a time (`first_chunk` rows, then four times more each time, one
    row more than the page needs to know whether more follow), so huge rows are never all read at once.
    """
    items: list[M] = []
    used = 0
    after = start
    chunk = first_chunk
    while True:
        want = min(chunk, size + 1 - len(items))
        rows = fetch(after, want)
        for row, item in zip(rows, build(rows), strict=True):
            cost = tagged_size(item.ByteSize())
            if len(items) == size or (items and used + cost > budget):
                return items, after
            items.append(item)
            used += cost
            after = position(row)
        if len(rows) < want:
            return items, None
        chunk *= 4


def job_within(job: jobs_pb2.Job, limit: int) -> jobs_pb2.Job:
    """The job, or when its message is larger than `limit` bytes (only a spec stored before the spec size limit can
    make it so) a trimmed view: its spec reduced to the framework and the model name, then, if still too large,
    without artifacts and error detail. GetJob returns it whole."""
    if job.ByteSize() <= limit:
        return job
    trimmed = jobs_pb2.Job()
    trimmed.CopyFrom(job)
    trimmed.spec.Clear()
    trimmed.spec.framework = job.spec.framework
    trimmed.spec.model.name = job.spec.model.name
    if trimmed.ByteSize() > limit:
        del trimmed.artifacts[:]
        trimmed.error_detail = ""
    return trimmed


def page_size(requested: int, *, default: int, maximum: int) -> int:
    """The page size to use for a request.

    Raises:
        InvalidArgumentError: a negative or too large size.
    """
    if requested < 0 or requested > maximum:
        raise InvalidArgumentError(f"page_size must be between 0 and {maximum}; got {requested}")
    return requested or default
