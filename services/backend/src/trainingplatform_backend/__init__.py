"""The training platform's backend: telemetry ingest, jobs, persistence and live subscriptions over gRPC."""

import os

# gRPC's fork handlers off before grpc is imported, as in the SDK (trainingplatform_sdk/__init__.py says why):
# a fork (the `--workers` supervisor's, to restart a worker) must not run gRPC's fork handlers.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

__version__ = "0.1.0"
