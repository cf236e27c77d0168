"""TLS server credentials from PEM files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from trainingplatform_sdk.channel import ClientTls

__all__ = ["TlsFiles", "check_server_tls"]

_NAMES = ("TP_TLS_CLIENT_CA_FILE", "TP_TLS_CERT_FILE", "TP_TLS_KEY_FILE")
"""The variables of the client CA, the certificate and the key, as messages name them."""


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

    def check(self) -> None:
        """Checks the files before gRPC gets them: gRPC refuses a pair it cannot use without saying why, which
        looked like a port that cannot be bound. The certificate must hold a PEM certificate, the key a PEM private
        key (unencrypted) that is the certificate's, and the client CA (when set) a PEM certificate.

        Raises:
            ValueError: a file cannot be read or does not hold what it should; the message names the variable
                (TP_TLS_CERT_FILE, TP_TLS_KEY_FILE, TP_TLS_CLIENT_CA_FILE), the file and what is wrong.
        """
        try:
            ClientTls.from_files(self.client_ca, self.cert, self.key, names=_NAMES)
        except OSError as error:  # unreadable: a bad value of the setting like any other
            raise ValueError(str(error)) from None

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


def check_server_tls(cert: str, key: str, client_ca: str, *, check_files: bool = True) -> None:
    """Checks that a server's TLS settings are whole: TLS is on with both TP_TLS_CERT_FILE and TP_TLS_KEY_FILE, off
    with neither, and TP_TLS_CLIENT_CA_FILE (mutual TLS) needs TLS on. A part alone would serve plaintext where the
    operator asked for TLS. With TLS on and `check_files`, the files are checked too (`TlsFiles.check`); a command
    that serves nothing (`tp-backend migrate`) leaves them out.

    Raises:
        ValueError: naming what is missing, or the file that cannot be read or does not hold what it should.
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
    if cert and key and check_files:
        TlsFiles(cert, key, client_ca).check()
