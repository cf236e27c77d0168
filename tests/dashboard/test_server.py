"""The dashboard server against a real backend and a real `tp-dashboard` process: sessions, CSRF, headers, the JSON
API, error mapping, the live event streams (fan-out, resume by Last-Event-ID) and that no backend token ever
reaches a browser."""

from __future__ import annotations

import asyncio
import json
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.backend import BackendProcess
from support.dashboard import DashboardProcess, SseReader, own_stack
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.telemetry import LoggerSettings

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BackendProcess, DashboardProcess]]:
    """One backend (SQLite: the dashboard never touches the database) and one dashboard for the module."""
    with own_stack(tmp_path_factory.mktemp("dashboard"), {"TP_DASHBOARD_LINGER_S": "0.5"}) as pair:
        yield pair


@pytest.fixture
def backend(stack: tuple[BackendProcess, DashboardProcess]) -> BackendProcess:
    return stack[0]


@pytest.fixture
def dashboard(stack: tuple[BackendProcess, DashboardProcess]) -> DashboardProcess:
    return stack[1]


def logged_in(dashboard: DashboardProcess) -> httpx.Client:
    """A client with a session (as a browser that followed the login URL)."""
    client = httpx.Client(base_url=dashboard.url, timeout=30)
    response = client.get(dashboard.login_url, follow_redirects=False)
    assert response.status_code == 303, response.text
    return client


def csrf(client: httpx.Client) -> dict[str, str]:
    return {"X-CSRF-Token": client.get("/api/session").json()["csrf_token"]}


def logger_for(backend: BackendProcess, job_id: str, token: str, tmp_path: Path) -> TrainingLogger:
    return TrainingLogger(
        job_id,
        backend_address=backend.address,
        token=token,
        spool_dir=tmp_path / f"spool-{job_id}",
        settings=LoggerSettings(flush_interval_s=0.02),
    )


