"""Fuzzing every RPC of the backend: hypothesis-generated request messages and raw malformed bytes.

Whatever arrives, the server answers with a gRPC status (never a crash, never a hang) and stays healthy; nothing
is stored for a request it refused.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.backend import BackendProcess, auth
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2

SERVICES = [
    telemetry_pb2.DESCRIPTOR.services_by_name["TrainingTelemetryService"],
    jobs_pb2.DESCRIPTOR.services_by_name["JobsService"],
]
METHODS = [(service, method) for service in SERVICES for method in service.methods]
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


@pytest.fixture(scope="module")
def fuzz_backend(tmp_path_factory: pytest.TempPathFactory, module_database_url: str):
    data = tmp_path_factory.mktemp("fuzz")
    backend = BackendProcess(module_database_url, data / "data")
    backend.start()
    yield backend
    backend.close()


def raw_call(channel: grpc.Channel, service, method, payload: bytes, metadata) -> grpc.StatusCode:
    """Sends `payload` as the request bytes, bypassing protobuf serialisation."""
    path = f"/{service.full_name}/{method.name}"
    identity = lambda data: data  # noqa: E731 - raw bytes in and out
    try:
        if method.client_streaming:
            channel.stream_unary(path, request_serializer=identity, response_deserializer=identity)(
                iter([payload, payload]), metadata=metadata, timeout=10
            )
        elif method.server_streaming:
            for _ in channel.unary_stream(path, request_serializer=identity, response_deserializer=identity)(
                payload, metadata=metadata, timeout=3
            ):
                pass
        else:
            channel.unary_unary(path, request_serializer=identity, response_deserializer=identity)(
                payload, metadata=metadata, timeout=10
            )
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def assert_healthy(backend: BackendProcess) -> None:
    status = health_pb2_grpc.HealthStub(backend.channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert backend.process is not None and backend.process.poll() is None


MALFORMED = [
    b"\xff\xff\xff\xff",  # an invalid tag
    b"\x0a\xff\xff\xff\xff\x0f",  # a length far beyond the message
    b"\x12\x05abc",  # a truncated length-delimited field
    b"\x08" + b"\xff" * 11,  # a varint longer than 10 bytes
    bytes(range(256)),
    b"\x0a\x03\xc3\x28\x00",  # invalid UTF-8 in a string field
]


@pytest.mark.parametrize(("service", "method"), METHODS, ids=lambda v: getattr(v, "name", ""))
def test_raw_malformed_bytes_get_a_status_and_the_server_stays_up(fuzz_backend: BackendProcess, service, method):
    job_id, _ = fuzz_backend.create_job()
    request_class = message_factory.GetMessageClass(method.input_type)
    for payload in MALFORMED:
        try:
            request_class.FromString(payload)
        except DecodeError:
            parses = False
        else:
            parses = True  # for this request (a field it does not have is skipped: a request without fields)
        code = raw_call(fuzz_backend.channel, service, method, payload, auth(fuzz_backend.internal_token))
        # Bytes that do not parse are bad input: INVALID_ARGUMENT (or UNAUTHENTICATED/NOT_FOUND first), never a hang.
        assert code in (ALLOWED if parses else ALLOWED - {grpc.StatusCode.OK}), (method.name, payload, code)
    assert_healthy(fuzz_backend)
    assert fuzz_backend.metric_sequences(job_id) == []


def _message_strategy(cls, job_ids):
    """Requests with arbitrary field values (hypothesis), their job ids drawn from real and made-up ones."""
    fields = cls.DESCRIPTOR.fields

    def build(draw_values):
        message = cls()
        for field, value in zip(fields, draw_values, strict=True):
            if value is None:
                continue
            try:
                if field.name == "job_id":
                    setattr(message, field.name, value)
                elif field.type == field.TYPE_MESSAGE or field.is_repeated:
                    continue
                else:
                    setattr(message, field.name, value)
            except (TypeError, ValueError):
                pass
        return message

    def value_for(field):
        if field.name == "job_id":
            return st.one_of(st.sampled_from(job_ids), st.text(max_size=50))
        kinds = {
            field.TYPE_STRING: st.text(max_size=300),
            field.TYPE_BOOL: st.booleans(),
            field.TYPE_DOUBLE: st.floats(allow_nan=True, allow_infinity=True),
            field.TYPE_ENUM: st.integers(min_value=-5, max_value=50),
            field.TYPE_INT32: st.integers(min_value=-(2**31), max_value=2**31 - 1),
            field.TYPE_INT64: st.integers(min_value=-(2**63), max_value=2**63 - 1),
        }
        return st.one_of(st.none(), kinds.get(field.type, st.none()))

    return st.tuples(*(value_for(f) for f in fields)).map(build)


def _points():
    return st.lists(
        st.builds(
            telemetry_pb2.MetricPoint,
            key=st.text(max_size=300),
            value=st.floats(allow_nan=True, allow_infinity=True),
            step=st.integers(min_value=-5, max_value=2**40),
            epoch=st.integers(min_value=-5, max_value=1000),
            wall_time=st.floats(allow_nan=True, allow_infinity=True),
            sequence=st.integers(min_value=-5, max_value=2**40),
        ),
        max_size=20,
    )


def _columns():
    """MetricColumns of n points (steps and epochs: n entries or none), keys and key indexes that may not match."""

    def of_length(n):
        def column(elements):
            return st.lists(elements, min_size=n, max_size=n)

        floats = st.floats(allow_nan=True, allow_infinity=True)
        return st.builds(
            telemetry_pb2.MetricColumns,
            keys=st.lists(st.text(max_size=300), max_size=4),
            key_indexes=column(st.integers(min_value=0, max_value=5)),
            values=column(floats),
            steps=st.one_of(st.just([]), column(st.integers(min_value=-5, max_value=2**40))),
            epochs=st.one_of(st.just([]), column(st.integers(min_value=-5, max_value=1000))),
            wall_times=column(floats),
            sequences=column(st.integers(min_value=-5, max_value=2**40)),
        )

    return st.integers(min_value=0, max_value=8).flatmap(of_length)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_requests_get_a_status_and_the_server_stays_up(fuzz_backend: BackendProcess, data):
    job_id, token = fuzz_backend.create_job()
    service, method = data.draw(st.sampled_from(METHODS))
    cls = (telemetry_pb2 if service.file is telemetry_pb2.DESCRIPTOR else jobs_pb2).__dict__[method.input_type.name]
    request = data.draw(_message_strategy(cls, [job_id, "", "00000000-0000-0000-0000-000000000000"]))
    if method.input_type.name == "StreamMetricsRequest":
        request.points.extend(data.draw(_points()))
        if data.draw(st.booleans()):
            request.columns.CopyFrom(data.draw(_columns()))
    metadata = auth(data.draw(st.sampled_from([token, fuzz_backend.internal_token, "junk"])))
    code = raw_call(fuzz_backend.channel, service, method, request.SerializeToString(), metadata)
    assert code in ALLOWED, (method.name, request, code)
    sequences = fuzz_backend.metric_sequences(job_id)
    assert sequences == sorted(set(sequences))  # never a duplicate row
    assert_healthy(fuzz_backend)


# --- boundary values on every field of every request ----------------------------------------------------------
#
# For every scalar field of every request message (walked from the descriptors, so a new field is covered without
# a change here), each boundary value its type holds is sent in an otherwise valid request. The server answers
# with a documented code, never INTERNAL or UNKNOWN, never RESOURCE_EXHAUSTED (the requests are far below the size
# limit: that code would be a status message too large for the client's metadata limit, "Stream removed"), stays
# healthy, and a refused request leaves every table as it was.

STRING_VALUES = {
    "empty": "",
    "100k chars": "x" * 100_000,
    "control chars": "a\x00b\x01c\nd\x7f",
    "bidi and non-BMP": "\u202e\U0001f600\ufffd",
}
INT32_VALUES = {"0": 0, "-1": -1, "2^31-1": 2**31 - 1, "-2^31": -(2**31)}
INT64_VALUES = {**INT32_VALUES, "2^53": 2**53, "2^63-1": 2**63 - 1, "-2^63": -(2**63)}
DOUBLE_VALUES = {
    "0": 0.0,
    "-1": -1.0,
    "1e308": 1e308,
    "-1e308": -1e308,
    "NaN": float("nan"),
    "inf": float("inf"),
    "2^63": 2.0**63,
}
BOOL_VALUES = {"true": True, "false": False}
ENUM_VALUES = {"0": 0, "-1": -1, "2^31-1": 2**31 - 1, "99": 99}
STRUCT_CASES = {
    "NaN": {"k": float("nan")},
    "1e308": {"k": 1e308},
    "100k chars": {"k": "x" * 100_000},
    "NUL in a key": {"a\x00b": 1},
    "NUL in a value": {"k": "a\x00b"},
    "control chars": {"k\n": "a\x01"},
    "deep": {"a": {"b": {"c": {"d": {"e": [1, [2, [3, {"f": "g"}]]]}}}}},
}
TABLES = ("jobs", "metrics", "logs", "status_events", "epoch_summaries", "job_artifacts")
BOUNDARY_REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
}


def _values(field) -> dict[str, object]:  # type: ignore[no-untyped-def]
    by_type = {
        field.TYPE_STRING: STRING_VALUES,
        field.TYPE_BOOL: BOOL_VALUES,
        field.TYPE_DOUBLE: DOUBLE_VALUES,
        field.TYPE_FLOAT: DOUBLE_VALUES,
        field.TYPE_ENUM: ENUM_VALUES,
        field.TYPE_INT32: INT32_VALUES,
        field.TYPE_SINT32: INT32_VALUES,
        field.TYPE_SFIXED32: INT32_VALUES,
        field.TYPE_INT64: INT64_VALUES,
        field.TYPE_SINT64: INT64_VALUES,
        field.TYPE_SFIXED64: INT64_VALUES,
    }
    return by_type.get(field.type, {})


_STRUCT = "google.protobuf.Struct"


def _is_map(field) -> bool:  # type: ignore[no-untyped-def]
    return field.type == field.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _leaves(descriptor, prefix: tuple = (), depth: int = 0):  # type: ignore[no-untyped-def]
    """Every path (a tuple of field descriptors) to a scalar, map or Struct field of a message type."""
    for field in descriptor.fields:
        path = (*prefix, field)
        if field.type != field.TYPE_MESSAGE or _is_map(field) or field.message_type.full_name == _STRUCT:
            yield path
        elif depth < 6:
            yield from _leaves(field.message_type, path, depth + 1)


def _set(message, path, value) -> None:  # type: ignore[no-untyped-def]
    """Sets the field at `path` of `message` (a repeated field's first element; a map's entry `k`)."""
    from google.protobuf import struct_pb2

    for field in path[:-1]:
        if field.is_repeated:
            container = getattr(message, field.name)
            message = container[0] if len(container) else container.add()
        else:
            message = getattr(message, field.name)
    field = path[-1]
    if _is_map(field):
        container = getattr(message, field.name)
        container.clear()
        key, item = value
        container[key] = item
    elif field.type == field.TYPE_MESSAGE:  # a Struct
        struct = getattr(message, field.name)
        assert isinstance(struct, struct_pb2.Struct)
        struct.Clear()
        struct.update(value)
    elif field.is_repeated:
        container = getattr(message, field.name)
        del container[:]
        container.extend(value if isinstance(value, list) else [value])
    else:
        setattr(message, field.name, value)


def boundary_cases(base):  # type: ignore[no-untyped-def]
    """(label, request) for every boundary value of every field of `base`'s type that the field can hold."""
    for path in _leaves(base.DESCRIPTOR):
        name = ".".join(f.name for f in path)
        field = path[-1]
        if _is_map(field):
            key_field, value_field = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            values = [(f"key {label}", (v, 1.0)) for label, v in _values(key_field).items()]
            values += [(f"value {label}", ("acc", v)) for label, v in _values(value_field).items()]
        elif field.type == field.TYPE_MESSAGE:
            values = list(STRUCT_CASES.items())
        else:
            values = list(_values(field).items())
            if field.is_repeated and values:
                values.append(("10^5 elements", [next(iter(_values(field).values()))] * 100_000))
        for label, value in values:
            request = type(base)()
            request.CopyFrom(base)
            try:
                _set(request, path, value)
            except (TypeError, ValueError, OverflowError):
                continue  # the field's type cannot hold the value
            yield f"{name}={label}", request


