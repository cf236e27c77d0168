"""gRPC's own CPU per message on this machine: the floor under `message_cpu_ms_backend` and `message_cpu_ms_sdk`.

The same traffic as `bench_message_cpu.py` (one one-point StreamMetricsRequest every 10 ms on one client-streaming
call) with nothing of this project on either side:
- the server is a bare `grpc.aio` server in its own process whose handler only counts the messages it reads (no
  parsing, no validation, no database);
- the client is this process: a thread puts the prebuilt serialized message into a queue that gRPC's request
  iterator reads, as the SDK hands its messages to gRPC;
- then the same with the other client API, as an SDK built on it would send: a `grpc.aio` channel on an event loop
  in a thread of its own, the ticking thread handing it each message with `call_soon_threadsafe`;
- then with no gRPC library on the client at all: the ticking thread writes each message as an HTTP/2 DATA frame
  on a plain socket (`tests/support/raw_h2.py`'s `ClientStream`), to the same bare server, which counts them as
  before: what a transport below gRPC's Python layer would cost the SDK.

Reported: `grpc_floor_ms_server` (the server process's CPU per message), `grpc_floor_ms_client`,
`grpc_floor_ms_client_aio` and `raw_h2_ms_client` (this process's CPU per message, less that of the same loop
sending nothing, measured beside it). What the platform's numbers have above the first three is what its own code
costs; a target below them cannot be met without another transport.

    .venv/bin/python bench/bench_grpc_floor.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from proc_cpu import process_cpu_s

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.raw_h2 import ClientStream, response_data
from trainingplatform.telemetry.v1 import telemetry_pb2

_SERVICE = "bench.Floor"
_METHOD = f"/{_SERVICE}/Stream"
_GAP_S = 0.01


def _serve(port: int) -> None:
    """The bare server: counts each call's messages, answers the count."""

    async def stream(requests, context) -> bytes:  # type: ignore[no-untyped-def]
        count = 0
        async for _ in requests:
            count += 1
        return count.to_bytes(8, "little")

    async def main() -> None:
        server = grpc.aio.server()
        methods = {"Stream": grpc.stream_unary_rpc_method_handler(stream)}
        handler = grpc.method_handlers_generic_handler(_SERVICE, methods)
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


def _one_point_message() -> bytes:
    return telemetry_pb2.StreamMetricsRequest(
        points=[
            telemetry_pb2.MetricPoint(
                key="train/batch_loss", value=0.5, step=1, epoch=0, wall_time=time.time(), sequence=1
            )
        ]
    ).SerializeToString()


def _loop(messages: int, send) -> float:  # type: ignore[no-untyped-def]
    """This process's CPU for `messages` ticks of `_GAP_S`, calling `send` at each."""
    before = time.process_time()
    for _ in range(messages):
        send()
        time.sleep(_GAP_S)
    return time.process_time() - before


def _aio_client_cpu_s(address: str, messages: int, message: bytes) -> tuple[float, float]:
    """This process's CPU for `messages` ticks sending nothing and for as many sending `message` each, through a
    `grpc.aio` channel on an event loop in its own thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="floor-aio-loop", daemon=True)
    thread.start()

    async def open_call() -> tuple[asyncio.Queue[bytes | None], asyncio.Task[int]]:
        channel = grpc.aio.insecure_channel(address)
        await channel.channel_ready()
        call = channel.stream_unary(_METHOD)()
        outbox: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def pump() -> int:
            while (item := await outbox.get()) is not None:
                await call.write(item)
            await call.done_writing()
            received = int.from_bytes(await call, "little")
            await channel.close()
            return received

        return outbox, asyncio.ensure_future(pump())

    async def result(task: asyncio.Task[int]) -> int:
        return await asyncio.wait_for(task, 60)

    try:
        outbox, pump = asyncio.run_coroutine_threadsafe(open_call(), loop).result(30)

        def put(item: bytes | None) -> None:
            loop.call_soon_threadsafe(outbox.put_nowait, item)

        put(message)  # the call is open before the measurement
        time.sleep(0.5)
        idle_cpu = _loop(messages, lambda: None)
        client_cpu = _loop(messages, lambda: put(message))
        put(None)
        received = asyncio.run_coroutine_threadsafe(result(pump), loop).result(90)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
    if received != messages + 1:
        raise RuntimeError(f"the bare server read {received} of {messages + 1} messages from the grpc.aio client")
    return idle_cpu, client_cpu


def _raw_client_cpu_s(address: str, messages: int, message: bytes) -> tuple[float, float]:
    """This process's CPU for `messages` ticks sending nothing and for as many writing `message` each as an HTTP/2
    DATA frame on a socket of its own (no gRPC library on this side)."""
    stream = ClientStream(address, _METHOD)
    stream.send(message)  # the call is open before the measurement
    time.sleep(0.5)
    idle_cpu = _loop(messages, lambda: None)
    client_cpu = _loop(messages, lambda: stream.send(message))
    received = int.from_bytes(response_data(stream.finish())[5:], "little")
    if received != messages + 1:
        raise RuntimeError(f"the bare server read {received} of {messages + 1} messages from the raw HTTP/2 client")
    return idle_cpu, client_cpu


def run(seconds: float = 10.0) -> dict[str, float]:
    """The bare client's and server's CPU per one-point message, in milliseconds."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("the bare gRPC server did not start")
        messages = max(100, round(seconds / _GAP_S))
        message = _one_point_message()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

            def requests() -> Iterator[bytes]:
                while (item := outbox.get()) is not None:
                    yield item

            call = channel.stream_unary(_METHOD).future(requests())
            outbox.put(message)  # the call is open before the measurement
            time.sleep(0.5)
            idle_cpu = _loop(messages, lambda: None)
            server_before = process_cpu_s(server.pid)
            client_cpu = _loop(messages, lambda: outbox.put(message))
            outbox.put(None)
            received = int.from_bytes(call.result(timeout=60), "little")
            server_cpu = process_cpu_s(server.pid) - server_before
        if received != messages + 1:
            raise RuntimeError(f"the bare server read {received} of {messages + 1} messages")
        aio_idle_cpu, aio_client_cpu = _aio_client_cpu_s(f"127.0.0.1:{port}", messages, message)
        raw_idle_cpu, raw_client_cpu = _raw_client_cpu_s(f"127.0.0.1:{port}", messages, message)
    finally:
        server.kill()
        server.wait()
    return {
        "grpc_floor_ms_client": max(0.0, client_cpu - idle_cpu) / messages * 1000,
        "grpc_floor_ms_client_aio": max(0.0, aio_client_cpu - aio_idle_cpu) / messages * 1000,
        "grpc_floor_ms_server": server_cpu / messages * 1000,
        "raw_h2_ms_client": max(0.0, raw_client_cpu - raw_idle_cpu) / messages * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve)
        return
    print(json.dumps(run(args.seconds), indent=2))


if __name__ == "__main__":
    main()
