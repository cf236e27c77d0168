"""The trainer service's settings: one object, read from flags, then environment variables, then defaults."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from trainingplatform_sdk import setting_values as values
from trainingplatform_sdk.channel import check_token
from trainingplatform_sdk.server.tls import check_server_tls
from trainingplatform_sdk.spec.limits import DEFAULT_MAX_EPOCHS, MAX_EPOCHS

__all__ = ["TrainerSettings", "add_arguments", "load"]

TOKEN_FILE_NAME = "internal_auth_token"


@dataclass(frozen=True)
class TrainerSettings:
    """Everything a trainer service is configured with.

    Each field names its environment variable; a command-line flag of the same name overrides it.
    """

    listen: str
    """TP_TRAINER_LISTEN: address to serve on, `host:port`. The default is the framework's: 127.0.0.1:50061
    (timm), 127.0.0.1:50062 (ultralytics), loopback only."""

    internal_auth_token: str = field(repr=False)
    """INTERNAL_AUTH_TOKEN: the service token every caller must send (the backend's internal token). When unset,
    `<data_dir>/internal_auth_token` is read (the file the backend generates); without either the service
    refuses to start."""

    data_dir: Path = Path(".data")
    """TP_DATA_DIR: runs write to `<data_dir>/runs/<job_id>/<run_id>` (checkpoints, spool, train.log)."""

    max_concurrent_jobs: int = 1
    """TP_MAX_CONCURRENT_JOBS: most training processes at once; StartTraining past it gets RESOURCE_EXHAUSTED
    (there is no queue: the caller retries or picks another trainer)."""

    cancel_grace_s: float = 30.0
    """TP_CANCEL_GRACE_S: seconds between SIGTERM and SIGKILL when a run is cancelled without its own grace
    period, and when the service shuts down."""

    shutdown_grace_s: float = 5.0
    """TP_SHUTDOWN_GRACE_S: seconds open calls get to finish once the runs have stopped on SIGTERM."""

    adapter: str = ""
    """TP_TRAINER_ADAPTER: the `--framework` value handed to `tp-train`. Empty means the service's framework;
    a `module:Class` path runs another TrainingAdapter subclass for the same framework (tests use one)."""

    tls_cert_file: str = ""
    """TP_TLS_CERT_FILE: PEM server certificate; with TP_TLS_KEY_FILE it turns TLS on (one without the other, or
    TP_TLS_CLIENT_CA_FILE without both, is refused at start: `check_server_tls`)."""

    tls_key_file: str = ""
    """TP_TLS_KEY_FILE: PEM private key of the server certificate."""

    tls_client_ca_file: str = ""
    """TP_TLS_CLIENT_CA_FILE: PEM CA bundle; when set, clients must present a certificate it signed (mTLS)."""

    log_level: str = "INFO"
    """TP_LOG_LEVEL: the service's logging level."""

    data_roots: tuple[Path, ...] = ()
    """TP_DATA_ROOTS: the directories dataset paths must lie under, separated by `:` (os.pathsep). Empty means
    `<data_dir>/datasets`. A path outside them, or one that leaves them through `..` or a symlink, is refused
    with INVALID_ARGUMENT; built-in data sets are always allowed."""

    max_epochs: int = DEFAULT_MAX_EPOCHS
    """TP_MAX_EPOCHS: most epochs a job may ask for (the backend has the same setting)."""

    max_concurrent_rpcs: int = 1_000
    """TP_MAX_CONCURRENT_RPCS: most calls the service runs at once; past it a call gets RESOURCE_EXHAUSTED."""

    max_concurrent_streams: int = 100
    """TP_MAX_CONCURRENT_STREAMS: most calls open at once on one client connection (HTTP/2
    `grpc.max_concurrent_streams`)."""

    keep_ended_runs: int = 1_000
    """TP_KEEP_ENDED_RUNS: how many ended runs whose end was reported the service keeps knowing (GetTraining,
    ListTrainings), those that ended last; older ones are forgotten (their run directories stay). Live runs and runs
    whose end is not reported yet are always kept. Bounds the memory and the cost of the backend's ListTrainings
    walk of each lease round."""

    metrics_port: int = 0
    """TP_METRICS_PORT: serve Prometheus metrics on `http://<listen host>:<port>/metrics`. 0 (the default): off."""

    @property
    def effective_data_roots(self) -> tuple[Path, ...]:
        """The data roots, resolved (symlinks followed): the configured ones or `<data_dir>/datasets`."""
        roots = self.data_roots or (self.data_dir / "datasets",)
        return tuple(root.expanduser().resolve() for root in roots)

    @property
    def tls_enabled(self) -> bool:
        """Whether the server listens with TLS."""
        return bool(self.tls_cert_file and self.tls_key_file)

    @property
    def runs_dir(self) -> Path:
        """The directory holding every run's output directory."""
        return self.data_dir / "runs"


def add_arguments(parser: argparse.ArgumentParser, default_listen: str) -> None:
    """Adds one flag per setting; a flag left out falls back to its environment variable. Tokens have no flag:
    a token on a command line is visible to every user of the host."""
    parser.add_argument("--listen", help=f"address to serve on (TP_TRAINER_LISTEN, default {default_listen})")
    parser.add_argument("--data-dir", help="data directory (TP_DATA_DIR, default .data)")
    parser.add_argument("--max-concurrent-jobs", help="most jobs at once (TP_MAX_CONCURRENT_JOBS, default 1)")
    parser.add_argument("--cancel-grace-s", help="SIGTERM to SIGKILL delay (TP_CANCEL_GRACE_S, default 30)")
    parser.add_argument("--shutdown-grace-s", help="grace for open calls (TP_SHUTDOWN_GRACE_S, default 5)")
    parser.add_argument("--adapter", help="tp-train --framework value (TP_TRAINER_ADAPTER, default the framework)")
    parser.add_argument("--tls-cert-file", help="PEM server certificate (TP_TLS_CERT_FILE)")
    parser.add_argument("--tls-key-file", help="PEM server key (TP_TLS_KEY_FILE)")
    parser.add_argument("--tls-client-ca-file", help="PEM CA for client certificates (TP_TLS_CLIENT_CA_FILE)")
    parser.add_argument("--log-level", help="logging level (TP_LOG_LEVEL, default INFO)")
    parser.add_argument("--data-roots", help="directories dataset paths must lie under, ':'-separated (TP_DATA_ROOTS)")
    parser.add_argument("--max-epochs", help="most epochs a job may ask for (TP_MAX_EPOCHS, default 10000)")
    parser.add_argument(
        "--keep-ended-runs", help="ended runs the service keeps listing (TP_KEEP_ENDED_RUNS, default 1000)"
    )
    parser.add_argument("--metrics-port", help="serve Prometheus /metrics on this port (TP_METRICS_PORT, default off)")


def load(
    default_listen: str, args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None
) -> TrainerSettings:
    """Builds the settings from parsed flags, then the environment, then the defaults.

    Args:
        default_listen: The framework's default address.
        args: Parsed flags from `add_arguments`; None reads only the environment.
        env: The environment; None means `os.environ`.

    Raises:
        ValueError: A value out of range, or no service token; the message names the setting to fix.
    """
    env = os.environ if env is None else env

    def pick(flag: str, var: str, default: str) -> str:
        value = getattr(args, flag, None) if args is not None else None
        return str(value) if value is not None else env.get(var, default)

    data_dir = Path(pick("data_dir", "TP_DATA_DIR", ".data"))
    max_jobs = values.whole_number("TP_MAX_CONCURRENT_JOBS", pick("max_concurrent_jobs", "TP_MAX_CONCURRENT_JOBS", "1"))
    cancel_grace = values.number("TP_CANCEL_GRACE_S", pick("cancel_grace_s", "TP_CANCEL_GRACE_S", "30"))
    shutdown_grace = values.number("TP_SHUTDOWN_GRACE_S", pick("shutdown_grace_s", "TP_SHUTDOWN_GRACE_S", "5"))
    max_epochs = values.whole_number(
        "TP_MAX_EPOCHS", pick("max_epochs", "TP_MAX_EPOCHS", str(DEFAULT_MAX_EPOCHS)), maximum=MAX_EPOCHS
    )
    max_rpcs = values.whole_number("TP_MAX_CONCURRENT_RPCS", env.get("TP_MAX_CONCURRENT_RPCS", "1000"))
    max_streams = values.whole_number("TP_MAX_CONCURRENT_STREAMS", env.get("TP_MAX_CONCURRENT_STREAMS", "100"))
    keep_ended_runs = values.whole_number(
        "TP_KEEP_ENDED_RUNS", pick("keep_ended_runs", "TP_KEEP_ENDED_RUNS", "1000"), minimum=0
    )
    metrics_port = values.port("TP_METRICS_PORT", pick("metrics_port", "TP_METRICS_PORT", "0"))
    settings = TrainerSettings(
        listen=values.listen_address("TP_TRAINER_LISTEN", pick("listen", "TP_TRAINER_LISTEN", default_listen)),
        internal_auth_token=_internal_token(env, data_dir),
        data_dir=data_dir,
        max_concurrent_jobs=max_jobs,
        cancel_grace_s=cancel_grace,
        shutdown_grace_s=shutdown_grace,
        adapter=pick("adapter", "TP_TRAINER_ADAPTER", ""),
        tls_cert_file=pick("tls_cert_file", "TP_TLS_CERT_FILE", ""),
        tls_key_file=pick("tls_key_file", "TP_TLS_KEY_FILE", ""),
        tls_client_ca_file=pick("tls_client_ca_file", "TP_TLS_CLIENT_CA_FILE", ""),
        log_level=values.log_level("TP_LOG_LEVEL", pick("log_level", "TP_LOG_LEVEL", "INFO")),
        data_roots=tuple(Path(part) for part in pick("data_roots", "TP_DATA_ROOTS", "").split(os.pathsep) if part),
        max_epochs=max_epochs,
        max_concurrent_rpcs=max_rpcs,
        max_concurrent_streams=max_streams,
        keep_ended_runs=keep_ended_runs,
        metrics_port=metrics_port,
    )
    check_server_tls(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
    return settings


def _internal_token(env: Mapping[str, str], data_dir: Path) -> str:
    token = env.get("INTERNAL_AUTH_TOKEN", "").strip()
    if token:
        return check_token(token, "INTERNAL_AUTH_TOKEN")
    path = data_dir / TOKEN_FILE_NAME
    # Unlike the backend, a trainer never generates a token: one nobody else knows would lock every caller out.
    if path.is_file():
        values.tighten_token_file(path, logging.getLogger("trainingplatform_sdk.trainer_service"))
        token = path.read_text().strip()
        if token:
            return check_token(token, str(path))
    raise ValueError(
        f"no service token: set INTERNAL_AUTH_TOKEN to the backend's internal token, or point TP_DATA_DIR at "
        f"a data directory holding {TOKEN_FILE_NAME} (looked for {path})"
    )
