"""The trainer service's gRPC server and the command line every framework's service shares.

It is built from `trainingplatform_sdk.server` like the backend: the same keepalive (`server.options`), TLS,
health, reflection and shutdown order.

Shutdown (SIGTERM or SIGINT): health turns NOT_SERVING, StartTraining answers UNAVAILABLE (a call still in its
submit checks too, at once: `Supervisor.validate`), every live run is
stopped like a cancel (SIGTERM, SIGKILL after TP_CANCEL_GRACE_S; checkpoints and telemetry so far are kept, the
jobs end CANCELLED), reads keep being answered until the processes have exited, then the server stops with
TP_SHUTDOWN_GRACE_S for open calls. Runs are stopped rather than left behind because nothing would watch,
cancel or report a process that outlives its service. A service killed without its shutdown leaves its runs
training; the next service of its framework started on the same runs directory adopts them (`Supervisor.adopt`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from trainingplatform.trainer.v1 import trainer_pb2, trainer_pb2_grpc

from trainingplatform_sdk.server.lifecycle import GrpcServer, configure_logging, run_until_signal
from trainingplatform_sdk.server.options import server_options
from trainingplatform_sdk.server.tls import TlsFiles
from trainingplatform_sdk.trainer_service import metrics
from trainingplatform_sdk.trainer_service import settings as settings_module
from trainingplatform_sdk.trainer_service.auth import TokenInterceptor
from trainingplatform_sdk.trainer_service.framework import Catalog, FrameworkDescription
from trainingplatform_sdk.trainer_service.servicer import TrainerServicer
from trainingplatform_sdk.trainer_service.settings import TrainerSettings
from trainingplatform_sdk.trainer_service.supervisor import Supervisor

__all__ = ["SERVICE_NAME", "RunningTrainer", "serve", "server_options", "start"]

_log = logging.getLogger("trainingplatform_sdk.trainer_service")

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name


@dataclass
class RunningTrainer:
    """A started trainer service: the gRPC server and what must be stopped with it."""

    server: GrpcServer
    supervisor: Supervisor
    settings: TrainerSettings

    async def stop(self) -> None:
        """Graceful shutdown (see the module docstring): NOT_SERVING, the runs stopped, then the server."""
        _log.info("shutting down: health NOT_SERVING, stopping %d run(s)", self.supervisor.live_count)
        await self.server.stop(self.settings.shutdown_grace_s, drain=self.supervisor.shutdown)
        _log.info("stopped")


async def start(description: FrameworkDescription, settings: TrainerSettings) -> RunningTrainer:
    """Builds the servicer and starts serving; the framework's model list loads in the background.

    Raises:
        OSError: The address cannot be bound.
    """
    catalog = Catalog(description, settings)
    supervisor = Supervisor(settings, catalog)
    # Before serving: the first GetTraining already knows the runs a killed predecessor left.
    await supervisor.adopt()
    server = GrpcServer(
        (SERVICE_NAME,),
        interceptors=[TokenInterceptor(settings.internal_auth_token)],
        options=server_options(max_concurrent_streams=settings.max_concurrent_streams),
        max_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    trainer_pb2_grpc.add_TrainerServiceServicer_to_server(
        TrainerServicer(supervisor, catalog, settings.max_concurrent_jobs), server.server
    )
    tls = TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
    port = server.bind(settings.listen, tls if settings.tls_enabled else None)
    if settings.metrics_port:
        metrics.watch(
            description.framework,
            settings.max_concurrent_jobs,
            lambda: supervisor.live_count,
            lambda: supervisor.unreported_count,
        )
        metrics.serve_metrics(settings.metrics_port, settings.listen.rsplit(":", 1)[0])
    await server.start()
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
    return RunningTrainer(server, supervisor, settings)


def _log_warm_up(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        _log.error("loading the framework's model list failed", exc_info=future.exception())


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
    parser.add_argument(
        "--describe",
        action="store_true",
        help="print what this trainer accepts (advanced_config keys with types, ranges and defaults, optimizers) "
        "as one line of JSON and exit, starting nothing; `tp frameworks` renders it",
    )
    args = parser.parse_args(argv)
    if args.describe:
        # Imported here: the framework's lists load only for this.
        from trainingplatform_sdk.trainer_service.describe import describe

        print(json.dumps(describe(description), ensure_ascii=False), flush=True)
        return 0
    try:
        settings = settings_module.load(description.default_listen, args)
    except ValueError as error:  # one line, without argparse's usage block: the flags were fine
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    # torch (imported by timm and ultralytics, here and in every training) keeps its compile cache in
    # /tmp/torchinductor_<user> by default: a file left in the temporary directory by every session. It goes
    # with the rest of the trainer's files instead; the training subprocesses inherit the setting.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str((settings.data_dir / "cache" / "torchinductor").absolute()))
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_until_signal(start(description, settings)))
    except OSError as error:  # the port is taken, a TLS file unreadable: one clear line (tp up shows it)
        _log.error("cannot start: %s", str(error).splitlines()[0])
        return 1
    return 0
