"""The dashboard's Starlette app: pages, the JSON API and the event streams (the HTTP contract).

Every backend error becomes an HTTP error in `errors` (one place); every answer passes `security`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import difflib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform_sdk.errors import PlatformError
from trainingplatform_sdk.spec import AdvancedConfig, validate_spec

from trainingplatform_dashboard import convert
from trainingplatform_dashboard.backend import MAX_METRIC_KEYS, Backend
from trainingplatform_dashboard.errors import ApiError, from_platform_error, from_rpc_error
from trainingplatform_dashboard.fanout import Client, Cursor, FanOut
from trainingplatform_dashboard.feed import JobsFeed
from trainingplatform_dashboard.security import (
    COOKIE,
    NEXT_COOKIE,
    SecurityMiddleware,
    Session,
    Sessions,
    next_from_cookie,
    safe_next,
    unauthorized,
)
from trainingplatform_dashboard.settings import Settings
from trainingplatform_dashboard.sse import EventStream

__all__ = ["Dashboard", "create_app"]

_LOG = logging.getLogger("trainingplatform_dashboard")

STATIC_DIR = Path(__file__).parent / "static"
_PAGES = {"jobs": "jobs.html", "job": "job.html", "system": "system.html", "compare": "compare.html", "new": "new.html"}
_TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
_MAX_BODY_BYTES = 1024 * 1024
_MAX_BODY_DEPTH = 24
"""How deeply a request body's objects and arrays may nest (the body itself is level 1): protobuf refuses a spec
much deeper, and json.loads recurses."""
_LOG_LEVELS = {name.removeprefix("LOG_LEVEL_"): value for name, value in common_pb2.LogLevel.items()}
_STATUSES = {name.removeprefix("JOB_STATUS_"): value for name, value in common_pb2.JobStatus.items()}
_SUMMARY_IDLE_S = 0.3
_SUMMARY_BUDGET_S = 3.0
_SUMMARY_LIVE_BUDGET_S = 1.0
LOGIN_URL_FILE = "dashboard_login_url"
"""Where, in the data directory, the login URL of a one-time login token is written (mode 0600)."""


class Dashboard:
    """What the routes share: the settings, the backend connection, the fan-out, the jobs feed, the sessions."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions = Sessions(
            settings.login_token,
            settings.session_ttl_s,
            one_time=settings.login_token_one_time,
            on_spent=self._login_token_spent,
        )
        self.backend: Backend | None = None
        self.fanout: FanOut | None = None
        self.feed: JobsFeed | None = None
        self.started = time.time()

    def write_login_url(self, token: str) -> Path | None:
        """Writes the login URL of `token` to `<data dir>/dashboard_login_url` (mode 0600); None when it cannot."""
        path = self.settings.data_dir / LOGIN_URL_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as handle:
                os.fchmod(handle.fileno(), 0o600)
                handle.write(f"{self.settings.url}/login?token={token}\n")
        except OSError as error:
            _LOG.warning("cannot write the login URL to %s: %s", path, error)
            return None
        return path

    def _login_token_spent(self, token: str) -> None:
        """The one-time login token logged a browser in: `token` replaces it, its URL goes to the file."""
        path = self.write_login_url(token)
        if path is not None:
            _LOG.info("the login URL was used (it works once); the next one is in %s", path)
        else:
            print(
                f"dashboard: the login URL was used; the next one: {self.settings.url}/login?token={token}", flush=True
            )

    async def start(self) -> None:
        """Opens the backend channel (inside the server's event loop)."""
        if self.sessions.one_time:
            self.write_login_url(self.sessions.login_token)
        self.backend = Backend(self.settings)
        self.fanout = FanOut(
            self.backend,
            linger_s=self.settings.linger_s,
            history_events=int(self.settings.history_events),
            client_queue_events=int(self.settings.client_queue_events),
        )
        self.feed = JobsFeed(
            self.backend,
            poll_interval_s=self.settings.poll_interval_s,
            linger_s=self.settings.linger_s,
            max_events=int(self.settings.client_queue_events),
        )

    async def stop(self) -> None:
        """Ends every subscription and closes the channel."""
        if self.feed is not None:
            await self.feed.close()
        if self.fanout is not None:
            await self.fanout.close()
        if self.backend is not None:
            await self.backend.close()


