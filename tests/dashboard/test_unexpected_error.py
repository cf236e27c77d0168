"""An error no handler maps reached Starlette's outermost error middleware, whose plain-text 500 went around the
security middleware: no Content-Security-Policy, no nosniff. Now it is a JSON 500 INTERNAL with every security header,
and the traceback is logged once."""

from __future__ import annotations

import logging

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient
from trainingplatform_dashboard.security import COOKIE, CSP, CSRF_HEADER, SecurityMiddleware, Sessions


async def broken(request: Request) -> Response:
    raise RuntimeError("a bug of the dashboard's own")


def app_with_a_bug(sessions: Sessions) -> Starlette:
    routes = [Route("/healthz", broken), Route("/api/broken", broken, methods=["GET", "POST"])]
    return Starlette(routes=routes, middleware=[Middleware(SecurityMiddleware, sessions=sessions)])


@pytest.mark.parametrize(
    ("method", "path", "logged_in"),
    [("GET", "/healthz", False), ("GET", "/api/broken", True), ("POST", "/api/broken", True)],
)
def test_an_unexpected_error_is_a_json_500_with_the_security_headers(
    method: str, path: str, logged_in: bool, caplog: pytest.LogCaptureFixture
) -> None:
    sessions = Sessions("login-token", ttl_s=60)
    client = TestClient(app_with_a_bug(sessions), raise_server_exceptions=False)
    headers = {}
    if logged_in:
        cookie, session = sessions.create()
        client.cookies.set(COOKIE, cookie)
        headers[CSRF_HEADER] = session.csrf_token
    with caplog.at_level(logging.ERROR, logger="trainingplatform_dashboard"):
        response = client.request(method, path, headers=headers)
    assert response.status_code == 500
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "INTERNAL"
    assert "bug of the dashboard's own" not in response.text  # details stay in the log
    [record] = [record for record in caplog.records if record.exc_info]
    assert f"{method} {path} failed" in record.getMessage()
    assert record.exc_info is not None and "bug of the dashboard's own" in str(record.exc_info[1])
