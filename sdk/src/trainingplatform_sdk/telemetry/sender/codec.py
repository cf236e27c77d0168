"""How the buffered points of one stream become stream requests: sizes, building, and parsing spooled records.

A point waits in memory as a plain tuple (cheaper than a message per point); a codec turns a batch of them straight
into one serialized request, bounding the request's size without serializing it first.
"""

from __future__ import annotations

import abc
import itertools
import operator
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from trainingplatform.telemetry.v1 import telemetry_pb2

from trainingplatform_sdk.spec.limits import DEFAULT_MAX_MESSAGE_BYTES as SERVER_MAX_MESSAGE_BYTES
from trainingplatform_sdk.telemetry.settings import LoggerSettings

BufferedMetric = tuple[int, str, float, int | None, int | None, float]
"""A numbered metric point in memory: (sequence, key, value, step, epoch, wall time)."""

BufferedLog = tuple[int, str, int, int | None, int | None, float]
"""A numbered log record in memory: (sequence, message, level, epoch, step, wall time)."""

Point = TypeVar("Point", BufferedMetric, BufferedLog)
"""A buffered point of either stream; element 0 is its sequence, element 1 its text (key or message)."""

StreamRequest = telemetry_pb2.StreamMetricsRequest | telemetry_pb2.StreamLogsRequest
StreamResponse = telemetry_pb2.StreamMetricsResponse | telemetry_pb2.StreamLogsResponse

# Upper bounds of a point's encoding beyond its text (tags, varints, doubles, the repeated-field envelope).
METRIC_POINT_OVERHEAD_BYTES = 56
LOG_RECORD_OVERHEAD_BYTES = 72
# A character takes at most 4 bytes of UTF-8: the bound of a text's encoded size without encoding it.
MAX_UTF8_BYTES_PER_CHAR = 4
# A request's bytes besides its points and the characters of its job id: the job_id field's tag and length prefix,
# with room to spare.
REQUEST_ENVELOPE_BYTES = 16
# Kept free under the server's message size limit (GetStreamCursorResponse.max_message_bytes), for safety.
SERVER_LIMIT_HEADROOM_BYTES = 1024
# The smallest message size a RESOURCE_EXHAUSTED answer shrinks the messages to: any metric point fits in it.
MIN_MESSAGE_BYTES = 2048
# A repeated point's bytes besides the point itself: its tag and its length prefix (a point is under 2 MiB).
POINT_FIELD_BYTES = 4