def _parts(request: Request) -> tuple[Dashboard, Backend, FanOut, JobsFeed]:
    dashboard: Dashboard = request.app.state.dashboard
    assert dashboard.backend is not None and dashboard.fanout is not None and dashboard.feed is not None
    return dashboard, dashboard.backend, dashboard.fanout, dashboard.feed


async def _call(coro: Any) -> Any:
    """Awaits a backend call; a failed one becomes its HTTP error."""
    try:
        return await coro
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from None


# --- login, session, health ---------------------------------------------------------------------------------


async def login(request: Request) -> Response:
    """GET /login?token=T[&next=/jobs/x]: a new session cookie and a redirect (the token leaves the address bar) to
    `next`, else to the page asked for without a session (cookie `tp_next`), else to `/`; only to a path of this
    dashboard (`safe_next`)."""
    dashboard: Dashboard = request.app.state.dashboard
    if not dashboard.sessions.check_login(request.query_params.get("token", "")):
        if dashboard.sessions.one_time:
            return unauthorized(
                "/login",
                "That login link is not valid: wrong, from an earlier start, or already used (it works once). The "
                f"next one is in {LOGIN_URL_FILE} in the dashboard's data directory (TP_DATA_DIR).",
            )
        return unauthorized("/login", "That login link is not valid (wrong or old token).")
    cookie, _ = dashboard.sessions.create()
    wanted = request.query_params.get("next")
    if wanted is None:
        wanted = next_from_cookie(request.cookies.get(NEXT_COOKIE))
    response = RedirectResponse(safe_next(wanted), status_code=303)
    if NEXT_COOKIE in request.cookies:
        response.delete_cookie(NEXT_COOKIE, path="/login", httponly=True, samesite="lax")
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=int(dashboard.sessions.ttl_s),
        path="/",
        httponly=True,
        samesite="strict",
        secure=dashboard.settings.secure_cookie,
    )
    return response


async def logout(request: Request) -> Response:
    """POST /logout (CSRF): ends the session (its event streams end at once) and removes its cookie."""
    dashboard: Dashboard = request.app.state.dashboard
    dashboard.sessions.drop(request.cookies.get(COOKIE))
    response = JSONResponse({"logged_out": True})
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=dashboard.settings.secure_cookie)
    return response


async def session(request: Request) -> Response:
    """GET /api/session: the session's CSRF token."""
    return JSONResponse({"csrf_token": request.scope["state"]["session"].csrf_token})


async def healthz(request: Request) -> Response:
    """GET /healthz (no session needed; counters only, no secrets)."""
    dashboard, backend, fanout, feed = _parts(request)
    return JSONResponse(
        {
            "status": "ok",
            "uptime_s": round(time.time() - dashboard.started, 3),
            "backend_connected": await backend.ready(),
            "reads_with_read_token": backend.reads_with_read_token,
            "job_subscriptions_open": fanout.open_subscriptions,
            "job_subscriptions_total": fanout.counters.hub_subscriptions_total,
            "catchup_subscriptions_total": fanout.counters.catchup_subscriptions_total,
            "event_stream_clients": len(fanout.clients),
            "event_stream_clients_total": fanout.counters.clients_total,
            "slow_clients_dropped_total": fanout.counters.slow_clients_dropped_total,
            "backend_events_total": fanout.counters.events_received_total,
            "jobs_feed_clients": len(feed.clients),
            "jobs_polls_total": feed.polls_total,
            "sessions": len(dashboard.sessions),
        }
    )


# --- pages ----------------------------------------------------------------------------------------------------


def _page(name: str) -> Response:
    path = STATIC_DIR / _PAGES[name]
    if not path.is_file():
        return PlainTextResponse(f"{_PAGES[name]} is missing from this installation", status_code=404)
    return FileResponse(path, media_type="text/html; charset=utf-8", headers={"cache-control": "no-cache"})


async def page_jobs(request: Request) -> Response:
    """GET /: the jobs page."""
    return _page("jobs")


