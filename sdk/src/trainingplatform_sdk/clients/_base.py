"""What every typed client shares: the channel (retries of idempotent calls, TLS), the auth metadata, deadlines,
and statuses turned into `PlatformError`s."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self

import grpc

from trainingplatform_sdk.channel import auth_metadata, check_token, open_channel
from trainingplatform_sdk.errors import ConfigError, PlatformError, UnauthenticatedError

# Pages of history reach 10,000 points: more than gRPC's 4 MiB default when keys are long.
CLIENT_MAX_RECEIVE_BYTES = 16 * 1024 * 1024


def raise_platform_error(error: grpc.RpcError) -> NoReturn:
    """Raises the `PlatformError` subclass of a failed call's status."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    raise PlatformError.from_status(code, details) from None


# --- connections --------------------------------------------------------------------------------------------

_IDEMPOTENT = {
    "trainingplatform.jobs.v1.JobsService": (
        "GetJob",
        "ListJobs",
        "CancelJob",
        "ListMetrics",
        "GetMetricSeries",
        "ListLogs",
    ),
    "trainingplatform.trainer.v1.TrainerService": ("GetTraining", "ListTrainings", "CancelTraining", "GetCapabilities"),
}


def _service_config() -> str:
    names = [{"service": service, "method": method} for service, methods in _IDEMPOTENT.items() for method in methods]
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": names,
                    "retryPolicy": {
                        "maxAttempts": 5,
                        "initialBackoff": "0.2s",
                        "maxBackoff": "3s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def client_channel(
    address: str,
    *,
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
) -> grpc.Channel:
    """A channel to a platform service that retries idempotent calls on UNAVAILABLE. `address` is `host:port`,
    `grpc://host:port` or `https://host:port` (TLS; system roots unless `root_certificates` is given; a client key
    and chain for mutual TLS)."""
    options = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", _service_config()),
        ("grpc.max_receive_message_length", CLIENT_MAX_RECEIVE_BYTES),
    ]
    return open_channel(
        address,
        options=options,
        root_certificates=root_certificates,
        private_key=private_key,
        certificate_chain=certificate_chain,
    )


TOKEN_ENV = "TP_AUTH_TOKEN"
"""The environment variable holding a front end's token (the backend's FRONTEND_AUTH_TOKEN, or its read token)."""
FRONTEND_TOKEN_FILE = "frontend_auth_token"
INTERNAL_TOKEN_FILE = "internal_auth_token"
DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_DATA_DIR = ".data"
CONFIG_ENV = "TP_CONFIG"
"""The environment variable naming the per-user config file (default `$XDG_CONFIG_HOME/trainingplatform/config.json`,
`~/.config/trainingplatform/config.json`)."""


def config_path() -> Path:
    """The per-user config `tp up` writes: TP_CONFIG, else `$XDG_CONFIG_HOME/trainingplatform/config.json`, else
    `~/.config/trainingplatform/config.json`."""
    explicit = os.environ.get(CONFIG_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME", "").strip()
    root = Path(base).expanduser() if base else Path.home() / ".config"
    return root / "trainingplatform" / "config.json"


_CONFIG_KEYS = ("backend_address", "token_file", "data_dir")


def read_config() -> dict[str, str]:
    """The per-user config (`config_path()`): `backend_address`, `token_file`, `data_dir`; empty when there is none.

    Raises:
        ConfigError: the file exists but cannot be read, is not a JSON object, or a known key is not a string; the
            message names the file and what is wrong (passing over it would tell the user, wrongly, that there is
            no token and to run `tp up`).
    """
    path = config_path()
    where = f"the config {path}" + (" (TP_CONFIG)" if os.environ.get(CONFIG_ENV, "").strip() else "")
    remedy = "fix it, or remove it and run `tp up` to write it again"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text: {remedy}") from None
    except OSError as error:
        raise ConfigError(f"cannot read {where}: {error.strerror or error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{where} is not valid JSON ({error}): {remedy}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where} must hold a JSON object ({', '.join(_CONFIG_KEYS)}), not {_json_type(data)}: {remedy}"
        )
    for key in _CONFIG_KEYS:
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"{where}: {key} must be a string, not {_json_type(data[key])}: {remedy}")
    return {str(k): v for k, v in data.items() if isinstance(v, str)}


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return "null" if value is None else names.get(type(value), "a number")


def write_config(*, backend_address: str, token_file: Path, data_dir: Path) -> Path:
    """Writes the per-user config (mode 0600; the token file's path, never the token) and returns its path."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_name(path.name + f".{os.getpid()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(
            {"backend_address": backend_address, "token_file": str(token_file), "data_dir": str(data_dir)},
            handle,
            indent=2,
        )
        handle.write("\n")
    os.chmod(partial, 0o600)
    os.replace(partial, path)
    return path


@dataclass(frozen=True)
class Connection:
    """Where a front end finds the backend and its token, and where each came from (for error messages)."""

    address: str
    address_source: str
    """`--backend`, `TP_BACKEND_ADDRESS`, `BACKEND_API_URL`, `the config <path>` or `the default`."""
    token: str = field(repr=False)
    token_source: str
    """`TP_AUTH_TOKEN`, `INTERNAL_AUTH_TOKEN`, or the token file's path (with how it was found)."""


def _read_token(path: Path) -> str:
    """The token in a token file, stripped.

    Raises:
        ConfigError: the file is not UTF-8 text (the message names it).
    """
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"the token file {path} is not UTF-8 text: write the token into it as text") from None


def _token_file(directory: Path) -> Path | None:
    for file_name in (FRONTEND_TOKEN_FILE, INTERNAL_TOKEN_FILE):
        path = directory / file_name
        if path.is_file() and _read_token(path):
            return path
    return None


