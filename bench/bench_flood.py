"""Memory under a flood of large unauthenticated requests: the backend's RSS before, at its peak and after.

A real `tp-backend` on SQLite is flooded for `seconds` by `concurrency` callers, each on its own connection and
sending one `GetJob` request after another without a token, each just under the backend's message size limit
(`TP_MAX_MESSAGE_BYTES`, 8 MiB by default). Every answer must be UNAUTHENTICATED: a refused call is answered
before its request is read (`trainingplatform_sdk.server.handlers`). The backend's RSS (VmRSS of
/proc/<pid>/status) is sampled every 50 ms. Reported: RSS before, peak and after (MiB), the growth, the calls
answered per second, and how many answers were not UNAUTHENTICATED (must be 0).

    .venv/bin/python bench/bench_flood.py [--seconds 10] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import grpc
from support.backend import BackendProcess, auth
from trainingplatform.jobs.v1 import jobs_pb2

MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # the backend's default TP_MAX_MESSAGE_BYTES
GET_JOB = "/trainingplatform.jobs.v1.JobsService/GetJob"
SAMPLE_S = 0.05


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def _flood(address: str, pid: int, seconds: float, concurrency: int) -> tuple[collections.Counter[str], float]:
    """The answers' codes and the peak RSS."""
    payload = jobs_pb2.GetJobRequest(job_id="x" * (MAX_MESSAGE_BYTES - 64)).SerializeToString()
    codes: collections.Counter[str] = collections.Counter()
    peak = 0.0
    deadline = time.monotonic() + seconds
    options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(concurrency)]

    async def caller(channel: grpc.aio.Channel) -> None:
        call = channel.unary_unary(GET_JOB)  # raw bytes in and out
        while time.monotonic() < deadline:
            try:
                await call(payload, timeout=30)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as error:
                codes[error.code().name] += 1

    async def sampler() -> None:
        nonlocal peak
        while time.monotonic() < deadline + 1:
            peak = max(peak, _rss_mib(pid))
            await asyncio.sleep(SAMPLE_S)

    try:
        await asyncio.gather(sampler(), *(caller(channel) for channel in channels))
    finally:
        for channel in channels:
            await channel.close()
    return codes, peak


def run(seconds: float = 10.0, concurrency: int = 32) -> dict[str, float]:
    """RSS of a backend before, during and after `seconds` of flood by `concurrency` unauthenticated callers."""
    with tempfile.TemporaryDirectory() as tmp:
        backend = BackendProcess(f"sqlite:///{tmp}/flood.db", Path(tmp) / "data")
        backend.start()
        try:
            assert backend.process is not None
            pid = backend.process.pid
            job_id, token = backend.create_job()
            for _ in range(3):  # warm up: the baseline is the steady state
                backend.jobs().GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=auth(token), timeout=10)
            before = _rss_mib(pid)
            started = time.perf_counter()
            codes, peak = asyncio.run(_flood(backend.address, pid, seconds, concurrency))
            elapsed = time.perf_counter() - started
            after = _rss_mib(pid)
        finally:
            backend.close()
    calls = sum(codes.values())
    return {
        "flood_rss_before_mib": round(before, 1),
        "flood_rss_peak_mib": round(max(peak, after), 1),
        "flood_rss_after_mib": round(after, 1),
        "flood_rss_growth_mib": round(max(peak, after) - before, 1),
        "flood_calls_per_s": round(calls / elapsed, 1),
        "flood_not_unauthenticated": calls - codes["UNAUTHENTICATED"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    print(json.dumps(run(args.seconds, args.concurrency), indent=2))


if __name__ == "__main__":
    main()
