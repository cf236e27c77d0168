"""TLS server credentials from PEM files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = ["TlsFiles"]


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
