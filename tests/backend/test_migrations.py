"""Alembic migrations are the schema: upgrading an empty database and `alembic check` agree with the models, every
migration has a downgrade that gives back the schema before it, and `tp-backend migrate --to REVISION` rolls a
database back (and forward again) keeping its data; backends that migrate one PostgreSQL database at once take
turns."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, text
from support.backend import VENV_BIN, BackendProcess, free_port, postgres_database
from support.ingest import new_job
from trainingplatform_backend import db
from trainingplatform_backend.store import Store

NOW = dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC)


def test_migrations_match_the_models(database_url: str):
    db.migrate(database_url)
    command.check(db.alembic_config(database_url))  # raises when autogenerate finds any difference
    tables = set(inspect(create_engine(database_url)).get_table_names())
    assert {
        "jobs",
        "metrics",
        "logs",
        "status_events",
        "ingest_cursors",
        "epoch_summaries",
        "job_artifacts",
        "alembic_version",
    } <= tables


def test_migrating_twice_is_a_no_op(database_url: str):
    db.migrate(database_url)
    db.migrate(database_url)
    command.check(db.alembic_config(database_url))


def _serve_without_migrating(database_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`tp-backend --no-migrate` on `database_url`: what it printed and its exit code (it must not stay up)."""
    env = {**os.environ, "DATABASE_URL": database_url, "TP_DATA_DIR": str(tmp_path / "data")}
    return subprocess.run(
        [str(VENV_BIN / "tp-backend"), "--no-migrate", "--listen", f"127.0.0.1:{free_port()}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_backend_that_does_not_migrate_refuses_a_database_without_the_schema(database_url: str, tmp_path: Path):
    # Before, it reported SERVING and answered every call UNAVAILABLE "the database is unavailable; retry later".
    result = _serve_without_migrating(database_url, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert "has no schema" in output and "tp-backend migrate" in output, output


def test_a_backend_that_does_not_migrate_refuses_a_database_behind_its_migrations(database_url: str, tmp_path: Path):
    db.migrate(database_url)
    head = ScriptDirectory.from_config(db.alembic_config(database_url)).get_current_head()
    command.downgrade(db.alembic_config(database_url), "-1")
    result = _serve_without_migrating(database_url, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"needs {head}" in output and "tp-backend migrate" in output, output


def test_a_migrated_database_serves_without_migrating(database_url: str, tmp_path: Path):
    db.migrate(database_url)
    backend = BackendProcess(database_url, tmp_path / "data", extra_args=["--no-migrate"])
    backend.start()
    try:
        job_id, _ = backend.create_job()
        assert job_id
    finally:
        backend.stop()


# --- rolling back: `tp-backend migrate --to REVISION` ------------------------------------------------------------


def _revisions() -> list[str]:
    """This backend's revisions, oldest first."""
    script = ScriptDirectory.from_config(db.alembic_config("sqlite://"))
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


def _schema(url: str) -> dict[str, object]:
    """What a backend sees of the schema: every table's columns (type, nullability, server default), keys and
    indexes."""
    engine = create_engine(url)
    try:
        inspector = inspect(engine)
        schema: dict[str, object] = {}
        for table in sorted(inspector.get_table_names()):
            schema[table] = {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                    for c in inspector.get_columns(table)
                ],
                "primary key": inspector.get_pk_constraint(table)["constrained_columns"],
                "foreign keys": sorted(
                    (tuple(fk["constrained_columns"]), fk["referred_table"], str(fk.get("options")))
                    for fk in inspector.get_foreign_keys(table)
                ),
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table)
                ),
                "unique": sorted(
                    (u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(table)
                ),
            }
        return schema
    finally:
        engine.dispose()


def test_every_downgrade_gives_back_the_schema_of_the_revision_before(database_url: str):
    revisions = _revisions()
    config = db.alembic_config(database_url)
    command.upgrade(config, revisions[0])
    before = _schema(database_url)
    for previous, revision in itertools.pairwise(revisions):
        command.upgrade(config, revision)
        at_revision = _schema(database_url)
        command.downgrade(config, previous)
        assert _schema(database_url) == before, f"the downgrade of {revision} to {previous}"
        command.upgrade(config, revision)
        assert _schema(database_url) == at_revision, f"{revision} upgraded again"
        before = at_revision


def _tp_backend(database_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "TP_DATA_DIR": str(tmp_path / "data")}
    return subprocess.run(
        [str(VENV_BIN / "tp-backend"), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _old_migrations(tmp_path: Path, head: str) -> Path:
    """The migrations of the version before: this version's, without the revisions after `head` (migrations are only
    ever added)."""
    old = tmp_path / "old_migrations"
    shutil.copytree(db.MIGRATIONS_DIR, old, ignore=shutil.ignore_patterns("__pycache__"))
    later = _revisions()[_revisions().index(head) + 1 :]
    for path in (old / "versions").glob("*.py"):
        if any(path.name.startswith(f"{revision}_") for revision in later):
            path.unlink()
    return old


def test_migrate_to_the_previous_revision_and_back_keeps_the_data(database_url: str, tmp_path: Path):
    *_, previous, head = _revisions()
    result = _tp_backend(database_url, tmp_path, "migrate")
    assert result.returncode == 0, result.stderr
    assert f"from no revision (an empty database) to {head}" in result.stderr, result.stderr
    engine = db.create_db_engine(database_url)
    try:
        store = Store(engine)
        job_pk = new_job(store, "kept across the rollback")
        store.record_epoch_summary(job_pk, epoch=1, duration_seconds=2.5, end_time=NOW, metrics={"val/acc": 0.5})
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO metrics (job_pk, sequence, key, value, step, epoch, wall_time) "
                    "VALUES (:pk, 1, 'loss', -0.0, 1, 0, 1.5), (:pk, 2, 'loss', 0.25, 2, 0, 2.5)"
                ),
                {"pk": job_pk},
            )
        stored = _rows(engine, job_pk)

        result = _tp_backend(database_url, tmp_path, "migrate", "--to", previous)
        assert result.returncode == 0, result.stderr
        assert f"from {head} to {previous}" in result.stderr, result.stderr
        db.check_schema(engine, migrations_dir=_old_migrations(tmp_path, previous))  # the old version starts on it
        with pytest.raises(db.SchemaError, match=f"needs {head}"):
            db.check_schema(engine)
        assert _rows(engine, job_pk) == stored

        result = _tp_backend(database_url, tmp_path, "migrate", "--to", "head")
        assert result.returncode == 0, result.stderr
        assert f"from {previous} to {head}" in result.stderr, result.stderr
        db.check_schema(engine)
        assert _rows(engine, job_pk) == stored
        result = _tp_backend(database_url, tmp_path, "migrate")
        assert result.returncode == 0 and f"already at {head}" in result.stderr, result.stderr
    finally:
        engine.dispose()


def _rows(engine: Engine, job_pk: int) -> list[object]:
    """The job's row as the oldest revision has it, its metrics, status events and epoch summaries."""
    with engine.connect() as conn:
        return [
            conn.execute(
                text("SELECT job_id, display_name, status, status_sequence FROM jobs WHERE id = :pk"), {"pk": job_pk}
            ).all(),
            conn.execute(
                text("SELECT sequence, key, value, step, wall_time FROM metrics WHERE job_pk = :pk ORDER BY sequence"),
                {"pk": job_pk},
            ).all(),
            conn.execute(
                text("SELECT sequence, to_status FROM status_events WHERE job_pk = :pk ORDER BY sequence"),
                {"pk": job_pk},
            ).all(),
            conn.execute(
                text("SELECT epoch, key, value FROM epoch_summary_metrics WHERE job_pk = :pk"), {"pk": job_pk}
            ).all(),
        ]


def test_migrate_to_an_unknown_revision_exits_2_naming_the_known_ones(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'backend.db'}"
    result = _tp_backend(url, tmp_path, "migrate", "--to", "0042")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "--to 0042" in result.stderr and "head" in result.stderr, result.stderr
    assert all(revision in result.stderr for revision in _revisions()), result.stderr
    assert not (tmp_path / "backend.db").exists(), "nothing was done to the database"


def test_to_goes_only_with_migrate(tmp_path: Path):
    result = _tp_backend(f"sqlite:///{tmp_path / 'backend.db'}", tmp_path, "serve", "--to", "head")
    assert result.returncode == 2, result.stderr
    assert "--to" in result.stderr and "tp-backend migrate" in result.stderr, result.stderr


def test_a_database_a_newer_version_migrated_is_refused_saying_how_to_roll_it_back(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'backend.db'}"
    db.migrate(url)
    head = _revisions()[-1]
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))  # what a newer version left
    engine.dispose()
    for args in (["migrate"], ["--no-migrate", "--listen", f"127.0.0.1:{free_port()}"]):
        result = _tp_backend(url, tmp_path, *args)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        assert "9999" in result.stderr and f"tp-backend migrate --to {head}" in result.stderr, result.stderr


