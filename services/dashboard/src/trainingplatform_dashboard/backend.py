"""The dashboard's one connection to the backend: a grpc.aio channel to JobsService, and the token of each action.

The least-privileged token is used for each call: READ_AUTH_TOKEN for every read when the backend has one, the
front-end token (TP_AUTH_TOKEN, else `<TP_DATA_DIR>/frontend_auth_token`) for CreateJob and CancelJob, and for reads
only when there is no read token. Tokens stay in this process: no answer to a browser ever holds one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from trainingplatform.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from trainingplatform_sdk import setting_values as values
from trainingplatform_sdk.channel import auth_metadata, open_aio_channel

from trainingplatform_dashboard.errors import ApiError
from trainingplatform_dashboard.settings import FRONTEND_TOKEN_FILE, Settings

__all__ = ["MAX_METRIC_KEYS", "Backend", "SeriesPages"]

_LOG = logging.getLogger("trainingplatform_dashboard")

_RECEIVE_BYTES = 16 * 1024 * 1024
#: Unary calls in flight at once on the channel. The backend takes 100 streams per connection by default
#: (TP_MAX_CONCURRENT_STREAMS): 200 tabs opening at once must not fill them with GetJob calls and leave the
#: subscriptions (the job hubs, the catch-ups) to be refused.
MAX_UNARY_CALLS = 32
_READS = ("GetJob", "ListJobs", "ListMetrics", "ListLogs", "GetMetricSeries", "ListFrameworks")
_SERIES_KEYS_PER_CALL = 1000
MAX_METRIC_KEYS = 10_000
"""The most metric keys of one job the dashboard reads (GetMetricSeries answers 1,000 a call: 10 calls)."""


@dataclass
class SeriesPages:
    """Every GetMetricSeries answer of one read, in key order. Each answer is its own consistent read, with its own
    `last_sequence`."""

    answers: list[jobs_pb2.GetMetricSeriesResponse] = field(default_factory=list)
    keys: int = 0
    """Series read, all answers together."""
    next_key: str = ""
    """Set when the read stopped at `MAX_METRIC_KEYS` keys: the first key left out."""

    @property
    def series(self) -> Iterator[tuple[jobs_pb2.MetricSeries, int]]:
        """Each series with the `last_sequence` of its answer."""
        for answer in self.answers:
            for series in answer.series:
                yield series, answer.last_sequence

    @property
    def last_sequence(self) -> int:
        """The lowest `last_sequence` of the answers: every point committed up to it is in the read, whatever its
        key (0 when nothing was read)."""
        return min((answer.last_sequence for answer in self.answers), default=0)


def _service_config() -> str:
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": "trainingplatform.jobs.v1.JobsService", "method": m} for m in _READS],
                    "retryPolicy": {
                        "maxAttempts": 4,
                        "initialBackoff": "0.1s",
                        "maxBackoff": "1s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


class Backend:
    """JobsService through one asyncio channel, with the right token for each call.

    Calls raise `grpc.aio.AioRpcError` (turned into HTTP answers by `errors.from_rpc_error`), or `ApiError` when the
    dashboard has no token for the action.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._channel = open_aio_channel(
            settings.backend_address,
            options=[
                ("grpc.enable_retries", 1),
                ("grpc.service_config", _service_config()),
                ("grpc.max_receive_message_length", _RECEIVE_BYTES),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0),
                # A backend that comes back is found within seconds (gRPC's default backoff grows to 120 s).
                ("grpc.initial_reconnect_backoff_ms", 500),
                ("grpc.max_reconnect_backoff_ms", 3000),
            ],
        )
        self.stub = jobs_pb2_grpc.JobsServiceStub(self._channel)
        self._write_token = settings.write_token
        self._unary = asyncio.Semaphore(MAX_UNARY_CALLS)

    async def close(self) -> None:
        """Closes the channel (open calls are cancelled)."""
        await self._channel.close()

    # --- tokens -----------------------------------------------------------------------------------------------

    def write_token(self) -> str:
        """The front-end token: TP_AUTH_TOKEN, else `<TP_DATA_DIR>/frontend_auth_token` (read when first needed:
        a local backend writes it when it starts).

        Raises:
            ApiError: 503 when neither exists.
        """
        if not self._write_token:
            path = self._settings.data_dir / FRONTEND_TOKEN_FILE
            values.tighten_token_file(path, _LOG)
            try:
                self._write_token = path.read_text().strip()
            except OSError:
                self._write_token = ""
            if not self._write_token:
                raise ApiError(
                    503,
                    "UNAVAILABLE",
                    "the dashboard has no backend token to create or cancel jobs: set TP_AUTH_TOKEN "
                    "(the backend's FRONTEND_AUTH_TOKEN)",
                )
        return self._write_token

    def read_token(self) -> str:
        """READ_AUTH_TOKEN when set, else the front-end token."""
        return self._settings.read_token or self.write_token()

    @property
    def reads_with_read_token(self) -> bool:
        """Whether reads use the backend's read-only token."""
        return bool(self._settings.read_token)

    def _read(self) -> tuple[tuple[str, str], ...]:
        return auth_metadata(self.read_token())

    def _write(self) -> tuple[tuple[str, str], ...]:
        return auth_metadata(self.write_token())

    # --- calls ------------------------------------------------------------------------------------------------

    @property
    def _timeout(self) -> float:
        return self._settings.call_timeout_s

    async def _unary_call(
        self, method: Any, request: Any, metadata: tuple[tuple[str, str], ...], timeout: float | None = None
    ) -> Any:
        """One unary call, at most MAX_UNARY_CALLS at once (the wait for a turn is not part of its timeout)."""
        async with self._unary:
            return await method(request, metadata=metadata, timeout=timeout or self._timeout)

    async def get_job(self, job_id: str) -> jobs_pb2.GetJobResponse:
        """GetJob with the read token."""
        return await self._unary_call(self.stub.GetJob, jobs_pb2.GetJobRequest(job_id=job_id), self._read())

    async def list_frameworks(self) -> jobs_pb2.ListFrameworksResponse:
        """ListFrameworks with the read token: the frameworks the backend dispatches to, and whether their trainers
        answer now."""
        return await self._unary_call(self.stub.ListFrameworks, jobs_pb2.ListFrameworksRequest(), self._read())

    async def list_jobs(self, *, statuses: tuple[int, ...] = (), framework: str = "", limit: int = 500) -> list[Any]:
        """ListJobs with the read token: the newest `limit` jobs (pages followed)."""
        jobs, _ = await self.list_jobs_capped(statuses=statuses, framework=framework, limit=limit)
        return jobs

    async def list_jobs_capped(
        self, *, statuses: tuple[int, ...] = (), framework: str = "", limit: int
    ) -> tuple[list[jobs_pb2.Job], bool]:
        """ListJobs with the read token: the newest `limit` jobs (pages of at most 1,000 followed), and whether
        more jobs matched than `limit`."""
        jobs: list[jobs_pb2.Job] = []
        token = ""
        while True:
            response = await self._unary_call(
                self.stub.ListJobs,
                jobs_pb2.ListJobsRequest(
                    statuses=list(statuses),  # type: ignore[arg-type]
                    framework=framework,
                    # One more than asked: that one says whether the list was cut.
                    page_size=min(1000, limit + 1 - len(jobs)),
                    page_token=token,
                ),
                self._read(),
            )
            jobs.extend(response.jobs)
            token = response.next_page_token
            if len(jobs) > limit:
                return jobs[:limit], True
            if not token:
                return jobs, False

    async def list_jobs_page(
        self,
        *,
        statuses: tuple[int, ...] = (),
        framework: str = "",
        text: str = "",
        page_size: int,
        page_token: str = "",
    ) -> jobs_pb2.ListJobsResponse:
        """One ListJobs page with the read token (newest first; `text`: in the name, id or model, any case)."""
        return await self._unary_call(
            self.stub.ListJobs,
            jobs_pb2.ListJobsRequest(
                statuses=list(statuses),  # type: ignore[arg-type]
                framework=framework,
                text=text,
                page_size=page_size,
                page_token=page_token,
            ),
            self._read(),
        )

    async def list_logs(self, job_id: str, *, min_level: int, page_size: int, page_token: str = "") -> Any:
        """One ListLogs page with the read token."""
        return await self._unary_call(
            self.stub.ListLogs,
            jobs_pb2.ListLogsRequest(
                job_id=job_id,
                min_level=min_level,  # type: ignore[arg-type]
                page_size=page_size,
                page_token=page_token,
            ),
            self._read(),
        )

    async def metric_series(self, request: jobs_pb2.GetMetricSeriesRequest) -> jobs_pb2.GetMetricSeriesResponse:
        """One GetMetricSeries answer with the read token (at most 1,000 keys: see `metric_series_pages`)."""
        return await self._unary_call(self.stub.GetMetricSeries, request, self._read())

    async def metric_series_pages(
        self, request: jobs_pb2.GetMetricSeriesRequest, *, max_keys: int = MAX_METRIC_KEYS
    ) -> SeriesPages:
        """GetMetricSeries with the read token, every key: asks again from each answer's `next_key` (and, when
        `request.keys` holds more than the backend takes in one call, asks for them 1,000 at a time) until no key
        is left or `max_keys` keys were read; then `next_key` names the first key left out."""
        keys = list(request.keys)
        groups = [keys[i : i + _SERIES_KEYS_PER_CALL] for i in range(0, len(keys), _SERIES_KEYS_PER_CALL)] or [[]]
        pages = SeriesPages()
        for group in groups:
            start_key = request.start_key
            while True:
                page_request = jobs_pb2.GetMetricSeriesRequest()
                page_request.CopyFrom(request)
                del page_request.keys[:]
                page_request.keys.extend(group)
                page_request.start_key = start_key
                response = await self.metric_series(page_request)
                pages.answers.append(response)
                pages.keys += len(response.series)
                if not response.next_key:
                    break
                if pages.keys >= max_keys:
                    pages.next_key = response.next_key
                    return pages
                if response.next_key <= start_key:  # a backend that does not move on: never loop
                    raise RuntimeError(f"GetMetricSeries answered next_key {response.next_key!r} for {start_key!r}")
                start_key = response.next_key
        return pages

    def subscribe(
        self, job_id: str, after: jobs_pb2.TelemetryCursor | None = None
    ) -> AsyncIterator[jobs_pb2.SubscribeTelemetryResponse]:
        """A SubscribeTelemetry call with the read token (cancel it to end it)."""
        request = jobs_pb2.SubscribeTelemetryRequest(job_id=job_id)
        if after is not None:
            request.after.CopyFrom(after)
        call: Any = self.stub.SubscribeTelemetry(request, metadata=self._read())
        return call

    async def create_job(self, request: jobs_pb2.CreateJobRequest) -> jobs_pb2.CreateJobResponse:
        """CreateJob with the front-end token (never the read token: it may not create)."""
        return await self._unary_call(self.stub.CreateJob, request, self._write(), max(self._timeout, 60.0))

    async def cancel_job(self, job_id: str, reason: str) -> jobs_pb2.CancelJobResponse:
        """CancelJob with the front-end token."""
        return await self._unary_call(
            self.stub.CancelJob, jobs_pb2.CancelJobRequest(job_id=job_id, reason=reason), self._write()
        )

    async def ready(self) -> bool:
        """Whether the channel is connected (or connecting without failure)."""
        state = self._channel.get_state(try_to_connect=True)
        return state in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.IDLE)
