"""The one channel factory of the platform's clients: address parsing, TLS, options and the auth metadata.

The TrainingLogger, the typed clients, the CLI, the trainer service's reports and the backend's dispatcher all open
their channels here.

TLS material of a client, when the caller passes none, comes from the environment:
- TP_TLS_CA_FILE: PEM roots that signed the server's certificate (else the system roots);
- TP_TLS_CLIENT_CERT_FILE and TP_TLS_CLIENT_KEY_FILE: the client certificate (chain) and its key, presented to a
  server that requires mutual TLS. One without the other is an error.
A caller with its own configuration (the backend's dispatcher: TP_TRAINER_TLS_*) passes a `ClientTls`, and the
environment is not read.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import grpc

_LOG = logging.getLogger("trainingplatform_sdk.logger")

_PLAINTEXT_SCHEMES = {"grpc", "http"}
_TLS_SCHEMES = {"https", "grpcs"}


CA_FILE_ENV = "TP_TLS_CA_FILE"
CLIENT_CERT_FILE_ENV = "TP_TLS_CLIENT_CERT_FILE"
CLIENT_KEY_FILE_ENV = "TP_TLS_CLIENT_KEY_FILE"


@dataclass(frozen=True)
class ClientTls:
    """The TLS material of a client channel, PEM bytes.

    Attributes:
        root_certificates: Roots that signed the server's certificate; None: the system roots.
        certificate_chain: The client certificate (chain) for mutual TLS; None: no client certificate.
        private_key: The key of `certificate_chain`.
    """

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_files(
        cls, ca_file: str = "", cert_file: str = "", key_file: str = "", *, names: tuple[str, str, str] | None = None
    ) -> ClientTls:
        """Reads the named PEM files (an empty name: not used).

        Args:
            ca_file: The roots; empty: the system roots.
            cert_file: The client certificate; needs `key_file`.
            key_file: Its key; needs `cert_file`.
            names: How the three settings are called in messages (default: the TP_TLS_* variables).

        The files are checked here, before gRPC gets them (it logs its own lines and then fails every connection as
        unreachable): the roots must hold a PEM certificate, the client certificate a PEM certificate, its key a PEM
        private key, and the key must be the certificate's.

        Raises:
            ValueError: a certificate without its key or a key without its certificate, or a file that does not
                hold what it should (the message names the setting, the file and what is wrong).
            OSError: a file cannot be read (the message names the setting and the file).
        """
        ca_name, cert_name, key_name = names or (CA_FILE_ENV, CLIENT_CERT_FILE_ENV, CLIENT_KEY_FILE_ENV)
        if bool(cert_file) != bool(key_file):
            raise ValueError(f"a client certificate needs both {cert_name} and {key_name}")

        def read(path: str, name: str) -> bytes | None:
            if not path:
                return None
            try:
                with open(path, "rb") as handle:
                    return handle.read()
            except OSError as error:
                raise OSError(f"{name}: cannot read {path}: {error.strerror or error}") from None

        tls = cls(read(ca_file, ca_name), read(cert_file, cert_name), read(key_file, key_name))
        _check_pem(tls, (ca_file, cert_file, key_file), (ca_name, cert_name, key_name))
        return tls

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClientTls:
        """The material named by TP_TLS_CA_FILE, TP_TLS_CLIENT_CERT_FILE and TP_TLS_CLIENT_KEY_FILE.

        Raises:
            ValueError: only one of the client certificate and its key is set.
            OSError: a file cannot be read.
        """
        env = os.environ if env is None else env
        return cls.from_files(
            env.get(CA_FILE_ENV, ""), env.get(CLIENT_CERT_FILE_ENV, ""), env.get(CLIENT_KEY_FILE_ENV, "")
        )

    def credentials(self) -> grpc.ChannelCredentials:
        """The gRPC channel credentials."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN ([A-Z]+ )?PRIVATE KEY-----")


def _no_passphrase() -> bytes:
    raise ValueError("the key is encrypted")  # never a terminal prompt: gRPC takes unencrypted keys only


