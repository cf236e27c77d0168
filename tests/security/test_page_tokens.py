"""Page tokens are signed and opaque, and pages are bounded in bytes (issue 13).

- A token this server did not issue for the same request kind and filters (forged, truncated, tampered, issued for
  other filters or by a deployment with another key, oversized) is INVALID_ARGUMENT, never INTERNAL.
- Valid tokens page through everything exactly once.
- No stored data can make a list call (or a replay) fail: pages end early by bytes, and a job too large to be
  listed whole is listed trimmed, so every response stays within half the server's largest message.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import create_engine, update
from support.backend import BackendProcess, auth
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_backend.convert import BAD_PAGE_TOKEN, PageTokens
from trainingplatform_backend.models import Job

INVALID = grpc.StatusCode.INVALID_ARGUMENT
SMALL_MESSAGE_BYTES = 65_536  # the smallest TP_MAX_MESSAGE_BYTES allowed: responses stay within half of it


def _scope(*parts: object) -> str:
    return json.dumps(parts, separators=(",", ":"))


def _refused(call, request) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    assert caught.value.code() == INVALID, (caught.value.code(), caught.value.details())
    assert caught.value.details() is not None and "page_token" in caught.value.details()


@pytest.fixture
def keyed_backend(database_url: str, tmp_path: Path) -> Iterator[BackendProcess]:
    """A backend with a configured page token key."""
    process = BackendProcess(database_url, tmp_path / "keyed", extra_env={"TP_PAGE_TOKEN_KEY": "deployment-key-1"})
    process.start()
    try:
        yield process
    finally:
        process.close()


def _send_metrics(backend: BackendProcess, job_id: str, token: str, count: int, keys: tuple[str, ...]) -> None:
    points = [
        telemetry_pb2.MetricPoint(key=keys[i % len(keys)], value=float(i), wall_time=1.0, sequence=i + 1)
        for i in range(count)
    ]
    # 100 points per request keeps each request small whatever the server's message limit.
    requests = [
        telemetry_pb2.StreamMetricsRequest(job_id=job_id, points=points[i : i + 100]) for i in range(0, count, 100)
    ]
    backend.telemetry().StreamMetrics(iter(requests), metadata=auth(token), timeout=20)


def _send_logs(backend: BackendProcess, job_id: str, token: str, messages: list[str]) -> None:
    records = [
        telemetry_pb2.LogRecord(level=2, message=text, wall_time=1.0, sequence=i + 1) for i, text in enumerate(messages)
    ]
    # One request per record keeps each request small whatever the server's message limit.
    backend.telemetry().StreamLogs(
        iter([telemetry_pb2.StreamLogsRequest(job_id=job_id, records=[r]) for r in records]),
        metadata=auth(token),
        timeout=20,
    )


def test_forged_tokens_are_invalid_argument_never_internal(keyed_backend: BackendProcess):
    backend = keyed_backend
    jobs = backend.jobs()
    md = auth(backend.internal_token)
    job_id, token = backend.create_job()
    other_job, _ = backend.create_job()
    backend.create_job(framework="ultralytics", model="yolov8n")
    _send_metrics(backend, job_id, token, 10, ("a", "b"))
    _send_logs(backend, job_id, token, [f"line {i}" for i in range(10)])

    def list_jobs(**fields):  # type: ignore[no-untyped-def]
        return lambda request: jobs.ListJobs(jobs_pb2.ListJobsRequest(**fields, **request), metadata=md, timeout=10)

    def list_metrics(**fields):  # type: ignore[no-untyped-def]
        return lambda request: jobs.ListMetrics(
            jobs_pb2.ListMetricsRequest(**fields, **request), metadata=md, timeout=10
        )

    def list_logs(**fields):  # type: ignore[no-untyped-def]
        return lambda request: jobs.ListLogs(jobs_pb2.ListLogsRequest(**fields, **request), metadata=md, timeout=10)

    # Valid tokens of each kind, to tamper with.
    jobs_token = jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=1), metadata=md, timeout=10).next_page_token
    metrics_token = jobs.ListMetrics(
        jobs_pb2.ListMetricsRequest(job_id=job_id, page_size=2, keys=["a"]), metadata=md, timeout=10
    ).next_page_token
    logs_token = jobs.ListLogs(
        jobs_pb2.ListLogsRequest(job_id=job_id, page_size=2), metadata=md, timeout=10
    ).next_page_token
    assert jobs_token and metrics_token and logs_token
    for valid in (jobs_token, metrics_token, logs_token):
        assert len(valid) < 200
        assert b"scope" not in base64.urlsafe_b64decode(valid + "==")  # opaque: no readable filters in it

    old_style = [
        # The unsigned tokens of before: base64 of JSON, with a huge key, a naive time, a huge sequence.
        {"scope": "jobs::", "created": "2026-12-02T10:00:00+00:00", "pk": 10**400},
        {"scope": "jobs::", "created": "2026-12-02T10:00:00", "pk": 1},
        {"scope": "jobs::", "created": "not a time", "pk": "x"},
        {"scope": f"metrics:{job_id}:", "after": 10**30},
        {"scope": f"logs:{job_id}:0", "after": -5},
    ]
    forged = [base64.urlsafe_b64encode(json.dumps(doc).encode()).decode() for doc in old_style] + [
        base64.urlsafe_b64encode(os.urandom(64)).decode(),
        base64.urlsafe_b64encode(os.urandom(5)).decode(),
        "%%%not base64%%%",
        "ünïcödé",
        "\x00" * 10,
        "A",
        "AQ",
        "=" * 50,
        "A" * 2000,  # oversized
        base64.urlsafe_b64encode(b"\x01" + b"[1,2]" + os.urandom(32)).decode().rstrip("="),  # right shape, bad mac
    ]

    def tampered(token: str) -> list[str]:
        middle = len(token) // 2
        flipped = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
        last = token[:-1] + ("A" if token[-1] != "A" else "B")
        return [flipped, last, token[:-3], token[1:], token + "AAAA", token + "=="]

    for call in (list_jobs(), list_metrics(job_id=job_id), list_logs(job_id=job_id)):
        for bad in forged:
            _refused(call, {"page_token": bad})

    for bad in tampered(jobs_token):
        _refused(list_jobs(), {"page_token": bad})
    for bad in tampered(metrics_token):
        _refused(list_metrics(job_id=job_id, keys=["a"]), {"page_token": bad})
    for bad in tampered(logs_token):
        _refused(list_logs(job_id=job_id), {"page_token": bad})

    # A token issued for other filters, another job or another request kind.
    _refused(list_jobs(framework="timm"), {"page_token": jobs_token})
    _refused(list_jobs(statuses=[common_pb2.JOB_STATUS_PENDING]), {"page_token": jobs_token})
    _refused(list_metrics(job_id=job_id), {"page_token": metrics_token})
    _refused(list_metrics(job_id=job_id, keys=["b"]), {"page_token": metrics_token})
    _refused(list_metrics(job_id=job_id, keys=["a", "b"]), {"page_token": metrics_token})
    _refused(list_metrics(job_id=other_job, keys=["a"]), {"page_token": metrics_token})
    _refused(list_logs(job_id=job_id, min_level=3), {"page_token": logs_token})
    _refused(list_logs(job_id=other_job), {"page_token": logs_token})
    _refused(list_logs(job_id=job_id), {"page_token": metrics_token})
    _refused(list_metrics(job_id=job_id, keys=["a"]), {"page_token": logs_token})
    _refused(list_jobs(), {"page_token": logs_token})

    # Signed by another deployment's key (right scope and position): refused. Signed by this deployment's key: the
    # same position is accepted, which shows the key is the configured one.
    scope = _scope("logs", job_id, 0)
    _refused(list_logs(job_id=job_id), {"page_token": PageTokens(b"deployment-key-2").issue(scope, [2])})
    _refused(
        list_logs(job_id=job_id),
        {"page_token": PageTokens.for_deployment("", backend.internal_token).issue(scope, [2])},
    )
    page = list_logs(job_id=job_id)({"page_token": PageTokens(b"deployment-key-1").issue(scope, [2])})
    assert [r.sequence for r in page.records] == list(range(3, 11))
    # A position this server would never issue, even when signed with its key: still INVALID_ARGUMENT.
    _refused(list_logs(job_id=job_id), {"page_token": PageTokens(b"deployment-key-1").issue(scope, [2**62])})
    jobs_scope = _scope("jobs", [], "")
    _refused(list_jobs(), {"page_token": PageTokens(b"deployment-key-1").issue(jobs_scope, [2**62, 1])})

    error = None
    try:
        list_jobs()({"page_token": forged[1]})
    except grpc.RpcError as caught:
        error = caught
    assert error is not None and BAD_PAGE_TOKEN in (error.details() or "")
    # The server is still fine.
    assert len(jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=md, timeout=10).jobs) == 3


def test_the_default_key_is_derived_from_the_internal_token(backend: BackendProcess):
    """Without TP_PAGE_TOKEN_KEY every replica with the same internal token accepts the others' tokens."""
    job_id, token = backend.create_job()
    _send_metrics(backend, job_id, token, 5, ("a",))
    replica_token = PageTokens.for_deployment("", backend.internal_token).issue(_scope("metrics", job_id, []), [3])
    page = backend.jobs().ListMetrics(
        jobs_pb2.ListMetricsRequest(job_id=job_id, page_token=replica_token),
        metadata=auth(backend.read_token),
        timeout=10,
    )
    assert [p.sequence for p in page.points] == [4, 5]


