"""The trainer service's gRPC server and the command line every framework's service shares.

Keepalive matches the backend's (docs/architecture.md): the server pings an idle connection every 60 s and
drops it when no answer comes within 20 s; it accepts client pings as often as every 10 s.

Shutdown (SIGTERM or SIGINT): health turns NOT_SERVING, StartTraining answers UNAVAILABLE, every live run is
stopped like a cancel (SIGTERM, SIGKILL after TP_CANCEL_GRACE_S; checkpoints and telemetry so far are kept, the
jobs end CANCELLED), reads keep being answered until the processes have exited, then the server stops with
TP_SHUTDOWN_GRACE_S for open calls. Runs are stopped rather than left behind because nothing would watch,
cancel or report a process that outlives its service.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from trainingplatform.trainer.v1 import trainer_pb2, trainer_pb2_grpc

from trainingplatform_sdk.trainer_service import settings as settings_module
from trainingplatform_sdk.trainer_service.auth import TokenInterceptor
from trainingplatform_sdk.trainer_service.framework import Catalog, FrameworkDescription
from trainingplatform_sdk.trainer_service.servicer import TrainerServicer
from trainingplatform_sdk.trainer_service.settings import TrainerSettings
from trainingplatform_sdk.trainer_service.supervisor import Supervisor

__all__ = ["SERVICE_NAME", "RunningTrainer", "serve", "server_options", "start"]

_log = logging.getLogger("trainingplatform_sdk.trainer_service")

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name


def server_options() -> list[tuple[str, int]]:
    """Channel arguments of the server: keepalive agreed with the platform's clients."""
    return [
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def _server_credentials(settings: TrainerSettings) -> grpc.ServerCredentials:
    key = Path(settings.tls_key_file).read_bytes()
    cert = Path(settings.tls_cert_file).read_bytes()
    client_ca = Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


@dataclass
class RunningTrainer:
    """A started trainer service: the gRPC server and what must be stopped with it."""

    server: grpc.aio.Server
    port: int
    supervisor: Supervisor
    health: health.aio.HealthServicer
    settings: TrainerSettings

    async def stop(self) -> None:
        """Graceful shutdown; see the module docstring."""
        _log.info("shutting down: health NOT_SERVING, stopping %d run(s)", self.supervisor.live_count)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.supervisor.shutdown()
        await self.server.stop(self.settings.shutdown_grace_s)
        _log.info("stopped")


async def start(description: FrameworkDescription, settings: TrainerSettings) -> RunningTrainer:
    """Builds the servicer and starts serving; the framework's model list loads in the background.

    Raises:
        OSError: The address cannot be bound.
    """
    catalog = Catalog(description)
    supervisor = Supervisor(settings, catalog)
    server = grpc.aio.server(interceptors=[TokenInterceptor(settings.internal_auth_token)], options=server_options())
    trainer_pb2_grpc.add_TrainerServiceServicer_to_server(
        TrainerServicer(supervisor, catalog, settings.max_concurrent_jobs), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    if settings.tls_enabled:
        port = server.add_secure_port(settings.listen, _server_credentials(settings))
    else:
        port = server.add_insecure_port(settings.listen)
    if port == 0:
        raise OSError(f"cannot listen on {settings.listen}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    # Importing the framework takes seconds: serve at once and load its model list meanwhile, so the first
    # StartTraining or GetCapabilities rarely waits for it.
    warm_up = asyncio.get_running_loop().run_in_executor(None, catalog.load)
    warm_up.add_done_callback(_log_warm_up)
    _log.info(
        "%s trainer serving on %s:%d (%s), up to %d concurrent job(s), runs in %s",
        description.framework,
        settings.listen.rsplit(":", 1)[0],
        port,
        "TLS" if settings.tls_enabled else "plaintext",
        settings.max_concurrent_jobs,
        settings.runs_dir,
    )
    return RunningTrainer(server, port, supervisor, health_servicer, settings)


def _log_warm_up(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        _log.error("loading the framework's model list failed", exc_info=future.exception())


async def _serve_until_signal(description: FrameworkDescription, settings: TrainerSettings) -> None:
    running = await start(description, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await running.stop()


def serve(description: FrameworkDescription, argv: Sequence[str] | None = None) -> int:
    """Runs a trainer service until SIGTERM or SIGINT: the whole `main()` of a framework's service.

    Args:
        description: What the service trains.
        argv: Command-line arguments (without the program name); None reads `sys.argv`.

    Returns:
        The process exit code: 0 after a graceful shutdown. Bad settings exit with 2 and a message.
    """
    parser = argparse.ArgumentParser(
        prog=f"tp-trainer-{description.framework}",
        description=f"The training platform's {description.framework} trainer service.",
    )
    settings_module.add_arguments(parser, description.default_listen)
    args = parser.parse_args(argv)
    try:
        settings = settings_module.load(description.default_listen, args)
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_until_signal(description, settings))
    return 0
