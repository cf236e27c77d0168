"""Deep links survive the login: `/login?token=...&next=/jobs/<id>` lands on the job, and so does a plain login
after a page asked for without a session; only same-origin relative paths are followed (no open redirect)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from support.dashboard import DashboardProcess, own_stack


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardProcess]:
    with own_stack(tmp_path_factory.mktemp("login-next")) as (_, dashboard):
        yield dashboard


def login(client: httpx.Client, dashboard: DashboardProcess, next_path: str | None = None) -> str:
    params = {"token": dashboard.token, **({"next": next_path} if next_path is not None else {})}
    response = client.get("/login", params=params, follow_redirects=False)
    assert response.status_code == 303, response.text
    return response.headers["location"]


def test_login_goes_to_the_page_asked_for(dashboard: DashboardProcess) -> None:
    client = httpx.Client(base_url=dashboard.url, timeout=10)
    location = login(client, dashboard, "/jobs/abc-123?x=1#charts")
    assert location == "/jobs/abc-123?x=1#charts", f"login with next=/jobs/abc-123 went to {location!r}"
    assert client.get(location.split("#")[0]).status_code == 200
    assert login(client, dashboard, "/compare?jobs=a,b") == "/compare?jobs=a,b"


@pytest.mark.parametrize(
    "next_path",
    [
        "https://evil.example",
        "//evil.example",
        "//evil.example/jobs/x",
        "/\\evil.example",
        "\\\\evil.example",
        "https:/evil.example",
        "javascript:alert(1)",
        "jobs/x",
        "/jobs/x\r\nSet-Cookie: a=b",
        "/login?token=x",
        "",
    ],
)
def test_login_never_redirects_off_the_dashboard(dashboard: DashboardProcess, next_path: str) -> None:
    client = httpx.Client(base_url=dashboard.url, timeout=10)
    assert login(client, dashboard, next_path) == "/"


def test_a_page_asked_for_without_a_session_is_where_the_login_lands(dashboard: DashboardProcess) -> None:
    client = httpx.Client(base_url=dashboard.url, timeout=10)
    response = client.get("/jobs/abc-123")
    assert response.status_code == 401
    assert login(client, dashboard) == "/jobs/abc-123", "the login forgot the page asked for before it"
    # Once used, it is forgotten: the next login goes to the jobs list.
    other = httpx.Client(base_url=dashboard.url, timeout=10, cookies=client.cookies)
    other.cookies.delete("tp_session")
    assert login(other, dashboard) == "/"
    # An API call without a session is no page to come back to.
    anonymous = httpx.Client(base_url=dashboard.url, timeout=10)
    assert anonymous.get("/api/jobs").status_code == 401
    assert login(anonymous, dashboard) == "/"


@pytest.mark.parametrize(
    "headers",
    [
        {"sec-fetch-dest": "image", "accept": "image/avif,image/webp,*/*"},  # Chromium's favicon request
        {"accept": "image/png"},  # a browser that sends no Sec-Fetch headers
    ],
)
def test_a_request_that_is_no_page_does_not_replace_the_page_asked_for(
    dashboard: DashboardProcess, headers: dict[str, str]
) -> None:
    """The 401 login page made the browser ask for /favicon.ico, which replaced the remembered page: the login then
    landed on the favicon (the browser test of a deep link failed that way, now and then)."""
    client = httpx.Client(base_url=dashboard.url, timeout=10)
    page = client.get("/jobs/abc-123", headers={"sec-fetch-dest": "document", "accept": "text/html"})
    assert page.status_code == 401
    assert client.get("/favicon.ico", headers=headers).status_code == 401
    assert login(client, dashboard) == "/jobs/abc-123"
