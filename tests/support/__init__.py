"""Helpers of the tests and the benchmarks: real backends, databases, streams and servers to run them against.

Imported before any helper module imports grpc, the SDK's `grpc_env` gives every process that uses them (pytest's
workers, `bench/` scripts) the platform's default: gRPC's fork handlers off, as in a trainer that imports the SDK.
"""

import trainingplatform_sdk.grpc_env  # noqa: F401
