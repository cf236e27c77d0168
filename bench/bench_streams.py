"""Many streams: 1,000 concurrent StreamMetrics calls against one backend (PostgreSQL), each sending one 20-point
message a second, with live subscribers watching some of the jobs.

This is the shape of a busy platform: a thousand trainers, each with its one long-lived metrics stream, each
logging a step's worth of metrics every second. What is measured is the backend, so the load does not come from
the SDK (whose sender thread per logger would make 1,000 threads): a load generator on `grpc.aio` with prebuilt
messages, `processes` processes (2) each holding its share of the streams on one event loop over `channels`
channels (8; each its own TCP connection, at most TP_MAX_CONCURRENT_STREAMS (100) calls apiece). The 1,000 jobs are
created first through JobsService (CreateJob without dispatch: the bench plays the trainers) for their ids and
telemetry tokens. Every stream first opens its call with a message naming the job (no points), as a trainer holds
its stream open for the whole run, and the measurement starts once the backend has taken them all in (its CPU
quiet); stream `i` then sends at `start + i / streams + k` seconds, so the messages arrive evenly spread. The first
`warmup_s` (5) seconds of messages are sent and checked like the rest but measured apart: the first data message
of every stream costs the backend more (its first commit, the token's checks), and a thousand of them in the same
second is the bench's synchronized start, not a steady load.

Exactly-once, as the protocol asks: each stream numbers its points 1, 2, 3... (message `k` carries `20k+1` to
`20k+20`); after a broken call it asks GetStreamCursor and resends everything above the cursor on a new call. At
the end each stream half-closes and reads the call's response; its `last_committed_sequence` is the ack.

Reported, under keys `streams_<streams>_...` for one backend process and `streams_<streams>_w<N>_...` for
`tp-backend --workers N` (N > 1):
- `points_per_s`: points found in the database (SQL, not the acks) over the time from the first send (warm-up
  included) to the last stream's response (offered: 20 points per stream per second);
- `lost`: points acked (at or below a stream's final `last_committed_sequence`) but not in the database;
  `unacked`: points sent but not covered by the final ack; `duplicates`: rows stored twice (the primary key makes
  it impossible; counted anyway); `resends_ignored` (the backend's duplicate counters) and `reconnects`;
- `p50_ms`, `p99_ms`, `max_ms`: send -> subscriber latency of every point sent after the warm-up and seen by
  `subscribers` (10) SubscribeTelemetry calls on random jobs (each point's wall_time is the moment its message was
  sent; the receipt is timed in the subscriber process on the same host's clock). It includes the backend's
  receive and commit, so it is an upper bound of "commit -> subscriber". With 10 subscribers and 20-point
  messages a second's stall of the backend is 200 points of each 12,000 a minute: p99 is about the longest stall.
  `warmup_p99_ms`: the same over the warm-up. `subscriber_missed` / `subscriber_duplicates`: acked points of the
  watched jobs (warm-up included) that a subscriber did not see, or saw twice;
- `backend_rss_mib`: the sum of the peak resident memory (VmHWM) of the backend process and every process under
  it (its workers), an upper bound of their peak together (pages they share count once per process);
- `backend_cpu_ms_per_message`: the user + system CPU of the backend's process tree (from /proc/<pid>/stat)
  from the end of the warm-up to the last response, per message sent meanwhile (PostgreSQL's own CPU is not in
  it);
- `host_cpu_pressure_pct`: the share of that time in which some runnable task of the host waited for a CPU
  (/proc/pressure/cpu). The bench's own processes (load generators, subscribers, PostgreSQL) add to it; well above
  what they add alone (other work on the machine), the latencies are the machine's more than the backend's.

    .venv/bin/python bench/bench_streams.py [--streams 1000] [--seconds 60] [--workers 1] [--subscribers 10]
        [--processes 2] [--channels 8] [--warmup-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import queue
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
# The load-generator and subscriber processes import this module: only the standard library at the top, so they
# start fast; what they use (grpc, the generated messages) and what only the parent uses are imported where used.

POINTS_PER_MESSAGE = 20
KEYS = [f"bench/metric_{i:02d}" for i in range(POINTS_PER_MESSAGE)]
STREAM_METRICS = "/trainingplatform.telemetry.v1.TrainingTelemetryService/StreamMetrics"
GET_STREAM_CURSOR = "/trainingplatform.telemetry.v1.TrainingTelemetryService/GetStreamCursor"
SUBSCRIBE_TELEMETRY = "/trainingplatform.jobs.v1.JobsService/SubscribeTelemetry"
# A broken call is resumed from the cursor; these codes mean the bench itself is wrong, and it stops.
FATAL_CODES = frozenset({"INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED", "UNAUTHENTICATED", "ABORTED"})
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


# --- the load generator (its own processes; grpc.aio and the generated messages only, no SDK) -------------------


def _channel_options(index: int) -> list[tuple[str, object]]:
    return [
        ("grpc.use_local_subchannel_pool", 1),  # a connection of its own, not one shared by equal channels
        ("grpc.keepalive_time_ms", 30_000),  # as the SDK
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_reconnect_backoff_ms", 1_000),
        ("tp.bench.channel", index),
    ]


async def _stream(
    channel, job_id: str, token: str, opened: asyncio.Queue, start: asyncio.Future, offset: float, messages: int
) -> tuple[str, int, int, int]:
    """One trainer's metrics stream: opens its call with a message naming the job (no points) and reports it on
    `opened`, then sends `messages` messages of 20 points, one a second from `start` (its result) + `offset`;
    resumes from the cursor after a broken call. Returns (job_id, last sequence sent, last sequence acked,
    reconnects)."""
    import grpc
    from trainingplatform.telemetry.v1 import telemetry_pb2

    stream_metrics = channel.stream_unary(
        STREAM_METRICS, request_serializer=None, response_deserializer=telemetry_pb2.StreamMetricsResponse.FromString
    )
    get_cursor = channel.unary_unary(
        GET_STREAM_CURSOR,
        request_serializer=telemetry_pb2.GetStreamCursorRequest.SerializeToString,
        response_deserializer=telemetry_pb2.GetStreamCursorResponse.FromString,
    )
    metadata = (("authorization", f"Bearer {token}"),)
    template = telemetry_pb2.StreamMetricsRequest()
    for key in KEYS:
        template.points.add(key=key, epoch=0)
    points = list(template.points)
    send_times: list[float] = []  # message k's send time: the wall_time of its points, kept for resends

    def encode(k: int, above: int, first: bool) -> bytes | None:
        """Message k (its points above sequence `above`), naming the job when it opens a call."""
        base = k * POINTS_PER_MESSAGE
        for i, point in enumerate(points):
            point.sequence = base + i + 1
            point.step = k
            point.value = (base + i) * 0.001
            point.wall_time = send_times[k]
        template.job_id = job_id if first else ""
        if above < base + 1:
            return template.SerializeToString()
        if above >= base + POINTS_PER_MESSAGE:
            return None
        partial = telemetry_pb2.StreamMetricsRequest(job_id=template.job_id)
        partial.points.extend(p for p in points if p.sequence > above)
        return partial.SerializeToString()

    opening = telemetry_pb2.StreamMetricsRequest(job_id=job_id).SerializeToString()  # no points
    reconnects = 0
    call = stream_metrics(metadata=metadata, wait_for_ready=True)
    first = True

    async def fail(error: BaseException) -> None:
        """After a broken call: check the status, ask the cursor, open a new call and resend what lies above it
        (messages 0 to len(send_times) - 2; the caller then writes the current one)."""
        nonlocal call, first, reconnects
        code = None
        if isinstance(error, grpc.aio.AioRpcError):
            code = error.code()
        else:
            call.cancel()
            try:
                code = await asyncio.wait_for(call.code(), 10)
            except TimeoutError:
                code = None
        if code is not None and code.name in FATAL_CODES:
            raise RuntimeError(f"stream of {job_id} failed with {code.name}: {error}") from error
        reconnects += 1
        delay = 0.1
        while True:
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            try:
                cursor = await get_cursor(
                    telemetry_pb2.GetStreamCursorRequest(job_id=job_id),
                    metadata=metadata,
                    timeout=10,
                    wait_for_ready=True,
                )
                call = stream_metrics(metadata=metadata, wait_for_ready=True)
                first = True
                for k in range(len(send_times) - 1):
                    data = encode(k, cursor.last_metric_sequence, first)
                    if data is not None:
                        await call.write(data)
                        first = False
                if first:  # nothing to resend: the call still names its job at once
                    await call.write(opening)
                    first = False
                return
            except grpc.aio.AioRpcError as retry_error:
                if retry_error.code().name in FATAL_CODES:
                    raise RuntimeError(f"stream of {job_id} failed: {retry_error}") from retry_error
            except asyncio.InvalidStateError:
                pass
            reconnects += 1
            delay = min(delay * 2, 2.0)

    while True:
        try:
            if first:
                await call.write(opening)
                first = False
            break
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
            await fail(error)
    opened.put_nowait(job_id)
    first_send = await start + offset
    for k in range(messages):
        await asyncio.sleep(max(0.0, first_send + k - time.time()))
        send_times.append(time.time())
        while True:
            try:
                await call.write(encode(k, 0, first))
                first = False
                break
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
                await fail(error)
    send_times.append(0.0)  # fail() resends messages 0 .. len - 2: all of them from here on
    while True:
        try:
            await call.done_writing()
            response = await call
            return job_id, messages * POINTS_PER_MESSAGE, response.last_committed_sequence, reconnects
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
            await fail(error)


async def _produce_async(
    address: str, jobs: list[tuple[int, str, str]], streams: int, messages: int, channels: int, ready, go, start_at
) -> list[tuple[str, int, int, int]]:
    import grpc

    connections = [grpc.aio.insecure_channel(address, options=_channel_options(i)) for i in range(channels)]
    try:
        await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), 30) for c in connections))
        opened: asyncio.Queue[str] = asyncio.Queue()
        start: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        tasks = [
            asyncio.create_task(
                _stream(connections[n % channels], job_id, token, opened, start, index / streams, messages)
            )
            for n, (index, job_id, token) in enumerate(jobs)
        ]
        for _ in tasks:  # every call open (a failed stream raises here rather than hang)
            getter = asyncio.ensure_future(opened.get())
            await asyncio.wait([getter, *tasks], timeout=120, return_when=asyncio.FIRST_COMPLETED)
            failed = [task for task in tasks if task.done() and task.exception() is not None]
            if failed:
                getter.cancel()
                raise failed[0].exception()  # type: ignore[misc]
            if not getter.done():
                raise TimeoutError("the streams did not all open within 120 s")
        ready.put(os.getpid())
        await asyncio.get_running_loop().run_in_executor(None, go.wait, 300)
        start.set_result(start_at.value)
        return await asyncio.gather(*tasks)
    finally:
        await asyncio.gather(*(c.close() for c in connections))


def _produce(address, jobs, streams, messages, channels, ready, go, start_at, results) -> None:
    """One load-generator process: its streams on one event loop."""
    try:
        results.put(asyncio.run(_produce_async(address, jobs, streams, messages, channels, ready, go, start_at)))
    except BaseException as error:
        results.put(RuntimeError(f"producer {os.getpid()} failed: {error!r}"))
        raise


async def _subscribe_async(address: str, token: str, job_ids: list[str], expected: int, ready, stop):
    import grpc
    from trainingplatform.jobs.v1 import jobs_pb2

    latencies: list[tuple[float, float]] = []  # (sent, ms from sent to received) of every point
    seen: dict[str, dict[int, int]] = {job_id: {} for job_id in job_ids}
    async with grpc.aio.insecure_channel(address, options=_channel_options(0)) as channel:
        subscribe = channel.unary_stream(
            SUBSCRIBE_TELEMETRY,
            request_serializer=jobs_pb2.SubscribeTelemetryRequest.SerializeToString,
            response_deserializer=jobs_pb2.SubscribeTelemetryResponse.FromString,
        )
        metadata = (("authorization", f"Bearer {token}"),)
        started = asyncio.Event()
        waiting = len(job_ids)

        async def follow(job_id: str) -> None:
            nonlocal waiting
            counts = seen[job_id]
            call = subscribe(jobs_pb2.SubscribeTelemetryRequest(job_id=job_id, keep_following=True), metadata=metadata)
            try:
                first = True
                async for event in call:
                    now = time.time()
                    if first:  # the job's creation status event: subscribed
                        first = False
                        waiting -= 1
                        if waiting == 0:
                            started.set()
                    for point in event.metrics.points:
                        latencies.append((point.wall_time, (now - point.wall_time) * 1000))
                        counts[point.sequence] = counts.get(point.sequence, 0) + 1
                    if len(counts) >= expected:
                        return
            finally:
                call.cancel()

        tasks = [asyncio.create_task(follow(job_id)) for job_id in job_ids]
        await asyncio.wait_for(started.wait(), 60)
        ready.put(os.getpid())

        async def stopped() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.2)

        either: list[asyncio.Future[Any]] = [asyncio.ensure_future(stopped()), asyncio.gather(*tasks)]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        either[0].cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return latencies, seen


def _subscribe(address, token, job_ids, expected, ready, stop, results) -> None:
    """The subscribers, in their own process as another service would be."""
    try:
        results.put(asyncio.run(_subscribe_async(address, token, job_ids, expected, ready, stop)))
    except BaseException as error:
        results.put(RuntimeError(f"subscriber failed: {error!r}"))
        raise


# --- the backend's process tree --------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """The process and every process under it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _tree_cpu_s(pid: int) -> float:
    """User plus system CPU of every thread of the process tree (and of its children already reaped)."""
    total = 0.0
    for member in _tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15]) / _TICKS_PER_S
    return total