async def page_job(request: Request) -> Response:
    """GET /jobs/{job_id}: one job."""
    return _page("job")


async def page_system(request: Request) -> Response:
    """GET /jobs/{job_id}/system: a job's system metrics."""
    return _page("system")


async def page_compare(request: Request) -> Response:
    """GET /compare?jobs=a,b: several jobs overlaid."""
    return _page("compare")


async def page_new(request: Request) -> Response:
    """GET /new: the new-job form."""
    return _page("new")


# --- reads ----------------------------------------------------------------------------------------------------


_LIST_LIMIT = 500
_LIST_MAX_LIMIT = 1000
_BACKEND_PAGE = 1000


def _list_token(backend_token: str, skip: int) -> str:
    """The list's page token: the backend page to read next and how many of its jobs were already answered."""
    raw = json.dumps([backend_token, skip], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_list_token(text: str) -> tuple[str, int]:
    try:
        backend_token, skip = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, TypeError):
        raise ApiError(400, "INVALID_ARGUMENT", "page_token is not a token this list gave", "page_token") from None
    if not isinstance(backend_token, str) or not isinstance(skip, int) or not 0 <= skip <= _BACKEND_PAGE:
        raise ApiError(400, "INVALID_ARGUMENT", "page_token is not a token this list gave", "page_token")
    return backend_token, skip


async def list_jobs(request: Request) -> Response:
    """GET /api/jobs?status=RUNNING&framework=timm&q=text&limit=500&page_token=: {"jobs": [Job], "next_page_token"},
    newest first, `limit` (500) at most per answer; `next_page_token` (empty on the last page) gives the older ones.

    Status, framework and the search (`q`: in the name, id or model, any case) are ListJobs filters, so a search
    finds any job however old, and an answer holds at most one backend page.
    """
    _, backend, _, feed = _parts(request)
    statuses: list[int] = []
    for name in filter(None, (s.strip().upper() for s in request.query_params.get("status", "").split(","))):
        if name not in _STATUSES or name == "UNSPECIFIED":
            raise ApiError(400, "INVALID_ARGUMENT", f"status {name[:40]!r} is not a job status", "status")
        statuses.append(_STATUSES[name])
    framework = request.query_params.get("framework", "").strip()
    query = request.query_params.get("q", "").strip()
    limit = _int_param(request, "limit", _LIST_LIMIT, 1, _LIST_MAX_LIMIT) or _LIST_LIMIT
    token_text = request.query_params.get("page_token", "").strip()
    backend_token, skip = _parse_list_token(token_text) if token_text else ("", 0)
    jobs: list[jobs_pb2.Job] = []
    next_token = ""
    while True:
        page = await _call(
            backend.list_jobs_page(
                statuses=tuple(statuses),
                framework=framework,
                text=query,
                page_size=min(_BACKEND_PAGE, skip + limit - len(jobs)),
                page_token=backend_token,
            )
        )
        full = False
        for index in range(skip, len(page.jobs)):
            jobs.append(page.jobs[index])
            if len(jobs) >= limit:
                full = True
                if index + 1 < len(page.jobs):
                    next_token = _list_token(backend_token, index + 1)
                elif page.next_page_token:
                    next_token = _list_token(page.next_page_token, 0)
                break
        if full or not page.next_page_token:
            break
        backend_token, skip = page.next_page_token, 0
    with contextlib.suppress(grpc.aio.AioRpcError):
        await feed.refresh_latest(jobs)
    return JSONResponse({"jobs": [feed.job_json(job) for job in jobs], "next_page_token": next_token})


async def list_frameworks(request: Request) -> Response:
    """GET /api/frameworks: {"frameworks": [{"name", "trainers", "reachable_trainers", "unreachable_reason"}]}, the
    frameworks the backend dispatches jobs to (ListFrameworks: those with a trainer service configured, and how many
    of their trainers answer now), by name. The new-job form offers these; CreateJob refuses any other."""
    _, backend, _, _ = _parts(request)
    response = await _call(backend.list_frameworks())
    return JSONResponse(
        {
            "frameworks": [
                {
                    "name": framework.name,
                    "trainers": framework.trainers,
                    "reachable_trainers": framework.reachable_trainers,
                    "unreachable_reason": framework.unreachable_reason,
                }
                for framework in response.frameworks
            ]
        }
    )


