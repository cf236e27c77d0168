"""The contracts pass `buf lint`, have no breaking change against the previous commit, and the committed
generated code is exactly what the protos produce."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "node_modules" / ".bin" / "buf"


@pytest.fixture(scope="module")
def buf() -> Path:
    if not BUF.exists():
        pytest.fail("the buf CLI is missing: run `make setup` (it installs @bufbuild/buf from package-lock.json)")
    return BUF


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BUF_CACHE_DIR": str(ROOT / ".cache" / "buf")}
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300, **kwargs)


def test_buf_lint(buf: Path):
    result = run([str(buf), "lint"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_breaking_change_against_the_previous_commit(buf: Path):
    result = run([str(ROOT / "tools" / "buf_breaking.sh")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_code_is_current(buf: Path, tmp_path: Path):
    template = (ROOT / "buf.gen.python.yaml").read_text().replace("out: sdk/gen", f"out: {tmp_path / 'gen'}")
    (tmp_path / "buf.gen.yaml").write_text(template)
    result = run([str(buf), "generate", "--template", str(tmp_path / "buf.gen.yaml")])
    assert result.returncode == 0, result.stdout + result.stderr
    committed = ROOT / "sdk" / "gen"
    fresh = tmp_path / "gen"
    committed_files = sorted(
        p.relative_to(committed) for p in committed.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    fresh_files = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    assert committed_files == fresh_files, "protos changed: run `make proto` and commit sdk/gen"
    changed = [str(p) for p in fresh_files if not filecmp.cmp(committed / p, fresh / p, shallow=False)]
    assert not changed, f"protos changed: run `make proto` and commit sdk/gen ({changed})"


def test_the_breaking_check_catches_a_breaking_change(buf: Path, tmp_path: Path):
    """Guards the guard: renumbering a field must be reported."""
    work = tmp_path / "repo"
    shutil.copytree(ROOT / "protos", work / "protos")
    shutil.copy(ROOT / "buf.yaml", work / "buf.yaml")
    image = tmp_path / "before.binpb"
    assert run([str(buf), "build", str(work), "-o", str(image)]).returncode == 0
    proto = work / "protos" / "trainingplatform" / "telemetry" / "v1" / "telemetry.proto"
    proto.write_text(proto.read_text().replace("int64 sequence = 6;", "int64 sequence = 16;"))
    result = run([str(buf), "breaking", str(work), "--against", str(image)])
    assert result.returncode != 0 and "sequence" in result.stdout + result.stderr


def test_the_breaking_check_compares_with_the_merge_base_of_main(buf: Path, tmp_path: Path):
    """A breaking change two commits back on a branch is still reported: the check looks at the whole branch."""
    work = tmp_path / "repo"
    shutil.copytree(ROOT / "protos", work / "protos")
    shutil.copy(ROOT / "buf.yaml", work / "buf.yaml")
    (work / "tools").mkdir()
    shutil.copy(ROOT / "tools" / "buf_breaking.sh", work / "tools" / "buf_breaking.sh")
    (work / "node_modules").symlink_to(ROOT / "node_modules")
    (work / ".gitignore").write_text("node_modules\n")

    def git(*args: str) -> None:
        result = run(["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@t", *args])
        assert result.returncode == 0, result.stdout + result.stderr

    git("init", "--quiet", "--initial-branch=main")
    git("add", ".")
    git("commit", "--quiet", "-m", "main")
    git("checkout", "--quiet", "-b", "feature")
    proto = work / "protos" / "trainingplatform" / "telemetry" / "v1" / "telemetry.proto"
    proto.write_text(proto.read_text().replace("int64 sequence = 6;", "int64 sequence = 16;"))
    git("commit", "--quiet", "-am", "breaking")
    (work / "README").write_text("an unrelated change after the breaking one\n")
    git("add", "README")
    git("commit", "--quiet", "-m", "unrelated")

    result = run([str(work / "tools" / "buf_breaking.sh")])
    assert result.returncode != 0 and "sequence" in result.stdout + result.stderr