def _tree_peak_rss_mib(pid: int) -> tuple[float, int]:
    """(sum of VmHWM over the process tree in MiB, number of processes)."""
    members = _tree(pid)
    total = 0
    for member in members:
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024, len(members)


def _cpu_pressure_us() -> float:
    """The host's cumulative CPU pressure (PSI, "some": time in which a runnable task waited for a CPU), in
    microseconds; NaN where the kernel does not tell."""
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(some.rsplit("total=", 1)[1])
    except (OSError, IndexError, ValueError):
        return float("nan")


def _wait_quiet(pid: int, timeout: float = 60.0) -> None:
    """Waits (at most `timeout`) until the process tree uses under a fifth of a core over half a second: the
    streams just opened have all been taken in."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = _tree_cpu_s(pid)
        time.sleep(0.5)
        if _tree_cpu_s(pid) - before < 0.1:
            return


def backend_supports_workers() -> bool:
    """Whether this tp-backend has `--workers`."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "tp-backend"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return "--workers" in result.stdout


# --- the run ---------------------------------------------------------------------------------------------------


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[max(0, int(len(ordered) * fraction) - 1)] if ordered else float("nan")


def _get(source, timeout: float):
    item = source.get(timeout=timeout)
    if isinstance(item, BaseException):
        raise item
    return item


