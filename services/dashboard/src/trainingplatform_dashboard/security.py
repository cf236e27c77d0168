"""Sessions, CSRF and the security headers of every answer.

- A browser logs in once with the dashboard's login token (`GET /login?token=...`, the URL `tp up` prints) and gets
  a session cookie `tp_session` (HttpOnly, SameSite=Strict, Path=/), then a redirect to a URL without the token.
  A one-time login token (the random one of a start) is spent by its first login: a new one replaces it
  (`on_spent`). An operator's TP_DASHBOARD_TOKEN stays reusable.
- `POST /logout` (with the CSRF token) ends the session; its event streams end at once (`Session.end`).
- Every page, static file and API call without a valid session answers 401 (only /login and /healthz are open).
  A page asked for without a session (a browser's page request, not its favicon) is remembered for ten minutes
  (cookie `tp_next`, sent only to /login), and the login then lands on it; `/login?token=...&next=/path` does
  the same. Only a same-origin relative path is followed (`safe_next`), never another site.
- A request that changes anything (any method but GET and HEAD) also needs the header `X-CSRF-Token` equal to its
  session's CSRF token (`GET /api/session`), else 403 PERMISSION_DENIED with the field `X-CSRF-Token` (`CSRF_FIELD`):
  the mark by which a page tells this refusal (read the token again and retry) from any other 403.
- Every answer carries a Content-Security-Policy without inline script or style, `nosniff` and `no-referrer`; an
  unexpected error is a JSON 500 INTERNAL with them too (and a traceback in the log), not Starlette's plain text.

Sessions live in this process's memory: a restart logs browsers out (they log in again with the printed URL).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "COOKIE",
    "CSP",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "SecurityMiddleware",
    "Session",
    "Sessions",
    "safe_next",
]

COOKIE = "tp_session"
_LOG = logging.getLogger("trainingplatform_dashboard")

NEXT_COOKIE = "tp_next"
_NEXT_TTL_S = 600
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "X-CSRF-Token"
"""The `field` of the CSRF refusal (403 PERMISSION_DENIED): only this 403 means a stale token (common.js's retry)."""
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}
_OPEN_PATHS = ("/login", "/healthz")
_SAFE_METHODS = ("GET", "HEAD")
_MAX_SESSIONS = 10_000

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Training platform: log in</title><link rel="icon" href="data:,">
</head>
<body><h1>Log in to the dashboard</h1>
<p>{reason} Open the login URL that <code>tp up</code> (or <code>tp-dashboard</code>) printed:
<code>http://HOST:PORT/login?token=...</code>. A login URL made at random for a start works once; the next one is
in the file <code>dashboard_login_url</code> of the dashboard's data directory (TP_DATA_DIR).</p></body></html>
"""


@dataclass
class Session:
    """A logged-in browser."""

    csrf_token: str
    expires: float
    live_jobs: dict[str, int] = field(default_factory=dict)
    """The jobs this session follows live now, with their open event streams (TP_DASHBOARD_MAX_LIVE_JOBS_PER_SESSION
    bounds the jobs)."""
    streams: set[Any] = field(default_factory=set)
    """The clients (`fanout.Client`) of its open event streams: `end` wakes them, and they end."""

    def end(self) -> None:
        """Ends the session now: its event streams send `event: session_ended` and complete."""
        self.expires = 0.0
        for client in tuple(self.streams):
            client.wake.set()


class Sessions:
    """The sessions of this process, by cookie value."""

    def __init__(
        self,
        login_token: str,
        ttl_s: float,
        *,
        one_time: bool = False,
        on_spent: Callable[[str], None] | None = None,
    ) -> None:
        """`one_time`: the login token works once; then a new random one replaces it, given to `on_spent`."""
        self._login_token = login_token.encode()
        self._ttl_s = ttl_s
        self._sessions: dict[str, Session] = {}
        self.one_time = one_time
        self._on_spent = on_spent

    def stop_streams(self) -> None:
        """Ends every session's event streams now (the server stops): each completes its response, and its browser
        reconnects and resumes. The sessions stay."""
        for session in self._sessions.values():
            for client in tuple(session.streams):
                client.stopped = True
                client.wake.set()
                if client.interrupt is not None:
                    client.interrupt()

    @property
    def login_token(self) -> str:
        """The login token that works now."""
        return self._login_token.decode()

    def check_login(self, token: str) -> bool:
        """Whether `token` is the login token (constant time). A one-time token is spent by this check."""
        if not (bool(token) and hmac.compare_digest(token.encode(), self._login_token)):
            return False
        if self.one_time:
            self._login_token = secrets.token_urlsafe(24).encode()
            if self._on_spent is not None:
                self._on_spent(self.login_token)
        return True

    def drop(self, cookie: str | None) -> bool:
        """Ends the session of a cookie value (logout); False when there was none."""
        session = self._sessions.pop(cookie, None) if cookie else None
        if session is None:
            return False
        session.end()
        return True

    def create(self) -> tuple[str, Session]:
        """A new session: (cookie value, session)."""
        now = time.time()
        if len(self._sessions) >= _MAX_SESSIONS:
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
            while len(self._sessions) >= _MAX_SESSIONS:
                self._sessions.pop(next(iter(self._sessions))).end()  # its event streams end
        cookie = secrets.token_urlsafe(32)
        session = Session(csrf_token=secrets.token_urlsafe(32), expires=now + self._ttl_s)
        self._sessions[cookie] = session
        return cookie, session

    def get(self, cookie: str | None) -> Session | None:
        """The live session of a cookie value, or None."""
        if not cookie:
            return None
        session = self._sessions.get(cookie)
        if session is None:
            return None
        if session.expires <= time.time():
            del self._sessions[cookie]
            return None
        return session

    @property
    def ttl_s(self) -> float:
        """How long a session lasts."""
        return self._ttl_s

    def __len__(self) -> int:
        return len(self._sessions)


def safe_next(text: str | None) -> str:
    """`text` when it is a path of this dashboard to go to after the login (`/jobs/x?y=1`), else `/`: never another
    site (`https://...`, `//host`, `/\\host`), a scheme, control characters or the login itself."""
    if not text or len(text) > 2000 or not text.startswith("/") or text.startswith("//") or "\\" in text:
        return "/"
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        return "/"
    parts = urlsplit(text)
    if parts.scheme or parts.netloc or parts.path == "/login":
        return "/"
    return text


def next_from_cookie(value: str | None) -> str | None:
    """The page remembered by `remember_next`, if any."""
    return unquote(value) if value else None


def remember_next(response: Response, scope: Scope) -> None:
    """Remembers the page a browser without a session asked for, for the login to land on."""
    path = scope["path"]
    if scope["query_string"]:
        path = f"{path}?{scope['query_string'].decode('latin-1')}"
    if safe_next(path) == path:
        response.set_cookie(
            NEXT_COOKIE, quote(path, safe=""), max_age=_NEXT_TTL_S, path="/login", httponly=True, samesite="lax"
        )


def _is_page(connection: HTTPConnection) -> bool:
    """Whether a request is a browser opening a page, not one fetching an image for it (the favicon a 401 page makes
    Chromium ask for would replace the page remembered for the login): `Sec-Fetch-Dest: document`, or without Fetch
    metadata an Accept that takes HTML."""
    dest = connection.headers.get("sec-fetch-dest")
    if dest:
        return dest == "document"
    accept = connection.headers.get("accept", "*/*")
    return "text/html" in accept or "*/*" in accept


def unauthorized(path: str, reason: str = "You are not logged in.") -> Response:
    """401: JSON for /api/*, else a small page saying how to log in."""
    if path.startswith("/api/"):
        return JSONResponse(
            {
                "error": {
                    "code": "UNAUTHENTICATED",
                    "message": "no session: open the dashboard's login URL first",
                    "field": None,
                }
            },
            status_code=401,
        )
    return HTMLResponse(LOGIN_PAGE.format(reason=reason), status_code=401)


def internal_error() -> Response:
    """500 INTERNAL: what an unexpected error of the dashboard itself answers (the details are in its log)."""
    return JSONResponse(
        {
            "error": {
                "code": "INTERNAL",
                "message": "the dashboard failed to answer this request; its log says why",
                "field": None,
            }
        },
        status_code=500,
    )


class SecurityMiddleware:
    """Adds the security headers to every answer, and refuses requests without a session (401) or, when they
    change something, without the session's CSRF token (403). The session is put in `scope["state"]["session"]`."""

    def __init__(self, app: ASGIApp, sessions: Sessions) -> None:
        self.app = app
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in _HEADERS.items():
                    headers[name] = value
                if "cache-control" not in headers:
                    headers["cache-control"] = "no-store"
            await send(message)

        async def call_app() -> None:
            # An error no handler maps would reach Starlette's outermost error middleware, whose plain-text 500 goes
            # around this one: no security headers. It is answered here, as JSON with them, and logged once.
            try:
                await self.app(scope, receive, send_with_headers)
            except Exception:
                if started:
                    raise
                _LOG.exception("%s %s failed", scope["method"], scope["path"])
                await internal_error()(scope, receive, send_with_headers)

        path: str = scope["path"]
        if path in _OPEN_PATHS:
            await call_app()
            return
        connection = HTTPConnection(scope)
        session = self.sessions.get(connection.cookies.get(COOKIE))
        if session is None:
            response = unauthorized(path)
            if scope["method"] == "GET" and not path.startswith(("/api/", "/static/")) and _is_page(connection):
                remember_next(response, scope)
            await response(scope, receive, send_with_headers)
            return
        if scope["method"] not in _SAFE_METHODS:
            given = connection.headers.get(CSRF_HEADER, "")
            if not given or not hmac.compare_digest(given.encode(), session.csrf_token.encode()):
                response = JSONResponse(
                    {
                        "error": {
                            "code": "PERMISSION_DENIED",
                            "message": "missing or wrong X-CSRF-Token header (GET /api/session gives it)",
                            "field": CSRF_FIELD,
                        }
                    },
                    status_code=403,
                )
                await response(scope, receive, send_with_headers)
                return
        scope.setdefault("state", {})["session"] = session
        await call_app()
