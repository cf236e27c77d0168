"""`tp` against a real mutual-TLS backend, with the client's TLS mistakes: each is one line that says what is wrong
and what to set, never gRPC's own log lines, never "no backend answers" (one does).

- no client certificate for a server that requires one: the server refused the handshake, name the settings;
- a plaintext address (no https://) for a TLS server: suggest https://;
- a CA file that is not PEM, a certificate and key swapped, a key that is not the certificate's: checked before
  any connection, one line naming the setting and the file, exit 2 (the same check serves every client of
  `channel.ClientTls`: the TrainingLogger, the trainers, the backend's dispatcher).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.backend import BackendProcess
from support.certs import Pki, make_pki
from support.tp import TP, shell_env
from trainingplatform_sdk.channel import ClientTls


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mtls_backend(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendProcess]:
    data = tmp_path_factory.mktemp("mtls-backend")
    credentials = grpc.ssl_channel_credentials(
        pki.ca_cert.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    backend = BackendProcess(
        f"sqlite:///{data / 'backend.db'}",
        data / "data",
        credentials=credentials,
        extra_env={
            "TP_TLS_CERT_FILE": str(pki.server_cert),
            "TP_TLS_KEY_FILE": str(pki.server_key),
            "TP_TLS_CLIENT_CA_FILE": str(pki.ca_cert),
        },
    )
    backend.start()
    try:
        yield backend
    finally:
        backend.close()


def tp(backend: BackendProcess, address: str, tmp_path: Path, **tls: str) -> tuple[int, list[str]]:
    env = shell_env(INTERNAL_AUTH_TOKEN=backend.internal_token, TP_CONFIG=str(tmp_path / "no-config.json"), **tls)
    result = subprocess.run(
        [TP, "--backend", address, "jobs", "--limit", "1"], capture_output=True, text=True, env=env, timeout=120
    )
    return result.returncode, result.stderr.strip().splitlines()


def test_the_right_files_work(mtls_backend: BackendProcess, pki: Pki, tmp_path: Path) -> None:
    code, lines = tp(
        mtls_backend,
        f"https://{mtls_backend.address}",
        tmp_path,
        TP_TLS_CA_FILE=str(pki.ca_cert),
        TP_TLS_CLIENT_CERT_FILE=str(pki.client_cert),
        TP_TLS_CLIENT_KEY_FILE=str(pki.client_key),
    )
    assert code == 0, lines


def test_no_client_certificate_says_the_server_wants_one(mtls_backend: BackendProcess, pki: Pki, tmp_path: Path):
    code, lines = tp(mtls_backend, f"https://{mtls_backend.address}", tmp_path, TP_TLS_CA_FILE=str(pki.ca_cert))
    assert code == 2 and len(lines) == 1, lines
    assert "no backend answers" not in lines[0], lines
    assert "client certificate" in lines[0], lines
    assert "TP_TLS_CLIENT_CERT_FILE" in lines[0] and "TP_TLS_CLIENT_KEY_FILE" in lines[0], lines


def test_a_plaintext_address_for_a_tls_server_suggests_https(mtls_backend: BackendProcess, tmp_path: Path):
    code, lines = tp(mtls_backend, mtls_backend.address, tmp_path)
    assert code == 2 and len(lines) == 1, lines
    assert "no backend answers" not in lines[0], lines
    assert f"https://{mtls_backend.address}" in lines[0], lines


@pytest.mark.parametrize(
    ("case", "setting", "wrong"),
    [
        ("ca-not-pem", "TP_TLS_CA_FILE", "no PEM certificate"),
        ("swapped", "TP_TLS_CLIENT_CERT_FILE", "swapped"),
        ("key-of-another-cert", "TP_TLS_CLIENT_KEY_FILE", "not the key of"),
    ],
)
def test_bad_tls_files_are_one_line_naming_the_file(
    mtls_backend: BackendProcess, pki: Pki, tmp_path: Path, case: str, setting: str, wrong: str
) -> None:
    not_pem = tmp_path / "hostname"
    not_pem.write_text("myhost\n")
    files = {
        "TP_TLS_CA_FILE": str(pki.ca_cert),
        "TP_TLS_CLIENT_CERT_FILE": str(pki.client_cert),
        "TP_TLS_CLIENT_KEY_FILE": str(pki.client_key),
    }
    if case == "ca-not-pem":
        files["TP_TLS_CA_FILE"] = str(not_pem)
    elif case == "swapped":
        files["TP_TLS_CLIENT_CERT_FILE"], files["TP_TLS_CLIENT_KEY_FILE"] = str(pki.client_key), str(pki.client_cert)
    else:
        files["TP_TLS_CLIENT_KEY_FILE"] = str(pki.server_key)
    code, lines = tp(mtls_backend, f"https://{mtls_backend.address}", tmp_path, **files)
    # gRPC's core printed ~6 lines (`E1206 ... ssl_transport_security.cc] Invalid private key.`), then the CLI said
    # "no backend answers".
    assert code == 2 and len(lines) == 1, lines
    assert setting in lines[0] and files[setting] in lines[0] and wrong in lines[0], lines


def test_client_tls_checks_the_files_when_it_reads_them(pki: Pki, tmp_path: Path) -> None:
    # What the TrainingLogger, the trainers and the backend's dispatcher read their TLS files with.
    with pytest.raises(ValueError, match=r"TP_TLS_CLIENT_KEY_FILE.*not the key of"):
        ClientTls.from_files(str(pki.ca_cert), str(pki.client_cert), str(pki.server_key))
    assert ClientTls.from_files(str(pki.ca_cert), str(pki.client_cert), str(pki.client_key)).private_key