def _check_pem(tls: ClientTls, paths: tuple[str, str, str], names: tuple[str, str, str]) -> None:
    """Raises ValueError, naming the setting and the file, when a TLS file does not hold what it should."""
    (ca_file, cert_file, key_file), (ca_name, cert_name, key_name) = paths, names
    if tls.root_certificates is not None:
        if _PEM_CERTIFICATE not in tls.root_certificates:
            raise ValueError(f"{ca_name}: {ca_file} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
                cadata=tls.root_certificates.decode("ascii", "replace")
            )
        except (ssl.SSLError, ValueError) as error:
            raise ValueError(f"{ca_name}: {ca_file} holds no valid PEM certificate ({_ssl_reason(error)})") from None
    if tls.certificate_chain is None or tls.private_key is None:
        return
    cert_is_key = bool(_PEM_PRIVATE_KEY.search(tls.certificate_chain))
    key_is_cert = _PEM_CERTIFICATE in tls.private_key
    if _PEM_CERTIFICATE not in tls.certificate_chain:
        swapped = f" but a private key: are {cert_name} and {key_name} swapped?" if cert_is_key else ""
        raise ValueError(f"{cert_name}: {cert_file} holds no PEM certificate{swapped}")
    if not _PEM_PRIVATE_KEY.search(tls.private_key):
        swapped = f" but a certificate: are {cert_name} and {key_name} swapped?" if key_is_cert else ""
        raise ValueError(f"{key_name}: {key_file} holds no PEM private key{swapped}")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except (ssl.SSLError, ValueError) as error:
        reason = _ssl_reason(error)
        if "KEY_VALUES_MISMATCH" in reason.upper():
            raise ValueError(f"{key_name}: {key_file} is not the key of the certificate in {cert_file}") from None
        raise ValueError(f"{cert_name}, {key_name}: cannot use {cert_file} with {key_file} ({reason})") from None
    except OSError as error:  # the file changed since it was read
        raise OSError(f"{cert_name}, {key_name}: cannot read {cert_file}, {key_file}: {error}") from None


def _ssl_reason(error: Exception) -> str:
    reason = getattr(error, "reason", None)
    return str(reason or error).splitlines()[0] if str(reason or error) else type(error).__name__


@dataclass(frozen=True)
class BackendAddress:
    """Where the backend listens.

    Attributes:
        target: The gRPC target, `host:port` (IPv6 hosts in brackets).
        tls: Whether the channel uses TLS.
    """

    target: str
    tls: bool


def parse_backend_address(address: str) -> BackendAddress:
    """Parses BACKEND_API_URL: `host:port`, `grpc://host:port` (plaintext) or `https://host[:port]` (TLS).

    `http://` is read as plaintext and `grpcs://` as TLS; a URL path (left over from the old HTTP API) is ignored.

    A user name or password in it (`https://user:secret@host`) is refused: gRPC would not send it (the token is
    the credential), and it is never shown in a message.

    Raises:
        ValueError: The address has no host, no port where one is needed, an unknown scheme, a user name or
            password, or is no URL at all (an IPv6 host without its closing bracket).
    """
    text = address.strip()
    shown = redact_address(text)
    if not text:
        raise ValueError("backend address is empty")
    try:
        if "://" in text:
            parts = urlsplit(text)
            scheme = parts.scheme.lower()
            if scheme in _TLS_SCHEMES:
                tls = True
            elif scheme in _PLAINTEXT_SCHEMES:
                tls = False
            else:
                raise ValueError(f"backend address {shown!r}: scheme must be grpc://, http://, https:// or grpcs://")
            if parts.path not in ("", "/"):
                _LOG.warning("backend address %r: ignoring the path %r (gRPC has none)", shown, parts.path)
        else:
            parts = urlsplit("//" + text)
            tls = False
    except ValueError as exc:
        if str(exc).startswith("backend address"):
            raise
        raise ValueError(f"backend address {shown!r} is malformed: {exc}") from None
    if "@" in parts.netloc:
        raise ValueError(
            f"backend address {shown!r}: a user name or password in it is not used (the token is sent instead); "
            "remove the `user:password@` part"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"backend address {shown!r}: invalid port") from exc
    host = parts.hostname
    if not host:
        raise ValueError(f"backend address {shown!r} has no host")
    if port is None:
        if not tls:
            raise ValueError(f"backend address {shown!r} needs a port (host:port)")
        port = 443
    if ":" in host:
        host = f"[{host}]"
    return BackendAddress(target=f"{host}:{port}", tls=tls)