def _row_counts(backend: BackendProcess) -> tuple[int, ...]:
    from sqlalchemy import text

    with backend._engine.connect() as conn:
        return tuple(int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in TABLES)


@pytest.fixture(scope="module")
def boundary_jobs(fuzz_backend: BackendProcess) -> dict[str, str]:
    """A job that is still PENDING and one that ended (CANCELLED), with some telemetry each."""
    from trainingplatform.common.v1 import common_pb2

    jobs = {}
    for name in ("live", "ended"):
        job_id, _ = fuzz_backend.create_job()
        fuzz_backend.telemetry().StreamMetrics(
            iter(
                [
                    telemetry_pb2.StreamMetricsRequest(
                        job_id=job_id,
                        points=[telemetry_pb2.MetricPoint(key="acc", value=0.5, wall_time=1.0, sequence=1)],
                    )
                ]
            ),
            metadata=auth(fuzz_backend.internal_token),
            timeout=10,
        )
        jobs[name] = job_id
    fuzz_backend.jobs().CancelJob(
        jobs_pb2.CancelJobRequest(job_id=jobs["ended"]), metadata=auth(fuzz_backend.internal_token), timeout=10
    )
    assert common_pb2.JOB_STATUS_CANCELLED  # the ended job is terminal: subscriptions to it end at once
    return jobs


