"""What `TrainingLogger.log_metric` costs the training thread, next to synchronous per-metric calls.

Starts a real backend (`tp-backend` from this venv, SQLite in a temporary directory) unless --address, --token and
--job-id name a running one, then measures on the calling thread, in one run:

  - `log_metric` while the logger streams to the backend (the sender thread competes for the GIL, as in training);
  - `log_metric` timed call by call during a burst that keeps the sender busy building full messages: the
    99.9th percentile (`log_metric_us_p999`) is how long a call can wait for the sender's work (the GIL);
  - a synchronous unary gRPC call per metric against the same backend: GetStreamCursor (a read) and UpdateStatus
    repeating the current status (an idempotent write path), what a per-metric RPC design would cost at least;
  - one HTTP POST per metric (the old logger's design) to a minimal local HTTP server in another process that
    answers 200 without touching a database, so it is a lower bound of the old cost.

Per-call times are taken with time.perf_counter_ns around batches of calls (batch time / calls), and also around
single calls (which include the ~50 ns of the clock itself). Prints one JSON object; --output also writes it.

    .venv/bin/python bench/bench_log_metric.py [--quick] [--output bench/results/log_metric.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from trainingplatform.common.v1 import common_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from trainingplatform_sdk import LoggerSettings, TrainingLogger

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.backend import BackendProcess

_HTTP_SERVER = """
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else delayed ACKs add ~40 ms per request, an artefact
    # that would overstate the old design's cost
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


@contextmanager
def local_backend(workdir: Path) -> Iterator[tuple[str, str, str]]:
    """A real `tp-backend` on SQLite (the tests' BackendProcess); yields (address, job id, telemetry token)."""
    backend = BackendProcess(f"sqlite:///{workdir / 'backend.db'}", workdir / "data")
    backend.start()
    try:
        job_id, token = backend.create_job()
        yield backend.address, job_id, token
    finally:
        backend.close()


def summarize(per_call_ns: list[float]) -> dict[str, float]:
    ordered = sorted(per_call_ns)
    return {
        "median_us": round(statistics.median(ordered) / 1000, 3),
        "p99_us": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000, 3),
        "samples": len(ordered),
    }


def measure(call: Callable[[int], None], batches: int, batch_size: int) -> dict[str, float]:
    """Per-call cost: the time of `batch_size` calls divided by `batch_size`, over `batches` batches."""
    clock = time.perf_counter_ns
    samples = []
    for batch in range(batches):
        start = clock()
        for index in range(batch * batch_size, (batch + 1) * batch_size):
            call(index)
        samples.append((clock() - start) / batch_size)
    return summarize(samples)


