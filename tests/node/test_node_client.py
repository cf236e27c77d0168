"""The Node.js client (sdk/node) against the real platform: a job created, followed live to COMPLETED and read back
with the Node client; TLS and the token interceptor; and the committed generated code is what the protos produce."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.backend import BackendProcess, free_port
from support.certs import make_pki
from support.node import NODE_SDK, ROOT, node_executable, run_node
from trainingplatform_sdk.cli.stack import Stack
from trainingplatform_sdk.clients import JobsClient

BUF = ROOT / "node_modules" / ".bin" / "buf"
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    platform = Stack(
        tmp_path_factory.mktemp("stack"),
        backend_port=free_port(),
        timm_port=free_port(),
        ultralytics_port=free_port(),
        frameworks=("timm",),
    )
    platform.start()
    yield platform
    platform.stop()


def test_the_node_client_creates_follows_and_reads_a_job(stack: Stack):
    output = run_node(
        NODE_SDK / "examples" / "e2e.js",
        # A small page size makes the example read the history over several ListMetrics pages. The front-end
        # token, as the docs show: the example needs no more than what a front end may do.
        {"TP_BACKEND_ADDRESS": stack.backend_address, "TP_AUTH_TOKEN": stack.frontend_token, "TP_PAGE_SIZE": "7"},
        timeout=540,
    )
    summary = json.loads(output)
    assert summary["final_status"] == "JOB_STATUS_COMPLETED"
    assert summary["job_status"] == "JOB_STATUS_COMPLETED"
    assert summary["status_sequence"] == [
        "JOB_STATUS_PENDING",
        "JOB_STATUS_QUEUED",
        "JOB_STATUS_RUNNING",
        "JOB_STATUS_COMPLETED",
    ]
    assert {"train/loss", "val/loss", "val/accuracy"} <= set(summary["keys"])

    with JobsClient(stack.backend_address, stack.token) as client:
        job = client.get_job(summary["job_id"])
        python_points = list(client.metrics(job.job_id))
        python_logs = list(client.logs(job.job_id))
    assert job.status == "COMPLETED"
    assert [e.to_status for e in job.status_events] == ["PENDING", "QUEUED", "RUNNING", "COMPLETED"]
    # Every committed point was streamed once and listed once: the counts equal the backend's cursor.
    cursor = job.last_metric_sequence
    assert cursor > 7
    assert summary["metric_points_streamed"] == summary["metric_points_listed"] == cursor == len(python_points)
    assert summary["last_metric_sequence"] == cursor
    assert summary["metric_pages"] in (-(-cursor // 7), -(-cursor // 7) + 1)  # the last page may be empty
    assert summary["log_records_streamed"] == summary["log_records_listed"] == job.last_log_sequence
    assert job.last_log_sequence == len(python_logs) > 0


def test_the_node_client_speaks_mutual_tls_and_sends_the_token(tmp_path: Path):
    """TLS material reaches the HTTP/2 connection and the interceptor puts the token on every call."""
    pki = make_pki(tmp_path / "pki")
    backend = BackendProcess(
        f"sqlite:///{tmp_path / 'backend.db'}",
        tmp_path / "data",
        credentials=grpc.ssl_channel_credentials(
            root_certificates=pki.ca_cert.read_bytes(),
            private_key=pki.client_key.read_bytes(),
            certificate_chain=pki.client_cert.read_bytes(),
        ),
        extra_env={
            "TP_TLS_CERT_FILE": str(pki.server_cert),
            "TP_TLS_KEY_FILE": str(pki.server_key),
            "TP_TLS_CLIENT_CA_FILE": str(pki.ca_cert),
        },
    )
    backend.start()
    try:
        job_id, _ = backend.create_job()
        tls = {"TP_CA_FILE": str(pki.ca_cert), "TP_CERT_FILE": str(pki.client_cert), "TP_KEY_FILE": str(pki.client_key)}

        def get_job(token: str, job: str = job_id) -> dict:
            env = {"TP_BACKEND_ADDRESS": f"https://{backend.address}", "TP_TOKEN": token, "TP_JOB_ID": job, **tls}
            return json.loads(run_node(HERE / "call_get_job.mjs", env, timeout=60))

        assert get_job(backend.read_token) == {"ok": True, "job_id": job_id}
        assert get_job("not-a-token")["code"] == "Unauthenticated"
        assert get_job(backend.read_token, "00000000-0000-0000-0000-000000000000")["code"] == "NotFound"
    finally:
        backend.close()


def test_the_generated_node_code_is_current(tmp_path: Path):
    node_executable()  # buf runs sdk/node's protoc-gen-es with node
    if not BUF.exists():
        pytest.fail("the buf CLI is missing: run `make setup` (it installs @bufbuild/buf from package-lock.json)")
    template = (ROOT / "buf.gen.ts.yaml").read_text()
    assert "out: sdk/node/src/gen" in template
    (tmp_path / "buf.gen.yaml").write_text(template.replace("out: sdk/node/src/gen", f"out: {tmp_path / 'gen'}"))
    result = subprocess.run(
        [str(BUF), "generate", "--template", str(tmp_path / "buf.gen.yaml")],
        cwd=ROOT,
        env={**os.environ, "BUF_CACHE_DIR": str(ROOT / ".cache" / "buf")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    committed, fresh = NODE_SDK / "src" / "gen", tmp_path / "gen"
    committed_files = sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file())
    fresh_files = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    hint = "protos changed: run `buf generate --template buf.gen.ts.yaml` and commit sdk/node/src/gen"
    assert committed_files == fresh_files, hint
    changed = [str(p) for p in fresh_files if not filecmp.cmp(committed / p, fresh / p, shallow=False)]
    assert not changed, f"{hint} ({changed})"
