"""The backend's settings: one object, read from flags, then environment variables, then defaults."""

from __future__ import annotations

import argparse
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from trainingplatform_sdk.spec.limits import DEFAULT_MAX_MESSAGE_BYTES

DEFAULT_LISTEN = "127.0.0.1:50051"


@dataclass(frozen=True)
class Settings:
    """Everything the backend is configured with.

    Each field names its environment variable; command-line flags of the same name override them.
    """

    listen: str = DEFAULT_LISTEN
    """TP_BACKEND_LISTEN: address to serve on, `host:port`. Default 127.0.0.1:50051 (loopback only)."""

    data_dir: Path = Path(".data")
    """TP_DATA_DIR: directory for the embedded SQLite database and the generated service token."""

    database_url: str = ""
    """DATABASE_URL: SQLAlchemy URL. Empty means `sqlite:///<data_dir>/backend.db`. PostgreSQL:
    `postgresql+psycopg://user@host:5432/db` (a `postgresql://` URL is read as psycopg 3)."""

    internal_auth_token: str = field(default="", repr=False)
    """INTERNAL_AUTH_TOKEN: the service token for service-to-service calls. Empty means a random token is
    generated once and kept in `<data_dir>/internal_auth_token` (mode 0600) for local tools to read."""

    read_auth_token: str = field(default="", repr=False)
    """READ_AUTH_TOKEN: optional read-only token for dashboards (jobs, history, subscriptions)."""

    tls_cert_file: str = ""
    """TP_TLS_CERT_FILE: PEM server certificate; with TP_TLS_KEY_FILE it turns TLS on."""

    tls_key_file: str = ""
    """TP_TLS_KEY_FILE: PEM private key of the server certificate."""

    tls_client_ca_file: str = ""
    """TP_TLS_CLIENT_CA_FILE: PEM CA bundle; when set, clients must present a certificate it signed (mTLS)."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """TP_MAX_MESSAGE_BYTES: largest request message accepted (8 MiB); larger ones get RESOURCE_EXHAUSTED."""

    shutdown_grace_s: float = 10.0
    """TP_SHUTDOWN_GRACE_S: seconds open calls get to finish on SIGTERM before they are cancelled."""

    max_connection_age_s: float = 0.0
    """TP_MAX_CONNECTION_AGE_S: close connections after this age so streams rebalance behind a load
    balancer (clients resume from the cursor). 0 disables it."""

    subscriber_buffer_points: int = 50_000
    """TP_SUBSCRIBER_BUFFER_POINTS: live points (or events) buffered per subscriber; past it the subscriber is
    told it lagged and continues from the database."""

    migrate_on_start: bool = True
    """TP_MIGRATE_ON_START: apply Alembic migrations when the server starts (`tp-backend migrate` otherwise)."""

    log_level: str = "INFO"
    """TP_LOG_LEVEL: the backend's logging level."""

    trainers: dict[str, list[str]] = field(default_factory=dict)
    """TP_TRAINERS: trainer services by framework, `timm=host:port,timm=host2:port,ultralytics=host:port`
    (several replicas per framework allowed). Empty: jobs can only be created with dispatch=false."""

    telemetry_endpoint: str = ""
    """TP_TELEMETRY_ENDPOINT: this backend's address as trainers reach it, handed to them with each job.
    Empty means the listen address (127.0.0.1 for a wildcard host), `https://` when TLS is on."""

    dispatch_timeout_s: float = 600.0
    """TP_DISPATCH_TIMEOUT_S: how long a job stays QUEUED waiting for a free or reachable trainer (retried with
    backoff) before it fails."""

    trainer_lease_s: float = 60.0
    """TP_TRAINER_LEASE_S: a live job whose trainer no longer runs it (process gone without a final status,
    trainer unreachable or restarted) is FAILED after this long."""

    watch_interval_s: float = 10.0
    """TP_WATCH_INTERVAL_S: how often the backend asks trainers about their live jobs' runs."""

    trainer_call_timeout_s: float = 30.0
    """TP_TRAINER_CALL_TIMEOUT_S: deadline of StartTraining and CancelTraining calls. A StartTraining past it may
    still have started a run: the job then goes to the next replica as a new attempt, and the first is fenced."""

    @property
    def effective_database_url(self) -> str:
        """The database URL with the embedded default filled in and psycopg 3 chosen for PostgreSQL."""
        url = self.database_url or f"sqlite:///{(self.data_dir / 'backend.db').resolve()}"
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return url

    @property
    def effective_telemetry_endpoint(self) -> str:
        """Where trainers send telemetry: the configured endpoint or one derived from the listen address."""
        if self.telemetry_endpoint:
            return self.telemetry_endpoint
        host, _, port = self.listen.rpartition(":")
        if host in ("", "0.0.0.0", "[::]", "::"):
            host = "127.0.0.1"
        return f"{'https' if self.tls_enabled else 'grpc'}://{host}:{port}"

    @property
    def tls_enabled(self) -> bool:
        """Whether the server listens with TLS."""
        return bool(self.tls_cert_file and self.tls_key_file)