class Codec(abc.ABC, Generic[Point]):
    """The requests of one stream: batch sizing, building from buffered points, parsing spooled records."""

    name: ClassVar[str]
    """The stream's name in the spool and its state ("metrics", "logs")."""
    method: ClassVar[str]
    """The client-streaming method of TrainingTelemetryService that carries the requests."""
    point_overhead: ClassVar[int]
    """Upper bound of one point's encoded size beyond its text."""
    request_type: ClassVar[type[telemetry_pb2.StreamMetricsRequest] | type[telemetry_pb2.StreamLogsRequest]]
    points_field: ClassVar[str]
    """The request's repeated field of points."""

    def __init__(self, job_id: str, settings: LoggerSettings) -> None:
        self.job_id = job_id
        self.max_points = settings.max_batch_points
        self._settings_max_bytes = settings.max_batch_bytes
        self._server_max_bytes = SERVER_MAX_MESSAGE_BYTES - SERVER_LIMIT_HEADROOM_BYTES
        self._refused_max_bytes = SERVER_MAX_MESSAGE_BYTES
        self.max_bytes = 0
        """Largest request this codec builds: max_batch_bytes, under the server's limit and any refused size."""
        self.budget = 0
        """What the points of one request may take so that the whole request stays within `max_bytes`."""
        self._job_field = self.request_type(job_id=job_id).SerializeToString()
        self._size()

    def _size(self) -> None:
        self.max_bytes = min(self._settings_max_bytes, self._server_max_bytes, self._refused_max_bytes)
        self.budget = self.max_bytes - REQUEST_ENVELOPE_BYTES - MAX_UTF8_BYTES_PER_CHAR * len(self.job_id)

    def apply_server_limit(self, server_max_bytes: int) -> None:
        """Sizes the requests under the server's message size limit (from GetStreamCursor; 0: not told)."""
        limit = server_max_bytes if server_max_bytes > 0 else SERVER_MAX_MESSAGE_BYTES
        self._server_max_bytes = max(MIN_MESSAGE_BYTES, limit - SERVER_LIMIT_HEADROOM_BYTES)
        self._size()

    def shrink(self) -> bool:
        """Halves the largest request after the server refused one as too large; False when already smallest."""
        if self.max_bytes <= MIN_MESSAGE_BYTES:
            return False
        self._refused_max_bytes = max(MIN_MESSAGE_BYTES, self.max_bytes // 2)
        self._size()
        return True

    def take_batch(self, points: Iterable[Point]) -> tuple[list[Point], bool]:
        """The next points that fit one message; `full` says whether a limit (not the end) cut the batch."""
        max_points = self.max_points
        budget = self.budget
        overhead = self.point_overhead
        candidates = list(itertools.islice(points, max_points))
        # Usually all of them fit: their texts' bound, summed in C, says so without a loop over the points (at 4
        # bytes a character, or 1 when every text is ASCII: never more than the loop below would take).
        texts = list(map(operator.itemgetter(1), candidates))
        chars = sum(map(len, texts))
        fixed = len(candidates) * overhead
        if fixed + MAX_UTF8_BYTES_PER_CHAR * chars <= budget or (
            fixed + chars <= budget and all(map(str.isascii, texts))
        ):
            return candidates, len(candidates) >= max_points
        batch: list[Point] = []
        size = 0
        for point in candidates:
            text = point[1]
            point_size = overhead + (len(text) if text.isascii() else MAX_UTF8_BYTES_PER_CHAR * len(text))
            if batch and size + point_size > budget:
                return batch, True
            batch.append(point)
            size += point_size
        return batch, len(batch) >= max_points

    def encode(self, batch: Sequence[Point]) -> bytes:
        """The serialized request that sends `batch`."""
        return self._job_field + self.spool_payload(batch)

    def spool_payload(self, batch: Sequence[Point]) -> bytes:
        """`batch` as a spool record's payload: a request without the job id (the spool belongs to one job)."""
        return self._build(batch).SerializeToString()

    def parse(self, payload: bytes, sent: int) -> tuple[bytes, int, int]:
        """The serialized request that sends a spooled record's points above `sent` (those below went on the current
        stream), its last sequence and its number of points.

        A record written under a larger budget (another process, a server with a larger limit) is cut to the
        leading points that fit `budget`; the rest go in the next requests. At least one point is kept.
        """
        request = self.request_type.FromString(payload)
        points = getattr(request, self.points_field)
        skip = 0
        while skip < len(points) and points[skip].sequence <= sent:
            skip += 1
        if not skip and len(payload) <= self.budget:
            # The whole record, as it is on disk.
            return self._job_field + payload, points[len(points) - 1].sequence, len(points)
        del points[:skip]
        if len(payload) > self.budget:
            size = 0
            keep = 0
            for point in points:
                size += point.ByteSize() + POINT_FIELD_BYTES
                if keep and size > self.budget:
                    break
                keep += 1
            del points[keep:]
        request.job_id = self.job_id
        return request.SerializeToString(), points[len(points) - 1].sequence, len(points)

    @abc.abstractmethod
    def _build(self, batch: Sequence[Point]) -> StreamRequest:
        """The request holding `batch`, without a job id."""


class MetricCodec(Codec[BufferedMetric]):
    """The requests of StreamMetrics, their points as `columns` (MetricColumns): one packed array per field costs
    a fraction of a message per point to build here and to read on the backend."""

    name = "metrics"
    method = "StreamMetrics"
    point_overhead = METRIC_POINT_OVERHEAD_BYTES
    request_type = telemetry_pb2.StreamMetricsRequest
    points_field = "points"

    def _build(self, batch: Sequence[BufferedMetric]) -> StreamRequest:
        request = telemetry_pb2.StreamMetricsRequest()
        if not batch:
            return request
        columns = request.columns
        # One pass per field with itemgetter, not zip(*batch): that makes an iterator object per point, which the
        # garbage collector finds alive mid-transpose and promotes, and so triggers full collections (measured:
        # 0.45 microseconds a point of GC in the peers' burst, most of it full collections).
        sequences, keys, values, steps, epochs, wall_times = (
            tuple(map(operator.itemgetter(field), batch)) for field in range(6)
        )
        index: dict[str, int] = {}
        columns.key_indexes.extend([index.setdefault(key, len(index)) for key in keys])
        columns.keys.extend(index)
        columns.values.extend(values)
        _extend_optional(columns.steps, steps)
        _extend_optional(columns.epochs, epochs)
        columns.wall_times.extend(wall_times)
        columns.sequences.extend(sequences)
        return request

    def parse(self, payload: bytes, sent: int) -> tuple[bytes, int, int]:
        """As `Codec.parse`; a record of points as MetricPoint messages (spooled by an earlier SDK) is sent as
        columns."""
        request = telemetry_pb2.StreamMetricsRequest.FromString(payload)
        if not request.points:
            sequences = request.columns.sequences
            if sequences[0] > sent and len(payload) <= self.budget:
                # The whole record, as it is on disk.
                return self._job_field + payload, sequences[len(sequences) - 1], len(sequences)
        batch, _ = self.take_batch(point for point in _buffered_metrics(request) if point[0] > sent)
        return self.encode(batch), batch[-1][0], len(batch)


def _extend_optional(column: Any, values: tuple[int | None, ...]) -> None:
    """Fills a column of steps or epochs: -1 for None, nothing at all when every value is None."""
    unset = values.count(None)
    if unset == len(values):
        return
    column.extend(values if not unset else [-1 if value is None else value for value in values])


def _buffered_metrics(request: telemetry_pb2.StreamMetricsRequest) -> Iterator[BufferedMetric]:
    """The points of a request, columns or messages, as buffered tuples."""
    for p in request.points:
        step = p.step if p.HasField("step") else None
        yield (p.sequence, p.key, p.value, step, p.epoch if p.HasField("epoch") else None, p.wall_time)
    columns = request.columns
    count = len(columns.sequences)
    keys = columns.keys
    steps = columns.steps or [-1] * count
    epochs = columns.epochs or [-1] * count
    for sequence, index, value, step, epoch, wall_time in zip(
        columns.sequences, columns.key_indexes, columns.values, steps, epochs, columns.wall_times, strict=True
    ):
        yield (sequence, keys[index], value, step if step >= 0 else None, epoch if epoch >= 0 else None, wall_time)


class LogCodec(Codec[BufferedLog]):
    """The requests of StreamLogs; every record carries the process's rank."""

    name = "logs"
    method = "StreamLogs"
    point_overhead = LOG_RECORD_OVERHEAD_BYTES
    request_type = telemetry_pb2.StreamLogsRequest
    points_field = "records"

    def __init__(self, job_id: str, settings: LoggerSettings, rank: int) -> None:
        super().__init__(job_id, settings)
        self.rank = rank

    def _build(self, batch: Sequence[BufferedLog]) -> StreamRequest:
        request = telemetry_pb2.StreamLogsRequest()
        add = request.records.add
        rank = self.rank
        for sequence, message, level, epoch, step, wall in batch:
            add(level=level, message=message, epoch=epoch, step=step, wall_time=wall, sequence=sequence, rank=rank)
        return request
