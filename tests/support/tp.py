"""The `tp` CLI as a subprocess of a test: where its console script is, and the environment it runs in.

Every test that runs `tp` builds its environment here, so that a setting which must not reach it (one naming a
backend, a token, a data directory or a config: the user's own, or CI's) is cleared in one place for all of them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from support.backend import BackendProcess

TP = str(Path(sys.executable).parent / "tp")
"""The `tp` console script of the interpreter running the tests."""

# Beside every TP_* variable: the variables that name a backend, its database or a token.
_CLEARED = frozenset(
    {
        "BACKEND_API_URL",
        "DATABASE_URL",
        "INTERNAL_AUTH_TOKEN",
        "FRONTEND_AUTH_TOKEN",
        "READ_AUTH_TOKEN",
        "JOB_TELEMETRY_TOKEN",
        "JOB_ID",
    }
)


def shell_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh shell, for a `tp` subprocess (or another console script of the platform).

    It is this process's environment without anything that names a backend, its database, a token, a data
    directory or a config: every TP_* variable (TP_BACKEND_ADDRESS, TP_AUTH_TOKEN, TP_DATA_DIR, TP_CONFIG,
    TP_DASHBOARD_TOKEN, ...), BACKEND_API_URL, DATABASE_URL, the INTERNAL_, FRONTEND_ and READ_AUTH_TOKEN,
    JOB_TELEMETRY_TOKEN and JOB_ID; so neither the user's nor CI's settings leak into a test. `extra` is added.
    Without a TP_CONFIG in `extra`, `tp` reads the user's own config: give one (a file that need not exist).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TP_") and k not in _CLEARED}
    return {**env, **extra}


def backend_env(
    backend: BackendProcess,
    config: Path,
    *,
    token: str | None = None,
    token_variable: str = "INTERNAL_AUTH_TOKEN",
    **extra: str,
) -> dict[str, str]:
    """The environment of a `tp` subprocess that talks to `backend`: `shell_env` with TP_BACKEND_ADDRESS (the
    backend's address), `token_variable` (INTERNAL_AUTH_TOKEN, or TP_AUTH_TOKEN for a test of the variable a user
    sets) holding `token` (the backend's internal token by default) and TP_CONFIG (`config`: the per-user config
    `tp up` writes, a file that need not exist). `extra` is added last, so it may replace any of them.
    """
    settings = {
        "TP_CONFIG": str(config),
        "TP_BACKEND_ADDRESS": backend.address,
        token_variable: backend.internal_token if token is None else token,
    }
    return shell_env(**{**settings, **extra})