def _all_pages(call, request, field: str, max_bytes: int | None = None) -> tuple[list, int]:  # type: ignore[no-untyped-def]
    """Every item of a paged list; the number of pages."""
    items, pages = [], 0
    while True:
        response = call(request)
        pages += 1
        if max_bytes is not None:
            assert response.ByteSize() <= max_bytes
        items.extend(getattr(response, field))
        if not response.next_page_token:
            return items, pages
        request.page_token = response.next_page_token
        assert pages < 10_000


def test_valid_tokens_page_through_everything_once(backend: BackendProcess):
    jobs = backend.jobs()
    md = auth(backend.read_token)
    created = [backend.create_job()[0] for _ in range(23)]
    job_id, token = backend.create_job()
    created.append(job_id)
    _send_metrics(backend, job_id, token, 101, ("a", "b", "c"))
    _send_logs(backend, job_id, token, [f"line {i}" for i in range(37)])

    listed, pages = _all_pages(
        lambda r: jobs.ListJobs(r, metadata=auth(backend.internal_token), timeout=10),
        jobs_pb2.ListJobsRequest(page_size=5),
        "jobs",
    )
    ids = [j.job_id for j in listed]
    assert len(ids) == len(set(ids)) >= len(created) and set(created) <= set(ids)
    assert pages == -(-len(ids) // 5)
    times = [j.create_time.ToDatetime() for j in listed]
    assert times == sorted(times, reverse=True)  # newest first

    points, _ = _all_pages(
        lambda r: jobs.ListMetrics(r, metadata=md, timeout=10),
        jobs_pb2.ListMetricsRequest(job_id=job_id, page_size=7),
        "points",
    )
    assert [p.sequence for p in points] == list(range(1, 102))
    points, _ = _all_pages(
        lambda r: jobs.ListMetrics(r, metadata=md, timeout=10),
        jobs_pb2.ListMetricsRequest(job_id=job_id, page_size=4, keys=["b"]),
        "points",
    )
    assert [p.sequence for p in points] == list(range(2, 102, 3))
    records, _ = _all_pages(
        lambda r: jobs.ListLogs(r, metadata=md, timeout=10),
        jobs_pb2.ListLogsRequest(job_id=job_id, page_size=6),
        "records",
    )
    assert [r.sequence for r in records] == list(range(1, 38))


@pytest.fixture
def small_backend(database_url: str, tmp_path: Path) -> Iterator[BackendProcess]:
    """A backend whose largest message is 64 KiB: list responses must stay within 32 KiB."""
    process = BackendProcess(
        database_url, tmp_path / "small", extra_env={"TP_MAX_MESSAGE_BYTES": str(SMALL_MESSAGE_BYTES)}
    )
    process.start()
    try:
        yield process
    finally:
        process.close()


def _store_large_spec(backend: BackendProcess, job_id: str, extra_bytes: int) -> None:
    """Gives a stored job a spec of about `extra_bytes` (as jobs created before the spec size limit may have)."""
    advanced = {"extra": {"blob": "x" * extra_bytes}}
    engine = create_engine(backend.database_url)
    try:
        with engine.begin() as conn:
            conn.execute(update(Job).where(Job.job_id == job_id).values(advanced_config=advanced))
    finally:
        engine.dispose()


def test_byte_bounded_pages_list_every_job_once(small_backend: BackendProcess):
    backend = small_backend
    jobs = backend.jobs()
    md = auth(backend.internal_token)
    sizes = [100, 12_000, 20_000, 31_000, 40_000, 0, 5_000, 200_000, 9_000, 4_700_000, 15_000, 0, 25_000]
    expected: dict[str, int] = {}
    for extra in sizes:
        job_id, _ = backend.create_job()
        if extra:
            _store_large_spec(backend, job_id, extra)
        expected[job_id] = extra
    for page_size in (0, 3, 1000):
        listed, pages = _all_pages(
            lambda r: jobs.ListJobs(r, metadata=md, timeout=30),
            jobs_pb2.ListJobsRequest(page_size=page_size),
            "jobs",
            max_bytes=SMALL_MESSAGE_BYTES // 2,
        )
        assert sorted(j.job_id for j in listed) == sorted(expected)  # every job exactly once
        assert pages >= 3  # ended early by bytes, not by count
        for job in listed:
            extra = expected[job.job_id]
            blob = job.spec.advanced.extra.fields["blob"].string_value if extra else ""
            assert job.spec.framework == "timm" and job.spec.model.name == "resnet10t"
            if extra < 28_000:
                assert len(blob) == extra  # whole
            else:
                assert blob == ""  # too large for any response: listed trimmed
                assert job.spec.training.epochs == 0

    # Metric points and log records: pages end by bytes too, and so do replay pages of a subscription.
    job_id, token = backend.create_job()
    _send_logs(backend, job_id, token, [f"{i:04d}" + "y" * 16_000 for i in range(12)])
    _send_metrics(backend, job_id, token, 3000, ("k" * 250, "short"))
    records, pages = _all_pages(
        lambda r: jobs.ListLogs(r, metadata=md, timeout=30),
        jobs_pb2.ListLogsRequest(job_id=job_id),
        "records",
        max_bytes=SMALL_MESSAGE_BYTES // 2,
    )
    assert [r.sequence for r in records] == list(range(1, 13)) and pages >= 6
    points, pages = _all_pages(
        lambda r: jobs.ListMetrics(r, metadata=md, timeout=30),
        jobs_pb2.ListMetricsRequest(job_id=job_id, page_size=10_000),
        "points",
        max_bytes=SMALL_MESSAGE_BYTES // 2,
    )
    assert [p.sequence for p in points] == list(range(1, 3001)) and pages >= 10

    call = jobs.SubscribeTelemetry(jobs_pb2.SubscribeTelemetryRequest(job_id=job_id), metadata=md, timeout=30)
    got_points: list[int] = []
    got_records: list[int] = []
    try:
        for response in call:
            assert response.ByteSize() <= SMALL_MESSAGE_BYTES // 2
            got_points += [p.sequence for p in response.metrics.points]
            got_records += [r.sequence for r in response.logs.records]
            if len(got_points) == 3000 and len(got_records) == 12:
                break
    finally:
        call.cancel()
    assert got_points == list(range(1, 3001)) and got_records == list(range(1, 13))


def test_two_huge_specs_do_not_break_the_default_list(backend: BackendProcess):
    """The tester's case: two jobs with 4.5 MiB specs stored, then the default ListJobs() (8 MiB server limit,
    a client with gRPC's default 4 MiB receive limit)."""
    ids = []
    for _ in range(2):
        job_id, _ = backend.create_job()
        _store_large_spec(backend, job_id, 4_700_000)
        ids.append(job_id)
    small_id, _ = backend.create_job()
    with grpc.insecure_channel(backend.address) as channel:  # gRPC's default limits
        stub = jobs_pb2_grpc.JobsServiceStub(channel)
        listed, _ = _all_pages(
            lambda r: stub.ListJobs(r, metadata=auth(backend.read_token), timeout=30),
            jobs_pb2.ListJobsRequest(),
            "jobs",
            max_bytes=4 * 1024 * 1024,
        )
    assert sorted(j.job_id for j in listed) == sorted([*ids, small_id])
