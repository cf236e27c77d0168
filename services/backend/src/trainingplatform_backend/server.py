"""The backend's gRPC server and its command line (`tp-backend`).

Keepalive, agreed with the SDK's client settings (docs/architecture.md keeps both together):
- the server pings an idle connection every 60 s and drops it when no answer comes within 20 s;
- it accepts client pings as often as every 10 s, with or without an active call; the SDK pings every 30 s,
  so a trainer's stream is never closed with GOAWAY "too_many_pings", and can stay open for days.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from trainingplatform.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from trainingplatform.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc

from trainingplatform_backend import db
from trainingplatform_backend import settings as settings_module
from trainingplatform_backend.auth import Authenticator
from trainingplatform_backend.dispatch import Dispatcher, DispatchSettings
from trainingplatform_backend.interceptors import ServiceInterceptor
from trainingplatform_backend.jobs_service import JobsServicer
from trainingplatform_backend.settings import Settings
from trainingplatform_backend.store import NOTIFY_CHANNEL, Store
from trainingplatform_backend.subscriptions import Hub, PostgresListener
from trainingplatform_backend.telemetry_service import Backend, TelemetryServicer

log = logging.getLogger("trainingplatform_backend")

SERVICE_NAMES = (
    telemetry_pb2.DESCRIPTOR.services_by_name["TrainingTelemetryService"].full_name,
    jobs_pb2.DESCRIPTOR.services_by_name["JobsService"].full_name,
)


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel arguments of the server: message size limits and keepalive."""
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    if settings.max_connection_age_s > 0:
        options.append(("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)))
        options.append(("grpc.max_connection_age_grace_ms", int(settings.shutdown_grace_s * 1000)))
    return options


def server_credentials(settings: Settings) -> grpc.ServerCredentials:
    """TLS credentials from the configured PEM files; client certificates are required when a CA is set."""
    key = Path(settings.tls_key_file).read_bytes()
    cert = Path(settings.tls_cert_file).read_bytes()
    client_ca = Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


@dataclass
class RunningServer:
    """A started backend: the gRPC server and what must be closed with it."""

    server: grpc.aio.Server
    port: int
    backend: Backend
    health: health.aio.HealthServicer
    listener: PostgresListener | None
    dispatcher: Dispatcher
    settings: Settings

    async def stop(self) -> None:
        """Graceful shutdown: NOT_SERVING first, then open streams end after committing what they received,
        then the grace period for other calls, then the database is closed."""
        log.info("shutting down: health NOT_SERVING, grace %.1fs", self.settings.shutdown_grace_s)
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.backend.begin_shutdown()
        self.backend.hub.close()
        await self.server.stop(self.settings.shutdown_grace_s)
        await self.backend.committer.close()
        await self.dispatcher.stop()
        if self.listener is not None:
            await self.listener.stop()
        self.backend.store.engine.dispose()
        log.info("stopped")


async def start(settings: Settings) -> RunningServer:
    """Migrates the database (unless disabled), builds the servicers and starts serving."""
    settings = settings_module.ensure_internal_token(settings)
    url = settings.effective_database_url
    if settings.migrate_on_start:
        await asyncio.to_thread(db.migrate, url)
    engine = db.create_db_engine(url)
    store = Store(engine, instance_id=uuid.uuid4().hex)
    hub = Hub(capacity_points=settings.subscriber_buffer_points)
    backend = Backend(store, hub)
    authenticator = Authenticator(
        internal_token=settings.internal_auth_token,
        read_token=settings.read_auth_token,
        job_token_hash=store.token_hash,
    )
    server = grpc.aio.server(interceptors=[ServiceInterceptor(authenticator)], options=server_options(settings))
    telemetry_pb2_grpc.add_TrainingTelemetryServiceServicer_to_server(TelemetryServicer(backend), server)
    dispatcher = Dispatcher(
        store,
        hub,
        DispatchSettings(
            trainers=settings.trainers,
            telemetry_endpoint=settings.effective_telemetry_endpoint,
            internal_token=settings.internal_auth_token,
            dispatch_timeout_s=settings.dispatch_timeout_s,
            lease_s=settings.trainer_lease_s,
            watch_interval_s=settings.watch_interval_s,
        ),
    )
    jobs_pb2_grpc.add_JobsServiceServicer_to_server(JobsServicer(backend, dispatcher), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    if settings.tls_enabled:
        port = server.add_secure_port(settings.listen, server_credentials(settings))
    else:
        port = server.add_insecure_port(settings.listen)
    if port == 0:
        raise OSError(f"cannot listen on {settings.listen}")
    listener = None
    if not store.is_sqlite:
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        listener = PostgresListener(dsn, NOTIFY_CHANNEL, store.instance_id, hub)
        listener.start()
        await asyncio.wait_for(listener.ready.wait(), timeout=30)
    backend.committer.start()
    await server.start()
    dispatcher.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    host = settings.listen.rsplit(":", 1)[0]
    log.info(
        "serving on %s:%d (%s, database %s)",
        host,
        port,
        "TLS" if settings.tls_enabled else "plaintext",
        make_url(url).render_as_string(hide_password=True),
    )
    return RunningServer(server, port, backend, health_servicer, listener, dispatcher, settings)


async def serve(settings: Settings) -> None:
    """Serves until SIGTERM or SIGINT, then shuts down gracefully."""
    running = await start(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await running.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `tp-backend [serve|migrate]`."""
    parser = argparse.ArgumentParser(prog="tp-backend", description="The training platform's backend.")
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=("serve", "migrate"),
        help="serve (default) or only apply database migrations",
    )
    settings_module.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = settings_module.load(args)
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        if args.command == "migrate":
            db.migrate(settings.effective_database_url)
            return 0
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(settings))
    except (OSError, SQLAlchemyError, TimeoutError) as error:
        # A startup failure (database unreachable, port taken, unreadable TLS file) is one clear line.
        log.error("cannot start: %s", str(error).splitlines()[0])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
