"""The job status state machine, over the real UpdateStatus and CancelJob RPCs."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from support.backend import auth
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2

S = common_pb2


def update(backend, job_id, token, status, **fields):
    return backend.telemetry().UpdateStatus(
        telemetry_pb2.UpdateStatusRequest(job_id=job_id, status=status, **fields), metadata=auth(token)
    )


def test_happy_path_stores_every_transition_with_reason_and_times(backend):
    job_id, token = backend.create_job()
    for status in (S.JOB_STATUS_QUEUED, S.JOB_STATUS_RUNNING, S.JOB_STATUS_COMPLETED):
        assert update(backend, job_id, token, status, reason=f"to {status}").changed
    job = backend.jobs().GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=auth(token))
    assert job.job.status == S.JOB_STATUS_COMPLETED
    assert [(e.from_status, e.to_status) for e in job.status_events] == [
        (S.JOB_STATUS_UNSPECIFIED, S.JOB_STATUS_PENDING),
        (S.JOB_STATUS_PENDING, S.JOB_STATUS_QUEUED),
        (S.JOB_STATUS_QUEUED, S.JOB_STATUS_RUNNING),
        (S.JOB_STATUS_RUNNING, S.JOB_STATUS_COMPLETED),
    ]
    assert [e.sequence for e in job.status_events] == [1, 2, 3, 4]
    assert job.status_events[2].reason == f"to {S.JOB_STATUS_RUNNING}"
    assert job.job.HasField("start_time") and job.job.HasField("end_time")
    assert job.job.end_time.ToDatetime() >= job.job.start_time.ToDatetime()


def test_repeating_the_current_status_is_a_safe_retry(backend):
    job_id, token = backend.create_job()
    assert update(backend, job_id, token, S.JOB_STATUS_RUNNING).changed
    again = update(backend, job_id, token, S.JOB_STATUS_RUNNING)
    assert again.changed is False and again.status == S.JOB_STATUS_RUNNING
    assert backend.status_events(job_id) == ["PENDING", "RUNNING"]


def test_failed_keeps_the_error_message_and_detail(backend):
    job_id, token = backend.create_job()
    update(backend, job_id, token, S.JOB_STATUS_RUNNING)
    update(
        backend,
        job_id,
        token,
        S.JOB_STATUS_FAILED,
        error_message="CUDA out of memory",
        error_detail="Traceback ...\n" + "frame\n" * 20_000,
    )
    job = backend.jobs().GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=auth(token)).job
    assert job.error_message == "CUDA out of memory"
    assert job.error_detail.startswith("Traceback") and "[truncated" in job.error_detail
    assert len(job.error_detail.encode()) <= 64 * 1024


@pytest.mark.parametrize(
    ("path", "invalid"),
    [
        ((S.JOB_STATUS_RUNNING, S.JOB_STATUS_COMPLETED), S.JOB_STATUS_RUNNING),
        ((S.JOB_STATUS_RUNNING, S.JOB_STATUS_FAILED), S.JOB_STATUS_COMPLETED),
        ((S.JOB_STATUS_CANCELLED,), S.JOB_STATUS_RUNNING),
        ((S.JOB_STATUS_RUNNING,), S.JOB_STATUS_QUEUED),
        ((S.JOB_STATUS_QUEUED,), S.JOB_STATUS_COMPLETED),
        ((), S.JOB_STATUS_COMPLETED),
    ],
)
def test_invalid_transitions_are_refused_naming_the_current_status(module_backend, path, invalid):
    job_id, token = module_backend.create_job()
    for status in path:
        update(module_backend, job_id, token, status)
    before = module_backend.status_events(job_id)
    with pytest.raises(grpc.RpcError) as refused:
        update(module_backend, job_id, token, invalid)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    current = module_backend.job_status(job_id)
    assert f"job is {current}" in refused.value.details()
    assert module_backend.status_events(job_id) == before  # nothing stored


def test_cancel_from_pending_queued_and_running_and_not_after_completion(backend):
    jobs = backend.jobs()
    for path in ((), (S.JOB_STATUS_QUEUED,), (S.JOB_STATUS_QUEUED, S.JOB_STATUS_RUNNING)):
        job_id, token = backend.create_job()
        for status in path:
            update(backend, job_id, token, status)
        cancelled = jobs.CancelJob(
            jobs_pb2.CancelJobRequest(job_id=job_id, reason="user asked"), metadata=auth(backend.internal_token)
        )
        assert cancelled.job.status == S.JOB_STATUS_CANCELLED
        # Cancelling again succeeds without a new event.
        jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), metadata=auth(backend.internal_token))
        assert backend.status_events(job_id)[-1] == "CANCELLED"
        assert backend.status_events(job_id).count("CANCELLED") == 1
    job_id, token = backend.create_job()
    update(backend, job_id, token, S.JOB_STATUS_RUNNING)
    update(backend, job_id, token, S.JOB_STATUS_COMPLETED)
    with pytest.raises(grpc.RpcError) as refused:
        jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), metadata=auth(backend.internal_token))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "COMPLETED" in refused.value.details()


def test_list_jobs_filters_and_pages(backend):
    created = []
    for _ in range(5):
        created.append(backend.create_job()[0])
    running = created[1]
    update(backend, running, backend.internal_token, S.JOB_STATUS_RUNNING)
    jobs = backend.jobs()
    internal = auth(backend.internal_token)
    only_running = jobs.ListJobs(jobs_pb2.ListJobsRequest(statuses=[S.JOB_STATUS_RUNNING]), metadata=internal)
    assert [j.job_id for j in only_running.jobs] == [running]
    seen, token = [], ""
    while True:
        page = jobs.ListJobs(
            jobs_pb2.ListJobsRequest(framework="timm", page_size=2, page_token=token), metadata=internal
        )
        seen += [j.job_id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(created))  # newest first, each once
    with pytest.raises(grpc.RpcError) as refused:
        jobs.ListJobs(
            jobs_pb2.ListJobsRequest(framework="ultralytics", page_token=page_token_of(jobs, internal)),
            metadata=internal,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def page_token_of(jobs, metadata) -> str:
    return jobs.ListJobs(jobs_pb2.ListJobsRequest(framework="timm", page_size=1), metadata=metadata).next_page_token


def test_list_jobs_finds_text_in_the_name_id_or_model_in_every_case_and_pages_with_it(backend):
    jobs = backend.jobs()
    internal = auth(backend.internal_token)

    def create(name: str, model: str = "resnet10t") -> str:
        spec = common_pb2.JobSpec(
            framework="timm",
            model=common_pb2.ModelConfig(name=model),
            dataset=common_pb2.DatasetConfig(name="digits"),
            training=common_pb2.TrainingConfig(epochs=1),
        )
        request = jobs_pb2.CreateJobRequest(spec=spec, display_name=name, dispatch=False)
        return jobs.CreateJob(request, metadata=internal).job.job_id

    sweep = [create(f"LR sweep {i}") for i in range(3)]
    other = create("baseline", model="efficientnet_b0")
    literal = create("100% _done_")

    def found(text: str, page_size: int = 0) -> list[str]:
        seen, token = [], ""
        while True:
            request = jobs_pb2.ListJobsRequest(text=text, page_size=page_size, page_token=token)
            page = jobs.ListJobs(request, metadata=internal)
            seen += [job.job_id for job in page.jobs]
            if not (token := page.next_page_token):
                return seen

    assert found("lr SWEEP", page_size=2) == list(reversed(sweep))  # paged with the filter, newest first
    assert found("EfficientNet") == [other]
    assert found(other[4:20]) == [other]  # part of the job id
    assert found("0% _") == [literal] and found("%") == [literal] and found("_d") == [literal]
    assert found("nothing like it") == []
    # A page token is bound to its filter.
    first = jobs.ListJobs(jobs_pb2.ListJobsRequest(text="sweep", page_size=1), metadata=internal)
    with pytest.raises(grpc.RpcError) as refused:
        jobs.ListJobs(jobs_pb2.ListJobsRequest(text="baseline", page_token=first.next_page_token), metadata=internal)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for bad in ("x" * 251, "a\x1bb"):
        with pytest.raises(grpc.RpcError) as refused:
            jobs.ListJobs(jobs_pb2.ListJobsRequest(text=bad), metadata=internal)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "text" in refused.value.details()


# The transitions common.proto's JobStatus comment documents (the contract other languages' clients follow).
DOCUMENTED = {
    S.JOB_STATUS_PENDING: {S.JOB_STATUS_QUEUED, S.JOB_STATUS_RUNNING, S.JOB_STATUS_CANCELLED, S.JOB_STATUS_FAILED},
    S.JOB_STATUS_QUEUED: {S.JOB_STATUS_RUNNING, S.JOB_STATUS_CANCELLED, S.JOB_STATUS_FAILED},
    S.JOB_STATUS_RUNNING: {S.JOB_STATUS_COMPLETED, S.JOB_STATUS_FAILED, S.JOB_STATUS_CANCELLED},
}
COMMON_PROTO = Path(__file__).resolve().parents[2] / "protos/trainingplatform/common/v1/common.proto"


def test_the_server_allows_exactly_the_transitions_the_contract_documents(module_backend):
    # PENDING -> RUNNING (how a job created with dispatch=false starts) was allowed but missing from the comment.
    comment = COMMON_PROTO.read_text().split("enum JobStatus")[0].split("// The lifecycle of a training job.")[1]
    assert "PENDING -> RUNNING" in " ".join(comment.replace("//", " ").split())
    paths = {
        S.JOB_STATUS_PENDING: (),
        S.JOB_STATUS_QUEUED: (S.JOB_STATUS_QUEUED,),
        S.JOB_STATUS_RUNNING: (S.JOB_STATUS_RUNNING,),
    }
    allowed = {}
    for current, path in paths.items():
        for target in range(S.JOB_STATUS_PENDING, S.JOB_STATUS_CANCELLED + 1):
            if target == current:
                continue
            job_id, token = module_backend.create_job()
            for status in path:
                update(module_backend, job_id, token, status)
            try:
                update(module_backend, job_id, token, target)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
            else:
                allowed.setdefault(current, set()).add(target)
    assert allowed == DOCUMENTED
