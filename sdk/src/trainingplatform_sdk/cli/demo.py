"""`tp demo` (and `make demo`): the platform end to end on embedded defaults, with no configuration.

Starts the backend and both trainer services on free loopback ports, trains a timm classifier on the built-in
digits data and a short YOLO detector on the built-in synthetic shapes, following both live, writes a PNG of
their loss curves, prints where the database, the MLflow runs and the artifacts are, and stops the stack.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from trainingplatform_sdk.cli.output import follow, plot_series, print_summary
from trainingplatform_sdk.cli.stack import Stack
from trainingplatform_sdk.clients import Job, JobsClient

JOBS = (
    {
        "framework": "timm",
        "model": "resnet10t",
        "dataset": "digits",
        "epochs": 3,
        "image_size": 32,
        "log_every_n_steps": 5,
        "display_name": "demo: resnet10t on digits",
    },
    {
        "framework": "ultralytics",
        "model": "yolo11n.yaml",
        "dataset": "shapes",
        "epochs": 3,
        "image_size": 64,
        "log_every_n_steps": 2,
        "display_name": "demo: yolo11n on shapes",
    },
)
LOSS_KEYS = {
    "timm": ("train/loss", "val/loss"),
    "ultralytics": ("train/box_loss", "train/cls_loss", "train/dfl_loss", "val/box_loss"),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_demo(data_dir: Path, out=sys.stdout) -> int:
    """Runs the demo; returns 0 when both jobs COMPLETED."""
    data_dir = data_dir.resolve()
    stack = Stack(data_dir, backend_port=_free_port(), timm_port=_free_port(), ultralytics_port=_free_port())
    out.write(f"starting the backend and both trainers (data in {data_dir}) ...\n")
    out.flush()
    finished: list[Job] = []
    with stack:
        for service in stack.services:
            out.write(f"  {service.name:20} {service.address}\n")
        with JobsClient(stack.backend_address, stack.token) as client:
            for spec in JOBS:
                out.write(f"\n== {spec['display_name']} ==\n")
                created = client.create_job(**spec)  # type: ignore[arg-type]
                job = created.job
                out.write(f"job {job.job_id}: {job.status}\n")
                out.flush()
                if not job.finished:
                    job = follow(client, job, out)
                print_summary(job, out, client)
                finished.append(job)
            curves = {}
            for job in finished:
                series: dict[str, list[tuple[float, float]]] = {}
                for point in client.metrics(job.job_id, keys=LOSS_KEYS[job.framework]):
                    if point.epoch is not None:
                        series.setdefault(point.key, []).append((point.epoch + 1, point.value))
                curves[f"{job.framework} {job.model}"] = series
    png = data_dir / "demo_losses.png"
    plot_series(curves, png)
    out.write("\n== where everything is ==\n")
    out.write(f"database:   {stack.database}\n")
    for job in finished:
        out.write(f"{job.framework:12}MLflow run {job.mlflow_run_id or '-'} in {job.mlflow_tracking_uri or '-'}\n")
        for name, uri in sorted(job.artifacts.items()):
            out.write(f"{'':12}{name}: {uri}\n")
    out.write(f"logs:       {data_dir / 'logs'}\nloss curves: {png}\n")
    out.flush()
    return 0 if all(job.status == "COMPLETED" for job in finished) else 1