def _base_requests(jobs: dict[str, str]):  # type: ignore[no-untyped-def]
    """A valid request of every method; the ones that would change a job use the ended one (so they are no-ops)."""
    from trainingplatform.common.v1 import common_pb2

    live, ended = jobs["live"], jobs["ended"]
    spec = common_pb2.JobSpec(
        framework="timm",
        model=common_pb2.ModelConfig(name="resnet10t", num_classes=10, image_size=32),
        dataset=common_pb2.DatasetConfig(name="digits", path="", format="builtin"),
        training=common_pb2.TrainingConfig(
            epochs=1, batch_size=8, learning_rate=0.01, device="cpu", log_every_n_steps=10, num_workers=0
        ),
        advanced=common_pb2.AdvancedConfig(
            optimizer="sgd", lr_scheduler="cosine", weight_decay=0.0, momentum=0.9, warmup_epochs=0.0, seed=1
        ),
    )
    spec.advanced.augmentation.scale = 0.5
    spec.advanced.extra.update({"mosaic": 1.0})
    summary = telemetry_pb2.EpochSummary(epoch=0, metrics={"acc": 1.0}, duration_seconds=1.0)
    summary.end_time.FromSeconds(1_700_000_000)
    return {
        "CreateJob": jobs_pb2.CreateJobRequest(spec=spec, display_name="d", dispatch=False, request_id=""),
        "GetJob": jobs_pb2.GetJobRequest(job_id=live),
        "ListJobs": jobs_pb2.ListJobsRequest(statuses=[common_pb2.JOB_STATUS_PENDING], framework="timm", page_size=5),
        "ListFrameworks": jobs_pb2.ListFrameworksRequest(),
        "CancelJob": jobs_pb2.CancelJobRequest(job_id=ended, reason="r"),
        "ListMetrics": jobs_pb2.ListMetricsRequest(job_id=live, keys=["acc"], page_size=5),
        "GetMetricSeries": jobs_pb2.GetMetricSeriesRequest(
            job_id=live, keys=["acc"], max_points=10, min_step=0, max_step=100
        ),
        "ListLogs": jobs_pb2.ListLogsRequest(job_id=live, min_level=common_pb2.LOG_LEVEL_INFO, page_size=5),
        "SubscribeTelemetry": jobs_pb2.SubscribeTelemetryRequest(
            job_id=ended, after=jobs_pb2.TelemetryCursor(metric_sequence=1)
        ),
        "StreamMetrics": telemetry_pb2.StreamMetricsRequest(
            job_id=ended,
            points=[telemetry_pb2.MetricPoint(key="acc", value=0.5, step=1, epoch=0, wall_time=1.0, sequence=1)],
        ),
        "StreamLogs": telemetry_pb2.StreamLogsRequest(
            job_id=ended,
            records=[
                telemetry_pb2.LogRecord(
                    level=common_pb2.LOG_LEVEL_INFO, message="m", epoch=0, step=1, wall_time=1.0, sequence=1, source="s"
                )
            ],
        ),
        "UpdateStatus": telemetry_pb2.UpdateStatusRequest(
            job_id=ended, status=common_pb2.JOB_STATUS_CANCELLED, reason="r", error_message="e", error_detail="d"
        ),
        "RecordEpochSummary": telemetry_pb2.RecordEpochSummaryRequest(job_id=ended, summary=summary),
        "ReportRunInfo": telemetry_pb2.ReportRunInfoRequest(
            job_id=ended,
            mlflow_run_id="r",
            mlflow_tracking_uri="http://mlflow:5000",
            artifacts=[telemetry_pb2.Artifact(name="best", uri="file:///best.pt", size_bytes=1)],
        ),
        "GetStreamCursor": telemetry_pb2.GetStreamCursorRequest(job_id=ended),
    }