async def _epoch_summaries(backend: Backend, job: jobs_pb2.Job) -> list[dict[str, Any]]:
    """The job's epoch summaries, from a subscription that skips its points and records (complete for an ended
    job; for a live one, those the replay gives within a short budget: the event stream brings the rest)."""
    after = jobs_pb2.TelemetryCursor(
        metric_sequence=job.cursor.last_metric_sequence, log_sequence=job.cursor.last_log_sequence
    )
    summaries: dict[int, dict[str, Any]] = {}
    call: Any = backend.subscribe(job.job_id, after)
    live = convert.status_name(job.status) not in _TERMINAL
    deadline = time.monotonic() + (_SUMMARY_LIVE_BUDGET_S if live else _SUMMARY_BUDGET_S)
    try:
        iterator = call.__aiter__()
        while True:
            budget = deadline - time.monotonic()
            if budget <= 0:
                break
            try:
                response = await asyncio.wait_for(
                    iterator.__anext__(), timeout=min(budget, _SUMMARY_IDLE_S) if live else budget
                )
            except (StopAsyncIteration, TimeoutError):
                break
            kind = response.WhichOneof("event")
            if kind == "epoch_summary":
                data = convert.epoch_summary_json(response.epoch_summary)
                summaries[data["epoch"]] = data
            elif live and kind in ("metrics", "logs"):
                break  # live telemetry: the replay is over (the event stream brings what follows)
    except grpc.aio.AioRpcError as error:
        _LOG.debug("epoch summaries of %s: %s", job.job_id, error.code().name)
    finally:
        call.cancel()
    return [summaries[epoch] for epoch in sorted(summaries)]


async def get_job(request: Request) -> Response:
    """GET /api/jobs/{id}: the job, its spec, status events, epoch summaries, artifacts and MLflow run."""
    _, backend, _, feed = _parts(request)
    response = await _call(backend.get_job(request.path_params["job_id"]))
    job = response.job
    with contextlib.suppress(grpc.aio.AioRpcError):
        await feed.refresh_latest([job])
    mlflow = None
    if job.mlflow_run_id:
        mlflow = {
            "tracking_uri": job.mlflow_tracking_uri,
            "run_id": job.mlflow_run_id,
            "run_url": convert.mlflow_run_url(job.mlflow_tracking_uri, job.mlflow_run_id),
        }
    return JSONResponse(
        {
            "job": feed.job_json(job),
            "spec": convert.spec_json(job.spec),
            "status_events": [convert.status_event_json(event) for event in response.status_events],
            "epoch_summaries": await _epoch_summaries(backend, job),
            "artifacts": convert.artifacts_json(job.artifacts),
            "mlflow": mlflow,
        }
    )


def _int_param(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    text = request.query_params.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, "INVALID_ARGUMENT", f"{name} must be a whole number, got {text[:40]!r}", name) from None
    if not low <= value <= high:
        raise ApiError(400, "INVALID_ARGUMENT", f"{name} must be between {low} and {high}, got {value}", name)
    return value


_MAX_STEP = 2**53 - 1


