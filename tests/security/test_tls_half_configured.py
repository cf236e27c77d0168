"""A server given part of its TLS settings refuses to start, in one line naming what is missing. Before, the backend
given a certificate without its key (or only a client CA) served plaintext and only logged it, and both the backend
and the trainers ignored TP_TLS_CLIENT_CA_FILE alone: an operator who asked for mutual TLS got no TLS at all."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support.backend import VENV_BIN, free_port

HALF = {
    "certificate without key": ({"TP_TLS_CERT_FILE": "server.pem"}, "TP_TLS_KEY_FILE"),
    "key without certificate": ({"TP_TLS_KEY_FILE": "server.key"}, "TP_TLS_CERT_FILE"),
    "certificate and client CA without key": (
        {"TP_TLS_CERT_FILE": "server.pem", "TP_TLS_CLIENT_CA_FILE": "ca.pem"},
        "TP_TLS_KEY_FILE",
    ),
    "client CA alone": ({"TP_TLS_CLIENT_CA_FILE": "ca.pem"}, "TP_TLS_CERT_FILE and TP_TLS_KEY_FILE"),
}


def _start(script: str, tmp_path: Path, settings: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TP_TLS") and key not in ("TP_BACKEND_LISTEN", "TP_LISTEN")
    }
    env.update({name: str(tmp_path / value) for name, value in settings.items()})
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
@pytest.mark.parametrize("case", list(HALF))
def test_a_half_tls_configuration_stops_the_server_in_one_line(tmp_path: Path, script: str, case: str) -> None:
    settings, missing = HALF[case]
    result = _start(script, tmp_path, settings)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), result.stderr
    assert missing in lines[0], lines[0]
    assert "serving on" not in result.stderr