def bench_log_metric(address: str, token: str, job_id: str, calls: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as spool:
        logger = TrainingLogger(
            job_id, backend_address=address, token=token, spool_dir=spool, settings=LoggerSettings()
        )
        log_metric = logger.log_metric
        log_metric("warmup", 0.0, step=0)
        logger.flush(30)
        started = time.perf_counter()
        batched = measure(lambda i: log_metric("train/loss", 0.5, step=i, epoch=0), calls // 100, 100)
        single = measure(lambda i: log_metric("train/loss", 0.5, step=i, epoch=1), calls // 10, 1)
        delivered = logger.flush(120)
        elapsed = time.perf_counter() - started
        report = logger.close(30)
    return {
        "batch_of_100": batched,
        "single_call_including_clock": single,
        "all_committed": delivered and report.pending_metrics == 0,
        "points_committed": report.committed_metrics,
        "end_to_end_points_per_s": round((report.committed_metrics - 1) / elapsed),
    }


def bench_burst(address: str, token: str, job_id: str, calls: int) -> dict[str, object]:
    """Each call timed alone while the sender is busy: `calls` points logged as fast as the caller can, so the
    sender drains, numbers and builds full messages (5,000 points, 1 MiB) meanwhile. Its tail is the time a call
    waits for the GIL while the sender holds it; the median is the call itself plus the clock."""
    clock = time.perf_counter_ns
    with tempfile.TemporaryDirectory() as spool:
        logger = TrainingLogger(
            job_id, backend_address=address, token=token, spool_dir=spool, settings=LoggerSettings()
        )
        log_metric = logger.log_metric
        log_metric("warmup", 0.0, step=0)
        logger.flush(30)
        samples = []
        append = samples.append
        for index in range(calls):
            start = clock()
            log_metric("train/loss", 0.5, step=index, epoch=2)
            append(clock() - start)
        delivered = logger.flush(120)
        report = logger.close(30)
    ordered = sorted(samples)
    return {
        "median_us": round(statistics.median(ordered) / 1000, 3),
        "p99_us": round(ordered[int(len(ordered) * 0.99)] / 1000, 3),
        "p999_us": round(ordered[int(len(ordered) * 0.999)] / 1000, 3),
        "max_us": round(ordered[-1] / 1000, 3),
        "samples": len(ordered),
        "all_committed": delivered and report.pending_metrics == 0,
    }


def bench_unary(address: str, token: str, job_id: str, calls: int) -> dict[str, object]:
    metadata = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(address) as channel:
        stub = telemetry_pb2_grpc.TrainingTelemetryServiceStub(channel)
        cursor_request = telemetry_pb2.GetStreamCursorRequest(job_id=job_id)
        status_request = telemetry_pb2.UpdateStatusRequest(job_id=job_id, status=common_pb2.JOB_STATUS_RUNNING)
        stub.UpdateStatus(status_request, metadata=metadata, timeout=10)
        cursor = measure(lambda _: stub.GetStreamCursor(cursor_request, metadata=metadata, timeout=10), calls, 1)
        status = measure(lambda _: stub.UpdateStatus(status_request, metadata=metadata, timeout=10), calls, 1)
    return {"GetStreamCursor": cursor, "UpdateStatus_repeated": status}


def bench_http(calls: int) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", _HTTP_SERVER, str(port)])
    try:
        wait_for_port(port)
        connection = http.client.HTTPConnection("127.0.0.1", port)

        def post(index: int) -> None:
            body = json.dumps({"key": "train/loss", "value": 0.5, "step": index}).encode()
            connection.request("POST", "/api/metrics", body=body, headers={"Content-Type": "application/json"})
            connection.getresponse().read()

        result = measure(post, calls, 1)
        connection.close()
        return result
    finally:
        server.terminate()
        server.wait(10)


def run(quick: bool = False) -> dict[str, float]:
    """The flat numbers of `bench/run.py`: log_metric's per-call cost (median over batches of 100 calls, p99 over
    single calls), beside a synchronous unary gRPC call and an HTTP POST per metric."""
    log_calls, rpc_calls = (20_000, 200) if quick else (500_000, 2_000)
    with tempfile.TemporaryDirectory() as workdir, local_backend(Path(workdir)) as (address, job_id, token):
        logged = bench_log_metric(address, token, job_id, log_calls)
        burst = bench_burst(address, token, job_id, log_calls)
        unary = bench_unary(address, token, job_id, rpc_calls)
    http_post = bench_http(rpc_calls)
    return {
        "log_metric_us_median": logged["batch_of_100"]["median_us"],
        "log_metric_us_p99": logged["single_call_including_clock"]["p99_us"],
        "log_metric_us_p999": burst["p999_us"],
        "sync_unary_us_median": unary["GetStreamCursor"]["median_us"],
        "http_post_us_median": http_post["median_us"],
        "sync_unary_vs_log_metric_ratio": unary["GetStreamCursor"]["median_us"] / logged["batch_of_100"]["median_us"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", help="a running backend (default: start one)")
    parser.add_argument("--token", help="the job's telemetry token (with --address)")
    parser.add_argument("--job-id", help="the job to log to (with --address)")
    parser.add_argument("--quick", action="store_true", help="fewer calls: a smoke run")
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    log_calls, rpc_calls = (20_000, 200) if args.quick else (500_000, 2_000)

    def run(address: str, token: str, job_id: str) -> dict[str, object]:
        return {
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
            "backend": address if args.address else f"tp-backend on SQLite, started by this script at {address}",
            "log_metric": bench_log_metric(address, token, job_id, log_calls),
            "log_metric_while_the_sender_is_busy": bench_burst(address, token, job_id, log_calls),
            "unary_grpc_per_metric": bench_unary(address, token, job_id, rpc_calls),
            "http_post_per_metric_no_database": bench_http(rpc_calls),
        }

    if args.address:
        result = run(args.address, args.token, args.job_id)
    else:
        with tempfile.TemporaryDirectory() as workdir, local_backend(Path(workdir)) as (address, job_id, token):
            result = run(address, token, job_id)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