def run(
    streams: int = 1000,
    seconds: float = 60.0,
    workers: int = 1,
    subscribers: int = 10,
    processes: int = 2,
    channels: int = 8,
    warmup_s: float = 5.0,
    skip_without_workers: bool = False,
) -> dict[str, float]:
    """The numbers of `streams` concurrent streams for `seconds` (after `warmup_s`) against `tp-backend` with
    `workers` processes (`--workers` is passed only when above 1; a backend without it raises, or returns nothing
    when `skip_without_workers`)."""
    from sqlalchemy import bindparam, create_engine, text
    from support.backend import BackendProcess, postgres_database

    extra_args: list[str] = []
    if workers > 1:
        if not backend_supports_workers():
            if skip_without_workers:
                print(f"bench_streams: tp-backend has no --workers; {workers} workers skipped", file=sys.stderr)
                return {}
            raise RuntimeError(
                f"bench_streams: {workers} workers asked, but this tp-backend has no --workers option "
                "(run with workers=1, or skip_without_workers=True)"
            )
        extra_args = ["--workers", str(workers)]
    prefix = f"streams_{streams}" + (f"_w{workers}" if workers > 1 else "")
    warmup_messages = max(0, round(warmup_s))
    messages = warmup_messages + max(1, round(seconds))
    processes = max(1, min(processes, streams))
    with postgres_database() as url, tempfile.TemporaryDirectory() as tmp:
        backend = BackendProcess(url, Path(tmp) / "data", extra_args=extra_args)
        backend.start()
        context = multiprocessing.get_context("spawn")
        children: list = []
        stop = context.Event()
        try:
            with ThreadPoolExecutor(8) as pool:
                jobs = list(pool.map(lambda _: backend.create_job(), range(streams)))
            watched = random.sample([job_id for job_id, _ in jobs], min(subscribers, streams))
            ready, go, start_at = context.Queue(), context.Event(), context.Value("d", 0.0)
            results, sub_results = context.Queue(), context.Queue()
            indexed = [(i, job_id, token) for i, (job_id, token) in enumerate(jobs)]
            for share in (indexed[p::processes] for p in range(processes)):
                children.append(
                    context.Process(
                        target=_produce,
                        args=(backend.address, share, streams, messages, channels, ready, go, start_at, results),
                    )
                )
            if watched:
                expected = messages * POINTS_PER_MESSAGE
                children.append(
                    context.Process(
                        target=_subscribe,
                        args=(backend.address, backend.read_token, watched, expected, ready, stop, sub_results),
                    )
                )
            for child in children:
                child.start()
            for _ in children:
                _get(ready, 120)
            assert backend.process is not None
            pid = backend.process.pid
            _wait_quiet(pid)
            start_at.value = time.time() + 0.5
            go.set()
            measured_from = start_at.value + warmup_messages
            time.sleep(max(0.0, measured_from - time.time()))
            cpu_before, pressure_before, measuring_since = _tree_cpu_s(pid), _cpu_pressure_us(), time.time()
            outcomes: list[tuple[str, int, int, int]] = []
            for _ in range(processes):
                outcomes.extend(_get(results, seconds + 600))
            elapsed = time.time() - start_at.value
            cpu = _tree_cpu_s(pid) - cpu_before
            pressure = (_cpu_pressure_us() - pressure_before) / 1e6 / (time.time() - measuring_since) * 100
            rss_mib, backend_processes = _tree_peak_rss_mib(pid)
            latencies: list[tuple[float, float]] = []
            seen: dict[str, dict[int, int]] = {}
            if watched:
                try:
                    latencies, seen = _get(sub_results, 30)
                except queue.Empty:  # not everything seen yet: stop them, and count what they missed
                    stop.set()
                    latencies, seen = _get(sub_results, 30)
            acked = {job_id: ack for job_id, _, ack, _ in outcomes}
            engine = create_engine(url)
            with engine.connect() as conn:
                per_job = conn.execute(
                    text(
                        "SELECT a.job_id, count(m.sequence), count(DISTINCT m.sequence) "
                        "FROM unnest(CAST(:ids AS text[]), CAST(:acked AS bigint[])) AS a(job_id, acked) "
                        "JOIN jobs j ON j.job_id = a.job_id "
                        "LEFT JOIN metrics m ON m.job_pk = j.id AND m.sequence BETWEEN 1 AND a.acked "
                        "GROUP BY a.job_id"
                    ).bindparams(bindparam("ids"), bindparam("acked")),
                    {"ids": list(acked), "acked": list(acked.values())},
                ).all()
                stored, distinct = conn.execute(
                    text("SELECT count(*), count(DISTINCT (job_pk, sequence)) FROM metrics")
                ).one()
                resends = conn.execute(
                    text("SELECT coalesce(sum(duplicate_count), 0) FROM ingest_cursors")
                ).scalar_one()
            engine.dispose()
        finally:
            stop.set()
            for child in children:
                child.join(30)
                if child.is_alive():
                    child.kill()
            backend.close()
    found = {job_id: distinct_rows for job_id, _, distinct_rows in per_job}
    lost = sum(ack - found.get(job_id, 0) for job_id, ack in acked.items())
    unacked = sum(max(0, sent - ack) for _, sent, ack, _ in outcomes)
    missed = sum(
        max(0, acked[job_id] - sum(1 for s in counts if s <= acked[job_id])) for job_id, counts in seen.items()
    )
    doubled_seen = sum(n - 1 for counts in seen.values() for n in counts.values() if n > 1)
    ordered = sorted(ms for sent, ms in latencies if sent >= measured_from)
    warming = sorted(ms for sent, ms in latencies if sent < measured_from)
    measured_messages = len(outcomes) * (messages - warmup_messages)
    return {
        f"{prefix}_points_per_s": stored / elapsed,
        f"{prefix}_points_stored": float(stored),
        f"{prefix}_lost": float(lost),
        f"{prefix}_unacked": float(unacked),
        f"{prefix}_duplicates": float(stored - distinct),
        f"{prefix}_resends_ignored": float(resends),
        f"{prefix}_reconnects": float(sum(r for *_, r in outcomes)),
        f"{prefix}_p50_ms": _percentile(ordered, 0.5),
        f"{prefix}_p99_ms": _percentile(ordered, 0.99),
        f"{prefix}_max_ms": ordered[-1] if ordered else float("nan"),
        f"{prefix}_warmup_p99_ms": _percentile(warming, 0.99),
        f"{prefix}_subscriber_points": float(len(latencies)),
        f"{prefix}_subscriber_missed": float(missed),
        f"{prefix}_subscriber_duplicates": float(doubled_seen),
        f"{prefix}_backend_rss_mib": rss_mib,
        f"{prefix}_backend_processes": float(backend_processes),
        f"{prefix}_backend_cpu_ms_per_message": cpu / measured_messages * 1000,
        f"{prefix}_host_cpu_pressure_pct": pressure,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=1, help="tp-backend --workers (passed only when above 1)")
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    parser.add_argument("--channels", type=int, default=8, help="channels (connections) per load-generator process")
    parser.add_argument("--warmup-s", type=float, default=5.0, help="seconds sent before the measured ones")
    args = parser.parse_args()
    print(
        json.dumps(
            run(
                args.streams,
                args.seconds,
                args.workers,
                args.subscribers,
                args.processes,
                args.channels,
                args.warmup_s,
            ),
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
