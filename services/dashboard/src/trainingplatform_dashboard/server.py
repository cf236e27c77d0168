"""`tp-dashboard`: serves the dashboard with uvicorn until SIGTERM or SIGINT.

    tp-dashboard [--listen 127.0.0.1:8080] [--backend 127.0.0.1:50051] [--data-dir .data] [--log-level INFO]

Settings and their environment variables are in `settings.py`. When TP_DASHBOARD_TOKEN is not set, a random login
token is made for this start and the login URL is printed (as Jupyter does): open it in a browser to log in. It
works once: the next one is written to `<TP_DATA_DIR>/dashboard_login_url` (mode 0600).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence

import uvicorn
from trainingplatform_sdk import setting_values as values

from trainingplatform_dashboard import metrics
from trainingplatform_dashboard import settings as settings_module
from trainingplatform_dashboard.app import create_app

__all__ = ["main"]

_LOG = logging.getLogger("trainingplatform_dashboard")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the dashboard; returns the exit code (2 for a bad setting)."""
    parser = argparse.ArgumentParser(prog="tp-dashboard", description="The training platform's web dashboard.")
    settings_module.add_arguments(parser)
    args = parser.parse_args(argv)
    token_given = bool(os.environ.get("TP_DASHBOARD_TOKEN", "").strip())
    try:
        settings = settings_module.load(args)
    except ValueError as error:
        print(f"tp-dashboard: error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout
    )
    app = create_app(settings)
    try:
        # The ports first: a port in use is one line, and no login URL is printed for a server that never starts.
        sock = _listen_socket(settings.host, settings.port)
    except OSError as error:
        print(f"tp-dashboard: error: {error}", file=sys.stderr)
        return 1
    try:
        if settings.metrics_port:
            metrics.serve_metrics(app.state.dashboard, settings.metrics_port, settings.host)
    except OSError as error:
        sock.close()
        print(f"tp-dashboard: error: {error}", file=sys.stderr)
        return 1
    _LOG.info("dashboard for backend %s on %s", settings.backend_address, settings.url)
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        _LOG.warning("listening on %s: reachable from other hosts (only the login token protects it)", settings.host)
    if token_given:
        print(f"dashboard: {settings.url}/ (log in with the URL that started it)", flush=True)
    else:
        print(f"dashboard: open {settings.url}/login?token={settings.login_token}", flush=True)
        print(
            f"  (it works once; the next one: cat {settings.data_dir / 'dashboard_login_url'}, or set "
            "TP_DASHBOARD_TOKEN for a reusable token)",
            flush=True,
        )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,  # the access log would hold /login?token=...
        server_header=False,
        proxy_headers=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    server = _Server(config, on_stop=app.state.dashboard.sessions.stop_streams)
    # uvicorn shuts down on SIGTERM or SIGINT, then raises the signal again for the handler it found: with these
    # handlers a stop asked for ends the process with exit code 0 (as the backend and the trainers), not killed by
    # SIGTERM (-15) or with a KeyboardInterrupt traceback. A signal before uvicorn serves ends it the same way.
    try:
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop_signal, _stopped)
        with sock:
            server.run(sockets=[sock])
        started = server.started
        for stop_signal in (signal.SIGTERM, signal.SIGINT):  # a signal from here on: the process ends with 0
            signal.signal(stop_signal, signal.SIG_IGN)
    except _Stopped:
        return 0
    return 0 if started else 1


class _Server(uvicorn.Server):
    """uvicorn's server, which ends the open event streams as soon as a stop begins: uvicorn waits for responses to
    complete, and an event stream never does on its own (it would be cancelled after the graceful-shutdown wait,
    with an ERROR line for every stop)."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_stop = on_stop

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_stop()
        await super().shutdown(sockets)


class _Stopped(BaseException):
    """Raised by `_stopped`: a stop signal arrived outside uvicorn's own handling."""


def _stopped(signum: int, frame: object) -> None:
    raise _Stopped(signum)


def _listen_socket(host: str, port: int) -> socket.socket:
    """The dashboard's listening socket on `host:port`, bound here (uvicorn serves it).

    Raises:
        OSError: one line naming the address and TP_DASHBOARD_LISTEN.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise values.port_error("listen", host, port, "TP_DASHBOARD_LISTEN", error) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise values.port_error("listen", host, port, "TP_DASHBOARD_LISTEN", error) from None
    return sock


if __name__ == "__main__":
    sys.exit(main())
