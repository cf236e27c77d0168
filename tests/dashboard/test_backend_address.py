"""`tp-dashboard` checks its backend address and, for a TLS one, the client TLS files before it starts: a bad one
stops it with exit code 2 and one line naming the setting, before any login URL is printed (a server that never
starts has none); before, it printed the login URL and ended later with exit code 3 and a traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support.backend import VENV_BIN, free_port
from support.certs import make_pki
from trainingplatform_dashboard import settings as dashboard_settings

_NOT_PEM = "not a certificate\n"

BAD_CASES = [
    ([], {"TP_BACKEND_ADDRESS": "127.0.0.1:abc"}, "TP_BACKEND_ADDRESS"),
    ([], {"TP_BACKEND_ADDRESS": "127.0.0.1:99999"}, "TP_BACKEND_ADDRESS"),
    ([], {"TP_BACKEND_ADDRESS": "ftp://x:1"}, "TP_BACKEND_ADDRESS"),
    ([], {"TP_BACKEND_ADDRESS": "backend"}, "TP_BACKEND_ADDRESS"),
    ([], {"BACKEND_API_URL": "backend:notaport"}, "BACKEND_API_URL"),
    (["--backend", "127.0.0.1:abc"], {}, "--backend (TP_BACKEND_ADDRESS)"),
    ([], {"TP_BACKEND_ADDRESS": "https://127.0.0.1:1", "TP_TLS_CA_FILE": "{tmp}/missing.pem"}, "TP_TLS_CA_FILE"),
    ([], {"TP_BACKEND_ADDRESS": "https://127.0.0.1:1", "TP_TLS_CA_FILE": "{tmp}/not-pem.txt"}, "TP_TLS_CA_FILE"),
    ([], {"TP_BACKEND_ADDRESS": "grpcs://x:1", "TP_TLS_CLIENT_CERT_FILE": "{tmp}/c.pem"}, "TP_TLS_CLIENT_KEY_FILE"),
]


@pytest.mark.parametrize(("args", "env", "named"), BAD_CASES, ids=[f"{a}{e}" for a, e, _ in BAD_CASES])
def test_a_bad_backend_address_or_tls_file_stops_the_dashboard_in_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    (tmp_path / "not-pem.txt").write_text(_NOT_PEM)
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("TP_", "BACKEND_API_URL", "READ_AUTH_TOKEN"))
    }
    environment.update(
        {
            "TP_DATA_DIR": str(tmp_path),
            "TP_AUTH_TOKEN": "t",
            "TP_DASHBOARD_LISTEN": f"127.0.0.1:{free_port()}",
            **{name: value.format(tmp=tmp_path) for name, value in env.items()},
        }
    )
    result = subprocess.run(
        [str(VENV_BIN / "tp-dashboard"), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output and "login" not in output, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tp-dashboard: error: ") and named in lines[0], output
    assert not (tmp_path / "dashboard_login_url").exists(), "no login URL for a dashboard that never started"


def test_good_backend_addresses_and_tls_files_are_taken(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    tls = {
        "TP_TLS_CA_FILE": str(pki.ca_cert),
        "TP_TLS_CLIENT_CERT_FILE": str(pki.client_cert),
        "TP_TLS_CLIENT_KEY_FILE": str(pki.client_key),
    }
    for env in (
        {"TP_BACKEND_ADDRESS": "https://backend.example.com", **tls},
        {"TP_BACKEND_ADDRESS": "grpcs://127.0.0.1:50051", "TP_TLS_CA_FILE": str(pki.ca_cert)},
        {"TP_BACKEND_ADDRESS": "https://backend.example.com"},  # the system roots
        {"TP_BACKEND_ADDRESS": "grpc://[::1]:50051"},
        # A plaintext address does not use the TLS files: they are not read.
        {"BACKEND_API_URL": "127.0.0.1:50051", "TP_TLS_CA_FILE": str(tmp_path / "missing.pem")},
    ):
        address = env.get("TP_BACKEND_ADDRESS") or env["BACKEND_API_URL"]
        assert dashboard_settings.load(env=env).backend_address == address
    assert dashboard_settings.load(env={}).backend_address == dashboard_settings.DEFAULT_BACKEND
