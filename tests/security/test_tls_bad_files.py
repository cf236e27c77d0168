"""A server certificate or key that cannot serve TLS (the key of another certificate, the two files swapped, a file
that is not PEM, a file that cannot be read) stops the backend and the trainers at start in one line naming the
variable and what is wrong, exit code 2, before the database is touched. Before, gRPC's refusal of the pair was
reported as "cannot listen on HOST:PORT: the port is in use or the address is not local" (exit 1, after the
migrations ran): in Kubernetes a wrong Secret crash-looped blaming a free port."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest
from support.backend import VENV_BIN, free_port
from support.certs import Pki, make_pki
from trainingplatform_sdk.server import GrpcServer, TlsFiles


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _cases(pki: Pki, tmp_path: Path) -> dict[str, tuple[dict[str, str], list[str]]]:
    """Each bad configuration: its TP_TLS_* files, and what the line must say."""
    not_pem = tmp_path / "not-pem.txt"
    not_pem.write_text("hello\n")
    return {
        "key of another certificate": (
            {"TP_TLS_CERT_FILE": str(pki.server_cert), "TP_TLS_KEY_FILE": str(pki.client_key)},
            ["TP_TLS_KEY_FILE", str(pki.client_key), "not the key of the certificate"],
        ),
        "certificate and key swapped": (
            {"TP_TLS_CERT_FILE": str(pki.server_key), "TP_TLS_KEY_FILE": str(pki.server_cert)},
            ["TP_TLS_CERT_FILE", "swapped"],
        ),
        "certificate not PEM": (
            {"TP_TLS_CERT_FILE": str(not_pem), "TP_TLS_KEY_FILE": str(pki.server_key)},
            ["TP_TLS_CERT_FILE", str(not_pem), "no PEM certificate"],
        ),
        "key not PEM": (
            {"TP_TLS_CERT_FILE": str(pki.server_cert), "TP_TLS_KEY_FILE": str(not_pem)},
            ["TP_TLS_KEY_FILE", str(not_pem), "no PEM private key"],
        ),
        "client CA not PEM": (
            {
                "TP_TLS_CERT_FILE": str(pki.server_cert),
                "TP_TLS_KEY_FILE": str(pki.server_key),
                "TP_TLS_CLIENT_CA_FILE": str(not_pem),
            },
            ["TP_TLS_CLIENT_CA_FILE", str(not_pem), "no PEM certificate"],
        ),
        "certificate missing": (
            {"TP_TLS_CERT_FILE": str(tmp_path / "missing.pem"), "TP_TLS_KEY_FILE": str(pki.server_key)},
            ["TP_TLS_CERT_FILE", "cannot read", str(tmp_path / "missing.pem")],
        ),
    }


CASES = [
    "key of another certificate",
    "certificate and key swapped",
    "certificate not PEM",
    "key not PEM",
    "client CA not PEM",
    "certificate missing",
]


def _start(script: str, tmp_path: Path, tls: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TP_TLS") and key not in ("TP_BACKEND_LISTEN", "TP_TRAINER_LISTEN", "TP_METRICS_PORT")
    }
    env.update(tls)
    env.update(
        {
            "TP_DATA_DIR": str(tmp_path / "data"),
            "DATABASE_URL": f"sqlite:///{tmp_path / 'backend.db'}",
            "INTERNAL_AUTH_TOKEN": "a-service-token-for-this-test",
        }
    )
    return subprocess.run(
        [str(VENV_BIN / script), "--listen", f"127.0.0.1:{free_port()}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("script", ["tp-backend", "tp-trainer-timm"])
@pytest.mark.parametrize("case", CASES)
def test_a_bad_tls_file_stops_the_server_in_one_line_naming_it(
    pki: Pki, tmp_path: Path, script: str, case: str
) -> None:
    tls, said = _cases(pki, tmp_path)[case]
    result = _start(script, tmp_path, tls)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), result.stderr
    for part in said:
        assert part in lines[0], lines[0]
    assert "port is in use" not in result.stderr
    assert not (tmp_path / "backend.db").exists(), "refused before the migrations"


def _bind(files: TlsFiles) -> int:
    """Binds a `GrpcServer` (the SDK's server API) with `files`, then stops it; returns the port."""

    async def bind() -> int:
        server = GrpcServer(["test.Service"], interceptors=[], options=[])
        try:
            return server.bind("127.0.0.1:0", files)
        finally:
            await server.server.stop(None)

    return asyncio.run(bind())


@pytest.mark.parametrize("case", CASES)
def test_grpc_server_bind_names_a_bad_tls_file_not_the_port(pki: Pki, tmp_path: Path, case: str) -> None:
    """`GrpcServer.bind` checks the files itself, for a service of its own that did not check them at start."""
    tls, said = _cases(pki, tmp_path)[case]
    files = TlsFiles(tls["TP_TLS_CERT_FILE"], tls["TP_TLS_KEY_FILE"], tls.get("TP_TLS_CLIENT_CA_FILE", ""))
    with pytest.raises(OSError) as raised:
        _bind(files)
    for part in said:
        assert part in str(raised.value), raised.value
    assert "port is in use" not in str(raised.value)


def test_grpc_server_binds_good_tls_files(pki: Pki) -> None:
    assert _bind(TlsFiles(str(pki.server_cert), str(pki.server_key), str(pki.ca_cert))) > 0


def test_tp_backend_migrate_does_not_read_the_servers_tls_files(tmp_path: Path) -> None:
    """The Kubernetes init container runs `tp-backend migrate` with the backend's ConfigMap; it serves nothing, so a
    TLS Secret mounted on the server container only must not stop it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TP_")}
    env |= {
        "TP_TLS_CERT_FILE": str(tmp_path / "not-mounted" / "tls.crt"),
        "TP_TLS_KEY_FILE": str(tmp_path / "not-mounted" / "tls.key"),
        "TP_TRAINER_TLS_CA_FILE": str(tmp_path / "not-mounted" / "ca.crt"),
        "TP_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'backend.db'}",
    }
    result = subprocess.run(
        [str(VENV_BIN / "tp-backend"), "migrate"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "backend.db").exists()
