"""Fixtures shared by every test: real databases and a real backend process."""

from __future__ import annotations

import os
import signal
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# The `support` package turns gRPC's fork handlers off before any helper imports grpc (tests fork beside live
# loggers, as DataLoader workers do): it is imported before anything else that imports grpc.
from support.backend import BackendProcess, postgres_database


@pytest.fixture(scope="session", autouse=True)
def _user_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """`tp up` writes a per-user config (TP_CONFIG): in tests, a temporary file, never the user's own."""
    previous = os.environ.get("TP_CONFIG")
    if previous is None:
        os.environ["TP_CONFIG"] = str(tmp_path_factory.mktemp("tp-config") / "config.json")
    yield
    if previous is None:
        os.environ.pop("TP_CONFIG", None)


@pytest.fixture(autouse=True)
def _sigint_restored(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test starts with Python's own SIGINT handler, and one that leaves another behind is named in a warning.

    A test process whose SIGINT is ignored hands that on to every child it starts (an ignored signal stays ignored
    across exec, and Python then installs no KeyboardInterrupt handler): the Ctrl-C tests that came after such a test
    in the same xdist worker failed (`tp train` and a closing TrainingLogger never saw their SIGINT)."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a blocked signal stays blocked across exec too
    yield
    left = signal.getsignal(signal.SIGINT)
    if left is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        warnings.warn(f"{request.node.nodeid} left SIGINT's handler as {left!r}; restored", stacklevel=1)
    if signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set()):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        warnings.warn(f"{request.node.nodeid} left SIGINT blocked; unblocked", stacklevel=1)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated-on-start, empty database: a SQLite file, or a PostgreSQL database made for the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'backend.db'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def module_database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`database_url` for a module's shared backend: each module runs once per database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'backend.db'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture
def backend(database_url: str, tmp_path: Path) -> Iterator[BackendProcess]:
    """A running backend process on `database_url`."""
    process = BackendProcess(database_url, tmp_path / "backend-data")
    process.start()
    try:
        yield process
    finally:
        process.close()


@pytest.fixture(scope="module")
def module_backend(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendProcess]:
    """A backend shared by a module's tests, once per database: for tests that each make their own job and look at
    nothing else (a backend start costs about a second of CPU, and the suite is CPU-bound)."""
    process = BackendProcess(module_database_url, tmp_path_factory.mktemp("module-backend") / "backend-data")
    process.start()
    try:
        yield process
    finally:
        process.close()