def call_for_status(channel: grpc.Channel, service, method, payload: bytes, metadata) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    """Like `raw_call`, with the status message too."""
    path = f"/{service.full_name}/{method.name}"
    identity = lambda data: data  # noqa: E731 - raw bytes in and out
    try:
        if method.client_streaming:
            channel.stream_unary(path, request_serializer=identity, response_deserializer=identity)(
                iter([payload]), metadata=metadata, timeout=10
            )
        elif method.server_streaming:
            for _ in channel.unary_stream(path, request_serializer=identity, response_deserializer=identity)(
                payload, metadata=metadata, timeout=2
            ):
                pass
        else:
            channel.unary_unary(path, request_serializer=identity, response_deserializer=identity)(
                payload, metadata=metadata, timeout=10
            )
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def test_every_request_has_a_base_and_boundary_cases() -> None:
    """A new RPC needs a valid base request here, or its fields go unfuzzed."""
    bases = _base_requests({"live": "j", "ended": "j"})
    assert {m.name for _, m in METHODS} == set(bases)
    for name, base in bases.items():
        assert base.DESCRIPTOR.full_name in {m.input_type.full_name for _, m in METHODS if m.name == name}
        assert list(boundary_cases(base)) or not base.DESCRIPTOR.fields, name  # a request without fields has none