_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*:)?//)?[^/?#]*@")


def redact_address(address: str) -> str:
    """`address` without a `user:password@` part, to be shown in a message."""
    return _USERINFO.sub(lambda found: found.group(1) or "", address, count=1)


def open_channel(
    address: str | BackendAddress,
    *,
    options: Sequence[tuple[str, Any]] = (),
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
    tls: ClientTls | None = None,
    force_tls: bool = False,
) -> grpc.Channel:
    """Opens a (synchronous) channel to a platform service.

    Args:
        address: `host:port`, `grpc://host:port` (plaintext) or `https://host[:port]` (TLS), or a parsed address.
        options: gRPC channel arguments.
        root_certificates: PEM roots for TLS; None uses the CA bundle named by TP_TLS_CA_FILE, else the system roots.
        private_key: PEM client key, for mutual TLS.
        certificate_chain: PEM client certificate chain, for mutual TLS. Without it and `private_key`, the files
            named by TP_TLS_CLIENT_CERT_FILE and TP_TLS_CLIENT_KEY_FILE, when set.
        tls: The whole TLS material instead of the three arguments above; the environment is then not read.
        force_tls: Use TLS even for an address without a TLS scheme (`host:port`).

    Raises:
        ValueError: The address is malformed, or only one of TP_TLS_CLIENT_CERT_FILE and its key is set.
        OSError: A TLS file named by the environment cannot be read.
    """
    parsed = _parsed(address)
    if not (parsed.tls or force_tls):
        return grpc.insecure_channel(parsed.target, options=list(options))
    credentials = _credentials(tls, root_certificates, private_key, certificate_chain)
    return grpc.secure_channel(parsed.target, credentials, options=list(options))


def open_aio_channel(
    address: str | BackendAddress,
    *,
    options: Sequence[tuple[str, Any]] = (),
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
    tls: ClientTls | None = None,
    force_tls: bool = False,
) -> grpc.aio.Channel:
    """Opens an asyncio channel to a platform service; the arguments are those of `open_channel`."""
    parsed = _parsed(address)
    if not (parsed.tls or force_tls):
        return grpc.aio.insecure_channel(parsed.target, options=list(options))
    credentials = _credentials(tls, root_certificates, private_key, certificate_chain)
    return grpc.aio.secure_channel(parsed.target, credentials, options=list(options))


def _parsed(address: str | BackendAddress) -> BackendAddress:
    return parse_backend_address(address) if isinstance(address, str) else address


def _credentials(
    tls: ClientTls | None,
    root_certificates: bytes | None,
    private_key: bytes | None,
    certificate_chain: bytes | None,
) -> grpc.ChannelCredentials:
    if tls is not None:
        return tls.credentials()
    env = os.environ
    if root_certificates is None:
        root_certificates = ClientTls.from_files(ca_file=env.get(CA_FILE_ENV, "")).root_certificates
    if private_key is None and certificate_chain is None:
        client = ClientTls.from_files(
            cert_file=env.get(CLIENT_CERT_FILE_ENV, ""), key_file=env.get(CLIENT_KEY_FILE_ENV, "")
        )
        private_key, certificate_chain = client.private_key, client.certificate_chain
    return ClientTls(root_certificates, certificate_chain, private_key).credentials()


def check_token(token: str, source: str) -> str:
    """Returns `token` when it is printable ASCII, as a gRPC header value must be (anything else ends in gRPC's own
    log lines and 'Invalid metadata', retried for ever by a logger).

    Raises:
        ValueError: naming where the token came from (`source`), never the token.
    """
    for index, char in enumerate(token):
        if not " " <= char <= "~":
            raise ValueError(f"the token from {source} must be printable ASCII; its character {index + 1} is not")
    return token


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The metadata sent with every call."""
    return (("authorization", f"Bearer {token}"),)
