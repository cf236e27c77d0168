"""`tp`: the platform's command line.

    tp up                                   start the backend, both trainers and the dashboard (Ctrl-C stops them)
    tp train --framework timm --model resnet10t --dataset digits --epochs 3 [--advanced-config JSON|@file]
    tp jobs | show JOB | watch JOB | logs JOB [--follow] | metrics JOB [--key K] [--plot F.png] | cancel JOB
    tp demo                                 the whole platform end to end on embedded defaults

The backend is TP_BACKEND_ADDRESS (or BACKEND_API_URL, default 127.0.0.1:50051; `https://` for TLS, with the CA in
TP_TLS_CA_FILE and, for mutual TLS, TP_TLS_CLIENT_CERT_FILE and TP_TLS_CLIENT_KEY_FILE). The token is a front end's:
TP_AUTH_TOKEN (the backend's FRONTEND_AUTH_TOKEN), else INTERNAL_AUTH_TOKEN, else the front-end token a local
backend wrote to .data/frontend_auth_token, else .data/internal_auth_token (`clients.default_token`). Errors are one
line on stderr. `train` and `watch` exit 0 when the job COMPLETED, 1 when it FAILED, 3 when it was CANCELLED; any
other error exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainingplatform_sdk.cli.output import CliError, fmt_value, follow, plot_series, print_summary
from trainingplatform_sdk.clients import JobsClient, default_token
from trainingplatform_sdk.errors import PlatformError

EXIT_FOR_STATUS = {"COMPLETED": 0, "FAILED": 1, "CANCELLED": 3}
EXIT_ERROR = 2


def _client(args: argparse.Namespace) -> JobsClient:
    address = (
        args.backend or os.environ.get("TP_BACKEND_ADDRESS") or os.environ.get("BACKEND_API_URL") or "127.0.0.1:50051"
    )
    return JobsClient(address, default_token(args.data_dir))


def _load_json(value: str | None) -> dict[str, Any]:
    if not value:
        return {}
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise CliError(f"--advanced-config is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise CliError("--advanced-config must be a JSON object")
    return data


# --- commands -----------------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from trainingplatform_sdk.cli.stack import Stack

    stack = Stack(
        Path(args.data_dir),
        backend_port=args.backend_port,
        timm_port=args.timm_port,
        ultralytics_port=args.ultralytics_port,
        data_roots=tuple(Path(root) for root in (args.data_root or [Path.cwd()])),
        dashboard_port=None if args.no_dashboard else args.dashboard_port,
    )
    print(f"starting the stack in {stack.data_dir} ...", flush=True)
    print(f"trainers read data sets under {', '.join(str(root) for root in stack.data_roots)}", flush=True)
    stack.start()
    for service in stack.services:
        print(f"  {service.name:20} {service.address}  (log {service.log_path})")
    print(f"database {stack.database}", flush=True)
    token_file = stack.data_dir / "frontend_auth_token"
    if token_file.exists():
        print(f"front-end token in {token_file} (`tp` reads it; TP_AUTH_TOKEN for other front ends)", flush=True)
    if stack.dashboard_login_url:
        print(f"dashboard: open {stack.dashboard_login_url}", flush=True)
        print("  (the login link of this start: it sets a session cookie and leads to the plain URL; keep it private)")
    print("Ctrl-C stops everything.", flush=True)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            if any(s.process is not None and s.process.poll() is not None for s in stack.services):
                dead = [s.name for s in stack.services if s.process is not None and s.process.poll() is not None]
                print(f"error: {', '.join(dead)} exited; stopping the stack", file=sys.stderr)
                return EXIT_ERROR
            time.sleep(0.2)
    finally:
        print("\nstopping ...", flush=True)
        stack.stop()
        print("stopped", flush=True)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    with _client(args) as client:
        created = client.create_job(
            framework=args.framework,
            model=args.model,
            dataset=args.dataset or "",
            dataset_path=args.dataset_path or "",
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            image_size=args.image_size,
            device=args.device or "",
            log_every_n_steps=args.log_every_n_steps,
            advanced=_load_json(args.advanced_config),
            display_name=args.name or "",
        )
        job = created.job
        print(
            f"job {job.job_id} ({job.framework} {job.model} on {job.dataset}, {job.epochs} epochs): {job.status}",
            flush=True,
        )
        if not job.finished:
            job = follow(client, job)
        print_summary(job, client=client)
        return EXIT_FOR_STATUS.get(job.status, EXIT_ERROR)


def cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get_job(args.job)
        if not job.finished:
            job = follow(client, job)
        print_summary(job, client=client)
        return EXIT_FOR_STATUS.get(job.status, EXIT_ERROR)


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(f"{'JOB':36}  {'STATUS':9}  {'FRAMEWORK':11}  {'MODEL':18}  CREATED")
        for count, job in enumerate(client.list_jobs(statuses=args.status or (), framework=args.framework or "")):
            if count >= args.limit:
                break
            created = job.created_at.strftime("%Y-%m-%d %H:%M:%S") if job.created_at else ""
            print(f"{job.job_id:36}  {job.status:9}  {job.framework:11}  {job.model[:18]:18}  {created}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get_job(args.job)
        print(f"job {job.job_id}  {job.status}")
        print(
            f"  {job.framework} {job.model} on {job.dataset}, {job.epochs} epochs; trainer {job.trainer_address or '-'}"
        )
        print(f"  metrics committed up to {job.last_metric_sequence}, logs up to {job.last_log_sequence}")
        for event in job.status_events:
            when = event.time.strftime("%H:%M:%S") if event.time else ""
            print(f"  {when} {event.from_status:>11} -> {event.to_status:9} {event.reason}")
        print_summary(job)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if not args.follow:
            for line in client.logs(args.job, min_level=args.level or ""):
                print(
                    f"{time.strftime('%H:%M:%S', time.localtime(line.wall_time))} [{line.level.lower()}] {line.message}"
                )
            return 0
        for event in client.subscribe(args.job):
            for line in event.logs:
                print(
                    f"{time.strftime('%H:%M:%S', time.localtime(line.wall_time))} [{line.level.lower()}] "
                    f"{line.message}",
                    flush=True,
                )
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    with _client(args) as client:
        series: dict[str, list[tuple[float, float]]] = {}
        for point in client.metrics(args.job, keys=args.key or ()):
            x = point.step if point.step is not None else (point.epoch if point.epoch is not None else point.sequence)
            series.setdefault(point.key, []).append((x, point.value))
    if not series:
        raise CliError(f"job {args.job} has no metrics" + (f" with keys {args.key}" if args.key else ""))
    for key, values in sorted(series.items()):
        print(f"{key:28} {len(values):7} points  last {fmt_value(values[-1][1])}")
    if args.plot:
        plot_series({args.job[:8]: series}, Path(args.plot))
        print(f"wrote {args.plot}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel_job(args.job, reason=args.reason or "cancelled from the command line")
        print(f"job {job.job_id}: {job.status}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from trainingplatform_sdk.cli.demo import run_demo

    return run_demo(Path(args.data_dir))


# --- parser -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `tp`."""
    parser = argparse.ArgumentParser(prog="tp", description="The training platform's command line.")
    parser.add_argument("--backend", help="backend address (TP_BACKEND_ADDRESS, default 127.0.0.1:50051)")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("TP_DATA_DIR", ".data"),
        help="local data directory (TP_DATA_DIR, default .data)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start the backend, both trainer services and the dashboard locally")
    up.add_argument("--backend-port", type=int, default=50051)
    up.add_argument("--dashboard-port", type=int, default=8080, help="the dashboard's port on 127.0.0.1 (default 8080)")
    up.add_argument("--no-dashboard", action="store_true", help="do not start the dashboard")
    up.add_argument("--timm-port", type=int, default=50061)
    up.add_argument("--ultralytics-port", type=int, default=50062)
    up.add_argument(
        "--data-root",
        action="append",
        metavar="DIR",
        help="a directory whose data sets the trainers may read, besides <data-dir>/datasets (repeatable; "
        "default: the current directory). Dataset paths outside these are refused",
    )
    up.set_defaults(run=cmd_up)

    train = commands.add_parser("train", help="submit a job and follow it live")
    train.add_argument("--framework", required=True, choices=("timm", "ultralytics"))
    train.add_argument("--model", required=True, help="timm model name or ultralytics yaml / .pt")
    train.add_argument("--dataset", help="built-in dataset (digits, shapes)")
    train.add_argument("--dataset-path", help="ImageFolder directory or YOLO data.yaml on the trainer")
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--batch-size", type=int, default=0)
    train.add_argument("--lr", type=float, default=0.0)
    train.add_argument("--image-size", type=int, default=0)
    train.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    train.add_argument("--log-every-n-steps", type=int, default=0)
    train.add_argument("--advanced-config", help="JSON object or @file.json")
    train.add_argument("--name", help="display name")
    train.set_defaults(run=cmd_train)

    jobs = commands.add_parser("jobs", help="list jobs, newest first")
    jobs.add_argument("--status", action="append", help="filter by status (repeatable)")
    jobs.add_argument("--framework")
    jobs.add_argument("--limit", type=int, default=50)
    jobs.set_defaults(run=cmd_jobs)

    for name, function, text in (
        ("show", cmd_show, "one job and its status history"),
        ("watch", cmd_watch, "follow a job live until it ends"),
        ("cancel", cmd_cancel, "cancel a job"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("job")
        command.set_defaults(run=function)
        if name == "cancel":
            command.add_argument("--reason")

    logs = commands.add_parser("logs", help="a job's log lines")
    logs.add_argument("job")
    logs.add_argument("--follow", "-f", action="store_true")
    logs.add_argument("--level", help="minimum level: debug, info, warning, error, critical")
    logs.set_defaults(run=cmd_logs)

    metrics = commands.add_parser("metrics", help="a job's metrics; --plot writes a PNG of the curves")
    metrics.add_argument("job")
    metrics.add_argument("--key", action="append", help="only this key (repeatable)")
    metrics.add_argument("--plot", help="write a PNG of the curves")
    metrics.set_defaults(run=cmd_metrics)

    demo = commands.add_parser("demo", help="run the platform end to end on embedded defaults")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `tp`."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (PlatformError, CliError, OSError, TimeoutError, RuntimeError, ValueError) as error:
        message = error.details if isinstance(error, PlatformError) else str(error).splitlines()[0]
        print(f"error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
