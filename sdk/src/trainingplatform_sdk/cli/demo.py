"""`tp demo` (and `make demo`): the platform end to end on embedded defaults, with no configuration.

Starts the backend and both trainer services on free loopback ports, trains a timm classifier on the built-in
digits data and a short YOLO detector on the built-in synthetic shapes, following both live, writes a PNG of
their loss curves and a screenshot of the dashboard showing both jobs, prints where the database, the MLflow runs
and the artifacts are, and stops the stack.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TextIO

from trainingplatform_sdk.cli.output import follow, plot_series, print_summary
from trainingplatform_sdk.cli.stack import ONE_PROCESS_ENV, Stack, _executable
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


CHROMIUM = os.environ.get("TP_CHROMIUM", "/usr/bin/chromium")


def screenshot_dashboard(stack: Stack, jobs: list[Job], directory: Path, out: TextIO) -> list[Path]:
    """Starts `tp-dashboard` against the stack, logs in with a headless Chromium (Playwright) and saves the jobs
    page (`demo_dashboard.png`) and the first job's page with its charts (`demo_dashboard_job.png`). Where the
    browser is missing it prints one line saying what to install and returns [] (the demo still succeeds)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        out.write(
            "dashboard screenshot skipped: Playwright is not installed (`pip install playwright`, or `make setup`)\n"
        )
        return []
    if not os.access(CHROMIUM, os.X_OK):
        out.write(
            f"dashboard screenshot skipped: no Chromium at {CHROMIUM} "
            "(`apt-get install chromium`, or `make setup` as root)\n"
        )
        return []
    try:
        executable = _executable("tp-dashboard")
    except FileNotFoundError:
        out.write("dashboard screenshot skipped: tp-dashboard is not installed (`make setup`)\n")
        return []
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    token = secrets.token_urlsafe(24)
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if k not in ("READ_AUTH_TOKEN", "INTERNAL_AUTH_TOKEN") and k not in ONE_PROCESS_ENV
        },
        "TP_BACKEND_ADDRESS": stack.backend_address,
        "TP_DATA_DIR": str(stack.data_dir),
        "TP_AUTH_TOKEN": stack.frontend_token,
        "TP_DASHBOARD_TOKEN": token,
        "TP_DASHBOARD_LISTEN": f"127.0.0.1:{port}",
    }
    logs = stack.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "dashboard-screenshot.log").open("ab") as log:
        process = subprocess.Popen([executable], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    saved: list[Path] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tp-dashboard did not start; see {logs / 'dashboard-screenshot.log'}") from None
                time.sleep(0.1)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(f"{url}/login?token={token}")
                for job in jobs:
                    page.locator(f'tr[data-job-id="{job.job_id}"]').wait_for(timeout=30_000)
                page.wait_for_timeout(300)
                page.screenshot(path=str(directory / "demo_dashboard.png"))
                saved.append(directory / "demo_dashboard.png")
                if jobs:
                    page.goto(f"{url}/jobs/{jobs[0].job_id}")
                    page.locator("figure.chart canvas").first.wait_for(timeout=30_000)
                    page.wait_for_timeout(500)
                    page.screenshot(path=str(directory / "demo_dashboard_job.png"), full_page=True)
                    saved.append(directory / "demo_dashboard_job.png")
            finally:
                browser.close()
    except Exception as error:  # the screenshot is a bonus: the demo's result does not depend on it
        out.write(f"dashboard screenshot failed: {(str(error).splitlines() or [type(error).__name__])[0]}\n")
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return saved


def run_demo(data_dir: Path, out=sys.stdout) -> int:
    """Runs the demo; returns 0 when both jobs COMPLETED."""
    data_dir = data_dir.resolve()
    stack = Stack(data_dir, backend_port=_free_port(), timm_port=_free_port(), ultralytics_port=_free_port())
    out.write(f"starting the backend and both trainers (data in {data_dir}) ...\n")
    if note := stack.withheld_note():
        out.write(f"{note}\n")
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
        screenshots = screenshot_dashboard(stack, finished, data_dir, out)
    png = data_dir / "demo_losses.png"
    plot_series(curves, png)
    out.write("\n== where everything is ==\n")
    out.write(f"database:   {stack.database}\n")
    for job in finished:
        out.write(f"{job.framework:12}MLflow run {job.mlflow_run_id or '-'} in {job.mlflow_tracking_uri or '-'}\n")
        for name, uri in sorted(job.artifacts.items()):
            out.write(f"{'':12}{name}: {uri}\n")
    out.write(f"logs:       {data_dir / 'logs'}\nloss curves: {png}\n")
    for path in screenshots:
        out.write(f"dashboard:  {path}\n")
    out.flush()
    return 0 if all(job.status == "COMPLETED" for job in finished) else 1