def resolve_connection(address: str | None = None, data_dir: str | os.PathLike[str] | None = None) -> Connection:
    """The backend and the token of a front end, each the first of: flags (`address`, `data_dir`), the environment,
    the per-user config `tp up` writes (`config_path()`), then `./.data` (and 127.0.0.1:50051).

    Address: `address`, TP_BACKEND_ADDRESS, BACKEND_API_URL, the config's `backend_address`, 127.0.0.1:50051.
    Only None leaves `address` unsaid: an empty one is taken as given (`tp --backend ""`, from an unset variable,
    is refused when the address is parsed, rather than silently replaced by another backend).
    Token: the token file in `data_dir` (a flag), TP_AUTH_TOKEN, INTERNAL_AUTH_TOKEN, the token file in TP_DATA_DIR,
    the config's `token_file`, the token file in `./.data` (`frontend_auth_token`, else `internal_auth_token`).

    Raises:
        UnauthenticatedError: no token is found; the message lists where it was looked for.
    """
    config = read_config()
    where = f"the config {config_path()}"
    if address is not None:  # given, even empty: an empty --backend is refused, not passed over for the next
        resolved, address_source = address, "--backend"
    elif os.environ.get("TP_BACKEND_ADDRESS", "").strip():
        resolved, address_source = os.environ["TP_BACKEND_ADDRESS"].strip(), "TP_BACKEND_ADDRESS"
    elif os.environ.get("BACKEND_API_URL", "").strip():
        resolved, address_source = os.environ["BACKEND_API_URL"].strip(), "BACKEND_API_URL"
    elif config.get("backend_address"):
        resolved, address_source = config["backend_address"], where
    else:
        resolved, address_source = DEFAULT_ADDRESS, "the default"

    def found(path: Path, how: str) -> Connection:
        source = f"{path} ({how})"
        return Connection(resolved, address_source, check_token(_read_token(path), source), source)

    if data_dir is not None:
        path = _token_file(Path(data_dir))
        if path is not None:
            return found(path, "--data-dir")
    for name in (TOKEN_ENV, "INTERNAL_AUTH_TOKEN"):
        token = os.environ.get(name, "").strip()
        if token:
            return Connection(resolved, address_source, check_token(token, name), name)
    looked = [f"{TOKEN_ENV}, INTERNAL_AUTH_TOKEN"]
    if os.environ.get("TP_DATA_DIR", "").strip():
        path = _token_file(Path(os.environ["TP_DATA_DIR"].strip()))
        if path is not None:
            return found(path, "TP_DATA_DIR")
        looked.append(f"TP_DATA_DIR={os.environ['TP_DATA_DIR'].strip()}")
    if config.get("token_file"):
        path = Path(config["token_file"])
        if path.is_file() and _read_token(path):
            return found(path, where)
        looked.append(f"{path} (named by {where})")
    path = _token_file(Path(DEFAULT_DATA_DIR))
    if path is not None:
        return found(path, "./.data")
    looked.append(str(Path(DEFAULT_DATA_DIR).absolute() / FRONTEND_TOKEN_FILE))
    raise UnauthenticatedError(
        f"no token: looked in {'; '.join(looked)}. Start a local stack with `tp up` (it writes {config_path()}) or "
        f"set {TOKEN_ENV} (the backend's FRONTEND_AUTH_TOKEN)"
    )


def default_token(data_dir: str | os.PathLike[str] | None = None) -> str:
    """The token of a front end (the `tp` CLI, `JobsClient.from_env`), the first of:

    1. TP_AUTH_TOKEN (the backend's FRONTEND_AUTH_TOKEN, or its READ_AUTH_TOKEN for read-only use);
    2. INTERNAL_AUTH_TOKEN (kept for compatibility: it may do everything, trainers' RPCs included);
    3. `<data_dir>/frontend_auth_token`, the front-end token a local backend generated (TP_DATA_DIR, when set,
       is the data directory);
    4. `<data_dir>/internal_auth_token`, the local backend's service token (compatibility).

    Without `data_dir` and TP_DATA_DIR, the token file named by the per-user config `tp up` writes
    (`config_path()`) comes before `./.data`'s (`resolve_connection`).

    A variable set beats a file, so a token chosen for this call is never overridden by a local backend's.

    Raises:
        UnauthenticatedError: none exists.
    """
    if data_dir is None and not os.environ.get("TP_DATA_DIR", "").strip():
        return resolve_connection().token
    for name in (TOKEN_ENV, "INTERNAL_AUTH_TOKEN"):
        token = os.environ.get(name, "").strip()
        if token:
            return token
    directory = Path(os.environ.get("TP_DATA_DIR", "") or data_dir or DEFAULT_DATA_DIR)
    for file_name in (FRONTEND_TOKEN_FILE, INTERNAL_TOKEN_FILE):
        path = directory / file_name
        if path.exists():
            token = _read_token(path)
            if token:
                return token
    raise UnauthenticatedError(
        f"no token: set {TOKEN_ENV} (the backend's FRONTEND_AUTH_TOKEN) or start the backend so it writes "
        f"{directory / FRONTEND_TOKEN_FILE}"
    )


class Client:
    """A channel to one service with the caller's token; closes with `close()` or a `with` block."""

    def __init__(
        self,
        address: str,
        token: str,
        *,
        timeout: float = 30.0,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
    ) -> None:
        self._channel = client_channel(
            address, root_certificates=root_certificates, private_key=private_key, certificate_chain=certificate_chain
        )
        self._metadata = auth_metadata(check_token(token, "the caller"))
        self.timeout = timeout
        self.address = address

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, metadata=self._metadata, timeout=timeout or self.timeout)
        except grpc.RpcError as error:
            raise_platform_error(error)