_MIGRATE_ON_GO = """
import logging
import sys
from trainingplatform_backend import db
logging.basicConfig(level=logging.INFO)
print("ready", flush=True)
sys.stdin.readline()
db.migrate(sys.argv[1])
"""


@pytest.mark.timeout(120)
def test_backends_that_migrate_one_postgresql_database_at_once_all_start():
    """Replicas started together (pods of one rollout, each migrating on start) all migrate an empty database: the
    first applies the migrations, the others wait for it and find the schema at head, where all but one failed
    (`duplicate key value violates unique constraint "pg_type_typname_nsp_index"`)."""
    for _ in range(3):
        with postgres_database() as url:
            migrators = [
                subprocess.Popen(
                    [sys.executable, "-c", _MIGRATE_ON_GO, url],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for _ in range(4)
            ]
            for migrator in migrators:  # every one imported, connected to nothing yet
                assert migrator.stdout is not None and migrator.stdout.readline() == "ready\n"
            for migrator in migrators:
                assert migrator.stdin is not None
                migrator.stdin.write("go\n")
                migrator.stdin.flush()
            outcomes = [(migrator.wait(60), migrator.communicate()[1]) for migrator in migrators]
            assert all(code == 0 for code, _ in outcomes), "\n".join(err[-2000:] for _, err in outcomes)
            logs = "".join(err for _, err in outcomes)
            assert logs.count("from no revision (an empty database)") == 1, logs
            assert logs.count("already at") == 3, logs
            assert db.current_revision(url) == db.revisions()[-1]
