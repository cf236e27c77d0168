"""The backend's settings: one object, read from flags, then environment variables, then defaults."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from trainingplatform_sdk import setting_values as values
from trainingplatform_sdk.channel import ClientTls, check_token, parse_backend_address
from trainingplatform_sdk.host import usable_cpus
from trainingplatform_sdk.server.tls import check_server_tls
from trainingplatform_sdk.spec.limits import (
    DEFAULT_MAX_EPOCHS,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_SPEC_BYTES,
    MAX_EPOCHS,
)

from trainingplatform_backend import db, db_health

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_INGEST_BYTES_IN_FLIGHT = 2 * DEFAULT_MAX_MESSAGE_BYTES
"""TP_MAX_INGEST_BYTES_IN_FLIGHT's default: two messages of the default TP_MAX_MESSAGE_BYTES, so one is parsed and
validated while the one before it commits."""


@dataclass(frozen=True)
class Settings:
    """Everything the backend is configured with.

    Each field names its environment variable; command-line flags of the same name override them.
    """

    listen: str = DEFAULT_LISTEN
    """TP_BACKEND_LISTEN: address to serve on, `host:port`. Default 127.0.0.1:50051 (loopback only)."""

    data_dir: Path = Path(".data")
    """TP_DATA_DIR: directory for the embedded SQLite database and the generated service token."""

    database_url: str = field(default="", repr=False)
    """DATABASE_URL: SQLAlchemy URL (not in the repr: it may hold a password). Empty means
    `sqlite:///<data_dir>/backend.db`. PostgreSQL: `postgresql+psycopg://user@host:5432/db` (a `postgresql://` URL
    is read as psycopg 3). A connection that takes longer than its `connect_timeout` (`?connect_timeout=N`; 10 s
    when the URL sets none) fails the start."""

    database_timeout_s: float = db.DEFAULT_DATABASE_TIMEOUT_S
    """TP_DATABASE_TIMEOUT_S: PostgreSQL only. The longest one statement may run (`statement_timeout`), and how long
    (plus a tenth, at most 3 s) the backend waits on a database that does not answer (a network partition, a frozen
    primary) before it closes the connection and fails the call UNAVAILABLE; TCP keepalives and `tcp_user_timeout`
    find a dead connection in about as long. Parameters the URL sets itself (`?keepalives_idle=`,
    `?tcp_user_timeout=`, a statement_timeout in `?options=`) keep their values. Migrations have no
    statement_timeout. 0: none of these."""

    database_check_interval_s: float = db_health.DEFAULT_CHECK_INTERVAL_S
    """TP_DATABASE_CHECK_INTERVAL_S: PostgreSQL only. How often (5 s) the backend checks that its database answers
    (`SELECT 1` on a connection of its own). While a check fails, the gRPC health (`""` and every service) says
    NOT_SERVING, so readiness probes and load balancers send the calls elsewhere; it says SERVING again at the
    first check that passes. One WARNING and one INFO line mark the outage. The health service `liveness` is not
    affected (liveness probes must not restart a backend for its database). 0: no checks."""

    database_check_timeout_s: float = db_health.DEFAULT_CHECK_TIMEOUT_S
    """TP_DATABASE_CHECK_TIMEOUT_S: how long one database check may take, connecting included (2 s; a database that
    does not answer within it counts as down). DATABASE_URL's `connect_timeout` does not apply to the checks."""

    internal_auth_token: str = field(default="", repr=False)
    """INTERNAL_AUTH_TOKEN: the service token for service-to-service calls. Empty means a random token is
    generated once and kept in `<data_dir>/internal_auth_token` (mode 0600) for local tools to read."""

    read_auth_token: str = field(default="", repr=False)
    """READ_AUTH_TOKEN: optional read-only token for dashboards (jobs, history, subscriptions)."""

    tls_cert_file: str = ""
    """TP_TLS_CERT_FILE: PEM server certificate; with TP_TLS_KEY_FILE it turns TLS on (one without the other, or
    TP_TLS_CLIENT_CA_FILE without both, is refused at start: `check_server_tls`)."""

    tls_key_file: str = ""
    """TP_TLS_KEY_FILE: PEM private key of the server certificate."""

    tls_client_ca_file: str = ""
    """TP_TLS_CLIENT_CA_FILE: PEM CA bundle; when set, clients must present a certificate it signed (mTLS)."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """TP_MAX_MESSAGE_BYTES: largest request message accepted (8 MiB); larger ones get RESOURCE_EXHAUSTED."""

    max_ingest_bytes_in_flight: int = DEFAULT_INGEST_BYTES_IN_FLIGHT
    """TP_MAX_INGEST_BYTES_IN_FLIGHT: most bytes of large StreamMetrics and StreamLogs messages (over 64 KiB each,
    as received) the backend parses, validates and commits at once, all streams together (16 MiB). Parsed and
    until its commit ends, a message takes about 5 to 10 times its size in memory; a stream whose message does not
    fit waits, holding only the bytes it received (its client waits too: HTTP/2 flow control), so the backend's
    memory does not grow with the number of streams sending large messages. One message always goes in when
    nothing else is in, whatever its size: nothing is refused for this limit."""

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
    """TP_DISPATCH_TIMEOUT_S: how long a job stays QUEUED (retried with backoff) without any trainer of its framework
    answering busy (RESOURCE_EXHAUSTED) before it fails: counted from its creation and from the last busy answer, so
    waiting for a busy trainer's slot never fails a job; time with every trainer unreachable or refusing does."""

    trainer_lease_s: float = 60.0
    """TP_TRAINER_LEASE_S: a live job whose trainer no longer runs it (process gone without a final status,
    trainer unreachable or restarted) is FAILED after this long."""

    watch_interval_s: float = 10.0
    """TP_WATCH_INTERVAL_S: how often the backend asks trainers about their live jobs' runs, and looks for jobs
    whose reporter fell silent (TP_REPORTER_TIMEOUT_S)."""

    reporter_timeout_s: float = 300.0
    """TP_REPORTER_TIMEOUT_S: a RUNNING job that no trainer runs (created with dispatch=false: `tp run`, a script
    of your own with a TrainingLogger) is FAILED when no telemetry call of its token reached the backend for this
    long (its process was killed before it reported a final status). The SDK's logger calls at least every 30 s
    while open. Counted from the backend's start at the latest. 0: never."""

    trainer_call_timeout_s: float = 30.0
    """TP_TRAINER_CALL_TIMEOUT_S: deadline of StartTraining and CancelTraining calls. A StartTraining past it may
    still have started a run: the job then goes to the next replica as a new attempt, and the first is fenced."""

    frontend_auth_token: str = field(default="", repr=False)
    """FRONTEND_AUTH_TOKEN: the token of front ends (the `tp` CLI, the dashboard, other services): it may create,
    cancel and read jobs, but not call trainers' RPCs or write telemetry. Empty means a random token is generated
    once and kept in `<data_dir>/frontend_auth_token` (mode 0600), where `tp` finds it."""

    job_token_grace_s: float = 3600.0
    """TP_JOB_TOKEN_GRACE_S: how long after its job ended a job's token may still write telemetry (long enough for
    a spool replay); reads stay allowed."""

    commit_linger_s: float = 0.05
    """TP_COMMIT_LINGER_S: how long a commit round of small telemetry batches, of jobs nobody watches live in this
    process, waits for more before it is written (one transaction for many messages). Nothing is acknowledged
    before it is committed; 0 commits every round at once."""

    trainer_tls_ca_file: str = ""
    """TP_TRAINER_TLS_CA_FILE: PEM CA bundle that signed the trainers' certificates; when set, the dispatcher
    opens TLS channels to trainers."""

    trainer_tls_cert_file: str = ""
    """TP_TRAINER_TLS_CERT_FILE: PEM client certificate the dispatcher presents to trainers (mutual TLS)."""

    trainer_tls_key_file: str = ""
    """TP_TRAINER_TLS_KEY_FILE: PEM private key of TP_TRAINER_TLS_CERT_FILE."""

    max_concurrent_streams: int = 100
    """TP_MAX_CONCURRENT_STREAMS: most calls open at once on one client connection (HTTP/2
    `grpc.max_concurrent_streams`); a client past it waits for a free stream."""

    max_concurrent_rpcs: int = 10_000
    """TP_MAX_CONCURRENT_RPCS: most calls the server runs at once, streams included; past it a call gets
    RESOURCE_EXHAUSTED."""

    max_streams_per_job: int = 8
    """TP_MAX_STREAMS_PER_JOB: most telemetry streams (StreamMetrics and StreamLogs together) open at once for one
    job; past it a stream gets RESOURCE_EXHAUSTED."""

    max_subscriptions_per_caller: int = 64
    """TP_MAX_SUBSCRIPTIONS_PER_CALLER: most SubscribeTelemetry calls open at once per token (each job token
    counts on its own); past it a subscription gets RESOURCE_EXHAUSTED."""

    max_epochs: int = DEFAULT_MAX_EPOCHS
    """TP_MAX_EPOCHS: most epochs a job may ask for."""

    max_waiting_jobs: int = 10_000
    """TP_MAX_WAITING_JOBS: most jobs waiting to start (PENDING or QUEUED) at once; past it CreateJob gets
    RESOURCE_EXHAUSTED (a retry of a stored request still gets its job). 0: no limit. With several backend
    processes on PostgreSQL, creates at the same moment may pass it by a few."""

    max_spec_bytes: int = DEFAULT_MAX_SPEC_BYTES
    """TP_MAX_SPEC_BYTES: largest serialized JobSpec CreateJob accepts (64 KiB; at least 1 KiB, at most
    TP_MAX_MESSAGE_BYTES); a larger one gets INVALID_ARGUMENT. Every GetJob and ListJobs returns stored specs, so
    this bounds their size too."""

    page_token_key: str = field(default="", repr=False)
    """TP_PAGE_TOKEN_KEY: the key that signs page tokens (HMAC-SHA256). Empty derives it from the internal token,
    so every replica of a deployment accepts the others' tokens."""

    workers: int = 1
    """TP_BACKEND_WORKERS: server processes sharing the listen port (SO_REUSEPORT; the kernel spreads connections
    over them), each with its own event loop and database connections, under a supervisor that restarts one that
    dies. More than 1 needs PostgreSQL; at most 4 per CPU and 64 in all (`max_workers`)."""

    metrics_port: int = 0
    """TP_METRICS_PORT: serve Prometheus metrics on `http://<listen host>:<port>/metrics` (with several workers,
    the supervisor serves them all together). 0 (the default): off."""

    @property
    def effective_database_url(self) -> str:
        """The database URL with the embedded default filled in and psycopg 3 chosen for PostgreSQL."""
        url = self.database_url or f"sqlite:///{(self.data_dir / 'backend.db').resolve()}"
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return db.with_timeouts(url, self.database_timeout_s)

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
    parser.add_argument("--shutdown-grace-s", help="grace period on SIGTERM, seconds (TP_SHUTDOWN_GRACE_S, default 10)")
    parser.add_argument("--no-migrate", action="store_true", help="do not apply migrations on start")
    parser.add_argument("--log-level", help="logging level (TP_LOG_LEVEL, default INFO)")
    parser.add_argument("--trainers", help="trainer services, framework=host:port,... (TP_TRAINERS)")
    parser.add_argument(
        "--metrics-port", help="serve Prometheus /metrics on this port (TP_METRICS_PORT, default 0: off)"
    )
    parser.add_argument(
        "--workers", help="server processes sharing the port, PostgreSQL only (TP_BACKEND_WORKERS, default 1)"
    )


