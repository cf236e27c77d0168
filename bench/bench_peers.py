"""This SDK beside the loggers users would pick instead (wandb offline, MLflow async, Aim), on the same work.

Every case runs in a fresh subprocess: this SDK in this venv, streaming to a real `tp-backend` on SQLite that the
case starts (tests/support/backend.BackendProcess); the peers in a virtualenv of their own that this benchmark makes
(`.cache/bench-peers-venv`, pinned versions, reused while the pins match), so the project's dependencies stay clean:

  - wandb in offline mode (WANDB_MODE=offline; no console capture, system stats, git, code or machine info);
    the run's `.wandb` transaction log is the store, read back with the reader below;
  - MLflow with async logging (`synchronous=False`, MLFLOW_ENABLE_ASYNC_LOGGING) buffered for 1 s
    (MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS) into a local SQLite store, read back with MlflowClient;
  - Aim with a local repo (`Run.track`, no system tracking nor terminal capture), read back with `Run.get_metric`
    once the run is indexed.

The peers never reach the network: their telemetry is off, and HTTP(S) proxies point at a closed local port so
that any request that slipped through fails at once instead of leaving the machine.

Measured for each logger, on the same work:
  - caller cost: time.perf_counter_ns around each single `log` call of one key (the clock's own cost, measured
    the same way around nothing, is subtracted), median and p99.9. This SDK's `log_metric` takes the harness's
    (key, value, step) as it is and is called directly; each peer's call goes through a lambda that adapts them
    (about 0.03 microseconds, under 0.05 % of a peer's cost, but 15 % of this SDK's);
  - points/s until durable: the same points, from the first call until the store has them (the SDK: `flush`
    returns once the backend committed them; wandb: `finish`; MLflow: `flush_async_logging`; Aim: `close`); then
    every point is read back from the store and counted (for up to READ_BACK_WAIT_S more, in case the store
    finishes writing after its "durable" call returned): a short count fails the benchmark for this SDK, and is
    reported for a peer as `peer_lost_<logger>` (points missing over all of its runs);
  - CPU per 1,000 points over that window, of the whole process tree: the logging process, its helpers (wandb's
    service process) and, for the SDK, the backend process;
  - the slowdown of a training loop (a fixed ~2 ms of pure-Python work per step, which holds the GIL as a Python
    training loop's own code does, then 3 keys logged with the logger's call for several keys) against the same
    loop not logging: runs alternate off/on and which goes first alternates, median loop time of each side.
    The points of the logging runs are read back too. The SDK's backend shares the loop's cores (the worst case,
    as in `training_overhead_pct`); the peers' helpers (wandb's service) do too.

Runs rotate the order of the loggers; each number is the median over runs (throughput: `rounds` runs per logger;
loop: `loop_runs` runs of each side per logger).

    .venv/bin/python bench/bench_peers.py [--points 50000] [--rounds 3] [--loop-runs 5] [--steps 1500] [--loggers ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS_VENV = ROOT / ".cache" / "bench-peers-venv"
# Versions that install together here (mlflow 3.18's mlflow-tracing is not on the index this machine reaches).
PEER_PINS = ("wandb==0.31.0", "mlflow==3.17.2", "aim==3.29.1")
LOGGERS = ("sdk", "wandb", "mlflow", "aim")
PEERS = LOGGERS[1:]
KEY = "train/loss"
LOOP_KEYS = ("train/loss", "train/lr", "train/grad_norm")
_RESULT_MARK = "BENCH_PEERS_RESULT "
# How long a read-back that comes up short is retried before the missing points count as lost.
READ_BACK_WAIT_S = 10.0
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


# --- the peers' virtualenv -------------------------------------------------------------------------------------


def peers_python() -> Path:
    """The peers' interpreter: `.cache/bench-peers-venv`, made (or remade when the pins changed) on first use."""
    python = PEERS_VENV / "bin" / "python"
    stamp = PEERS_VENV / "bench-peers-pins.txt"
    wanted = "\n".join(PEER_PINS) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"making {PEERS_VENV.relative_to(ROOT)} with {' '.join(PEER_PINS)} ...", file=sys.stderr, flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(PEERS_VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PEER_PINS], check=True
    )
    stamp.write_text(wanted)
    return python


