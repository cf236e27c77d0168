"""The training platform's backend: telemetry ingest, jobs, persistence and live subscriptions over gRPC."""

# First, before grpc is imported: gRPC's fork handlers off, as in every process of the platform (see the module).
import trainingplatform_sdk.grpc_env  # noqa: F401

__version__ = "0.1.0"