def load(
    args: argparse.Namespace | None = None, env: dict[str, str] | None = None, *, check_files: bool = True
) -> Settings:
    """Builds the settings from parsed flags, then the environment, then the defaults.

    Tokens are only read from the environment: a token on a command line is visible to every user of the host.
    `check_files`: read and check the TLS files (TP_TLS_*, TP_TRAINER_TLS_*); `tp-backend migrate`, which serves
    nothing and calls no trainer, does not (its init container need not mount them).
    """
    env = dict(os.environ if env is None else env)

    def pick(flag: str, var: str, default: str) -> str:
        value = getattr(args, flag, None) if args is not None else None
        return str(value) if value is not None else env.get(var, default)

    def named(flag: str, var: str) -> str:
        """How a message names the setting: `--flag (VAR)` when the flag set it, VAR otherwise."""
        given = args is not None and getattr(args, flag, None) is not None
        return f"--{flag.replace('_', '-')} ({var})" if given else var

    max_bytes = values.whole_number(
        "TP_MAX_MESSAGE_BYTES",
        env.get("TP_MAX_MESSAGE_BYTES", str(DEFAULT_MAX_MESSAGE_BYTES)),
        minimum=64 * 1024,
    )
    migrate = values.flag("TP_MIGRATE_ON_START", env.get("TP_MIGRATE_ON_START", "true"))
    if args is not None and getattr(args, "no_migrate", False):
        migrate = False

    def seconds(var: str, default: str, *, above: bool = False, flag: str = "") -> float:
        """A duration setting: 0 or more seconds, or more than 0 when `above`."""
        text = pick(flag, var, default) if flag else env.get(var, default)
        return values.number(named(flag, var) if flag else var, text, above=above)

    settings = Settings(
        listen=values.listen_address(
            named("listen", "TP_BACKEND_LISTEN"), pick("listen", "TP_BACKEND_LISTEN", DEFAULT_LISTEN)
        ),
        data_dir=Path(pick("data_dir", "TP_DATA_DIR", ".data")),
        database_url=pick("database_url", "DATABASE_URL", ""),
        database_timeout_s=seconds("TP_DATABASE_TIMEOUT_S", str(db.DEFAULT_DATABASE_TIMEOUT_S)),
        database_check_interval_s=seconds("TP_DATABASE_CHECK_INTERVAL_S", str(db_health.DEFAULT_CHECK_INTERVAL_S)),
        database_check_timeout_s=seconds(
            "TP_DATABASE_CHECK_TIMEOUT_S", str(db_health.DEFAULT_CHECK_TIMEOUT_S), above=True
        ),
        internal_auth_token=_token(env, "INTERNAL_AUTH_TOKEN"),
        read_auth_token=_token(env, "READ_AUTH_TOKEN"),
        tls_cert_file=pick("tls_cert_file", "TP_TLS_CERT_FILE", ""),
        tls_key_file=pick("tls_key_file", "TP_TLS_KEY_FILE", ""),
        tls_client_ca_file=pick("tls_client_ca_file", "TP_TLS_CLIENT_CA_FILE", ""),
        max_message_bytes=max_bytes,
        shutdown_grace_s=seconds("TP_SHUTDOWN_GRACE_S", "10", flag="shutdown_grace_s"),
        max_connection_age_s=seconds("TP_MAX_CONNECTION_AGE_S", "0"),
        subscriber_buffer_points=values.whole_number(
            "TP_SUBSCRIBER_BUFFER_POINTS", env.get("TP_SUBSCRIBER_BUFFER_POINTS", "50000")
        ),
        migrate_on_start=migrate,
        log_level=values.log_level(named("log_level", "TP_LOG_LEVEL"), pick("log_level", "TP_LOG_LEVEL", "INFO")),
        trainers=parse_trainers(pick("trainers", "TP_TRAINERS", "")),
        telemetry_endpoint=_endpoint(env.get("TP_TELEMETRY_ENDPOINT", "")),
        dispatch_timeout_s=seconds("TP_DISPATCH_TIMEOUT_S", "600", above=True),
        trainer_lease_s=seconds("TP_TRAINER_LEASE_S", "60", above=True),
        watch_interval_s=seconds("TP_WATCH_INTERVAL_S", "10", above=True),
        reporter_timeout_s=seconds("TP_REPORTER_TIMEOUT_S", "300"),
        trainer_call_timeout_s=seconds("TP_TRAINER_CALL_TIMEOUT_S", "30", above=True),
        frontend_auth_token=_token(env, "FRONTEND_AUTH_TOKEN"),
        job_token_grace_s=seconds("TP_JOB_TOKEN_GRACE_S", "3600"),
        commit_linger_s=values.number("TP_COMMIT_LINGER_S", env.get("TP_COMMIT_LINGER_S", "0.05"), maximum=1),
        trainer_tls_ca_file=env.get("TP_TRAINER_TLS_CA_FILE", ""),
        trainer_tls_cert_file=env.get("TP_TRAINER_TLS_CERT_FILE", ""),
        trainer_tls_key_file=env.get("TP_TRAINER_TLS_KEY_FILE", ""),
        max_concurrent_streams=values.whole_number(
            "TP_MAX_CONCURRENT_STREAMS", env.get("TP_MAX_CONCURRENT_STREAMS", "100")
        ),
        max_concurrent_rpcs=values.whole_number("TP_MAX_CONCURRENT_RPCS", env.get("TP_MAX_CONCURRENT_RPCS", "10000")),
        max_ingest_bytes_in_flight=values.whole_number(
            "TP_MAX_INGEST_BYTES_IN_FLIGHT",
            env.get("TP_MAX_INGEST_BYTES_IN_FLIGHT", str(DEFAULT_INGEST_BYTES_IN_FLIGHT)),
        ),
        max_streams_per_job=values.whole_number("TP_MAX_STREAMS_PER_JOB", env.get("TP_MAX_STREAMS_PER_JOB", "8")),
        max_subscriptions_per_caller=values.whole_number(
            "TP_MAX_SUBSCRIPTIONS_PER_CALLER", env.get("TP_MAX_SUBSCRIPTIONS_PER_CALLER", "64")
        ),
        max_epochs=values.whole_number(
            "TP_MAX_EPOCHS", env.get("TP_MAX_EPOCHS", str(DEFAULT_MAX_EPOCHS)), maximum=MAX_EPOCHS
        ),
        max_waiting_jobs=values.whole_number("TP_MAX_WAITING_JOBS", env.get("TP_MAX_WAITING_JOBS", "10000"), minimum=0),
        max_spec_bytes=values.whole_number(
            "TP_MAX_SPEC_BYTES",
            env.get("TP_MAX_SPEC_BYTES", str(DEFAULT_MAX_SPEC_BYTES)),
            minimum=1024,
            maximum=max_bytes,
        ),
        page_token_key=env.get("TP_PAGE_TOKEN_KEY", ""),
        workers=_workers(named("workers", "TP_BACKEND_WORKERS"), pick("workers", "TP_BACKEND_WORKERS", "1")),
        metrics_port=values.port(
            named("metrics_port", "TP_METRICS_PORT"), pick("metrics_port", "TP_METRICS_PORT", "0")
        ),
    )
    check_server_tls(
        settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file, check_files=check_files
    )
    _check_trainer_tls(settings, check_files=check_files)
    if settings.metrics_port and str(settings.metrics_port) == settings.listen.rpartition(":")[2]:
        raise ValueError(
            f"{named('metrics_port', 'TP_METRICS_PORT')} must differ from the port of "
            f"{named('listen', 'TP_BACKEND_LISTEN')}: both are {settings.metrics_port}"
        )
    if settings.frontend_auth_token and settings.frontend_auth_token in (
        settings.internal_auth_token,
        settings.read_auth_token,
    ):
        raise ValueError("FRONTEND_AUTH_TOKEN must differ from INTERNAL_AUTH_TOKEN and READ_AUTH_TOKEN")
    if settings.read_auth_token and settings.read_auth_token == settings.internal_auth_token:
        # The read token would then create and cancel jobs, write telemetry and start training.
        raise ValueError("READ_AUTH_TOKEN must differ from INTERNAL_AUTH_TOKEN")
    return settings


