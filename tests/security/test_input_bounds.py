"""Regressions of the input-bounds defects an outside tester found (issue 13): every one is now INVALID_ARGUMENT
with a short message that names the field, nothing is stored, and the server keeps serving everyone."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import text
from support.backend import BackendProcess, auth
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk.errors import InvalidArgumentError
from trainingplatform_sdk.spec import limits
from trainingplatform_sdk.spec.validation import check_job_id
from trainingplatform_sdk.trainer_service.validation import validate_job_id

INVALID = grpc.StatusCode.INVALID_ARGUMENT
LONG_ID = "j" * 20_000
SHORT_MESSAGE = 300  # characters: an error echoes at most a quote of the input


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, module_database_url: str) -> Iterator[BackendProcess]:
    data = tmp_path_factory.mktemp("bounds")
    process = BackendProcess(module_database_url, data / "data")
    process.start()
    yield process
    process.close()


def _spec(**training: int) -> common_pb2.JobSpec:
    return common_pb2.JobSpec(
        framework="timm",
        model=common_pb2.ModelConfig(name="resnet10t"),
        dataset=common_pb2.DatasetConfig(name="digits"),
        training=common_pb2.TrainingConfig(epochs=1, **training),
    )


def _count(backend: BackendProcess, table: str) -> int:
    with backend._engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def _job_count(backend: BackendProcess) -> int:
    return _count(backend, "jobs")


def _refused(call, *, code: grpc.StatusCode = INVALID, names: str = "") -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert error.code() == code, (error.code(), error.details()[:500])
    details = error.details() or ""
    assert len(details) < SHORT_MESSAGE, details[:500]
    assert names in details, details
    return details


def test_a_huge_advanced_extra_is_refused_and_list_jobs_keeps_working(backend: BackendProcess) -> None:
    before = _job_count(backend)
    spec = _spec()
    spec.advanced.extra.update({"blob": "x" * (4 * 1024 * 1024 + 512 * 1024)})
    request = jobs_pb2.CreateJobRequest(spec=spec, dispatch=False)
    for _ in range(2):
        _refused(
            lambda: backend.jobs().CreateJob(request, metadata=auth(backend.internal_token), timeout=30),
            names="spec.advanced.extra",
        )
    assert _job_count(backend) == before
    backend.create_job()
    response = backend.jobs().ListJobs(jobs_pb2.ListJobsRequest(), metadata=auth(backend.internal_token), timeout=10)
    assert response.jobs


def test_a_spec_just_over_the_size_limit_is_refused(backend: BackendProcess) -> None:
    spec = _spec()
    spec.model.name = "resnet10t"
    spec.advanced.extra.update({f"k{i}": "v" * 1000 for i in range(70)})  # > 64 KiB serialized
    _refused(
        lambda: backend.jobs().CreateJob(
            jobs_pb2.CreateJobRequest(spec=spec, dispatch=False), metadata=auth(backend.internal_token), timeout=10
        ),
        names="spec",
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batch_size", 2**31 - 1),
        ("num_workers", 2**31 - 1),
        ("log_every_n_steps", 2**31 - 1),
        ("epochs", 2**31 - 1),
        ("epochs", 10_001),  # TP_MAX_EPOCHS defaults to 10,000
    ],
)
def test_huge_training_numbers_are_refused(backend: BackendProcess, field: str, value: int) -> None:
    before = _job_count(backend)
    spec = _spec()
    setattr(spec.training, field, value)
    _refused(
        lambda: backend.jobs().CreateJob(
            jobs_pb2.CreateJobRequest(spec=spec, dispatch=False), metadata=auth(backend.internal_token), timeout=10
        ),
        names=f"spec.training.{field}",
    )
    assert _job_count(backend) == before


def test_a_huge_image_size_is_refused(backend: BackendProcess) -> None:
    spec = _spec()
    spec.model.image_size = 2**31 - 1
    _refused(
        lambda: backend.jobs().CreateJob(
            jobs_pb2.CreateJobRequest(spec=spec, dispatch=False), metadata=auth(backend.internal_token), timeout=10
        ),
        names="spec.model.image_size",
    )


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(2**62, 0), (0, 2**31 - 1), (-(2**62), 0), (0, -1), (253402300800, 0), (-62135596801, 0)],
)
def test_record_epoch_summary_with_a_bad_end_time_is_refused(backend: BackendProcess, seconds: int, nanos: int) -> None:
    job_id, token = backend.create_job()
    summary = telemetry_pb2.EpochSummary(epoch=0, duration_seconds=1.0)
    summary.end_time.seconds = seconds
    summary.end_time.nanos = nanos
    _refused(
        lambda: backend.telemetry().RecordEpochSummary(
            telemetry_pb2.RecordEpochSummaryRequest(job_id=job_id, summary=summary), metadata=auth(token), timeout=10
        ),
        names="summary.end_time",
    )
    with backend._engine.connect() as conn:
        stored = conn.execute(
            text("SELECT count(*) FROM epoch_summaries e JOIN jobs j ON j.id = e.job_pk WHERE j.job_id = :j"),
            {"j": job_id},
        ).scalar_one()
    assert stored == 0


def test_a_valid_end_time_at_the_edges_is_accepted(backend: BackendProcess) -> None:
    job_id, token = backend.create_job()
    for epoch, seconds in enumerate((-62135596800, 253402300799)):
        summary = telemetry_pb2.EpochSummary(epoch=epoch, duration_seconds=1.0)
        summary.end_time.seconds = seconds
        summary.end_time.nanos = 999_999_999
        backend.telemetry().RecordEpochSummary(
            telemetry_pb2.RecordEpochSummaryRequest(job_id=job_id, summary=summary), metadata=auth(token), timeout=10
        )


@pytest.mark.parametrize("after", [10**30, 2**63, 2**53, -1])
@pytest.mark.parametrize("method", ["ListMetrics", "ListLogs"])
def test_a_forged_page_position_is_refused(backend: BackendProcess, method: str, after: int) -> None:
    job_id, token = backend.create_job()
    scope = f"metrics:{job_id}:" if method == "ListMetrics" else f"logs:{job_id}:0"
    forged = base64.urlsafe_b64encode(json.dumps({"scope": scope, "after": after}).encode()).decode()
    request = (jobs_pb2.ListMetricsRequest if method == "ListMetrics" else jobs_pb2.ListLogsRequest)(
        job_id=job_id, page_token=forged
    )
    _refused(lambda: getattr(backend.jobs(), method)(request, metadata=auth(token), timeout=10), names="page_token")


@pytest.mark.parametrize(
    "call",
    [
        lambda b: b.jobs().GetJob(jobs_pb2.GetJobRequest(job_id=LONG_ID), metadata=auth(b.internal_token), timeout=10),
        lambda b: b.jobs().CancelJob(
            jobs_pb2.CancelJobRequest(job_id=LONG_ID), metadata=auth(b.internal_token), timeout=10
        ),
        lambda b: b.jobs().ListMetrics(
            jobs_pb2.ListMetricsRequest(job_id=LONG_ID), metadata=auth(b.internal_token), timeout=10
        ),
        lambda b: b.jobs().ListLogs(
            jobs_pb2.ListLogsRequest(job_id=LONG_ID), metadata=auth(b.internal_token), timeout=10
        ),
        lambda b: list(
            b.jobs().SubscribeTelemetry(
                jobs_pb2.SubscribeTelemetryRequest(job_id=LONG_ID), metadata=auth(b.internal_token), timeout=10
            )
        ),
        lambda b: b.telemetry().StreamMetrics(
            iter([telemetry_pb2.StreamMetricsRequest(job_id=LONG_ID)]), metadata=auth(b.internal_token), timeout=10
        ),
        lambda b: b.telemetry().StreamLogs(
            iter([telemetry_pb2.StreamLogsRequest(job_id=LONG_ID)]), metadata=auth(b.internal_token), timeout=10
        ),
        lambda b: b.telemetry().UpdateStatus(
            telemetry_pb2.UpdateStatusRequest(job_id=LONG_ID, status=common_pb2.JOB_STATUS_RUNNING),
            metadata=auth(b.internal_token),
            timeout=10,
        ),
        lambda b: b.telemetry().GetStreamCursor(
            telemetry_pb2.GetStreamCursorRequest(job_id=LONG_ID), metadata=auth(b.internal_token), timeout=10
        ),
    ],
    ids=[
        "GetJob",
        "CancelJob",
        "ListMetrics",
        "ListLogs",
        "SubscribeTelemetry",
        "StreamMetrics",
        "StreamLogs",
        "UpdateStatus",
        "GetStreamCursor",
    ],
)
def test_a_20000_character_job_id_gets_a_short_invalid_argument(backend: BackendProcess, call) -> None:  # type: ignore[no-untyped-def]
    _refused(lambda: call(backend), names="job_id")


def test_a_job_id_with_a_final_newline_is_invalid_not_unknown(backend: BackendProcess) -> None:
    """Python's `$` matches before a final newline: the job id rule must refuse `"<id>\n"` (INVALID_ARGUMENT), not
    look it up (NOT_FOUND), and a trainer must not take a 129-character id as a directory name."""
    job_id, _ = backend.create_job()
    metadata = auth(backend.internal_token)

    def calls(bad: str) -> dict[str, Callable[[], object]]:
        return {
            "GetJob": lambda: backend.jobs().GetJob(jobs_pb2.GetJobRequest(job_id=bad), metadata=metadata, timeout=10),
            "CancelJob": lambda: backend.jobs().CancelJob(
                jobs_pb2.CancelJobRequest(job_id=bad), metadata=metadata, timeout=10
            ),
            "GetStreamCursor": lambda: backend.telemetry().GetStreamCursor(
                telemetry_pb2.GetStreamCursorRequest(job_id=bad), metadata=metadata, timeout=10
            ),
            "StreamMetrics": lambda: backend.telemetry().StreamMetrics(
                iter([telemetry_pb2.StreamMetricsRequest(job_id=bad)]), metadata=metadata, timeout=10
            ),
        }

    for bad in (job_id + "\n", "j\n"):
        for rpc, call in calls(bad).items():
            assert "job_id" in _refused(call, names="job_id"), rpc
    assert backend.job_status(job_id) == "PENDING"  # the CancelJob above touched nothing
    framework = _spec()
    framework.framework = "timm\n"
    _refused(
        lambda: backend.jobs().CreateJob(
            jobs_pb2.CreateJobRequest(spec=framework, dispatch=False), metadata=metadata, timeout=10
        ),
        names="framework",
    )
    for bad in ("a" * 128 + "\n", "job\n"):
        with pytest.raises(InvalidArgumentError):
            check_job_id(bad)
        with pytest.raises(InvalidArgumentError):
            validate_job_id(bad)
    assert validate_job_id("a" * 128) == check_job_id("a" * 128) == "a" * 128


def test_a_long_second_job_id_in_a_stream_is_quoted_short(backend: BackendProcess) -> None:
    job_id, _ = backend.create_job()
    messages = [telemetry_pb2.StreamMetricsRequest(job_id=job_id), telemetry_pb2.StreamMetricsRequest(job_id=LONG_ID)]
    _refused(
        lambda: backend.telemetry().StreamMetrics(iter(messages), metadata=auth(backend.internal_token), timeout=10),
        names="job_id",
    )


def test_long_strings_elsewhere_are_refused_with_short_messages(backend: BackendProcess) -> None:
    job_id, token = backend.create_job()
    long_text = "x" * 100_000
    _refused(
        lambda: backend.jobs().CreateJob(
            jobs_pb2.CreateJobRequest(spec=_spec(), dispatch=False, request_id=long_text),
            metadata=auth(backend.internal_token),
            timeout=10,
        ),
        names="request_id",
    )
    _refused(
        lambda: backend.jobs().ListJobs(
            jobs_pb2.ListJobsRequest(framework=long_text), metadata=auth(backend.internal_token), timeout=10
        ),
        names="framework",
    )
    _refused(
        lambda: backend.jobs().ListMetrics(
            jobs_pb2.ListMetricsRequest(job_id=job_id, keys=[long_text]), metadata=auth(token), timeout=10
        ),
        names="keys",
    )
    _refused(
        lambda: backend.jobs().ListMetrics(
            jobs_pb2.ListMetricsRequest(job_id=job_id, page_token=long_text), metadata=auth(token), timeout=10
        ),
        names="page_token",
    )
    point = telemetry_pb2.MetricPoint(key=long_text, value=1.0, wall_time=1.0, sequence=1)
    _refused(
        lambda: backend.telemetry().StreamMetrics(
            iter([telemetry_pb2.StreamMetricsRequest(job_id=job_id, points=[point])]), metadata=auth(token), timeout=10
        ),
        names="key",
    )
    _refused(
        lambda: backend.telemetry().ReportRunInfo(
            telemetry_pb2.ReportRunInfoRequest(
                job_id=job_id, artifacts=[telemetry_pb2.Artifact(name=long_text, uri="file:///x")]
            ),
            metadata=auth(token),
            timeout=10,
        ),
        names="name",
    )
    assert backend.metric_sequences(job_id) == []


@pytest.mark.parametrize(
    ("reported", "stored"),
    [
        ("https://alice:s3cr3t-pass@mlflow.example.com", "https://mlflow.example.com"),
        ("https://TOKEN123@mlflow.example.com/prefix", "https://mlflow.example.com/prefix"),
        ("postgresql://u:pw@db/mlflow?sslmode=require&password=pw", "postgresql://db/mlflow?sslmode=require"),
        ("http://mlflow:5000/?token=t0k&x=1", "http://mlflow:5000/?x=1"),
        ("sqlite:////data/a@b/mlflow.db", "sqlite:////data/a@b/mlflow.db"),
        ("http://mlflow:5000", "http://mlflow:5000"),
    ],
)
def test_a_reported_tracking_uri_is_stored_and_served_without_credentials(
    backend: BackendProcess, reported: str, stored: str
) -> None:
    """Whatever a reporter sends (a user's script passes its own value to `report_run_info`), no reader, the
    read token's included, gets the tracking URI's password, token or secret query parameters back."""
    job_id, token = backend.create_job()
    backend.telemetry().ReportRunInfo(
        telemetry_pb2.ReportRunInfoRequest(job_id=job_id, mlflow_tracking_uri=reported),
        metadata=auth(token),
        timeout=10,
    )
    job = backend.jobs().GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=auth(backend.read_token), timeout=10)
    assert job.job.mlflow_tracking_uri == stored
    with backend._engine.connect() as conn:
        row = conn.execute(text("SELECT mlflow_tracking_uri FROM jobs WHERE job_id = :j"), {"j": job_id}).scalar_one()
    assert row == stored


def test_a_tracking_uri_stored_with_credentials_before_is_served_without_them(backend: BackendProcess) -> None:
    job_id, _ = backend.create_job()
    with backend._engine.begin() as conn:
        conn.execute(
            text("UPDATE jobs SET mlflow_tracking_uri = :uri WHERE job_id = :j"),
            {"uri": "https://alice:s3cr3t-pass@mlflow.example.com/?token=t", "j": job_id},
        )
    read = auth(backend.read_token)
    job = backend.jobs().GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=read, timeout=10).job
    assert job.mlflow_tracking_uri == "https://mlflow.example.com/"
    listed = backend.jobs().ListJobs(jobs_pb2.ListJobsRequest(), metadata=read, timeout=10).jobs
    assert [j.mlflow_tracking_uri for j in listed if j.job_id == job_id] == ["https://mlflow.example.com/"]


def test_subscription_cursor_past_the_bounds_is_refused(backend: BackendProcess) -> None:
    job_id, token = backend.create_job()
    cursor = jobs_pb2.TelemetryCursor(metric_sequence=limits.MAX_SEQUENCE + 1)
    _refused(
        lambda: list(
            backend.jobs().SubscribeTelemetry(
                jobs_pb2.SubscribeTelemetryRequest(job_id=job_id, after=cursor), metadata=auth(token), timeout=10
            )
        ),
        names="metric_sequence",
    )


def test_the_server_is_still_healthy_and_logged_no_traceback(backend: BackendProcess, tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    status = health_pb2_grpc.HealthStub(backend.channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert "Traceback" not in backend.log_text()


# --- the shared checks, without a server -----------------------------------------------------------------------


def test_quote_cuts_long_values_and_marks_them() -> None:
    from trainingplatform_sdk.errors import quote

    assert quote("abc") == "'abc'"
    assert quote(12) == "12"
    long = quote("x" * 20_000)
    assert len(long) < 130 and "20000 characters" in long
    escaped = quote("\x01" * 500)  # each character is 4 in its repr: the quote stays short all the same
    assert len(escaped) < 130 and "500 characters" in escaped


def test_status_messages_are_capped_in_utf8_bytes() -> None:
    from trainingplatform_sdk.errors import MAX_STATUS_MESSAGE_BYTES, cap_status_message

    assert cap_status_message("short") == "short"
    for message in ("x" * 100_000, "\u00e9" * 100_000, "\U0001f600" * 100_000):
        capped = cap_status_message(message)
        assert len(capped.encode()) <= MAX_STATUS_MESSAGE_BYTES
        assert capped.endswith("bytes]")


def _refusal_of(path: str, value: object) -> str:
    """validate_spec's message for the test spec with the field at `path` (dotted) set to `value`."""
    from trainingplatform_sdk.errors import InvalidArgumentError
    from trainingplatform_sdk.spec.validation import validate_spec

    spec = _spec()
    *parents, leaf = path.split(".")
    target = spec
    for parent in parents:
        target = getattr(target, parent)
    setattr(target, leaf, value)
    with pytest.raises(InvalidArgumentError) as caught:
        validate_spec(spec)
    return str(caught.value)


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("model.num_classes", limits.MAX_NUM_CLASSES + 1, "spec.model.num_classes"),
        ("model.image_size", limits.MAX_IMAGE_SIZE + 1, "spec.model.image_size"),
        ("model.name", "a\nb", "spec.model.name"),
        ("dataset.path", "p" * (limits.MAX_PATH_CHARS + 1), "spec.dataset.path"),
        ("dataset.format", "f" * 65, "spec.dataset.format"),
        ("training.batch_size", limits.MAX_BATCH_SIZE + 1, "spec.training.batch_size"),
        ("training.num_workers", limits.MAX_NUM_WORKERS + 1, "spec.training.num_workers"),
        ("training.log_every_n_steps", limits.MAX_LOG_EVERY_N_STEPS + 1, "spec.training.log_every_n_steps"),
        ("training.learning_rate", 1e308, "spec.training.learning_rate"),
        ("training.learning_rate", float("nan"), "spec.training.learning_rate"),
        ("training.device", "d" * 65, "spec.training.device"),
        ("training.epochs", limits.MAX_EPOCHS + 1, "spec.training.epochs"),
        ("advanced.optimizer", "o" * 65, "spec.advanced.optimizer"),
        ("advanced.weight_decay", 1e308, "spec.advanced.weight_decay"),
        ("advanced.warmup_epochs", float("inf"), "spec.advanced.warmup_epochs"),
        ("advanced.seed", -1, "spec.advanced.seed"),
        ("advanced.seed", 2**32, "spec.advanced.seed"),
        ("advanced.augmentation.scale", float("nan"), "spec.advanced.augmentation.scale"),
    ],
)
def test_validate_spec_bounds_every_numeric_and_string_field(path: str, value: object, field: str) -> None:
    message = _refusal_of(path, value)
    assert field in message and len(message) < SHORT_MESSAGE


