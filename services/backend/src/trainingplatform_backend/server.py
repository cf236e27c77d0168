"""The backend's gRPC server and its command line (`tp-backend`).

It is built from `trainingplatform_sdk.server` like the trainer services: keepalive agreed with the SDK's client
settings (`trainingplatform_sdk.server.options`; docs/architecture.md keeps both together), TLS, health,
reflection, and health NOT_SERVING first on shutdown. `tp-backend --workers N` runs N such servers on one port, as
worker processes of the supervisor in `workers.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from grpc_health.v1 import health_pb2
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from trainingplatform.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk.channel import ClientTls
from trainingplatform_sdk.server.lifecycle import LOG_FORMAT, GrpcServer, configure_logging, run_until_signal
from trainingplatform_sdk.server.options import server_options
from trainingplatform_sdk.server.tls import TlsFiles

from trainingplatform_backend import db, metrics, workers
from trainingplatform_backend import settings as settings_module
from trainingplatform_backend.auth import Authenticator
from trainingplatform_backend.convert import PageTokens
from trainingplatform_backend.db_health import DatabaseHealth
from trainingplatform_backend.dispatch import Dispatcher, DispatchSettings
from trainingplatform_backend.interceptors import ServiceInterceptor
from trainingplatform_backend.jobs_service import JobsServicer
from trainingplatform_backend.reporter_lease import ReporterLease, contact_write_interval
from trainingplatform_backend.settings import Settings
from trainingplatform_backend.store import NOTIFY_CHANNEL, WATCH_CHANNEL, Store
from trainingplatform_backend.subscriptions import Hub, PostgresListener
from trainingplatform_backend.telemetry_service import Backend, TelemetryServicer, add_telemetry_servicer

log = logging.getLogger("trainingplatform_backend")

SERVICE_NAMES = (
    telemetry_pb2.DESCRIPTOR.services_by_name["TrainingTelemetryService"].full_name,
    jobs_pb2.DESCRIPTOR.services_by_name["JobsService"].full_name,
)

LISTEN_START_TIMEOUT_S = 30.0
"""How long a start on PostgreSQL waits for its LISTEN connection before it gives up, naming the last failure."""

LIVENESS_SERVICE = "liveness"
"""A health service name that says SERVING while the process serves, whatever its database does: what a liveness
probe asks (`""` and the services say NOT_SERVING while the database does not answer: `DatabaseHealth`)."""


@dataclass
class RunningServer:
    """A started backend: the gRPC server and what must be closed with it."""

    server: GrpcServer
    backend: Backend
    listener: PostgresListener | None
    dispatcher: Dispatcher
    reporter_lease: ReporterLease
    settings: Settings
    metrics_task: asyncio.Task[None] | None = None
    database_health: DatabaseHealth | None = None

    async def stop(self) -> None:
        """Graceful shutdown: NOT_SERVING first, then open streams end after committing what they received,
        then the grace period for other calls, then the database is closed. The database checks end first: a
        database that answers again during the shutdown does not turn the health SERVING."""
        log.info("shutting down: health NOT_SERVING, grace %.1fs", self.settings.shutdown_grace_s)
        if self.database_health is not None:
            await self.database_health.stop()
        await self.server.stop(self.settings.shutdown_grace_s, drain=self._end_streams)
        await self.backend.committer.close()
        await self.dispatcher.stop()
        await self.reporter_lease.stop()
        if self.metrics_task is not None:
            self.metrics_task.cancel()
        if self.listener is not None:
            await self.listener.stop()
        self.backend.store.engine.dispose()
        log.info("stopped")

    async def _end_streams(self) -> None:
        """Open telemetry streams end after committing what they received; subscriptions are closed."""
        self.backend.begin_shutdown()
        self.backend.hub.close()


async def start(settings: Settings, *, reuse_port: bool = False) -> RunningServer:
    """Migrates the database (unless disabled), builds the servicers and starts serving.

    `reuse_port`: share the port with the other workers of `--workers N` (SO_REUSEPORT; see `workers`)."""
    settings = settings_module.ensure_frontend_token(settings_module.ensure_internal_token(settings))
    trainer_tls = _trainer_tls(settings)
    url = settings.effective_database_url
    host = settings.listen.rsplit(":", 1)[0]
    if metrics.should_serve(settings.metrics_port):  # before the migrations: a port in use is said at once
        metrics.serve_metrics(settings.metrics_port, host)
    # The database calls run in threads (`asyncio.to_thread`): one per connection the pool can open, and a few
    # more, so calls waiting on a lock (a VACUUM FULL of the metrics table) hold their own connections, not every
    # thread: asyncio's default pool (CPUs + 4 threads) let 8 such calls stall every other call.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=db.POOL_CONNECTIONS + 4, thread_name_prefix="tp-backend-db")
    )
    if settings.migrate_on_start:
        await asyncio.to_thread(db.migrate, url)
    engine = db.create_db_engine(url, timeout_s=settings.database_timeout_s)
    if not settings.migrate_on_start:
        await asyncio.to_thread(db.check_schema, engine)
    store = Store(engine, instance_id=uuid.uuid4().hex)
    hub = Hub(capacity_points=settings.subscriber_buffer_points)
    backend = Backend(
        store,
        hub,
        job_token_grace_s=settings.job_token_grace_s,
        commit_linger_s=settings.commit_linger_s,
        contact_write_s=contact_write_interval(settings.reporter_timeout_s),
        ingest_bytes_in_flight=settings.max_ingest_bytes_in_flight,
    )
    authenticator = Authenticator(
        internal_token=settings.internal_auth_token,
        read_token=settings.read_auth_token,
        frontend_token=settings.frontend_auth_token,
        job_token_hash=store.token_hash,
    )
    server = GrpcServer(
        SERVICE_NAMES,
        interceptors=[ServiceInterceptor(authenticator)],
        options=server_options(
            settings.max_message_bytes,
            settings.max_connection_age_s,
            settings.shutdown_grace_s,
            max_concurrent_streams=settings.max_concurrent_streams,
            reuse_port=reuse_port,
        ),
        max_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    add_telemetry_servicer(
        TelemetryServicer(backend, settings.max_message_bytes, max_streams_per_job=settings.max_streams_per_job),
        server.server,
    )
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
            call_timeout_s=settings.trainer_call_timeout_s,
            trainer_tls=trainer_tls,
        ),
        on_attempt=backend.note_attempt,
    )
    backend.on_job_ended = dispatcher.slot_freed
    reporter_lease = ReporterLease(
        store, dispatcher.transition, timeout_s=settings.reporter_timeout_s, interval_s=settings.watch_interval_s
    )
    jobs_pb2_grpc.add_JobsServiceServicer_to_server(
        JobsServicer(
            backend,
            dispatcher,
            max_subscriptions_per_caller=settings.max_subscriptions_per_caller,
            max_epochs=settings.max_epochs,
            max_spec_bytes=settings.max_spec_bytes,
            max_waiting_jobs=settings.max_waiting_jobs,
            max_message_bytes=settings.max_message_bytes,
            page_tokens=PageTokens.for_deployment(settings.page_token_key, settings.internal_auth_token),
        ),
        server.server,
    )
    tls = TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
    port = server.bind(settings.listen, tls if settings.tls_enabled else None)
    listener = None
    if not store.is_sqlite:
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        listener = PostgresListener(dsn, NOTIFY_CHANNEL, WATCH_CHANNEL, store.instance_id, hub, store.announce_watched)
        listener.start()
        try:
            await asyncio.wait_for(listener.ready.wait(), timeout=LISTEN_START_TIMEOUT_S)
        except TimeoutError:
            await listener.stop()
            raise TimeoutError(
                f"the PostgreSQL LISTEN connection did not open within {LISTEN_START_TIMEOUT_S:.0f} s"
                + (f": {listener.last_error}" if listener.last_error else "")
            ) from None
    metrics_task = metrics.start(settings.metrics_port, host, store.engine, serve=False)
    backend.committer.start()
    await server.start(before_serving=dispatcher.start)
    await server.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    database_health = None
    if not store.is_sqlite and settings.database_check_interval_s > 0:
        database_health = DatabaseHealth(
            url,
            interval_s=settings.database_check_interval_s,
            timeout_s=settings.database_check_timeout_s,
            on_change=lambda answers: _set_health(server, answers),
        )
        database_health.start()
    reporter_lease.start()
    log.info(
        "serving on %s:%d (%s, database %s)",
        host,
        port,
        "TLS" if settings.tls_enabled else "plaintext",
        db.display_url(url),
    )
    return RunningServer(server, backend, listener, dispatcher, reporter_lease, settings, metrics_task, database_health)


async def _set_health(server: GrpcServer, serving: bool) -> None:
    """The health of `""` and every service (not `liveness`): SERVING or NOT_SERVING."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *server.service_names):
        await server.health.set(name, status)


