"""A database password is kept out of what the backend shows: the settings' repr, its error lines, and (with a
warning) the process list it can be read from when it was given as `--database-url`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from trainingplatform_backend.settings import load

PASSWORD = "s3cret-Pw"
URL = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/nowhere?connect_timeout=2"


def test_the_settings_repr_holds_no_password() -> None:
    # repr(settings) showed DATABASE_URL whole, password included, while every token was already repr=False.
    settings = load(env={"DATABASE_URL": URL, "INTERNAL_AUTH_TOKEN": "tok-internal-1234567890"})
    assert settings.database_url == URL
    shown = repr(settings)
    assert PASSWORD not in shown, shown
    assert "tok-internal" not in shown


def start_backend(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`tp-backend` with `args`, which fails to start: nothing listens on port 1."""
    return subprocess.run(
        [sys.executable, "-m", "trainingplatform_backend.server", *args, "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_a_password_on_the_command_line_is_warned_about_and_never_printed(tmp_path: Path) -> None:
    # `tp-backend --database-url postgresql://user:pw@...` puts the password in the process list, readable by every
    # user of the host; DATABASE_URL does not. The start fails here: the one error line and the warning name no
    # password.
    in_query = f"postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=2&password={PASSWORD}"
    for url in (URL, in_query):  # libpq's `?password=` is a password too (the README's DATABASE_URL row names it)
        result = start_backend(tmp_path, "--database-url", url)
        assert result.returncode == 1, result.stderr
        assert "--database-url holds a password" in result.stderr, (url, result.stderr)
        assert "set DATABASE_URL instead" in result.stderr
        assert PASSWORD not in result.stderr + result.stdout
    # From the environment: no warning.
    result = start_backend(tmp_path, env={"DATABASE_URL": URL, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1, result.stderr
    assert "holds a password" not in result.stderr, result.stderr
    assert PASSWORD not in result.stderr + result.stdout