def test_validate_spec_takes_the_servers_epoch_and_size_limits() -> None:
    from trainingplatform_sdk.errors import InvalidArgumentError
    from trainingplatform_sdk.spec.validation import validate_spec

    spec = _spec(batch_size=8)
    spec.training.epochs = 50
    validate_spec(spec)  # a client checks against the absolute ceilings
    with pytest.raises(InvalidArgumentError, match=r"spec\.training\.epochs"):
        validate_spec(spec, max_epochs=49)
    spec.advanced.extra.update({"note": "n" * 2000})
    with pytest.raises(InvalidArgumentError, match="the limit is 1024"):
        validate_spec(spec, max_spec_bytes=1024)
    for extra in ({"a\x00": 1}, {"k": "a\x00"}, {"k": [1, {"n": float("nan")}]}):
        spec.advanced.extra.Clear()
        spec.advanced.extra.update(extra)
        with pytest.raises(InvalidArgumentError, match=r"spec\.advanced\.extra"):
            validate_spec(spec)


def test_check_timestamp_accepts_exactly_the_well_known_range() -> None:
    from google.protobuf import timestamp_pb2
    from trainingplatform_sdk.errors import InvalidArgumentError
    from trainingplatform_sdk.spec.validation import check_timestamp

    for seconds, nanos in ((limits.MIN_TIMESTAMP_SECONDS, 0), (limits.MAX_TIMESTAMP_SECONDS, 999_999_999), (0, 0)):
        check_timestamp(timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos), "t")
    for seconds, nanos in ((limits.MIN_TIMESTAMP_SECONDS - 1, 0), (limits.MAX_TIMESTAMP_SECONDS + 1, 0), (0, -1)):
        with pytest.raises(InvalidArgumentError, match=r"^t\."):
            check_timestamp(timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos), "t")
    with pytest.raises(InvalidArgumentError, match=r"t\.nanos"):
        check_timestamp(timestamp_pb2.Timestamp(seconds=0, nanos=10**9), "t")