async def get_series(request: Request) -> Response:
    """GET /api/jobs/{id}/series?key=a&key=b&max_points=1000&min_step=&max_step=: bucketed series (GetMetricSeries).

    Every key of the job (or every key named), however many: the backend answers 1,000 keys a call, and this
    asks again from each answer's `next_key`, up to `MAX_METRIC_KEYS` keys (then the answer's `next_key` and
    `message` say which keys are left out). A job with many keys costs as many calls: a page that only needs the
    key list asks with max_points=1. Each `key` parameter names one key exactly (a metric key may hold commas);
    `keys=a,b` names keys without commas, as before.
    """
    _, backend, _, _ = _parts(request)
    named = request.query_params.getlist("key") + request.query_params.get("keys", "").split(",")
    keys = list(dict.fromkeys(key for key in named if key))
    if len(keys) > MAX_METRIC_KEYS:
        raise ApiError(
            400, "INVALID_ARGUMENT", f"keys names {len(keys)} keys; at most {MAX_METRIC_KEYS} are allowed", "keys"
        )
    series_request = jobs_pb2.GetMetricSeriesRequest(
        job_id=request.path_params["job_id"],
        keys=keys,
        max_points=_int_param(request, "max_points", 1000, 1, 10_000) or 1000,
    )
    min_step = _int_param(request, "min_step", None, 0, _MAX_STEP)
    max_step = _int_param(request, "max_step", None, 0, _MAX_STEP)
    if min_step is not None:
        series_request.min_step = min_step
    if max_step is not None:
        series_request.max_step = max_step
    pages = await _call(backend.metric_series_pages(series_request))
    if pages.next_key:
        _LOG.warning(
            "job %s has more than %d metric keys: the series answer stops before %r",
            series_request.job_id,
            pages.keys,
            pages.next_key,
        )
    return JSONResponse(convert.series_json(pages))


async def get_logs(request: Request) -> Response:
    """GET /api/jobs/{id}/logs?after=0&limit=1000&min_level=INFO: {"records": [...], "next_after": N}."""
    _, backend, _, _ = _parts(request)
    after = _int_param(request, "after", 0, 0, _MAX_STEP) or 0
    limit = _int_param(request, "limit", 1000, 1, 10_000) or 1000
    level_name = request.query_params.get("min_level", "").strip().upper()
    if level_name and level_name not in _LOG_LEVELS:
        raise ApiError(400, "INVALID_ARGUMENT", f"min_level {level_name[:40]!r} is not a log level", "min_level")
    level = _LOG_LEVELS.get(level_name, 0)
    records: list[dict[str, Any]] = []
    token = ""
    while len(records) < limit:
        page = await _call(
            backend.list_logs(request.path_params["job_id"], min_level=level, page_size=10_000, page_token=token)
        )
        for record in page.records:
            if record.sequence > after:
                records.append(convert.log_json(record))
                if len(records) >= limit:
                    break
        token = page.next_page_token
        if not token:
            break
    next_after = records[-1]["sequence"] if records else after
    return JSONResponse({"records": records, "next_after": next_after})


# --- event streams --------------------------------------------------------------------------------------------


def _session_end(request: Request) -> Callable[[], float]:
    """When the request's session ends (0 once dropped): an event stream ends with it."""
    session: Session = request.scope["state"]["session"]
    return lambda: session.expires


async def job_events(request: Request) -> Response:
    """GET /api/jobs/{id}/events[?after=cursor] (Last-Event-ID wins): the job's telemetry as Server-Sent Events."""
    dashboard, backend, fanout, _ = _parts(request)
    job_id = request.path_params["job_id"]
    text = request.headers.get("last-event-id") or request.query_params.get("after", "")
    try:
        cursor = Cursor.parse(text) if text else Cursor()
    except ValueError as error:
        raise ApiError(400, "INVALID_ARGUMENT", str(error), "after") from None
    response = await _call(backend.get_job(job_id))
    live = convert.status_name(response.job.status) not in _TERMINAL
    # An id past what the job has committed (forged or from another deployment) would start the job's shared
    # subscription past events other tabs need: metrics and logs resume at most from the job's cursor, status
    # changes from its last one and epoch summaries from its last one.
    committed = response.job.cursor
    last_status = max((event.sequence for event in response.status_events), default=0)
    cursor = Cursor(
        min(cursor.m, committed.last_metric_sequence),
        min(cursor.l, committed.last_log_sequence),
        min(cursor.s, last_status),
        await fanout.summary_cap(job_id, cursor.e),
    )
    client = Client(cursor, int(dashboard.settings.client_queue_events))
    session: Session = request.scope["state"]["session"]
    if live:
        limit = dashboard.settings.max_live_jobs_per_session
        if job_id not in session.live_jobs and len(session.live_jobs) >= limit:
            refusal = ApiError(
                429,
                "RESOURCE_EXHAUSTED",
                f"this session already follows {len(session.live_jobs)} job(s) live, the most allowed "
                "(TP_DASHBOARD_MAX_LIVE_JOBS_PER_SESSION): close another job's page to follow this one",
            )
            if "text/event-stream" not in request.headers.get("accept", ""):
                raise refusal
            # A browser's EventSource cannot read the body of an error answer: the page gets the error as an event.
            client.fail(refusal.code, refusal.message)
            return EventStream(client, dashboard.settings.ping_interval_s, lambda: None)
        session.live_jobs[job_id] = session.live_jobs.get(job_id, 0) + 1
    task = fanout.attach(job_id, client, live=live)
    session.streams.add(client)

    def close() -> None:
        if task is not None:
            task.cancel()
        fanout.detach(client)
        session.streams.discard(client)
        if live:
            left = session.live_jobs.get(job_id, 1) - 1
            if left > 0:
                session.live_jobs[job_id] = left
            else:
                session.live_jobs.pop(job_id, None)

    return EventStream(client, dashboard.settings.ping_interval_s, close, _session_end(request))


