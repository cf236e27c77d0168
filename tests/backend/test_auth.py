"""The auth matrix on every RPC of the backend, secrets kept out of logs, TLS and mutual TLS."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.backend import BackendProcess, auth
from support.certs import make_pki
from support.raw_h2 import call, response_data
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_backend.auth import Authenticator, Kind, Principal, mint_job_token
from trainingplatform_backend.store import Store
from trainingplatform_sdk.errors import UnauthenticatedError

OK = grpc.StatusCode.OK
UNAUTH = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED

# Expected status per caller: none, wrong token, another job's token, the job's own token, read token, front-end
# token, internal.
CALLERS = ("none", "wrong", "other_job", "own_job", "read", "frontend", "internal")
TELEMETRY_RULE = (UNAUTH, UNAUTH, DENIED, OK, DENIED, DENIED, OK)
JOB_READ_RULE = (UNAUTH, UNAUTH, DENIED, OK, OK, OK, OK)
JOB_WRITE_RULE = (UNAUTH, UNAUTH, DENIED, DENIED, DENIED, OK, OK)
LIST_RULE = (UNAUTH, UNAUTH, DENIED, DENIED, OK, OK, OK)
FRONTEND_TOKEN = "frontend-token-for-the-auth-matrix"


def _call(backend: BackendProcess, rpc: str, job_id: str, metadata) -> grpc.StatusCode:
    """Calls one RPC about `job_id` and returns its status code."""
    telemetry, jobs = backend.telemetry(), backend.jobs()
    point = telemetry_pb2.MetricPoint(key="k", value=1.0, wall_time=1.0, sequence=1)
    record = telemetry_pb2.LogRecord(level=common_pb2.LOG_LEVEL_INFO, message="m", wall_time=1.0, sequence=1)
    spec = common_pb2.JobSpec(
        framework="timm",
        model=common_pb2.ModelConfig(name="resnet10t"),
        dataset=common_pb2.DatasetConfig(name="digits"),
        training=common_pb2.TrainingConfig(epochs=1),
    )
    calls: dict[str, Callable[[], object]] = {
        "StreamMetrics": lambda: telemetry.StreamMetrics(
            iter([telemetry_pb2.StreamMetricsRequest(job_id=job_id, points=[point])]), metadata=metadata
        ),
        "StreamLogs": lambda: telemetry.StreamLogs(
            iter([telemetry_pb2.StreamLogsRequest(job_id=job_id, records=[record])]), metadata=metadata
        ),
        "UpdateStatus": lambda: telemetry.UpdateStatus(
            telemetry_pb2.UpdateStatusRequest(job_id=job_id, status=common_pb2.JOB_STATUS_RUNNING), metadata=metadata
        ),
        "RecordEpochSummary": lambda: telemetry.RecordEpochSummary(
            telemetry_pb2.RecordEpochSummaryRequest(
                job_id=job_id, summary=telemetry_pb2.EpochSummary(epoch=0, metrics={"a": 1.0})
            ),
            metadata=metadata,
        ),
        "ReportRunInfo": lambda: telemetry.ReportRunInfo(
            telemetry_pb2.ReportRunInfoRequest(job_id=job_id, mlflow_run_id="r"), metadata=metadata
        ),
        "GetStreamCursor": lambda: telemetry.GetStreamCursor(
            telemetry_pb2.GetStreamCursorRequest(job_id=job_id), metadata=metadata
        ),
        "CreateJob": lambda: jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=spec, dispatch=False), metadata=metadata),
        "GetJob": lambda: jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=metadata),
        "ListJobs": lambda: jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=metadata),
        "ListFrameworks": lambda: jobs.ListFrameworks(jobs_pb2.ListFrameworksRequest(), metadata=metadata),
        "CancelJob": lambda: jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), metadata=metadata),
        "ListMetrics": lambda: jobs.ListMetrics(jobs_pb2.ListMetricsRequest(job_id=job_id), metadata=metadata),
        "GetMetricSeries": lambda: jobs.GetMetricSeries(
            jobs_pb2.GetMetricSeriesRequest(job_id=job_id), metadata=metadata
        ),
        "ListLogs": lambda: jobs.ListLogs(jobs_pb2.ListLogsRequest(job_id=job_id), metadata=metadata),
        "SubscribeTelemetry": lambda: next(
            iter(
                jobs.SubscribeTelemetry(
                    jobs_pb2.SubscribeTelemetryRequest(job_id=job_id), metadata=metadata, timeout=10
                )
            )
        ),
    }
    try:
        calls[rpc]()
    except grpc.RpcError as error:
        return error.code()
    return OK


MATRIX = {
    **{
        name: TELEMETRY_RULE
        for name in (
            "StreamMetrics",
            "StreamLogs",
            "UpdateStatus",
            "RecordEpochSummary",
            "ReportRunInfo",
            "GetStreamCursor",
        )
    },
    "CreateJob": JOB_WRITE_RULE,
    "CancelJob": JOB_WRITE_RULE,
    "ListJobs": LIST_RULE,
    "ListFrameworks": LIST_RULE,
    **{name: JOB_READ_RULE for name in ("GetJob", "ListMetrics", "GetMetricSeries", "ListLogs", "SubscribeTelemetry")},
}


def test_every_rpc_is_covered_by_the_matrix():
    services = [
        telemetry_pb2.DESCRIPTOR.services_by_name["TrainingTelemetryService"],
        jobs_pb2.DESCRIPTOR.services_by_name["JobsService"],
    ]
    assert sorted(m.name for s in services for m in s.methods) == sorted(MATRIX)


@pytest.fixture
def debug_backend(database_url: str, tmp_path: Path):
    process = BackendProcess(
        database_url, tmp_path / "data", extra_env={"TP_LOG_LEVEL": "DEBUG", "FRONTEND_AUTH_TOKEN": FRONTEND_TOKEN}
    )
    process.start()
    yield process
    process.close()


def test_auth_matrix_on_every_rpc_and_no_token_in_logs(debug_backend: BackendProcess):
    backend = debug_backend
    tokens: list[str] = [backend.internal_token, backend.read_token, FRONTEND_TOKEN]
    failures = []
    for rpc, expected in MATRIX.items():
        for caller, want in zip(CALLERS, expected, strict=True):
            job_id, own_token = backend.create_job()
            _, other_token = backend.create_job()
            tokens += [own_token, other_token]
            metadata = {
                "none": (),
                "wrong": auth("not-a-token"),
                "other_job": auth(other_token),
                "own_job": auth(own_token),
                "read": auth(backend.read_token),
                "frontend": auth(FRONTEND_TOKEN),
                "internal": auth(backend.internal_token),
            }[caller]
            got = _call(backend, rpc, job_id, metadata)
            if got != want:
                failures.append(f"{rpc} as {caller}: expected {want.name}, got {got.name}")
    assert not failures, "\n".join(failures)
    # A forged token that names a real job but carries a wrong secret is refused too.
    job_id, _ = backend.create_job()
    assert _call(backend, "GetStreamCursor", job_id, auth(f"{job_id}.forged-secret")) == UNAUTH
    log_text = backend.log_text()
    assert "refused" in log_text  # the refusals were logged ...
    for token in tokens:
        assert token not in log_text  # ... without any token
        assert token.split(".")[-1] not in log_text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the metadata, not the database, is under test
@pytest.mark.parametrize("internal_first", [True, False], ids=["internal first", "internal last"])
def test_a_call_with_two_authorization_headers_is_refused_whatever_their_order(
    backend: BackendProcess, internal_first: bool
):
    """Which of two headers counted depended on their order (a proxy that adds one could decide it): neither does."""
    job_id, _ = backend.create_job()
    headers = [("authorization", f"Bearer {backend.internal_token}"), ("authorization", "Bearer not-a-token")]
    metadata = tuple(headers if internal_first else reversed(headers))
    request = jobs_pb2.GetJobRequest(job_id=job_id)
    with pytest.raises(grpc.RpcError) as refused:
        backend.jobs().GetJob(request, metadata=metadata, timeout=10)
    assert refused.value.code() == UNAUTH
    assert "more than one authorization header" in refused.value.details()
    twice = (("authorization", f"Bearer {backend.internal_token}"),) * 2
    with pytest.raises(grpc.RpcError) as refused:
        backend.jobs().GetJob(request, metadata=twice, timeout=10)
    assert refused.value.code() == UNAUTH


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the metadata, not the database, is under test
def test_only_ascii_space_and_tab_around_the_bearer_token_are_ignored(backend: BackendProcess):
    """HTTP allows only SP and HTAB as white space around a header value: a token with other (Unicode) white space
    around it is not the token, however `str.strip` sees it. gRPC's clients refuse to send such a value, any HTTP/2
    client can."""
    job_id, _ = backend.create_job()
    request = jobs_pb2.GetJobRequest(job_id=job_id).SerializeToString()
    token = backend.read_token

    def answered(value: bytes) -> bool:
        reply = call(
            backend.address, "/trainingplatform.jobs.v1.JobsService/GetJob", [(b"authorization", value)], request
        )
        return bool(response_data(reply))

    assert answered(f"Bearer {token}".encode())
    assert answered(f"Bearer  \t {token}".encode())  # ASCII white space after the scheme
    for value in (
        f"Bearer \u00a0{token}".encode(),  # no-break space, as UTF-8
        f"Bearer {token}\u2003".encode(),  # em space
        f"Bearer \u3000{token}".encode(),  # ideographic space
        f"Bearer {token}\x85".encode(),  # next line, as UTF-8
        f"Bearer {token}\xa0".encode("latin-1"),  # no-break space, as one byte (not UTF-8)
        f"Bearer {token}\x0b".encode(),  # vertical tab: ASCII, but not HTTP white space
    ):
        assert not answered(value), value
    assert job_id in backend.jobs().GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=auth(token)).job.job_id


def test_an_unknown_job_token_costs_one_lookup_a_ttl_and_its_job_created_later_is_accepted_after_it(store: Store):
    """A token naming a job id no job has cost a database query on every call; the answer is kept a short time, so
    a job created meanwhile (by another backend process) is accepted once it has passed."""
    lookups: list[str] = []

    def counted(job_id: str) -> str | None:
        lookups.append(job_id)
        return store.token_hash(job_id)

    authenticator = Authenticator(internal_token="internal", read_token="", job_token_hash=counted, missing_ttl_s=1.0)
    job_id = str(uuid.uuid4())
    token, token_hash = mint_job_token(job_id)

    async def refused(calls: int) -> None:
        for _ in range(calls):
            with pytest.raises(UnauthenticatedError):
                await authenticator.authenticate(token)

    asyncio.run(refused(100))
    assert len(lookups) == 1
    store.create_job(
        job_id=job_id,
        token_hash=token_hash,
        framework="timm",
        model_name="resnet10t",
        display_name="",
        model_config={"name": "resnet10t"},
        dataset_config={"name": "digits"},
        training_config={"epochs": 1},
        advanced_config={},
    )
    time.sleep(1.0)
    assert asyncio.run(authenticator.authenticate(token)) == Principal(Kind.JOB, job_id)
    assert len(lookups) == 2


def test_health_needs_no_token(backend: BackendProcess):
    health = health_pb2_grpc.HealthStub(backend.channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(service="trainingplatform.jobs.v1.JobsService")).status
        == health_pb2.HealthCheckResponse.SERVING
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_tls_serves_only_tls_clients(database_url: str, tmp_path: Path):
    pki = make_pki(tmp_path / "pki")
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca_cert.read_bytes())
    backend = BackendProcess(
        database_url,
        tmp_path / "data",
        credentials=credentials,
        extra_env={"TP_TLS_CERT_FILE": str(pki.server_cert), "TP_TLS_KEY_FILE": str(pki.server_key)},
    )
    backend.start()
    try:
        job_id, token = backend.create_job()
        assert backend.jobs().GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=auth(token)).job.job_id == job_id
        with grpc.insecure_channel(backend.address) as plain, pytest.raises(grpc.RpcError) as refused:
            health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=3)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        backend.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_mutual_tls_requires_a_client_certificate(database_url: str, tmp_path: Path):
    pki = make_pki(tmp_path / "pki")
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_cert.read_bytes(),
        private_key=pki.client_key.read_bytes(),
        certificate_chain=pki.client_cert.read_bytes(),
    )
    backend = BackendProcess(
        database_url,
        tmp_path / "data",
        credentials=with_cert,
        extra_env={
            "TP_TLS_CERT_FILE": str(pki.server_cert),
            "TP_TLS_KEY_FILE": str(pki.server_key),
            "TP_TLS_CLIENT_CA_FILE": str(pki.ca_cert),
        },
    )
    backend.start()
    try:
        job_id, token = backend.create_job()
        assert backend.jobs().GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=auth(token)).job.job_id == job_id
        without_cert = grpc.ssl_channel_credentials(root_certificates=pki.ca_cert.read_bytes())
        with grpc.secure_channel(backend.address, without_cert) as channel, pytest.raises(grpc.RpcError) as refused:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        backend.close()