def _env_bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def parse_trainers(value: str) -> dict[str, list[str]]:
    """Parses TP_TRAINERS (`framework=host:port,...`).

    Raises:
        ValueError: an entry is not `framework=host:port`.
    """
    trainers: dict[str, list[str]] = {}
    for entry in filter(None, (part.strip() for part in value.split(","))):
        framework, sep, address = entry.partition("=")
        if not sep or not framework.strip() or ":" not in address:
            raise ValueError(f"TP_TRAINERS entry {entry!r} must be framework=host:port")
        trainers.setdefault(framework.strip(), []).append(address.strip())
    return trainers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per setting; a flag left out falls back to its environment variable."""
    parser.add_argument("--listen", help=f"address to serve on (TP_BACKEND_LISTEN, default {DEFAULT_LISTEN})")
    parser.add_argument("--data-dir", help="data directory (TP_DATA_DIR, default .data)")
    parser.add_argument("--database-url", help="SQLAlchemy database URL (DATABASE_URL)")
    parser.add_argument("--tls-cert-file", help="PEM server certificate (TP_TLS_CERT_FILE)")
    parser.add_argument("--tls-key-file", help="PEM server key (TP_TLS_KEY_FILE)")
    parser.add_argument("--tls-client-ca-file", help="PEM CA for client certificates (TP_TLS_CLIENT_CA_FILE)")
    parser.add_argument("--shutdown-grace-s", type=float, help="grace period on SIGTERM (TP_SHUTDOWN_GRACE_S)")
    parser.add_argument("--no-migrate", action="store_true", help="do not apply migrations on start")
    parser.add_argument("--log-level", help="logging level (TP_LOG_LEVEL)")
    parser.add_argument("--trainers", help="trainer services, framework=host:port,... (TP_TRAINERS)")


def load(args: argparse.Namespace | None = None, env: dict[str, str] | None = None) -> Settings:
    """Builds the settings from parsed flags, then the environment, then the defaults.

    Tokens are only read from the environment: a token on a command line is visible to every user of the host.
    """
    env = dict(os.environ if env is None else env)

    def pick(flag: str, var: str, default: str) -> str:
        value = getattr(args, flag, None) if args is not None else None
        return str(value) if value is not None else env.get(var, default)

    max_bytes = int(pick("max_message_bytes", "TP_MAX_MESSAGE_BYTES", str(DEFAULT_MAX_MESSAGE_BYTES)))
    if max_bytes < 64 * 1024:
        raise ValueError(f"TP_MAX_MESSAGE_BYTES must be at least 65536, got {max_bytes}")
    migrate = _env_bool(env.get("TP_MIGRATE_ON_START", "true"))
    if args is not None and getattr(args, "no_migrate", False):
        migrate = False
    return Settings(
        listen=pick("listen", "TP_BACKEND_LISTEN", DEFAULT_LISTEN),
        data_dir=Path(pick("data_dir", "TP_DATA_DIR", ".data")),
        database_url=pick("database_url", "DATABASE_URL", ""),
        internal_auth_token=env.get("INTERNAL_AUTH_TOKEN", ""),
        read_auth_token=env.get("READ_AUTH_TOKEN", ""),
        tls_cert_file=pick("tls_cert_file", "TP_TLS_CERT_FILE", ""),
        tls_key_file=pick("tls_key_file", "TP_TLS_KEY_FILE", ""),
        tls_client_ca_file=pick("tls_client_ca_file", "TP_TLS_CLIENT_CA_FILE", ""),
        max_message_bytes=max_bytes,
        shutdown_grace_s=float(pick("shutdown_grace_s", "TP_SHUTDOWN_GRACE_S", "10")),
        max_connection_age_s=float(env.get("TP_MAX_CONNECTION_AGE_S", "0")),
        subscriber_buffer_points=int(env.get("TP_SUBSCRIBER_BUFFER_POINTS", "50000")),
        migrate_on_start=migrate,
        log_level=pick("log_level", "TP_LOG_LEVEL", "INFO").upper(),
        trainers=parse_trainers(pick("trainers", "TP_TRAINERS", "")),
        telemetry_endpoint=env.get("TP_TELEMETRY_ENDPOINT", ""),
        dispatch_timeout_s=float(env.get("TP_DISPATCH_TIMEOUT_S", "600")),
        trainer_lease_s=float(env.get("TP_TRAINER_LEASE_S", "60")),
        watch_interval_s=float(env.get("TP_WATCH_INTERVAL_S", "10")),
        trainer_call_timeout_s=float(env.get("TP_TRAINER_CALL_TIMEOUT_S", "30")),
    )


def ensure_internal_token(settings: Settings) -> Settings:
    """Returns settings with a service token: the configured one, or one generated once into the data dir."""
    if settings.internal_auth_token:
        return settings
    path = settings.data_dir / "internal_auth_token"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    token = path.read_text().strip()
    return Settings(**{**settings.__dict__, "internal_auth_token": token})