async def jobs_events(request: Request) -> Response:
    """GET /api/events/jobs: `event: job` for every job that appears or changes (one poll for every tab)."""
    dashboard, _, _, feed = _parts(request)
    client = feed.follow()
    session: Session = request.scope["state"]["session"]
    session.streams.add(client)

    def close() -> None:
        feed.unfollow(client)
        session.streams.discard(client)

    return EventStream(client, dashboard.settings.ping_interval_s, close, _session_end(request))


# --- changes --------------------------------------------------------------------------------------------------


_INT32_MAX = 2**31 - 1
_WHOLE_NUMBER = re.compile(r"^-?[0-9]{1,20}$")


def _body_error(message: str, field: str | None) -> ApiError:
    return ApiError(400, "INVALID_ARGUMENT", message, field)


def _shown(value: Any) -> str:
    """`value` as the JSON it came in (NaN and Infinity included), cut to 40 characters."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**40:
        return f"{str(value)[:40]}...[{len(str(value))} digits]"  # str() of a huge int is slow, then refused
    text = json.dumps(value, ensure_ascii=False, allow_nan=True)
    return text if len(text) <= 40 else f"{text[:40]}..."


def _optional_int(body: dict[str, Any], name: str) -> int:
    """The whole number `body[name]` (0 when absent), within int32: the spec's fields are int32, and protobuf
    raises ValueError on anything larger. The field's own bounds are `validate_spec`'s and the backend's."""
    value = body.get(name)
    if value is None or value == "":
        return 0
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():  # False for NaN and the infinities
        number = int(value)
    elif isinstance(value, str) and _WHOLE_NUMBER.match(value.strip()):
        number = int(value.strip())
    if number is None:
        raise _body_error(f"{name} must be a whole number, got {_shown(value)}", name)
    if number > _INT32_MAX:
        raise _body_error(f"{name} is too large, got {_shown(value)}", name)
    if number < -_INT32_MAX - 1:
        raise _body_error(f"{name} is too small, got {_shown(value)}", name)
    return number


CREATE_FIELDS = frozenset(
    {
        "framework",
        "model",
        "dataset",
        "epochs",
        "display_name",
        "image_size",
        "batch_size",
        "advanced_config",
        "request_id",
    }
)
"""The fields of a POST /api/jobs body; any other is refused by name."""
_DATASET_FIELDS = ("name", "path")


def _refuse_unknown(given: dict[str, Any], valid: Any, section: str = "") -> None:
    """Refuses the first key of `given` (the body, or its `section`) that is not in `valid`, naming it (cut to 80
    characters) and the closest valid name, else every valid name."""
    for key in given:
        if key in valid:
            continue
        name = str(key)[:80]
        close = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid fields are {', '.join(sorted(valid))}"
        where = section or "a new job"
        raise _body_error(f"{name!r} is not a field of {where}{hint}", f"{section}.{name}" if section else name)


def _too_deep(field: str | None) -> Exception:
    """The refusal of a body nested deeper than `_MAX_BODY_DEPTH`, naming `field` (the top field) when known."""
    return _body_error(
        f"{field or 'the request body'} is nested too deeply: at most {_MAX_BODY_DEPTH} levels of objects and arrays "
        "are allowed in a request body",
        field,
    )


