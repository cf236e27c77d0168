"""Container health check: asks a service's standard gRPC health service (grpc.health.v1) whether it is SERVING.

    python grpc_health_check.py [ADDRESS] [--service NAME] [--timeout SECONDS]

Exits 0 when the service answers SERVING and 1 otherwise, which is what Docker's HEALTHCHECK and a Kubernetes exec
probe read. ADDRESS defaults to the service's own listen variable (TP_BACKEND_LISTEN, else TP_TRAINER_LISTEN) with
a wildcard host replaced by 127.0.0.1, so an image's HEALTHCHECK follows a changed port. Health needs no token.

With TP_TLS_CERT_FILE set the service speaks TLS, and so does the check: it trusts TP_HEALTHCHECK_TLS_CA_FILE, else
the service's own certificate (TP_TLS_CERT_FILE: a certificate signed by a CA is trusted as it is), and verifies the
name in TP_HEALTHCHECK_TLS_SERVER_NAME when the certificate does not name 127.0.0.1. TP_TLS_CA_FILE is not used: on
a trainer it names the CA of the backend it reports to, not the one that signed its own certificate. A service that
requires client certificates (TP_TLS_CLIENT_CA_FILE) cannot be checked this way.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

LISTEN_VARIABLES = ("TP_BACKEND_LISTEN", "TP_TRAINER_LISTEN")
WILDCARD_HOSTS = ("", "0.0.0.0", "[::]", "::")


def default_address(env: dict[str, str]) -> str:
    """The address to check: the first listen variable that is set, reached over loopback."""
    listen = next((env[name] for name in LISTEN_VARIABLES if env.get(name)), "")
    if not listen:
        raise SystemExit(f"no ADDRESS given and none of {', '.join(LISTEN_VARIABLES)} is set")
    host, _, port = listen.rpartition(":")
    return f"{'127.0.0.1' if host in WILDCARD_HOSTS else host}:{port}"


def open_channel(address: str, env: dict[str, str]) -> grpc.Channel:
    """A plaintext channel, or a TLS one when the service has TLS on, trusting TP_HEALTHCHECK_TLS_CA_FILE, else the
    service's own certificate."""
    cert_file = env.get("TP_TLS_CERT_FILE", "")
    if not cert_file:
        return grpc.insecure_channel(address)
    roots = Path(env.get("TP_HEALTHCHECK_TLS_CA_FILE") or cert_file).read_bytes()
    options = []
    if server_name := env.get("TP_HEALTHCHECK_TLS_SERVER_NAME", ""):
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=roots), options=options)


def check(address: str, *, service: str = "", timeout: float = 3.0, env: dict[str, str] | None = None) -> str:
    """Returns the service's health status name (SERVING, NOT_SERVING, ...), or the gRPC error code's name."""
    env = dict(os.environ if env is None else env)
    with open_channel(address, env) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as error:
            return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", nargs="?", help="host:port (default: from TP_BACKEND_LISTEN / TP_TRAINER_LISTEN)")
    parser.add_argument("--service", default="", help="service name to ask about (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)")
    args = parser.parse_args(argv)
    address = args.address or default_address(dict(os.environ))
    status = check(address, service=args.service, timeout=args.timeout)
    if status != "SERVING":
        print(f"{address}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