def _trainer_tls(settings: Settings) -> ClientTls | None:
    """The dispatcher's TLS to trainers (TP_TRAINER_TLS_*), read once at start; None when no CA is set. The settings
    loader checked the files already.

    Raises:
        OSError: a file cannot be read, or no longer holds what it should (it changed since the settings were
            loaded; the message names the setting).
    """
    if not settings.trainer_tls_ca_file:
        return None
    try:
        return ClientTls.from_files(
            settings.trainer_tls_ca_file,
            settings.trainer_tls_cert_file,
            settings.trainer_tls_key_file,
            names=settings_module.TRAINER_TLS_NAMES,
        )
    except ValueError as error:
        raise OSError(str(error)) from None


async def _serve_as_worker(settings: Settings) -> RunningServer:
    """A worker of `tp-backend --workers N`: serves the shared port, then tells the supervisor it does."""
    running = await start(settings, reuse_port=True)
    log.info(
        "worker %d (pid %d) serves as instance %s",
        workers.worker_index(),
        os.getpid(),
        running.backend.store.instance_id,
    )
    workers.report_ready()
    return running


def _warn_of_a_password_in_argv(database_url: str | None) -> None:
    """A WARNING when `--database-url` holds a password (`user:pw@`, `?password=`, `?sslpassword=`): every user of
    the host reads it in the process list."""
    if database_url and db.secrets_of(database_url):  # its password, `?password=`, `?sslpassword=`
        log.warning(
            "--database-url holds a password, which every user of this host can read in the process list: "
            "set DATABASE_URL instead"
        )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `tp-backend [serve|migrate]`."""
    parser = argparse.ArgumentParser(prog="tp-backend", description="The training platform's backend.")
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=("serve", "migrate"),
        help="serve (default), or only migrate the database (to the newest revision, or the one --to names)",
    )
    parser.add_argument(
        "--to",
        metavar="REVISION",
        help="with migrate: upgrade or downgrade the database to REVISION (a revision of this version, or head); "
        "run it with the newer version before rolling back to an older one",
    )
    settings_module.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.to is not None and args.command != "migrate":
        print(f"tp-backend: error: --to goes only with `tp-backend migrate --to {args.to}`", file=sys.stderr)
        return 2
    try:
        target = db.target_revision(args.to) if args.to is not None else "head"
    except ValueError as error:  # before the database is touched
        print(f"tp-backend: error: {error}", file=sys.stderr)
        return 2
    try:
        settings = settings_module.load(args, check_files=args.command == "serve")
    except ValueError as error:  # one line, without argparse's usage block: the flags were fine
        print(f"tp-backend: error: {error}", file=sys.stderr)
        return 2
    if workers.is_worker():
        worker_format = LOG_FORMAT.replace("%(name)s:", f"%(name)s [worker {workers.worker_index()}]:")
        configure_logging(settings.log_level, worker_format)
    else:
        configure_logging(settings.log_level)
        _warn_of_a_password_in_argv(args.database_url)
    reason = workers.refusal(settings) if args.command == "serve" and not workers.is_worker() else ""
    if reason:
        print(f"tp-backend: error: {reason}", file=sys.stderr)
        return 2
    try:
        if args.command == "migrate":
            db.migrate(settings.effective_database_url, target)
            return 0
        if workers.is_worker():
            serving = _serve_as_worker(dataclasses.replace(settings, migrate_on_start=False))  # the supervisor did
        elif settings.workers > 1:
            with contextlib.suppress(KeyboardInterrupt):
                return workers.supervise(settings, sys.argv[1:] if argv is None else argv)
            return 0
        else:
            serving = start(settings)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_until_signal(serving))
    except (OSError, SQLAlchemyError, TimeoutError, db.SchemaError) as error:
        # A startup failure (database unreachable or not migrated, port taken, unreadable TLS file) is one line.
        log.error("cannot start: %s", db.describe_error(error, settings.effective_database_url))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
