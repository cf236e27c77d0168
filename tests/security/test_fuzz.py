"""Fuzzing every RPC of the backend: hypothesis-generated request messages and raw malformed bytes.

Whatever arrives, the server answers with a gRPC status (never a crash, never a hang) and stays healthy; nothing
is stored for a request it refused.
"""

from __future__ import annotations

import grpc
import pytest
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
def fuzz_backend(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("fuzz")
    backend = BackendProcess(f"sqlite:///{data / 'fuzz.db'}", data / "data")
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
    for payload in MALFORMED:
        code = raw_call(fuzz_backend.channel, service, method, payload, auth(fuzz_backend.internal_token))
        # Bytes that do not parse are bad input: INVALID_ARGUMENT (or UNAUTHENTICATED/NOT_FOUND first), never a hang.
        assert code in ALLOWED - {grpc.StatusCode.OK}, (method.name, payload, code)
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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_requests_get_a_status_and_the_server_stays_up(fuzz_backend: BackendProcess, data):
    job_id, token = fuzz_backend.create_job()
    service, method = data.draw(st.sampled_from(METHODS))
    cls = (telemetry_pb2 if service.file is telemetry_pb2.DESCRIPTOR else jobs_pb2).__dict__[method.input_type.name]
    request = data.draw(_message_strategy(cls, [job_id, "", "00000000-0000-0000-0000-000000000000"]))
    if method.input_type.name == "StreamMetricsRequest":
        request.points.extend(data.draw(_points()))
    metadata = auth(data.draw(st.sampled_from([token, fuzz_backend.internal_token, "junk"])))
    code = raw_call(fuzz_backend.channel, service, method, request.SerializeToString(), metadata)
    assert code in ALLOWED, (method.name, request, code)
    sequences = fuzz_backend.metric_sequences(job_id)
    assert sequences == sorted(set(sequences))  # never a duplicate row
    assert_healthy(fuzz_backend)
