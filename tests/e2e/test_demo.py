"""`tp demo` (what `make demo` runs) end to end: the README's first command, on embedded defaults.

It starts its own backend and both trainers, trains both built-in jobs to COMPLETED, draws their loss curves and
screenshots the dashboard. Settings of one server process exported in the caller's shell (a metrics port, a server
certificate: README shows both for tp-backend) are not given to its services, and it says so.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from support.certs import make_pki
from support.tp import TP, shell_env


def test_demo_trains_both_jobs_with_one_server_settings_of_the_shell_withheld(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    with socket.socket() as busy:  # a metrics port already taken: any service given it would fail to start
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        metrics_port = busy.getsockname()[1]
        env = shell_env(
            TP_CONFIG=str(tmp_path / "config.json"),
            TP_METRICS_PORT=str(metrics_port),
            TP_TLS_CERT_FILE=str(pki.server_cert),
            TP_TLS_KEY_FILE=str(pki.server_key),
        )
        data_dir = tmp_path / "demo"
        done = subprocess.run(
            [TP, "demo", "--data-dir", str(data_dir)], env=env, capture_output=True, text=True, timeout=900
        )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    notes = [line for line in output.splitlines() if "not given to the services" in line]
    assert len(notes) == 1, output
    assert all(name in notes[0] for name in ("TP_METRICS_PORT", "TP_TLS_CERT_FILE", "TP_TLS_KEY_FILE")), notes[0]
    assert "dashboard screenshot" not in output, output  # neither skipped nor failed: the dashboard started
    for name in ("demo_losses.png", "demo_dashboard.png", "demo_dashboard_job.png"):
        path = data_dir / name
        assert path.read_bytes().startswith(b"\x89PNG"), name
        assert f"{path}" in output, name