def wait_for(predicate, timeout: float = 15, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def collect_points(
    reader: SseReader, expected: set[int], timeout: float = 20, others: dict[str, list[Any]] | None = None
) -> list[int]:
    """Metric sequences read from the stream until every expected one arrived (a list: duplicates would show).
    The other events read meanwhile go to `others` by kind, when given: metrics and logs are separate streams, so a
    log line logged after the points may arrive before the last of them."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while not expected.issubset(seen):
        event = reader.next(timeout=max(0.1, deadline - time.monotonic()))
        assert event is not None, f"stream ended; got {len(seen)} of {len(expected)} points"
        if event.event == "metrics":
            seen.extend(point["sequence"] for point in event.json()["points"])
        elif others is not None:
            others.setdefault(event.event, []).append(event)
    return seen


# --- sessions, CSRF, headers -----------------------------------------------------------------------------------


def test_every_page_and_api_answers_401_without_a_session(backend: BackendProcess, dashboard: DashboardProcess) -> None:
    job_id, _ = backend.create_job()
    anonymous = httpx.Client(base_url=dashboard.url, timeout=10)
    for path in ("/", f"/jobs/{job_id}", f"/jobs/{job_id}/system", "/compare?jobs=a,b", "/new"):
        response = anonymous.get(path)
        assert response.status_code == 401, path
        assert response.headers["content-type"].startswith("text/html")
        assert "login" in response.text and "<script" not in response.text
    for path in (
        "/api/session",
        "/api/jobs",
        f"/api/jobs/{job_id}",
        f"/api/jobs/{job_id}/series",
        f"/api/jobs/{job_id}/logs",
        f"/api/jobs/{job_id}/events",
        "/api/events/jobs",
        "/api/frameworks",
        "/static/js/common.js",
    ):
        response = anonymous.get(path)
        assert response.status_code == 401, path
        if path.startswith("/api/"):
            assert response.json()["error"]["code"] == "UNAUTHENTICATED"
    for path in ("/api/jobs", f"/api/jobs/{job_id}/cancel"):
        assert anonymous.post(path, json={}).status_code == 401
    # A made-up cookie is no session.
    forged = httpx.Client(base_url=dashboard.url, timeout=10, cookies={"tp_session": "forged"})
    assert forged.get("/api/jobs").status_code == 401
    assert backend.job_status(job_id) != "CANCELLED"


def test_login_sets_a_strict_httponly_cookie_and_redirects_to_a_clean_url(dashboard: DashboardProcess) -> None:
    client = httpx.Client(base_url=dashboard.url, timeout=10)
    for bad in ("/login", "/login?token=", "/login?token=wrong" + dashboard.token[5:]):
        response = client.get(bad, follow_redirects=False)
        assert response.status_code == 401
        assert "set-cookie" not in response.headers
    response = client.get(dashboard.login_url, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")}
    assert cookie.startswith("tp_session=")
    assert "httponly" in attributes
    assert attributes["samesite"].lower() == "samesite=strict"
    assert attributes["path"] == "Path=/"
    assert dashboard.token not in cookie
    page = client.get("/")
    assert page.status_code == 200, page.text
    assert client.get("/api/jobs").status_code == 200


def test_a_post_needs_the_session_csrf_token(backend: BackendProcess, dashboard: DashboardProcess) -> None:
    job_id, _ = backend.create_job()
    client = logged_in(dashboard)
    other = logged_in(dashboard)
    for headers in ({}, {"X-CSRF-Token": ""}, {"X-CSRF-Token": "wrong"}, csrf(other)):
        response = client.post(f"/api/jobs/{job_id}/cancel", headers=headers)
        assert response.status_code == 403, headers
        # The field marks the CSRF refusal: the page retries this 403 only (with the token read again).
        assert response.json()["error"] == {
            "code": "PERMISSION_DENIED",
            "message": "missing or wrong X-CSRF-Token header (GET /api/session gives it)",
            "field": "X-CSRF-Token",
        }
        response = client.post("/api/jobs", json={"framework": "timm"}, headers=headers)
        assert response.status_code == 403
    assert backend.job_status(job_id) == "PENDING"


def test_every_answer_has_the_csp_and_security_headers(backend: BackendProcess, dashboard: DashboardProcess) -> None:
    job_id, _ = backend.create_job()
    client = logged_in(dashboard)
    anonymous = httpx.Client(base_url=dashboard.url, timeout=10)
    responses = [
        client.get("/"),
        client.get("/new"),
        client.get("/api/jobs"),
        client.get(f"/api/jobs/{job_id}"),
        client.get("/api/jobs/no-such-job"),
        client.get("/static/js/common.js"),
        client.post(f"/api/jobs/{job_id}/cancel"),
        anonymous.get("/"),
        anonymous.get("/api/jobs"),
        anonymous.get(dashboard.login_url, follow_redirects=False),
        anonymous.get("/login?token=nope"),
        anonymous.get("/healthz"),
    ]
    for response in responses:
        assert response.headers["content-security-policy"] == CSP, response.url
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    reader = SseReader(client, f"/api/jobs/{job_id}/events")
    try:
        assert reader.headers is not None and reader.headers["content-security-policy"] == CSP
    finally:
        reader.close()


# --- reads and changes --------------------------------------------------------------------------------------------


def test_jobs_list_and_a_jobs_detail(backend: BackendProcess, dashboard: DashboardProcess, tmp_path: Path) -> None:
    job_id, token = backend.create_job(model="resnet18", epochs=2)
    logger = logger_for(backend, job_id, token, tmp_path)
    logger.update_status("RUNNING")
    for step in range(1, 21):
        logger.log_metric("train/loss", 1.0 / step, step=step, epoch=0)
    logger.log_message("hello <img src=x onerror=alert(1)>", level="WARNING")
    logger.log_epoch_summary(0, {"train/loss": 0.05, "val/accuracy": 0.9})
    logger.update_status("COMPLETED")
    logger.close(timeout=15)
    client = logged_in(dashboard)

    jobs = client.get("/api/jobs").json()["jobs"]
    job = next(job for job in jobs if job["job_id"] == job_id)
    assert job["status"] == "COMPLETED"
    assert (job["framework"], job["model"], job["dataset"]) == ("timm", "resnet18", "digits")
    assert job["created_at"].endswith("Z") and job["started_at"] and job["ended_at"]
    assert job["duration_s"] is not None and job["duration_s"] >= 0
    assert job["latest_metric"] == {"key": "train/loss", "value": pytest.approx(0.05), "step": 20}
    created = [j["created_at"] for j in jobs]
    assert created == sorted(created, reverse=True)
    assert job_id in {j["job_id"] for j in client.get("/api/jobs?status=COMPLETED").json()["jobs"]}
    assert job_id not in {j["job_id"] for j in client.get("/api/jobs?status=RUNNING").json()["jobs"]}
    assert job_id in {j["job_id"] for j in client.get("/api/jobs?framework=timm&q=RESNET18").json()["jobs"]}
    assert job_id not in {j["job_id"] for j in client.get("/api/jobs?framework=ultralytics").json()["jobs"]}
    bad = client.get("/api/jobs?status=SLEEPING")
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "status"

    detail = client.get(f"/api/jobs/{job_id}").json()
    assert detail["job"]["job_id"] == job_id
    assert detail["spec"]["model"]["name"] == "resnet18"
    assert detail["spec"]["training"]["epochs"] == 2
    assert "extra" in detail["spec"]["advanced"]
    assert [e["status"] for e in detail["status_events"]] == ["PENDING", "RUNNING", "COMPLETED"]
    assert detail["epoch_summaries"] == [
        {"epoch": 0, "metrics": {"train/loss": 0.05, "val/accuracy": 0.9}, "start_time": None, "end_time": None}
    ] or detail["epoch_summaries"][0]["metrics"] == {"train/loss": 0.05, "val/accuracy": 0.9}
    assert detail["artifacts"] == [] and detail["mlflow"] is None

    series = client.get(f"/api/jobs/{job_id}/series?keys=train/loss&max_points=5").json()
    assert series["last_sequence"] == 20
    (loss,) = series["series"]
    assert loss["key"] == "train/loss" and loss["total_points"] == 20 and len(loss["buckets"]) <= 5
    assert loss["buckets"][0]["max"] == 1.0 and loss["buckets"][-1]["last"] == pytest.approx(0.05)
    assert client.get(f"/api/jobs/{job_id}/series?max_points=0").json()["error"]["field"] == "max_points"

    logs = client.get(f"/api/jobs/{job_id}/logs?after=0&limit=1000&min_level=INFO").json()
    assert [r["message"] for r in logs["records"]] == ["hello <img src=x onerror=alert(1)>"]
    assert logs["records"][0]["level"] == "WARNING"
    assert logs["next_after"] == logs["records"][0]["sequence"]
    assert client.get(f"/api/jobs/{job_id}/logs?after={logs['next_after']}").json()["records"] == []
    assert client.get(f"/api/jobs/{job_id}/logs?min_level=ERROR").json()["records"] == []

    missing = client.get("/api/jobs/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"


def test_series_key_parameters_name_keys_with_commas_exactly(
    backend: BackendProcess, dashboard: DashboardProcess, tmp_path: Path
) -> None:
    # A metric key may hold commas (the backend refuses only control characters): `keys=a,b` cannot name one,
    # each repeated `key` parameter names one key exactly.
    job_id, token = backend.create_job(epochs=1)
    logger = logger_for(backend, job_id, token, tmp_path)
    for key in ("loss, top 1", "loss", " top 1", "a+b&c=d", "損失"):
        logger.log_metric(key, 1.0, step=1)
    assert logger.flush(timeout=15)
    logger.close(timeout=15)
    client = logged_in(dashboard)

    answer = client.get(f"/api/jobs/{job_id}/series", params=[("key", "loss, top 1"), ("key", "a+b&c=d")]).json()
    assert sorted(s["key"] for s in answer["series"]) == ["a+b&c=d", "loss, top 1"]
    answer = client.get(f"/api/jobs/{job_id}/series", params=[("key", "損失"), ("keys", "loss")]).json()
    assert sorted(s["key"] for s in answer["series"]) == ["loss", "損失"]


def test_create_maps_backend_errors_with_their_field(backend: BackendProcess, dashboard: DashboardProcess) -> None:
    client = logged_in(dashboard)
    headers = csrf(client)
    base = {"framework": "timm", "model": "resnet10t", "dataset": {"name": "digits"}, "epochs": 2}
    cases = [
        ({**base, "epochs": 0}, "spec.training.epochs"),
        ({**base, "epochs": "many"}, "epochs"),
        ({**base, "model": ""}, "spec.model.name"),
        ({**base, "advanced_config": {"momentum": "fast"}}, "advanced_config.momentum"),
        ({**base, "advanced_config": "{not json"}, "advanced_config"),
    ]
    for body, field in cases:
        response = client.post("/api/jobs", json=body, headers=headers)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert error["code"] == "INVALID_ARGUMENT"
        assert error["field"] == field, error
        assert error["message"]
    # A valid spec for which the backend has no trainer: FAILED_PRECONDITION -> 409.
    response = client.post("/api/jobs", json={**base, "display_name": "from the dashboard"}, headers=headers)
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "FAILED_PRECONDITION"
    # Which is why the new-job form offers no framework here: the backend has none to dispatch to.
    assert client.get("/api/frameworks").json() == {"frameworks": []}


# Every number the new-job form (or a script) can send, as raw JSON text: non-finite values and integers past what
# the spec's fields hold are refused with 400 naming the field, never a 500 and never stored.
_BASE_BODY = '"framework":"timm","model":"resnet10t","dataset":"digits"'
_TOP_LEVEL_INTS = ["epochs", "image_size", "batch_size"]
_ADVANCED_NUMBERS = [
    "weight_decay",
    "momentum",
    "warmup_epochs",
    "seed",
    "augmentation.horizontal_flip_probability",
    "augmentation.scale",
    "augmentation.color_jitter",
    "extra.learning_rate",
    "learning_rate",  # not a field of advanced_config: kept in its extra
]
_BAD_NUMBERS = [
    "1e400",
    "-1e400",
    "NaN",
    "Infinity",
    "-Infinity",
    "99999999999999999999999",
    "-99999999999999999999999",
    "1e10",
    "4294967296",  # past int32 and past a seed's 2**32 - 1
    "1" + "0" * 5000,  # past Python's 4300-digit limit for int(str)
]


def _body_with(field: str, raw: str) -> str:
    epochs = "" if field == "epochs" else ',"epochs":1'
    if field in _TOP_LEVEL_INTS:
        return f'{{{_BASE_BODY}{epochs},"{field}":{raw}}}'
    section, _, key = field.rpartition(".")
    inner = f'{{"{key}":{raw}}}'
    advanced = f'{{"{section}":{inner}}}' if section else inner
    return f'{{{_BASE_BODY}{epochs},"advanced_config":{advanced}}}'


_NON_FINITE = ["1e400", "-1e400", "NaN", "Infinity", "-Infinity"]
_EXTRA_NUMBERS = ["extra.learning_rate", "learning_rate"]  # a finite number in extra is the framework's to check


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        pytest.param(field, raw, id=f"{field}={raw[:24]}")
        for field in _TOP_LEVEL_INTS + _ADVANCED_NUMBERS
        for raw in (_NON_FINITE if field in _EXTRA_NUMBERS else _BAD_NUMBERS)
    ],
)
def test_create_refuses_a_non_finite_or_out_of_range_number_by_name(
    backend: BackendProcess, dashboard: DashboardProcess, field: str, raw: str
) -> None:
    client = logged_in(dashboard)
    headers = {**csrf(client), "Content-Type": "application/json"}
    log_before = len(dashboard.log_text())
    response = client.post("/api/jobs", content=_body_with(field, raw), headers=headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    name = field.rpartition(".")[2]
    if len(raw) > 4300:
        assert error["field"] is None and "not JSON" in error["message"], error  # json.loads refuses it
    elif field in _TOP_LEVEL_INTS:
        assert error["field"] == field, error
        assert field in error["message"], error
    elif name == "seed" and raw[0] in "-129":
        assert error["field"].startswith("advanced_config"), error  # protobuf's range: the section is named
    else:
        assert name in error["field"], error
    assert len(error["message"]) < 300, error
    assert "Traceback" not in dashboard.log_text()[log_before:]


def test_create_names_the_field_of_a_whole_number_given_as_odd_text(
    backend: BackendProcess, dashboard: DashboardProcess
) -> None:
    client = logged_in(dashboard)
    headers = csrf(client)
    base = {"framework": "timm", "model": "resnet10t", "dataset": "digits"}
    for value in ["\u00b2", "1e400", "99999999999999999999999", "- 3", "NaN"]:
        response = client.post("/api/jobs", json={**base, "epochs": value}, headers=headers)
        assert response.status_code == 400, (value, response.text)
        assert response.json()["error"]["field"] == "epochs", response.text
    # The error quotes a non-finite number as the JSON that was sent.
    response = client.post(
        "/api/jobs", content='{"epochs":NaN}', headers={**headers, "Content-Type": "application/json"}
    )
    assert response.json()["error"]["message"] == "epochs must be a whole number, got NaN", response.text


def test_create_leaves_the_epochs_ceiling_to_the_backend(backend: BackendProcess, dashboard: DashboardProcess) -> None:
    """Too many epochs: the backend's TP_MAX_EPOCHS (10000 by default) applies and its error is passed on as 400."""
    client = logged_in(dashboard)
    headers = csrf(client)
    base = {"framework": "timm", "model": "resnet10t", "dataset": "digits"}
    response = client.post("/api/jobs", json={**base, "epochs": 20_000}, headers=headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == "spec.training.epochs" and "10000" in error["message"], error


def test_create_states_no_wrong_epochs_bound_for_too_few(backend: BackendProcess, dashboard: DashboardProcess) -> None:
    client = logged_in(dashboard)
    headers = csrf(client)
    base = {"framework": "timm", "model": "resnet10t", "dataset": "digits"}
    response = client.post("/api/jobs", json={**base, "epochs": -3}, headers=headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == "spec.training.epochs", error
    assert "1000000" not in error["message"], error


def test_cancel_ends_the_job_cancelled(backend: BackendProcess, dashboard: DashboardProcess) -> None:
    job_id, _ = backend.create_job()
    client = logged_in(dashboard)
    headers = csrf(client)
    response = client.post(f"/api/jobs/{job_id}/cancel", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["job"]["status"] == "CANCELLED"
    assert backend.job_status(job_id) == "CANCELLED"
    assert client.post(f"/api/jobs/{job_id}/cancel", headers=headers).status_code == 200
    missing = client.post("/api/jobs/00000000-0000-0000-0000-000000000000/cancel", headers=headers)
    assert missing.status_code == 404


# --- event streams ----------------------------------------------------------------------------------------------


def test_events_arrive_live_and_the_stream_ends_with_the_job(
    backend: BackendProcess, dashboard: DashboardProcess, tmp_path: Path
) -> None:
    job_id, token = backend.create_job()
    client = logged_in(dashboard)
    reader = SseReader(client, f"/api/jobs/{job_id}/events")
    try:
        assert reader.status_code == 200
        assert reader.headers is not None and reader.headers["content-type"].startswith("text/event-stream")
        logger = logger_for(backend, job_id, token, tmp_path)
        logger.update_status("RUNNING")
        started = time.monotonic()
        for step in range(1, 201):
            logger.log_metric("train/loss", 1.0 / step, step=step)
        logger.log_message("epoch 0 done")
        logger.log_epoch_summary(0, {"val/accuracy": 0.5})
        kinds: dict[str, list[Any]] = {}
        seen = collect_points(reader, set(range(1, 201)), others=kinds)
        assert sorted(seen) == list(range(1, 201)), "every point exactly once"
        assert time.monotonic() - started < 10
        logger.update_status("COMPLETED")
        logger.close(timeout=15)
        while True:
            event = reader.next(timeout=15)
            if event is None:
                break
            kinds.setdefault(event.event, []).append(event)
        assert [e.json()["status"] for e in kinds["status"]][-1] == "COMPLETED"
        assert kinds["logs"][0].json()["records"][0]["message"] == "epoch 0 done"
        assert kinds["epoch_summary"][0].json()["metrics"] == {"val/accuracy": 0.5}
        assert kinds["end"][0].json() == {"status": "COMPLETED"}
        assert all(e.id for name in ("status", "logs", "epoch_summary") for e in kinds[name])
    finally:
        reader.close()


def test_a_reconnect_with_last_event_id_misses_nothing_and_repeats_nothing(
    backend: BackendProcess, dashboard: DashboardProcess, tmp_path: Path
) -> None:
    job_id, token = backend.create_job()
    client = logged_in(dashboard)
    logger = logger_for(backend, job_id, token, tmp_path)
    logger.update_status("RUNNING")
    first = SseReader(client, f"/api/jobs/{job_id}/events")
    for step in range(1, 151):
        logger.log_metric("train/loss", float(step), step=step)
    seen = collect_points(first, set(range(1, 101)))
    first.close()
    last_id = first.last_id
    assert last_id is not None
    # The tab sleeps while the job goes on.
    for step in range(151, 301):
        logger.log_metric("train/loss", float(step), step=step)
    assert logger.flush(timeout=15)
    second = SseReader(client, f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": last_id})
    try:
        seen += collect_points(second, set(range(1, 301)) - set(seen))
        assert sorted(seen) == list(range(1, 301)), "each point exactly once across the reconnect"
        extra = []  # nothing more: no point comes twice
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            try:
                event = second.next(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if event is not None and event.event == "metrics":
                extra.extend(point["sequence"] for point in event.json()["points"])
        assert extra == []
    finally:
        second.close()
    # A page that read the series first continues from its last_sequence with after=m<N>.
    series = client.get(f"/api/jobs/{job_id}/series").json()
    third = SseReader(client, f"/api/jobs/{job_id}/events?after=m{series['last_sequence']}")
    try:
        logger.log_metric("train/loss", 0.0, step=301)
        assert collect_points(third, {301}) == [301]
    finally:
        third.close()
        logger.update_status("COMPLETED")
        logger.close(timeout=15)
    bad = client.get(f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": "not-a-cursor"})
    assert bad.status_code == 400


@pytest.mark.parametrize(
    "after",
    [
        "m0l0s0e9999999999999999",
        "e1000000001",  # the backend's limit: the last epoch (999999999) + 1
        "m9007199254740992",  # 2**53: past the backend's MAX_SEQUENCE
        "l9999999999999999",
        "s9999999999999999",
        "m00000000000000000",  # 17 digits
    ],
)
def test_events_refuse_a_cursor_part_out_of_range_before_the_stream_starts(
    backend: BackendProcess, dashboard: DashboardProcess, after: str
) -> None:
    job_id, _ = backend.create_job()
    client = logged_in(dashboard)
    for headers, query in (({}, f"?after={after}"), ({"Last-Event-ID": after}, "")):
        with client.stream("GET", f"/api/jobs/{job_id}/events{query}", headers=headers, timeout=10) as response:
            assert response.status_code == 400, (after, response.status_code)
            response.read()
            error = response.json()["error"]
        assert error["code"] == "INVALID_ARGUMENT" and error["field"] == "after", error


def test_events_accept_the_largest_cursor_the_backend_takes(
    backend: BackendProcess, dashboard: DashboardProcess
) -> None:
    job_id, _ = backend.create_job()
    client = logged_in(dashboard)
    reader = SseReader(client, f"/api/jobs/{job_id}/events?after=m9007199254740991l0s0e1000000000")
    try:
        assert reader.status_code == 200
        event = reader.next(timeout=5)
        assert event is None or event.event != "error", event
    except queue.Empty:
        pass  # nothing to send, and no error
    finally:
        reader.close()


@pytest.mark.parametrize("forged", ["e50", "e1000000000"])
def test_an_epoch_summary_part_past_the_jobs_summaries_resumes_from_the_last_one_it_has(
    backend: BackendProcess, dashboard: DashboardProcess, tmp_path: Path, forged: str
) -> None:
    # An id past the job's epoch summaries (forged, or from another deployment) skips none that come later, for the
    # tab that sent it and for the others, which share the job's one subscription.
    job_id, token = backend.create_job()
    client = logged_in(dashboard)
    logger = logger_for(backend, job_id, token, tmp_path)
    logger.update_status("RUNNING")
    for epoch in (0, 1):
        logger.log_epoch_summary(epoch, {"val/accuracy": epoch / 10})
    assert logger.flush(timeout=15)
    tabs = [  # the forged id first: it starts the job's subscription
        SseReader(client, f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": forged}),
        SseReader(client, f"/api/jobs/{job_id}/events"),
    ]
    try:
        for epoch in (2, 3):
            logger.log_epoch_summary(epoch, {"val/accuracy": epoch / 10})
        assert logger.flush(timeout=15)
        for tab, expected in zip(tabs, ([2, 3], [0, 1, 2, 3]), strict=True):
            epochs: list[int] = []
            while epochs != expected:
                event = tab.next(timeout=15)
                assert event is not None and len(epochs) < len(expected), (forged, epochs)
                if event.event == "epoch_summary":
                    epochs.append(event.json()["epoch"])
    finally:
        for tab in tabs:
            tab.close()
        logger.update_status("COMPLETED")
        logger.close(timeout=15)


def test_two_tabs_share_one_backend_subscription(
    backend: BackendProcess, dashboard: DashboardProcess, tmp_path: Path
) -> None:
    job_id, token = backend.create_job()
    client = logged_in(dashboard)
    before = dashboard.health()
    logger = logger_for(backend, job_id, token, tmp_path)
    logger.update_status("RUNNING")
    tabs = [SseReader(client, f"/api/jobs/{job_id}/events") for _ in range(3)]
    try:
        for step in range(1, 101):
            logger.log_metric("train/acc", step / 100, step=step)
        for tab in tabs:
            assert sorted(collect_points(tab, set(range(1, 101)))) == list(range(1, 101))
        after = dashboard.health()
        assert after["job_subscriptions_total"] - before["job_subscriptions_total"] == 1
        assert after["catchup_subscriptions_total"] == before["catchup_subscriptions_total"]
        assert after["event_stream_clients"] >= 3
    finally:
        for tab in tabs:
            tab.close()
        logger.update_status("COMPLETED")
        logger.close(timeout=15)
    # The subscription ends after the last tab left (linger 0.5 s here) or with the job.
    wait_for(lambda: dashboard.health()["job_subscriptions_open"] == 0, what="the subscription to end")


def test_the_jobs_feed_pushes_new_jobs_and_status_changes(
    backend: BackendProcess, dashboard: DashboardProcess, tmp_path: Path
) -> None:
    client = logged_in(dashboard)
    tabs = [SseReader(client, "/api/events/jobs") for _ in range(2)]
    try:
        job_id, token = backend.create_job(model="resnet34")

        def statuses(reader: SseReader) -> list[str]:
            found: list[str] = []
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                event = reader.next(timeout=15)
                assert event is not None
                if event.event == "job" and event.json()["job_id"] == job_id:
                    found.append(event.json()["status"])
                    if found[-1] == "RUNNING":
                        return found
            raise AssertionError(f"no RUNNING event; saw {found}")

        first_status = None
        for tab in tabs:
            event = tab.next(timeout=15)
            while event is not None and not (event.event == "job" and event.json()["job_id"] == job_id):
                event = tab.next(timeout=15)
            assert event is not None
            assert event.json()["model"] == "resnet34"
            first_status = event.json()["status"]
        assert first_status == "PENDING"
        logger = logger_for(backend, job_id, token, tmp_path)
        logger.update_status("RUNNING")
        assert logger.flush(timeout=15)
        for tab in tabs:
            assert statuses(tab)[-1] == "RUNNING"
        polls = dashboard.health()["jobs_polls_total"]
        time.sleep(2.5)
        # One poll a second for both tabs together (not one per tab).
        assert dashboard.health()["jobs_polls_total"] - polls <= 4
        logger.update_status("COMPLETED")
        logger.close(timeout=15)
    finally:
        for tab in tabs:
            tab.close()


def test_no_backend_token_reaches_the_browser(
    backend: BackendProcess, dashboard: DashboardProcess, tmp_path: Path
) -> None:
    frontend_token = (backend.data_dir / "frontend_auth_token").read_text().strip()
    secrets_ = [backend.internal_token, backend.read_token, frontend_token]
    job_id, token = backend.create_job()
    secrets_.append(token)
    logger = logger_for(backend, job_id, token, tmp_path)
    logger.update_status("RUNNING")
    logger.log_metric("train/loss", 1.0, step=1)
    logger.log_message("a line")
    assert logger.flush(timeout=15)
    client = logged_in(dashboard)
    headers = csrf(client)
    texts: list[str] = []
    responses = [
        client.get(dashboard.login_url, follow_redirects=False),
        client.get("/"),
        client.get(f"/jobs/{job_id}"),
        client.get("/api/session"),
        client.get("/api/jobs"),
        client.get(f"/api/jobs/{job_id}"),
        client.get(f"/api/jobs/{job_id}/series"),
        client.get(f"/api/jobs/{job_id}/logs"),
        client.get("/healthz"),
        client.post("/api/jobs", json={"framework": "timm", "model": "x", "epochs": 0}, headers=headers),
        client.post(
            "/api/jobs", json={"framework": "timm", "model": "x", "dataset": "digits", "epochs": 1}, headers=headers
        ),
        client.post(f"/api/jobs/{job_id}/cancel", headers=headers),
    ]
    for response in responses:
        texts.append(response.text)
        texts.extend(f"{k}: {v}" for k, v in response.headers.items())
    for path in (f"/api/jobs/{job_id}/events", "/api/events/jobs"):
        reader = SseReader(client, path)
        wait_for(lambda r=reader: any(line.startswith("data:") for line in r.raw), what=f"data on {path}")
        reader.close()
        texts.extend(reader.raw)
        texts.extend(f"{k}: {v}" for k, v in (reader.headers or {}).items())
    logger.close(timeout=15)
    joined = "\n".join(texts)
    for secret in secrets_:
        assert secret not in joined
    assert dashboard.token not in dashboard.log_text()
    for secret in secrets_:
        assert secret not in dashboard.log_text()


def test_reads_use_the_read_token_and_changes_the_front_end_token(backend: BackendProcess, tmp_path: Path) -> None:
    """With a wrong front-end token, reads still work (they use READ_AUTH_TOKEN) and changes are refused by the
    backend (502: the dashboard's token, not the browser, is at fault); without a read token, reads use the
    front-end token."""
    job_id, _ = backend.create_job()
    wrong_writer = DashboardProcess(backend, tmp_path, {"TP_AUTH_TOKEN": "not-the-front-end-token"})
    reader_only = DashboardProcess(backend, tmp_path, read_token=False)
    try:
        wrong_writer.start()
        reader_only.start()
        client = logged_in(wrong_writer)
        assert client.get(f"/api/jobs/{job_id}").status_code == 200
        assert wrong_writer.health()["reads_with_read_token"] is True
        response = client.post(f"/api/jobs/{job_id}/cancel", headers=csrf(client))
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "BACKEND_REFUSED"
        assert "not-the-front-end-token" not in response.text
        assert backend.job_status(job_id) == "PENDING"
        client = logged_in(reader_only)
        assert reader_only.health()["reads_with_read_token"] is False
        assert client.get(f"/api/jobs/{job_id}").status_code == 200
    finally:
        wrong_writer.close()
        reader_only.close()


def test_200_tabs_opened_at_once_share_one_subscription(tmp_path: Path) -> None:
    # 200 tabs opened at once make 200 GetJob calls on the dashboard's one connection, twice the backend's streams
    # per connection (TP_MAX_CONCURRENT_STREAMS, 100). With all of them in flight the backend refused the hub's
    # subscription stream (RST_STREAM REFUSED_STREAM: UNAVAILABLE) and the hub subscribed twice (bench_dashboard's
    # fan-out, 4 runs of 4); the dashboard now keeps its unary calls to MAX_UNARY_CALLS at once.
    with own_stack(tmp_path, {"TP_LOG_LEVEL": "INFO"}) as (backend, dashboard):
        job_id, token = backend.create_job()
        logger = logger_for(backend, job_id, token, tmp_path)
        logger.update_status("RUNNING")
        cookies = dict(logged_in(dashboard).cookies)
        before = dashboard.health()
        expected = set(range(1, 21))

        async def tab(ready: asyncio.Event) -> set[int]:
            seen: set[int] = set()
            async with (
                httpx.AsyncClient(cookies=cookies, timeout=httpx.Timeout(60, read=60)) as client,
                client.stream("GET", f"{dashboard.url}/api/jobs/{job_id}/events") as response,
            ):
                ready.set()
                async for line in response.aiter_lines():
                    if line.startswith("data: {") and '"points"' in line:
                        seen.update(point["sequence"] for point in json.loads(line[6:])["points"])
                    if seen >= expected:
                        return seen
            return seen

        async def main() -> list[set[int]]:
            readies = [asyncio.Event() for _ in range(200)]
            tabs = [asyncio.create_task(tab(ready)) for ready in readies]
            await asyncio.wait_for(asyncio.gather(*(ready.wait() for ready in readies)), 120)
            for step in sorted(expected):
                logger.log_metric("train/acc", step / 100, step=step)
            return await asyncio.wait_for(asyncio.gather(*tabs), 120)

        received = asyncio.run(main())
        assert all(seen == expected for seen in received)
        log = dashboard.log_path.read_text()
        assert "resubscribing" not in log, log[-2000:]
        assert dashboard.health()["job_subscriptions_total"] - before["job_subscriptions_total"] == 1
        logger.update_status("COMPLETED")
        logger.close(timeout=15)
