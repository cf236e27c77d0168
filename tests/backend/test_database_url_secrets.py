"""A password in the database URL is never shown: not in the `user:password@` form, and not as a query parameter
(`?password=...`, `?sslpassword=...`, libpq's secret parameters), in the migration line, the serving line (once per
worker with --workers), nor in an error."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support.backend import VENV_BIN, BackendProcess, free_port, postgres_database
from trainingplatform_backend import db

SECRET = "QrySecret42"
SSL_SECRET = "SslSecret77"


def _with_query_password(url: str) -> str:
    return f"{url}?password={SECRET}&sslpassword={SSL_SECRET}&application_name=tp"


def test_display_url_masks_the_secret_query_parameters() -> None:
    shown = db.display_url(f"postgresql+psycopg://postgres:{SECRET}@db:5432/x?sslpassword={SSL_SECRET}&PASSWORD=a1")
    assert SECRET not in shown and SSL_SECRET not in shown and "a1" not in shown, shown
    assert "postgres:***@db:5432/x" in shown and "sslpassword=***" in shown, shown


@pytest.mark.timeout(120)
def test_migrate_against_an_unknown_database_never_shows_the_query_password(tmp_path: Path) -> None:
    url = _with_query_password("postgresql://postgres@127.0.0.1:5432/tp_no_such_database")
    env = {**os.environ, "DATABASE_URL": url, "TP_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [str(VENV_BIN / "tp-backend"), "migrate"], env=env, capture_output=True, text=True, timeout=90, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "applying database migrations to" in output and "password=***" in output, output
    assert SECRET not in output and SSL_SECRET not in output, output


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", [1, 2])
def test_serving_never_shows_the_query_password(tmp_path: Path, workers: int) -> None:
    with postgres_database() as url:
        backend = BackendProcess(
            _with_query_password(url.replace("postgresql+psycopg://", "postgresql://")),
            tmp_path / "data",
            port=free_port(),
            extra_args=["--workers", str(workers)] if workers > 1 else [],
        )
        backend._engine.dispose()  # the test's own engine: the password parameter means nothing to trust auth
        try:
            backend.start()
        finally:
            backend.close()
        log = backend.log_text()
        assert log.count("serving on") >= workers, log
        assert SECRET not in log and SSL_SECRET not in log, log
