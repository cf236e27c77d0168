"""A training process forks (DataLoader workers, each epoch) while its TrainingLogger's sender talks to gRPC.

gRPC's own fork handlers must be off in such a process: with them on, a fork that lands while gRPC starts one of its
threads crashed the parent (the training itself) or the child with a segmentation fault (reproduced: 2 crashes in 2
runs of 300 forks beside a connecting sender, none in 600 with the handlers off). The SDK turns them off unless the
process chose otherwise, and it must do so before gRPC is imported, which its own modules do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from support.backend import free_port

_WHAT_GRPC_SAW = textwrap.dedent(
    """
    import os, sys

    seen = {{}}

    class Spy:
        def find_spec(self, name, path=None, target=None):
            if name == "grpc" and "grpc" not in seen:
                seen["grpc"] = os.environ.get("GRPC_ENABLE_FORK_SUPPORT", "<unset>")
            return None

    sys.meta_path.insert(0, Spy())
    import {module}
    print(seen.get("grpc", "<grpc never imported>"))
    """
)


def _environment(**extra: str) -> dict[str, str]:
    """This process's environment without the variable (a fresh process, as a user starts one), plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}, **extra}


def _fork_support_seen_by_grpc(module: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _WHAT_GRPC_SAW.format(module=module)],
        env=_environment(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip()


def test_grpc_is_imported_with_its_fork_handlers_off_whichever_platform_module_comes_first() -> None:
    for module in (
        "trainingplatform_sdk",
        "trainingplatform_sdk.telemetry",
        "trainingplatform_sdk.clients",
        "trainingplatform_sdk.training.train",
        "trainingplatform_backend.server",
        "trainingplatform_dashboard.app",
    ):
        assert _fork_support_seen_by_grpc(module) == "false", module


def test_a_process_that_chose_grpc_fork_support_keeps_its_choice() -> None:
    assert _fork_support_seen_by_grpc("trainingplatform_sdk", GRPC_ENABLE_FORK_SUPPORT="true") == "true"


_FORKING_TRAINER = textwrap.dedent(
    """
    import faulthandler, os, sys, tempfile
    from pathlib import Path

    faulthandler.enable()
    from trainingplatform_sdk import TrainingLogger

    for attempt in range({forks}):
        with tempfile.TemporaryDirectory() as spool:
            logger = TrainingLogger("job-1", backend_address="{address}", token="t", spool_dir=Path(spool))
            logger.log_metric("loss", 1.0)
            pid = os.fork()  # while the sender starts its first call: gRPC starts threads now
            if pid == 0:
                os._exit(0 if not logger.enabled else 1)
            _, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                sys.exit(f"the forked child's logger was not off (fork {{attempt}})")
            logger.log_metric("loss", 2.0)
            report = logger.close(0.2)
            if report.logged_metrics != 2:
                sys.exit(f"the parent's logger lost points after fork {{attempt}}: {{report}}")
    print("survived")
    """
)


def test_a_trainer_that_forks_while_its_sender_connects_survives() -> None:
    # The backend is unreachable, so every logger's sender is busy connecting (and failing) when the fork lands.
    script = _FORKING_TRAINER.format(forks=200, address=f"127.0.0.1:{free_port()}")
    done = subprocess.run(
        [sys.executable, "-c", script], env=_environment(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == "survived", (
        f"exit {done.returncode}: {done.stdout[-1000:]}\n{done.stderr[-3000:]}"
    )


_TWO_LOGGERS = textwrap.dedent(
    """
    import logging, sys, tempfile
    from pathlib import Path

    logging.basicConfig(level=logging.WARNING)
    if sys.argv[1] == "grpc-first":
        import grpc  # noqa: F401
    from trainingplatform_sdk import TrainingLogger

    with tempfile.TemporaryDirectory() as spool:
        for job in ("job-1", "job-2"):
            TrainingLogger(job, backend_address="{address}", token="t", spool_dir=Path(spool) / job).close(0.1)
    """
)


def _warnings_of_two_loggers(order: str, **env: str) -> list[str]:
    script = _TWO_LOGGERS.format(address=f"127.0.0.1:{free_port()}")
    done = subprocess.run(
        [sys.executable, "-c", script, order], env=_environment(**env), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [line for line in done.stderr.splitlines() if "fork handlers are on" in line]


def test_a_process_that_imported_grpc_first_is_told_once_how_to_turn_the_handlers_off() -> None:
    (warning,) = _warnings_of_two_loggers("grpc-first")
    assert "GRPC_ENABLE_FORK_SUPPORT=false" in warning and "import trainingplatform_sdk before grpc" in warning
    assert _warnings_of_two_loggers("sdk-first") == []
    assert _warnings_of_two_loggers("grpc-first", GRPC_ENABLE_FORK_SUPPORT="false") == []