def _check_depth(body: dict[str, Any]) -> None:
    """Refuses objects and arrays nested deeper than `_MAX_BODY_DEPTH`, naming the top field (and its section)."""
    stack: list[tuple[Any, int, tuple[str, ...]]] = [(body, 1, ())]
    while stack:
        value, depth, path = stack.pop()
        if depth > _MAX_BODY_DEPTH:
            raise _too_deep(".".join(path[:2]) or None)
        if isinstance(value, dict):
            stack.extend((item, depth + 1, (*path, str(key))) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, depth + 1, path) for item in value)


def _field_path(path: tuple[str | int, ...]) -> str | None:
    """`("advanced_config", "extra", "tags", 1)` as `advanced_config.extra.tags[1]` (each key cut to 80 characters);
    None for the body itself."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f"{'.' if text else ''}{part[:80]}"
    return text or None


def _refuse_surrogates(value: Any, path: tuple[str | int, ...] = ()) -> None:
    """Refuses a string (a key or a value, at any depth) holding a lone UTF-16 surrogate, naming where it is.

    `"\\ud800"` is valid JSON, and json.loads makes it a str that no UTF-8 text can hold: protobuf (and the answer
    naming it) would raise UnicodeEncodeError. A key is checked before any path names it, so a message never holds
    one.

    Raises:
        ApiError: 400 naming the field (the object holding a bad key).
    """
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            _check_text(item, where, "")
        elif isinstance(item, dict):
            for key in item:
                _check_text(str(key), where, "a key of ")
            stack.extend((child, (*where, str(key))) for key, child in item.items())
        elif isinstance(item, list):
            stack.extend((child, (*where, index)) for index, child in enumerate(item))


def _check_text(text: str, where: tuple[str | int, ...], what: str) -> None:
    """Raises the 400 of `_refuse_surrogates` when `text` holds a lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        field = _field_path(where)
        raise _body_error(
            f"{what}{field or 'the request body'} holds a lone UTF-16 surrogate "
            f"(\\u{ord(text[error.start]):04x}, character {error.start + 1}): text must be valid Unicode",
            field,
        ) from None


def spec_from_body(body: dict[str, Any]) -> tuple[common_pb2.JobSpec, str]:
    """The JobSpec and display name of a create request, checked as the backend checks them.

    Raises:
        ApiError: 400 naming the field.
    """

    _refuse_unknown(body, CREATE_FIELDS)

    def text(name: str) -> str:
        value = body.get(name, "")
        if value is None:
            return ""
        if not isinstance(value, str):
            raise _body_error(f"{name} must be a string", name)
        return value.strip()

    dataset = body.get("dataset") or {}
    if isinstance(dataset, str):
        dataset = {"name": dataset}
    if not isinstance(dataset, dict):
        raise _body_error('dataset must be {"name": ...} or {"path": ...}', "dataset")
    _refuse_unknown(dataset, _DATASET_FIELDS, "dataset")
    dataset_name, dataset_path = dataset.get("name") or "", dataset.get("path") or ""
    if not isinstance(dataset_name, str) or not isinstance(dataset_path, str):
        raise _body_error("dataset.name and dataset.path must be strings", "dataset")
    advanced = body.get("advanced_config")
    if isinstance(advanced, str):
        try:
            advanced = json.loads(advanced) if advanced.strip() else {}
        except (json.JSONDecodeError, RecursionError) as error:
            raise _body_error(f"advanced_config: not valid JSON: {str(error)[:200]}", "advanced_config") from None
        _check_depth({"advanced_config": advanced})
        _refuse_surrogates(advanced, ("advanced_config",))
    try:
        advanced_config = AdvancedConfig.from_mapping(advanced or {})
    except PlatformError as error:
        raise from_platform_error(error) from None
    except (TypeError, ValueError) as error:
        raise _body_error(f"advanced_config: {error}", "advanced_config") from None
    spec = common_pb2.JobSpec(
        framework=text("framework"),
        model=common_pb2.ModelConfig(name=text("model"), image_size=_optional_int(body, "image_size")),
        dataset=common_pb2.DatasetConfig(name=dataset_name.strip(), path=dataset_path.strip()),
        training=common_pb2.TrainingConfig(
            epochs=_optional_int(body, "epochs"), batch_size=_optional_int(body, "batch_size")
        ),
        advanced=advanced_config.to_proto(),
    )
    try:
        validate_spec(spec)
    except PlatformError as error:
        raise from_platform_error(error) from None
    except ValueError as error:
        raise _body_error(str(error), None) from None
    return spec, text("display_name")