@pytest.mark.parametrize(("service", "method"), METHODS, ids=lambda v: getattr(v, "name", ""))
def test_boundary_values_of_every_field_get_a_documented_status(
    fuzz_backend: BackendProcess, boundary_jobs: dict[str, str], service, method
) -> None:
    base = _base_requests(boundary_jobs)[method.name]
    metadata = auth(fuzz_backend.internal_token)
    code, details = call_for_status(fuzz_backend.channel, service, method, base.SerializeToString(), metadata)
    assert code is grpc.StatusCode.OK or (method.server_streaming and code is grpc.StatusCode.DEADLINE_EXCEEDED), (
        code,
        details,
    )
    failures = []
    cases = 0
    for label, request in boundary_cases(base):
        cases += 1
        before = _row_counts(fuzz_backend)
        code, details = call_for_status(fuzz_backend.channel, service, method, request.SerializeToString(), metadata)
        allowed = BOUNDARY_REFUSALS | {grpc.StatusCode.OK}
        if method.server_streaming and "keep_following=true" in label:
            allowed.add(grpc.StatusCode.DEADLINE_EXCEEDED)  # it follows the ended job until the deadline
        if code not in allowed:
            failures.append((label, code, details[:200]))
        elif code is not grpc.StatusCode.OK:
            if len(details) > 1000:
                failures.append((label, code, f"a {len(details)}-character message"))
            after = _row_counts(fuzz_backend)
            if after != before:
                failures.append((label, code, f"a refused request changed the tables: {before} -> {after}"))
    assert cases or not base.DESCRIPTOR.fields  # a request without fields has no boundary
    assert not failures, failures
    assert_healthy(fuzz_backend)