def test_the_backend_settings_read_tp_max_spec_bytes() -> None:
    from trainingplatform_backend import settings

    assert settings.load(env={}).max_spec_bytes == limits.DEFAULT_MAX_SPEC_BYTES
    assert settings.load(env={"TP_MAX_SPEC_BYTES": "4096"}).max_spec_bytes == 4096
    for bad in ("0", "100", "x", str(2**40)):
        with pytest.raises(ValueError, match="TP_MAX_SPEC_BYTES"):
            settings.load(env={"TP_MAX_SPEC_BYTES": bad})


def test_a_backend_with_a_smaller_spec_limit_refuses_a_larger_spec(tmp_path: Path) -> None:
    process = BackendProcess(
        f"sqlite:///{tmp_path / 'small.db'}", tmp_path / "data", extra_env={"TP_MAX_SPEC_BYTES": "2048"}
    )
    process.start()
    try:
        spec = _spec()
        spec.advanced.extra.update({"note": "n" * 3000})
        _refused(
            lambda: process.jobs().CreateJob(
                jobs_pb2.CreateJobRequest(spec=spec, dispatch=False), metadata=auth(process.internal_token), timeout=10
            ),
            names="the limit is 2048",
        )
        process.create_job()  # a small spec still passes
    finally:
        process.close()


@pytest.mark.parametrize(
    ("path", "value", "wanted", "not_wanted"),
    [
        # A client does not know the server's TP_MAX_EPOCHS: too few epochs must not state a ceiling it made up.
        ("training.epochs", -3, "spec.training.epochs must be at least 1; got -3", str(limits.MAX_EPOCHS)),
        ("framework", "TIMM", "spec.framework must be a lower-case name", "is required"),
        ("framework", "", "spec.framework is required", "must be a lower-case"),
    ],
)
def test_validate_spec_says_what_is_wrong_and_nothing_it_does_not_know(
    path: str, value: object, wanted: str, not_wanted: str
) -> None:
    message = _refusal_of(path, value)
    assert wanted in message and not_wanted not in message, message
