"""The training platform's backend: telemetry ingest, jobs, persistence and live subscriptions over gRPC."""

__version__ = "0.1.0"