def _token(env: dict[str, str], name: str) -> str:
    """A token setting (INTERNAL_AUTH_TOKEN, FRONTEND_AUTH_TOKEN, READ_AUTH_TOKEN): without surrounding white space
    (a value from a Kubernetes Secret written with `echo`, or from a file saved on Windows, ends in a newline,
    which clients never send), and printable ASCII, as a gRPC header value must be. Empty when unset or empty.

    Raises:
        ValueError: naming the setting, never the token: it holds only white space, or a character that is not
            printable ASCII.
    """
    text = env.get(name, "")
    token = text.strip()
    if text and not token:
        raise ValueError(f"{name} holds only white space: set a token, or leave it empty")
    return check_token(token, name)


MAX_WORKERS_PER_CPU = 4
MAX_WORKERS = 64
"""The most `--workers` a backend runs: 4 per CPU it may run on, and 64 at most. Each worker is a whole backend
(about 90 MB and up to 17 database connections): past a few per CPU they only cost memory and connections."""


def max_workers() -> int:
    """The most workers this host runs: MAX_WORKERS_PER_CPU per CPU this process may use (its affinity, at most its
    cgroup's CPU quota), at most MAX_WORKERS."""
    return min(MAX_WORKERS, MAX_WORKERS_PER_CPU * usable_cpus())