def peer_versions() -> dict[str, str]:
    """The installed versions of the peers, as the peers' pip reports them."""
    out = subprocess.run(
        [
            str(peers_python()),
            "-c",
            "import importlib.metadata as m; print(*(m.version(p) for p in ('wandb', 'mlflow', 'aim')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return dict(zip(PEERS, out, strict=True))


# --- CPU of a process tree -------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, list[str]] | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[1]), fields


def tree_cpu_s(root: int | None = None) -> float:
    """User plus system CPU of a process, every live descendant and every child they reaped, in seconds."""
    root = root or os.getpid()
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            stats[int(entry)] = stat
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            fields = stats[pid][1]
            total += sum(int(fields[index]) for index in (11, 12, 13, 14))  # utime stime cutime cstime
        todo.extend(children.get(pid, ()))
    return total / _TICKS_PER_S


# --- the work of a training step -------------------------------------------------------------------------------


def work(iterations: int) -> int:
    """Pure-Python CPU work (holds the GIL, as a training loop's own Python code does)."""
    acc = 0
    for index in range(iterations):
        acc += index * index
    return acc


def calibrate_work(target_s: float = 0.002) -> int:
    """Iterations of `work` that take about `target_s` on this machine (the fastest of several trials)."""
    probe = 20_000
    work(probe)
    best = min(_timed(work, probe) for _ in range(15))
    return max(1, round(probe * target_s / best))


def _timed(function: Any, *args: Any) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


# --- the loggers, each behind the same four calls ----------------------------------------------------------------


class Case:
    """One logger: `log` one key, `log_many` several keys of a step, `warm` (after a first point: whatever the logger
    opens lazily is open), `durable` (flush until stored), `read_back` (the points of `key` in the store, as steps),
    `close`."""

    #: Whether a short read-back fails the benchmark (this SDK) rather than being counted as lost (a peer).
    lossless = False

    def warm(self) -> None:
        pass

    def log(self, key: str, value: float, step: int) -> None:
        raise NotImplementedError

    def log_many(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def durable(self) -> None:
        raise NotImplementedError

    def read_back(self, key: str) -> list[int]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SdkCase(Case):
    lossless = True

    def __init__(self, workdir: Path) -> None:
        sys.path.insert(0, str(ROOT / "tests"))
        from support.backend import BackendProcess
        from trainingplatform_sdk import TrainingLogger

        self.backend = BackendProcess(f"sqlite:///{workdir / 'backend.db'}", workdir / "data")
        self.backend.start()
        self.job_id, token = self.backend.create_job()
        self.logger = TrainingLogger(
            self.job_id, backend_address=self.backend.address, token=token, spool_dir=workdir / "spool"
        )
        # The logger's own methods, called positionally as (key, value, step) and (values, step): no adapter.
        self.log = self.logger.log_metric  # type: ignore[method-assign]
        self.log_many = self.logger.log_metrics  # type: ignore[method-assign]

    def warm(self) -> None:
        if not self.logger.flush(60):  # the streams open outside the measurement
            raise RuntimeError("the SDK's warm-up point was not committed within 60 s")

    def durable(self) -> None:
        if not self.logger.flush(300):
            raise RuntimeError("the SDK's points were not all committed within 300 s")

    def read_back(self, key: str) -> list[int]:
        return [step for _, k, _, step, _, _ in self.backend.metric_rows(self.job_id) if k == key]

    def close(self) -> None:
        try:
            report = self.logger.close(60)
            if report.pending_metrics or report.committed_metrics != report.logged_metrics:
                raise RuntimeError(f"the SDK did not deliver everything: {report}")
        finally:
            self.backend.close()


class WandbCase(Case):
    def __init__(self, workdir: Path) -> None:
        import wandb

        self.wandb = wandb
        settings = wandb.Settings(
            mode="offline",
            console="off",
            silent=True,
            disable_git=True,
            disable_code=True,
            save_code=False,
            x_disable_stats=True,
            x_disable_meta=True,
            x_disable_machine_info=True,
            x_save_requirements=False,
        )
        self.run = wandb.init(project="bench", dir=str(workdir), settings=settings)
        self.log = lambda key, value, step: self.run.log({key: value}, step=step)  # type: ignore[method-assign]
        self.log_many = lambda values, step: self.run.log(values, step=step)  # type: ignore[method-assign]
        self.sync_file = Path(self.run.settings.sync_file)

    def durable(self) -> None:
        self.run.finish()  # returns once the service wrote every record to the run's .wandb file

    def read_back(self, key: str) -> list[int]:
        from wandb.proto import wandb_internal_pb2

        steps = []
        for data in read_wandb_records(self.sync_file):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            if record.WhichOneof("record_type") != "history":
                continue
            items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
            if key in items:
                steps.append(int(json.loads(items["_step"])) if "_step" in items else record.history.step.num)
        return steps


def read_wandb_records(path: Path) -> list[bytes]:
    """The records of a wandb transaction log (`run-*.wandb`): LevelDB's log format (32 KiB blocks of chunks with
    a 7-byte header: CRC-32 of type and data, length, type) after a 7-byte file header, as wandb writes it."""
    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"{path} is not a wandb transaction log: {data[:7]!r}")
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # the tail of a block too short for a header is padding
            position += left
            continue
        checksum, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0 and length == 0:  # zero padding at the end
            break
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != checksum:
            raise ValueError(f"{path}: bad checksum at offset {position - 7 - length}")
        if kind == 1:  # full
            records.append(chunk)
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            records.append(pending + chunk)
            pending = b""
        else:
            raise ValueError(f"{path}: unknown chunk type {kind}")
    return records


class MlflowCase(Case):
    def __init__(self, workdir: Path) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        self.mlflow = mlflow
        self.uri = f"sqlite:///{workdir / 'mlflow.db'}"
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment("bench")
        self.run_id = mlflow.start_run().info.run_id
        self.client = MlflowClient(tracking_uri=self.uri)
        log_metric, log_metrics = mlflow.log_metric, mlflow.log_metrics
        self.log = lambda key, value, step: log_metric(key, value, step=step, synchronous=False)  # type: ignore[method-assign]
        self.log_many = lambda values, step: log_metrics(values, step=step, synchronous=False)  # type: ignore[method-assign]

    def warm(self) -> None:
        self.mlflow.flush_async_logging()  # the async logging queue and its threads start outside the measurement

    def durable(self) -> None:
        self.mlflow.flush_async_logging()

    def read_back(self, key: str) -> list[int]:
        return [metric.step for metric in self.client.get_metric_history(self.run_id, key)]

    def close(self) -> None:
        self.mlflow.end_run()


class AimCase(Case):
    def __init__(self, workdir: Path) -> None:
        from aim import Repo, Run

        self.path = str(workdir / "aim")
        Repo.from_path(self.path, init=True)
        self.run = Run(
            repo=self.path,
            experiment="bench",
            system_tracking_interval=None,
            log_system_params=False,
            capture_terminal_logs=False,
        )
        self.hash = self.run.hash
        track = self.run.track
        self.log = lambda key, value, step: track(value, name=key, step=step)  # type: ignore[method-assign]
        self.log_many = lambda values, step: track(values, step=step)  # type: ignore[method-assign]

    def durable(self) -> None:
        self.run.close()

    def read_back(self, key: str) -> list[int]:
        from aim import Repo, Run
        from aim.sdk.index_manager import RepoIndexManager
        from aim.storage.context import Context

        # Readers see a run through the repo's index, which `aim up` keeps in the background: index it first.
        repo = Repo.from_path(self.path)
        RepoIndexManager.get_index_manager(repo).index(self.hash)
        metric = Run(self.hash, repo=repo, read_only=True).get_metric(key, Context({}))
        return [int(step) for step in metric.data.items_list()[0]] if metric is not None else []


CASES: dict[str, type[Case]] = {"sdk": SdkCase, "wandb": WandbCase, "mlflow": MlflowCase, "aim": AimCase}


# --- what one subprocess measures --------------------------------------------------------------------------------


def _lost(case: Case, key: str, expected: range, what: str) -> int:
    """How many of the `expected` steps of `key` the store does not hold, read back until it holds them all or
    READ_BACK_WAIT_S passed (a peer's read-back that raises is tried again within that time too). A point stored
    twice or one never logged fails the benchmark whatever the logger, and so does a lost point of this SDK."""
    deadline = time.monotonic() + READ_BACK_WAIT_S
    while True:
        try:
            steps = case.read_back(key)
        except Exception as error:  # a peer's store may be mid-compaction (Aim's RocksDB removed a file it opened)
            if case.lossless or time.monotonic() > deadline:
                raise
            print(f"{what}: reading back failed ({error!r}); trying again", file=sys.stderr, flush=True)
            time.sleep(0.5)
            continue
        if len(steps) != len(set(steps)) or not set(steps) <= set(expected):
            raise RuntimeError(
                f"{what}: read back {len(steps)} points ({len(set(steps))} distinct steps), expected "
                f"{len(expected)} distinct steps of {expected}"
            )
        lost = len(expected) - len(steps)
        if lost == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if lost and case.lossless:
        raise RuntimeError(f"{what}: the SDK lost {lost} of {len(expected)} points")
    return lost


def measure_throughput(case: Case, points: int) -> dict[str, float]:
    """Caller cost of single-key calls, points/s until durable, CPU of the process tree; every point read back."""
    clock = time.perf_counter_ns
    empty = []
    for _ in range(10_000):
        start = clock()
        empty.append(clock() - start)
    clock_ns = statistics.median(empty)
    case.log("warmup", 0.0, 0)
    case.warm()
    log = case.log
    samples = [0] * points
    cpu_before, started = tree_cpu_s(), time.perf_counter()
    for step in range(points):
        start = clock()
        log(KEY, 1.0 / (step + 1), step)
        samples[step] = clock() - start
    case.durable()
    elapsed, cpu = time.perf_counter() - started, tree_cpu_s() - cpu_before
    lost = _lost(case, KEY, range(points), "points/s")
    samples.sort()
    return {
        "caller_us": max(0.0, samples[points // 2] - clock_ns) / 1000,
        "caller_us_p999": max(0.0, samples[min(points - 1, int(points * 0.999))] - clock_ns) / 1000,
        "caller_us_max": samples[-1] / 1000,
        "clock_ns": clock_ns,
        "points_per_s": points / elapsed,
        "cpu_ms_per_1k": cpu * 1000 / points * 1000,
        "lost": lost,
    }


def measure_loop(case: Case | None, steps: int, iterations: int) -> dict[str, float]:
    """The time of `steps` steps of `iterations` of work, each logging the 3 keys when `case` is given."""
    if case is not None:
        case.log("warmup", 0.0, 0)
        case.warm()
    log_many = case.log_many if case is not None else None
    started = time.perf_counter()
    for step in range(steps):
        loss = 1.0 / (work(iterations) % 7 + step + 1)
        if log_many is not None:
            log_many({LOOP_KEYS[0]: loss, LOOP_KEYS[1]: 0.1, LOOP_KEYS[2]: 2.0 * loss}, step)
    loop_s = time.perf_counter() - started
    lost = 0
    if case is not None:
        case.durable()
        lost = sum(_lost(case, key, range(steps), f"loop {key}") for key in LOOP_KEYS)
    return {"loop_s": loop_s, "lost": lost}


def worker(name: str, mode: str, points: int, steps: int, iterations: int) -> dict[str, float]:
    """One case, in the working directory, which the parent removes after this process exited (Aim's exit handlers
    still write to its repo)."""
    if mode == "off":
        return measure_loop(None, steps, iterations)
    case = CASES[name](Path.cwd())
    try:
        if mode == "throughput":
            return measure_throughput(case, points)
        return measure_loop(case, steps, iterations)
    finally:
        case.close()


# --- the parent: runs the subprocesses and sums up ------------------------------------------------------------


def _environment(name: str, workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if name == "sdk":
        return env
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens, so a stray request fails at once
    env.update(
        {
            "HTTP_PROXY": dead,
            "HTTPS_PROXY": dead,
            "http_proxy": dead,
            "https_proxy": dead,
            "NO_PROXY": "",
            "no_proxy": "",
            "HOME": str(workdir),
            "XDG_CONFIG_HOME": str(workdir / ".config"),
            "XDG_CACHE_HOME": str(workdir / ".cache"),
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "WANDB_CONSOLE": "off",
            "WANDB_DISABLE_GIT": "true",
            "WANDB_DISABLE_CODE": "true",
            "WANDB_ERROR_REPORTING": "false",
            "WANDB_DIR": str(workdir),
            "WANDB_CONFIG_DIR": str(workdir / "wandb-config"),
            "WANDB_CACHE_DIR": str(workdir / "wandb-cache"),
            "WANDB_DATA_DIR": str(workdir / "wandb-data"),
            "MLFLOW_ENABLE_ASYNC_LOGGING": "true",
            "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "GIT_PYTHON_REFRESH": "quiet",
        }
    )
    return env


def run_case(name: str, mode: str, points: int = 0, steps: int = 0, iterations: int = 0) -> dict[str, float]:
    """One case in a fresh subprocess (the peers in their virtualenv); its result, or an error with its output."""
    python = Path(sys.executable) if name == "sdk" or mode == "off" else peers_python()
    with tempfile.TemporaryDirectory(prefix="bench-peers-home-") as home:
        command = [str(python), str(Path(__file__).resolve()), "--worker", name, "--mode", mode]
        command += ["--points", str(points), "--steps", str(steps), "--iterations", str(iterations)]
        done = subprocess.run(
            command, env=_environment(name, Path(home)), capture_output=True, text=True, timeout=900, cwd=home
        )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_RESULT_MARK):
            return json.loads(line[len(_RESULT_MARK) :])
    raise RuntimeError(f"{name} {mode} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def run(
    points: int = 50_000,
    rounds: int = 3,
    loop_runs: int = 5,
    steps: int = 1500,
    loggers: tuple[str, ...] | list[str] = LOGGERS,
) -> dict[str, float]:
    """The flat numbers of `bench/run.py`; `loggers=("sdk",)` (the smoke) neither makes nor needs the peers' venv."""
    loggers = [name for name in LOGGERS if name in loggers]
    if any(name != "sdk" for name in loggers):
        print(f"peers: {peer_versions()}", file=sys.stderr, flush=True)
    else:
        print("peers skipped (the SDK only): no peers' venv made or used", file=sys.stderr, flush=True)
    iterations = calibrate_work()
    throughput: dict[str, list[dict[str, float]]] = {name: [] for name in loggers}
    loop_on: dict[str, list[float]] = {name: [] for name in loggers}
    loop_off: dict[str, list[float]] = {name: [] for name in loggers}
    lost: dict[str, int] = dict.fromkeys(loggers, 0)
    for index in range(rounds):
        for name in loggers[index % len(loggers) :] + loggers[: index % len(loggers)]:
            result = run_case(name, "throughput", points=points)
            throughput[name].append(result)
            lost[name] += int(result.get("lost", 0))
            print(
                f"  throughput {index + 1}/{rounds} {name}: {result['caller_us']:.2f} us/call "
                f"(p99.9 {result['caller_us_p999']:.1f}), {result['points_per_s']:,.0f} points/s, "
                f"{result['cpu_ms_per_1k']:.1f} CPU ms/1k",
                file=sys.stderr,
                flush=True,
            )
    for index in range(loop_runs):
        for name in loggers[index % len(loggers) :] + loggers[: index % len(loggers)]:
            for side in ("off", "on") if index % 2 == 0 else ("on", "off"):
                result = run_case(name, "loop" if side == "on" else "off", steps=steps, iterations=iterations)
                (loop_on if side == "on" else loop_off)[name].append(result["loop_s"])
                lost[name] += int(result.get("lost", 0))
            print(
                f"  loop {index + 1}/{loop_runs} {name}: off {loop_off[name][-1]:.3f} s, on {loop_on[name][-1]:.3f} s",
                file=sys.stderr,
                flush=True,
            )
    results: dict[str, float] = {}
    for name in loggers:
        for key in ("caller_us", "caller_us_p999", "points_per_s", "cpu_ms_per_1k"):
            results[f"peer_{key}_{name}"] = statistics.median(r[key] for r in throughput[name])
        off, on = statistics.median(loop_off[name]), statistics.median(loop_on[name])
        results[f"peer_slowdown_pct_{name}"] = (on - off) / off * 100
        results[f"peer_lost_{name}"] = float(lost[name])
    for name in loggers:
        if name == "sdk" or "sdk" not in loggers:
            continue
        # How many times the peer's cost (or the SDK's throughput) the other is: larger is better for the SDK.
        results[f"peer_ratio_caller_{name}"] = results[f"peer_caller_us_{name}"] / max(
            results["peer_caller_us_sdk"], 1e-3
        )
        results[f"peer_ratio_caller_p999_{name}"] = results[f"peer_caller_us_p999_{name}"] / max(
            results["peer_caller_us_p999_sdk"], 1e-3
        )
        results[f"peer_ratio_points_per_s_{name}"] = (
            results["peer_points_per_s_sdk"] / results[f"peer_points_per_s_{name}"]
        )
        results[f"peer_ratio_cpu_{name}"] = results[f"peer_cpu_ms_per_1k_{name}"] / results["peer_cpu_ms_per_1k_sdk"]
    # The SDK's p99.9 is `peer_caller_us_p999_sdk`; `log_metric_us_p999` is bench_log_metric's (during a burst).
    results["peer_loggers_measured"] = len(loggers)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=50_000, help="points per throughput case")
    parser.add_argument("--rounds", type=int, default=3, help="throughput runs per logger")
    parser.add_argument("--loop-runs", type=int, default=5, help="training-loop runs of each side per logger")
    parser.add_argument("--steps", type=int, default=1500, help="steps of the training loop")
    parser.add_argument("--loggers", nargs="*", choices=LOGGERS, default=list(LOGGERS))
    parser.add_argument("--worker", choices=LOGGERS, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("throughput", "loop", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--iterations", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker, args.mode, args.points, args.steps, args.iterations)
        print(_RESULT_MARK + json.dumps(result), flush=True)
        return
    print(json.dumps(run(args.points, args.rounds, args.loop_runs, args.steps, args.loggers), indent=2))


if __name__ == "__main__":
    main()