def _too_large() -> ApiError:
    return ApiError(413, "RESOURCE_EXHAUSTED", f"the request body is over {_MAX_BODY_BYTES} bytes")


async def _read_body(request: Request) -> bytes:
    """The request body, refused (413) by its Content-Length before any of it is read when that is over the limit,
    else read in chunks and refused as soon as it passes the limit (a chunked body has no Content-Length)."""
    length = request.headers.get("content-length", "").strip()
    if length.isdigit() and int(length) > _MAX_BODY_BYTES:
        raise _too_large()
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > _MAX_BODY_BYTES:
            raise _too_large()
    return bytes(raw)


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await _read_body(request)
    try:
        body = json.loads(raw or b"{}")
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4300 digits
        raise _body_error(f"the request body is not JSON: {str(error)[:200]}", None) from None
    except RecursionError:
        raise _too_deep(None) from None
    if not isinstance(body, dict):
        raise _body_error("the request body must be a JSON object", None)
    _check_depth(body)
    _refuse_surrogates(body)
    return body


async def create_job(request: Request) -> Response:
    """POST /api/jobs (CSRF): creates a job with the front-end token; 201 {"job": Job}.

    A `request_id` (the new-job form sends one per filled form) makes a retry give the job its first call created
    (CreateJob's own key); without one every call creates a job."""
    _, backend, _, feed = _parts(request)
    body = await _json_body(request)
    spec, display_name = spec_from_body(body)
    request_id = body.get("request_id") or str(uuid.uuid4())
    if not isinstance(request_id, str):
        raise _body_error("request_id must be a string", "request_id")
    created = await _call(
        backend.create_job(jobs_pb2.CreateJobRequest(spec=spec, display_name=display_name, request_id=request_id))
    )
    return JSONResponse({"job": feed.job_json(created.job)}, status_code=201)


async def cancel_job(request: Request) -> Response:
    """POST /api/jobs/{id}/cancel (CSRF): cancels the job with the front-end token; 200 {"job": Job}."""
    _, backend, _, feed = _parts(request)
    response = await _call(backend.cancel_job(request.path_params["job_id"], "cancelled from the dashboard"))
    return JSONResponse({"job": feed.job_json(response.job)})


# --- the app --------------------------------------------------------------------------------------------------


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith("/api/"):
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "ERROR")
        return ApiError(exc.status_code, code, str(exc.detail)).response()
    return PlainTextResponse(str(exc.detail), status_code=exc.status_code)


def create_app(settings: Settings) -> Starlette:
    """The ASGI app of `settings`."""
    dashboard = Dashboard(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await dashboard.start()
        try:
            yield
        finally:
            await dashboard.stop()

    routes = [
        Route("/login", login),
        Route("/logout", logout, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/", page_jobs),
        Route("/jobs/{job_id}", page_job),
        Route("/jobs/{job_id}/system", page_system),
        Route("/compare", page_compare),
        Route("/new", page_new),
        Route("/api/session", session),
        Route("/api/jobs", list_jobs, methods=["GET"]),
        Route("/api/jobs", create_job, methods=["POST"]),
        Route("/api/frameworks", list_frameworks),
        Route("/api/jobs/{job_id}", get_job),
        Route("/api/jobs/{job_id}/series", get_series),
        Route("/api/jobs/{job_id}/logs", get_logs),
        Route("/api/jobs/{job_id}/events", job_events),
        Route("/api/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
        Route("/api/events/jobs", jobs_events),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityMiddleware, sessions=dashboard.sessions)],
        lifespan=lifespan,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
    )
    app.state.dashboard = dashboard
    return app