def _workers(name: str, text: str) -> int:
    """TP_BACKEND_WORKERS: a whole number from 1 to `max_workers()`.

    Raises:
        ValueError: naming the setting.
    """
    workers = values.whole_number(name, text)
    bound = max_workers()
    if workers > bound:
        raise ValueError(
            f"{name} must be at most {bound} on this host ({MAX_WORKERS_PER_CPU} per CPU, {MAX_WORKERS} at most: "
            f"each worker holds about 90 MB and up to 17 database connections), got {workers}"
        )
    return workers


TRAINER_TLS_NAMES = ("TP_TRAINER_TLS_CA_FILE", "TP_TRAINER_TLS_CERT_FILE", "TP_TRAINER_TLS_KEY_FILE")
"""The dispatcher's TLS settings, as messages name them."""


def _check_trainer_tls(settings: Settings, *, check_files: bool) -> None:
    """Mutual TLS to trainers needs both the client certificate and its key, and TLS to trainers needs the CA; the
    files must be readable and hold what they should (`ClientTls.from_files`; when `check_files`), so a wrong
    Secret is one line at start, not a traceback after the migrations.

    Raises:
        ValueError: naming the settings (and the file, and what is wrong with it).
    """
    if bool(settings.trainer_tls_cert_file) != bool(settings.trainer_tls_key_file):
        raise ValueError(
            "a client certificate for trainers needs both TP_TRAINER_TLS_CERT_FILE and TP_TRAINER_TLS_KEY_FILE"
        )
    if settings.trainer_tls_cert_file and not settings.trainer_tls_ca_file:
        raise ValueError(
            "TP_TRAINER_TLS_CERT_FILE and TP_TRAINER_TLS_KEY_FILE need TP_TRAINER_TLS_CA_FILE: TLS to trainers is on "
            "when the CA that signed their certificates is set"
        )
    if settings.trainer_tls_ca_file and check_files:
        try:
            ClientTls.from_files(
                settings.trainer_tls_ca_file,
                settings.trainer_tls_cert_file,
                settings.trainer_tls_key_file,
                names=TRAINER_TLS_NAMES,
            )
        except OSError as error:  # unreadable: a bad value like any other
            raise ValueError(str(error)) from None


