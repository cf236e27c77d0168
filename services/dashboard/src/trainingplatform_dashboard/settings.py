"""The dashboard's settings: one object, read from flags, then environment variables, then defaults."""

from __future__ import annotations

import argparse
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from trainingplatform_sdk import setting_values as values
from trainingplatform_sdk.channel import ClientTls, parse_backend_address

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_BACKEND = "127.0.0.1:50051"
FRONTEND_TOKEN_FILE = "frontend_auth_token"


@dataclass(frozen=True)
class Settings:
    """Everything the dashboard is configured with.

    Each field names its environment variable; command-line flags of the same name override them. Tokens are
    only read from the environment: a token on a command line is visible to every user of the host.
    """

    listen: str = DEFAULT_LISTEN
    """TP_DASHBOARD_LISTEN: address to serve HTTP on, `host:port`. Default 127.0.0.1:8080 (loopback only)."""

    backend_address: str = DEFAULT_BACKEND
    """TP_BACKEND_ADDRESS (else BACKEND_API_URL): the backend, `host:port`, `grpc://host:port` or `https://host:port`
    (TLS; roots in TP_TLS_CA_FILE, client certificate in TP_TLS_CLIENT_CERT_FILE and TP_TLS_CLIENT_KEY_FILE, as
    every client of the SDK reads them). Default 127.0.0.1:50051. Checked at start, the TLS files too for a TLS
    address: a bad one stops the dashboard before it serves."""

    data_dir: Path = Path(".data")
    """TP_DATA_DIR: where a local backend wrote `frontend_auth_token`, read when TP_AUTH_TOKEN is not set."""

    write_token: str = field(default="", repr=False)
    """TP_AUTH_TOKEN: the backend token used to create and cancel jobs (the backend's FRONTEND_AUTH_TOKEN). Empty:
    `<TP_DATA_DIR>/frontend_auth_token`, read when first needed."""

    read_token: str = field(default="", repr=False)
    """READ_AUTH_TOKEN: the backend's read-only token, used for every read when set (else the write token)."""

    login_token: str = field(default="", repr=False)
    """TP_DASHBOARD_TOKEN: the token a browser exchanges at /login?token=... for a session. Empty: a random one
    per start, printed with the login URL."""

    login_token_one_time: bool = False
    """Whether the login token works once: true for the random one (TP_DASHBOARD_TOKEN not set), else
    TP_DASHBOARD_TOKEN_ONE_TIME (`tp up` sets it for the token it makes). Once a one-time token has logged a
    browser in, a new one is made and its login URL written to `<TP_DATA_DIR>/dashboard_login_url` (mode 0600).
    An operator's TP_DASHBOARD_TOKEN stays reusable."""

    poll_interval_s: float = 1.0
    """TP_DASHBOARD_POLL_S: how often the jobs feed polls ListJobs (once for all open tabs)."""

    linger_s: float = 5.0
    """TP_DASHBOARD_LINGER_S: how long a job's backend subscription stays open after its last browser left, so a
    reloaded tab finds it."""

    client_queue_events: int = 1000
    """TP_DASHBOARD_CLIENT_QUEUE: events queued per browser stream; a browser further behind is disconnected and
    its EventSource resumes from its last event id."""

    history_events: int = 4096
    """TP_DASHBOARD_HISTORY_EVENTS: recent events a job's subscription keeps, so a browser resuming from a recent
    id joins it without a backend call of its own."""

    max_live_jobs_per_session: int = 16
    """TP_DASHBOARD_MAX_LIVE_JOBS_PER_SESSION: jobs one session may follow live at once (tabs of the same job count
    once). Each job followed live holds one of the backend's TP_MAX_SUBSCRIPTIONS_PER_CALLER (64) subscriptions of
    the dashboard's read token: this keeps one user from taking them all. An event stream past it is refused (429)."""

    ping_interval_s: float = 15.0
    """TP_DASHBOARD_PING_S: seconds between `: ping` comments on an idle event stream."""

    session_ttl_s: float = 7 * 24 * 3600.0
    """TP_DASHBOARD_SESSION_TTL_S: how long a session lasts after login (sessions live in memory: a restart
    logs every browser out)."""

    secure_cookie: bool = False
    """TP_DASHBOARD_SECURE_COOKIE: mark the session cookie `Secure` (behind an HTTPS reverse proxy)."""

    call_timeout_s: float = 30.0
    """TP_DASHBOARD_CALL_TIMEOUT_S: deadline of each unary backend call."""

    log_level: str = "INFO"
    """TP_LOG_LEVEL: the dashboard's logging level."""

    metrics_port: int = 0
    """TP_METRICS_PORT: serve Prometheus metrics on `http://<listen host>:<port>/metrics`. 0 (the default): off."""

    @property
    def host(self) -> str:
        """The host part of `listen` (brackets of an IPv6 address removed)."""
        return self.listen.rpartition(":")[0].strip("[]") or "127.0.0.1"

    @property
    def port(self) -> int:
        """The port part of `listen`."""
        return int(self.listen.rpartition(":")[2])

    @property
    def url(self) -> str:
        """The dashboard's base URL as a local browser reaches it."""
        host = self.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per non-secret setting; a flag left out falls back to its environment variable."""
    parser.add_argument("--listen", help=f"address to serve on (TP_DASHBOARD_LISTEN, default {DEFAULT_LISTEN})")
    parser.add_argument("--backend", help=f"backend address (TP_BACKEND_ADDRESS, default {DEFAULT_BACKEND})")
    parser.add_argument("--data-dir", help="where the backend's frontend_auth_token is (TP_DATA_DIR, default .data)")
    parser.add_argument("--log-level", help="logging level (TP_LOG_LEVEL, default INFO)")
    parser.add_argument(
        "--metrics-port", help="serve Prometheus /metrics on this port (TP_METRICS_PORT, default 0: off)"
    )


def load(args: argparse.Namespace | None = None, env: dict[str, str] | None = None) -> Settings:
    """Builds the settings from parsed flags, then the environment, then the defaults.

    Raises:
        ValueError: a setting is malformed (the message names it).
    """
    env = dict(os.environ if env is None else env)

    def pick(flag: str, var: str, default: str) -> str:
        value = getattr(args, flag, None) if args is not None else None
        return str(value) if value is not None else env.get(var, default)

    listen = values.listen_address(
        "TP_DASHBOARD_LISTEN", pick("listen", "TP_DASHBOARD_LISTEN", DEFAULT_LISTEN), any_port=False
    )
    metrics_port = values.port("TP_METRICS_PORT", pick("metrics_port", "TP_METRICS_PORT", "0"))
    return Settings(
        listen=listen,
        backend_address=_backend_address(args, env),
        data_dir=Path(pick("data_dir", "TP_DATA_DIR", ".data")),
        write_token=env.get("TP_AUTH_TOKEN", "").strip(),
        read_token=env.get("READ_AUTH_TOKEN", "").strip(),
        login_token=env.get("TP_DASHBOARD_TOKEN", "").strip() or secrets.token_urlsafe(24),
        login_token_one_time=not env.get("TP_DASHBOARD_TOKEN", "").strip()
        or values.flag("TP_DASHBOARD_TOKEN_ONE_TIME", env.get("TP_DASHBOARD_TOKEN_ONE_TIME", "") or "false"),
        poll_interval_s=_seconds("TP_DASHBOARD_POLL_S", env.get("TP_DASHBOARD_POLL_S", "1")),
        linger_s=values.number("TP_DASHBOARD_LINGER_S", env.get("TP_DASHBOARD_LINGER_S", "5")),
        client_queue_events=values.whole_number(
            "TP_DASHBOARD_CLIENT_QUEUE", env.get("TP_DASHBOARD_CLIENT_QUEUE", "1000")
        ),
        history_events=values.whole_number(
            "TP_DASHBOARD_HISTORY_EVENTS", env.get("TP_DASHBOARD_HISTORY_EVENTS", "4096")
        ),
        max_live_jobs_per_session=values.whole_number(
            "TP_DASHBOARD_MAX_LIVE_JOBS_PER_SESSION", env.get("TP_DASHBOARD_MAX_LIVE_JOBS_PER_SESSION", "16")
        ),
        ping_interval_s=_seconds("TP_DASHBOARD_PING_S", env.get("TP_DASHBOARD_PING_S", "15")),
        session_ttl_s=_seconds("TP_DASHBOARD_SESSION_TTL_S", env.get("TP_DASHBOARD_SESSION_TTL_S", str(7 * 86400))),
        secure_cookie=values.flag("TP_DASHBOARD_SECURE_COOKIE", env.get("TP_DASHBOARD_SECURE_COOKIE", "") or "false"),
        call_timeout_s=_seconds("TP_DASHBOARD_CALL_TIMEOUT_S", env.get("TP_DASHBOARD_CALL_TIMEOUT_S", "30")),
        log_level=values.log_level("TP_LOG_LEVEL", pick("log_level", "TP_LOG_LEVEL", "INFO")),
        metrics_port=metrics_port,
    )


def _backend_address(args: argparse.Namespace | None, env: dict[str, str]) -> str:
    """--backend, else TP_BACKEND_ADDRESS, else BACKEND_API_URL, else the default; checked as the channel will take
    it, and for a TLS address with the client TLS files it will read (TP_TLS_*), so a bad one stops the start.

    Raises:
        ValueError: naming the flag or variable (a TLS file: its TP_TLS_* variable).
    """
    flag = getattr(args, "backend", None) if args is not None else None
    if flag:
        name, address = "--backend (TP_BACKEND_ADDRESS)", str(flag)
    elif env.get("TP_BACKEND_ADDRESS"):
        name, address = "TP_BACKEND_ADDRESS", env["TP_BACKEND_ADDRESS"]
    elif env.get("BACKEND_API_URL"):
        name, address = "BACKEND_API_URL", env["BACKEND_API_URL"]
    else:
        return DEFAULT_BACKEND
    try:
        tls = parse_backend_address(address).tls
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    if tls:
        try:
            ClientTls.from_env(env)
        except (ValueError, OSError) as error:
            raise ValueError(f"{error}, needed for the TLS backend address of {name}") from None
    return address


def _seconds(name: str, text: str) -> float:
    """A duration of more than 0 seconds.

    Raises:
        ValueError: naming the setting.
    """
    return values.number(name, text, above=True)
