"""TLS server credentials from PEM files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = ["TlsFiles", "check_server_tls"]


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files a server listens with.

    Attributes:
        cert: The server certificate (chain).
        key: The server's private key.
        client_ca: The CA that signs client certificates; when set, every client must present one (mutual TLS).
            Empty for none.
    """

    cert: str
    key: str
    client_ca: str = ""

    def credentials(self) -> grpc.ServerCredentials:
        """Reads the files into server credentials; client certificates are required when a client CA is set.

        Raises:
            OSError: A file cannot be read.
        """
        key = Path(self.key).read_bytes()
        cert = Path(self.cert).read_bytes()
        client_ca = Path(self.client_ca).read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )


def check_server_tls(cert: str, key: str, client_ca: str) -> None:
    """Checks that a server's TLS settings are whole: TLS is on with both TP_TLS_CERT_FILE and TP_TLS_KEY_FILE, off
    with neither, and TP_TLS_CLIENT_CA_FILE (mutual TLS) needs TLS on. A part alone would serve plaintext where the
    operator asked for TLS.

    Raises:
        ValueError: naming what is missing.
    """
    if client_ca and not (cert or key):
        raise ValueError(
            "TP_TLS_CLIENT_CA_FILE (mutual TLS) needs TP_TLS_CERT_FILE and TP_TLS_KEY_FILE: set the server's "
            "certificate and key too, or unset it to serve plaintext"
        )
    for given, value, missing, other in (
        ("TP_TLS_CERT_FILE", cert, "TP_TLS_KEY_FILE", key),
        ("TP_TLS_KEY_FILE", key, "TP_TLS_CERT_FILE", cert),
    ):
        if value and not other:
            raise ValueError(f"{given} is set but {missing} is not: TLS needs both (and neither serves plaintext)")