def _endpoint(text: str) -> str:
    """TP_TELEMETRY_ENDPOINT: empty, or an address a trainer's channel takes (`parse_backend_address`).

    Raises:
        ValueError: naming the setting.
    """
    if text.strip():
        try:
            parse_backend_address(text)
        except ValueError as error:
            raise ValueError(f"TP_TELEMETRY_ENDPOINT: {error}") from None
    return text.strip()


def ensure_internal_token(settings: Settings) -> Settings:
    """Returns settings with a service token: the configured one, or one generated once into the data dir."""
    if settings.internal_auth_token:
        return settings
    token = _token_file(settings.data_dir, "internal_auth_token")
    return Settings(**{**settings.__dict__, "internal_auth_token": token})


def ensure_frontend_token(settings: Settings) -> Settings:
    """Returns settings with a front-end token: the configured one (FRONTEND_AUTH_TOKEN), or one generated once
    into `<data_dir>/frontend_auth_token` (mode 0600), where `tp` finds it."""
    if settings.frontend_auth_token:
        return settings
    token = _token_file(settings.data_dir, "frontend_auth_token")
    return Settings(**{**settings.__dict__, "frontend_auth_token": token})


def _token_file(data_dir: Path, name: str) -> str:
    """The token kept in `<data_dir>/<name>`, written there first (random, mode 0600) when the file does not exist."""
    path = data_dir / name
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # private when created: it holds the jobs' data
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process wrote it meanwhile
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(32))
    values.tighten_token_file(path, logging.getLogger(__name__))
    return path.read_text().strip()
